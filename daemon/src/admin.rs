//! The local admin socket: `kiln admin health|fsck|builds` for the operator of this host.
//!
//! A unix-domain socket (`admin_socket` in kilnd.toml, default `state_dir/admin.sock`), mode
//! 0600. The mode is one fence; the other is the peer's credentials (`SO_PEERCRED`, set by
//! the kernel at `connect`, not claimed by the client): only uid 0 and the user kilnd runs
//! as are served, anyone else gets a refusal and nothing more. Tenants never reach this
//! socket; it is not the gRPC service and sees every tenant's builds.
//!
//! Protocol: the client writes one JSON request line (`{"command":"health"}`), the daemon
//! answers with one JSON line and closes. Every answer has `ok`; a refusal or failure has
//! `error`. Commands:
//! - `health`: `version`, `uptime_secs`, `running_builds`, `builds_in_progress`;
//! - `fsck`: the store's integrity check (`kiln_engine::store::fsck`), run here because kilnd
//!   holds the store's lock: `clean`, counts, `problems`, `reclaimable`;
//! - `builds`: every tenant's build records.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::server::Daemon;

/// The longest request line read.
const MAX_REQUEST: u64 = 4096;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Reclaimable entries listed in an `fsck` answer at most (the count is always whole).
const MAX_LISTED: usize = 200;

/// Why the admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A file system or socket operation failed.
    #[error("admin socket {path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Something other than a socket is where the socket goes.
    #[error("admin socket {0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRequest {
    /// `health`, `fsck` or `builds`.
    pub command: String,
}

/// Binds the socket at `path` (replacing a stale socket a crash left), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let err = |op| {
        move |source| AdminError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err("create parent"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(err("remove stale socket"))?
        }
        Ok(_) => return Err(AdminError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("stat")(e)),
    }
    let listener = UnixListener::bind(path).map_err(err("bind"))?;
    // Between bind and chmod the socket has the umask's mode; the peer check below refuses
    // anyone who connects in that window.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err("chmod"))?;
    Ok(listener)
}

/// Serves the socket until the task is dropped.
pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>, started: Instant) {
    let me = rustix::process::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let daemon = Arc::clone(&daemon);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &daemon, started, me).await {
                tracing::warn!(error = %e, "admin socket: connection failed");
            }
        });
    }
}

/// Whether a peer uid may use the socket.
fn allowed(uid: u32, daemon_uid: u32) -> bool {
    uid == 0 || uid == daemon_uid
}

async fn handle(
    stream: UnixStream,
    daemon: &Arc<Daemon>,
    started: Instant,
    me: u32,
) -> std::io::Result<()> {
    let cred = rustix::net::sockopt::socket_peercred(&stream).map_err(std::io::Error::from)?;
    let uid = cred.uid.as_raw();
    let (read, mut write) = stream.into_split();
    // The request line is read (bounded, with a deadline) even from a peer about to be
    // refused: closing with it unread would make the client's write fail (EPIPE, or a reset
    // that discards the answer) instead of showing it why.
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let answer = if !allowed(uid, me) {
        tracing::warn!(
            uid,
            pid = cred.pid.as_raw_nonzero().get(),
            "admin socket: peer refused"
        );
        refusal(format!(
            "uid {uid} may not use kilnd's admin socket (only root and uid {me})"
        ))
    } else {
        match read {
            Err(_) => refusal("no request line within 10 s".into()),
            Ok(Err(e)) => refusal(format!("reading the request: {e}")),
            Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(line.trim_end()) {
                Ok(req) => {
                    tracing::info!(uid, command = %req.command, "admin request");
                    answer(&req.command, daemon, started).await
                }
                Err(e) => refusal(format!(
                    "the request must be one JSON line like {{\"command\":\"health\"}}: {e}"
                )),
            },
        }
    };
    let mut bytes = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

fn refusal(error: String) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": error })
}

async fn answer(command: &str, daemon: &Arc<Daemon>, started: Instant) -> serde_json::Value {
    match command {
        "health" => {
            let in_progress = daemon
                .all_builds()
                .iter()
                .filter(|b| matches!(b.state.as_str(), "syncing" | "queued" | "running"))
                .count();
            serde_json::json!({
                "ok": true,
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_secs": started.elapsed().as_secs(),
                "running_builds": daemon.running_builds(),
                "builds_in_progress": in_progress,
            })
        }
        "builds" => serde_json::json!({ "ok": true, "builds": daemon.all_builds() }),
        "gc" => match daemon.gc().await {
            Ok(p) => serde_json::json!({
                "ok": true,
                "cache_records": p.cache_records,
                "layers": p.snapshots,
                "blobs": p.blobs,
                "bytes": p.bytes,
            }),
            Err(e) => refusal(format!("gc: {e}")),
        },
        "fsck" => {
            let d = Arc::clone(daemon);
            let t = Instant::now();
            let _no_gc = daemon.hold_off_gc().await;
            match tokio::task::spawn_blocking(move || kiln_engine::store::fsck::fsck(d.store()))
                .await
            {
                Ok(Ok(r)) => {
                    tracing::info!(
                        clean = r.is_clean(),
                        problems = r.problems.len(),
                        reclaimable = r.reclaimable.len(),
                        blobs = r.blobs,
                        "fsck done"
                    );
                    serde_json::json!({
                        "ok": true,
                        "clean": r.is_clean(),
                        "blobs": r.blobs,
                        "blob_bytes": r.blob_bytes,
                        "snapshots": r.snapshots,
                        "records": r.records,
                        "millis": u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "problems": r.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "reclaimable_count": r.reclaimable.len(),
                        "reclaimable": r.reclaimable.iter().take(MAX_LISTED).map(ToString::to_string).collect::<Vec<_>>(),
                    })
                }
                Ok(Err(e)) => refusal(format!("fsck: {e}")),
                Err(e) => refusal(format!("fsck: {e}")),
            }
        }
        other => refusal(format!(
            "unknown command {other:?} (health, fsck, builds, gc)"
        )),
    }
}

/// The client's side: sends `command`, returns the answer (a JSON object).
pub fn request(socket: &Path, command: &str) -> Result<serde_json::Value, String> {
    use std::io::{BufRead as _, Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to kilnd's admin socket {}: {e} (is kilnd running? `admin_socket` in kilnd.toml names it; root or kilnd's user only)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(&AdminRequest {
        command: command.into(),
    })
    .map_err(|e| e.to_string())?;
    line.push(b'\n');
    // A daemon that refuses this peer answers anyway; read that answer even if the write
    // failed.
    let wrote = s.write_all(&line);
    let mut answer = String::new();
    let read = std::io::BufReader::new(s.take(64 << 20)).read_line(&mut answer);
    if answer.is_empty() {
        let e = wrote.err().or(read.err()).map_or_else(
            || "kilnd closed the connection without an answer".to_owned(),
            |e| e.to_string(),
        );
        return Err(format!("admin socket {}: {e}", socket.display()));
    }
    serde_json::from_str(&answer).map_err(|e| {
        format!(
            "admin socket {}: not an answer ({e}): {:?}",
            socket.display(),
            answer.chars().take(200).collect::<String>()
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_root_and_the_daemons_user_are_allowed() {
        assert!(allowed(0, 1000));
        assert!(allowed(1000, 1000));
        assert!(!allowed(1001, 1000));
        assert!(allowed(0, 0));
        assert!(!allowed(65534, 0));
    }

    #[test]
    fn the_socket_is_owner_only_and_a_stale_one_is_replaced() {
        use std::os::unix::fs::PermissionsExt as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/admin.sock");
        rt.block_on(async {
            let l = bind(&path).unwrap();
            drop(l);
            // The socket file outlives its listener, as after a crash: bound again.
            let _l = bind(&path).unwrap();
        });
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A regular file there is not replaced.
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        rt.block_on(async {
            assert!(matches!(bind(&file), Err(AdminError::NotASocket(_))));
        });
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
