//! SSH agent forwarding (`RUN --mount=type=ssh`): the agents a build was given, and the
//! per-step proxy that lets the step speak the agent protocol to them.
//!
//! The step never sees the client's agent socket, nor any key: for each ssh mount the engine
//! makes a private directory (mode 0700, a fresh temporary directory owned by kiln's user)
//! holding a listening unix socket, bind-mounted at the mount's target. A thread accepts the
//! step's connections and, per connection, connects to the client's agent and copies bytes
//! both ways. Only agent messages cross: the agent signs with keys it keeps. When the step
//! ends (also on failure) the [`SshProxy`] is dropped: the listener stops, open connections
//! are shut down, every thread is joined and the directory is removed.
//!
//! BuildKit's rule for the cache: the agent and its keys are not part of a step's cache key,
//! only the mount's definition (id, target, mode, owner) is.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::OpError;
use crate::graph::{ExecMountKind, Op};

/// The SSH agents of one build, by id (`kiln build --ssh ID=SOCKET`): paths of the client's
/// agent sockets.
#[derive(Clone, Debug, Default)]
pub struct SshAgents(BTreeMap<String, PathBuf>);

impl SshAgents {
    /// No agents.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the agent `id`, reached at the unix socket `socket`.
    pub fn insert(&mut self, id: impl Into<String>, socket: impl Into<PathBuf>) {
        self.0.insert(id.into(), socket.into());
    }

    /// The socket of agent `id`.
    pub fn get(&self, id: &str) -> Option<&Path> {
        self.0.get(id).map(PathBuf::as_path)
    }

    /// The ids given.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// True when no agent was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Errors setting up an agent proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// The proxy's private directory or socket could not be made or prepared.
    #[error("ssh agent proxy: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An ssh mount's `uid`/`gid` lies outside the `--userns-remap` range.
    #[error("ssh mount owner id {id} is outside the user-namespace mapping")]
    OwnerUnmapped {
        /// The id.
        id: u32,
    },
}

/// Fails, naming the id, when `op` mounts a `required` ssh agent the build was not given:
/// called before the step's cache lookup, so nothing runs and nothing is stored.
pub(super) fn check_required(op: &Op, agents: &SshAgents) -> Result<(), OpError> {
    let Op::Exec(e) = op else { return Ok(()) };
    for m in &e.mounts {
        if let ExecMountKind::Ssh { id, required, .. } = &m.kind
            && *required
            && agents.get(id).is_none()
        {
            return Err(OpError::SshRequired { id: id.clone() });
        }
    }
    Ok(())
}

/// One step's proxy to one agent. Dropping it stops the listener, shuts down open
/// connections, joins every thread and removes the private directory.
pub struct SshProxy {
    dir: Option<tempfile_dir::PrivateDir>,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<Vec<Worker>>>,
}

/// One connection's thread, with handles on its two sockets to shut them down.
struct Worker {
    thread: JoinHandle<()>,
    sockets: [UnixStream; 2],
}

impl SshProxy {
    /// Starts a proxy to the agent at `agent`, with its socket made `mode`, owned by
    /// `uid:gid` (host ids).
    pub fn start(agent: &Path, mode: u32, uid: u32, gid: u32) -> Result<Self, SshError> {
        let dir = tempfile_dir::PrivateDir::new()?;
        let socket = dir.path().join("agent.sock");
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| SshError::Io { op, path, source }
        };
        let listener = UnixListener::bind(&socket).map_err(io("bind", &socket))?;
        // The directory is 0700 and kiln's own, so nothing else can have swapped the path.
        std::fs::set_permissions(
            &socket,
            std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
        )
        .map_err(io("chmod", &socket))?;
        std::os::unix::fs::chown(&socket, Some(uid), Some(gid)).map_err(io("chown", &socket))?;
        let stop = Arc::new(AtomicBool::new(false));
        let agent = agent.to_path_buf();
        let acceptor = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("kiln-ssh-proxy".into())
                .spawn(move || accept_loop(&listener, &agent, &stop))
                .map_err(io("spawn a thread for", &socket))?
        };
        Ok(Self {
            dir: Some(dir),
            socket,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The proxy's listening socket (the bind-mount source).
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; the loop sees `stop` and returns.
        let _ = UnixStream::connect(&self.socket);
        // The acceptor has returned before open connections are shut down, so no connection
        // can be added after them.
        let workers = self
            .acceptor
            .take()
            .and_then(|a| a.join().ok())
            .unwrap_or_default();
        for w in &workers {
            for s in &w.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        for w in workers {
            let _ = w.thread.join();
        }
        drop(self.dir.take());
    }
}

/// Connections one proxy serves at a time: each costs kiln two threads, and the step's pids
/// limit does not count kiln's threads. A connection beyond it is closed at once.
pub const MAX_CONNECTIONS: usize = 32;

/// Accepts the step's connections until `stop`; returns the connection threads to join.
fn accept_loop(listener: &UnixListener, agent: &Path, stop: &AtomicBool) -> Vec<Worker> {
    let mut workers = Vec::new();
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(step) = conn else { continue };
        // Finished connections are forgotten (their sockets closed).
        workers.retain(|w: &Worker| !w.thread.is_finished());
        if workers.len() >= MAX_CONNECTIONS {
            continue; // dropped: closed
        }
        // The client's agent missing or refusing: the step's connection is closed.
        let Ok(upstream) = UnixStream::connect(agent) else {
            continue;
        };
        let (Ok(s2), Ok(u2), Ok(s3), Ok(u3)) = (
            step.try_clone(),
            upstream.try_clone(),
            step.try_clone(),
            upstream.try_clone(),
        ) else {
            continue;
        };
        // A thread per connection, copying step → agent; it copies agent → step itself
        // through a second thread it joins.
        let w = std::thread::Builder::new()
            .name("kiln-ssh-conn".into())
            .spawn(move || {
                let back = std::thread::spawn(move || pipe(u2, s2));
                pipe(step, upstream);
                let _ = back.join();
            });
        if let Ok(thread) = w {
            workers.push(Worker {
                thread,
                sockets: [s3, u3],
            });
        }
    }
    workers
}

/// Copies `from` to `to` until either end closes, then shuts both down.
fn pipe(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// A private temporary directory (mode 0700) removed on drop.
mod tempfile_dir {
    use std::os::unix::fs::DirBuilderExt;
    use std::path::{Path, PathBuf};

    use super::SshError;

    pub(super) struct PrivateDir(PathBuf);

    impl PrivateDir {
        /// `$TMPDIR/kiln-ssh-<pid>-<random>`, made with mode 0700 (failing if it exists).
        pub(super) fn new() -> Result<Self, SshError> {
            let mut r = [0u8; 8];
            let _ = rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty());
            let path = std::env::temp_dir().join(format!(
                "kiln-ssh-{}-{}",
                std::process::id(),
                hex::encode(r)
            ));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|source| SshError::Io {
                    op: "create",
                    path: path.clone(),
                    source,
                })?;
            Ok(Self(path))
        }

        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for PrivateDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_relays_both_ways_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent");
        let agent = UnixListener::bind(&agent_path).unwrap();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = agent.accept().unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        });
        let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
        let proxy = SshProxy::start(&agent_path, 0o600, uid.as_raw(), gid.as_raw()).unwrap();
        let sock = proxy.socket().to_path_buf();
        let md = std::fs::metadata(&sock).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
            0o600
        );
        let private = sock.parent().unwrap().to_path_buf();
        let pmd = std::fs::metadata(&private).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&pmd.permissions()) & 0o777,
            0o700
        );
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        echo.join().unwrap();
        // A connection still open when the step ends does not keep the proxy alive.
        let _open = UnixStream::connect(&sock).unwrap();
        drop(proxy);
        assert!(!private.exists(), "the private directory was left");
    }

    #[test]
    fn connections_beyond_the_limit_are_closed_and_the_proxy_still_stops() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent");
        let agent = UnixListener::bind(&agent_path).unwrap();
        // An agent that holds every connection open and never answers.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in agent.incoming() {
                held.push(c);
            }
        });
        let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
        let proxy = SshProxy::start(&agent_path, 0o600, uid.as_raw(), gid.as_raw()).unwrap();
        let mut open = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut c = UnixStream::connect(proxy.socket()).unwrap();
            c.write_all(&[0, 0, 0, 1, 11]).unwrap();
            open.push(c);
        }
        let mut extra = UnixStream::connect(proxy.socket()).unwrap();
        extra
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(
            extra.read(&mut b).unwrap(),
            0,
            "the extra connection was served"
        );
        drop(proxy);
        for mut c in open {
            c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            assert_eq!(c.read(&mut b).unwrap(), 0);
        }
    }

    #[test]
    fn a_missing_required_agent_is_named() {
        let op = Op::Exec(crate::graph::ExecOp {
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: crate::graph::Network::None,
            mounts: vec![crate::graph::ExecMount {
                target: "/run/buildkit/ssh_agent.0".into(),
                kind: ExecMountKind::Ssh {
                    id: "deploy".into(),
                    required: true,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                },
            }],
            security: crate::graph::Security::Sandbox,
        });
        let err = check_required(&op, &SshAgents::new()).unwrap_err();
        assert!(err.to_string().contains("\"deploy\""), "{err}");
        let mut agents = SshAgents::new();
        agents.insert("deploy", "/nonexistent");
        check_required(&op, &agents).unwrap();
    }
}
