//! ssh-agent connections relayed over a build's stream: the daemon listens on one unix
//! socket per `--ssh` id (the engine mounts it into `RUN --mount=type=ssh` steps, through its
//! own per-step proxy); each connection a step opens becomes a numbered connection on the
//! stream, which the client joins to its own agent. Keys never leave the client's agent; the
//! daemon sees only the agent protocol's bytes, and keeps none of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use crate::proto::{self, build_server_message::Msg};

/// Bytes from the client, by connection.
type Conns = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Option<Vec<u8>>>>>>;

/// The relay of one build.
#[derive(Debug, Clone, Default)]
pub struct Relay {
    conns: Conns,
    next: Arc<AtomicU32>,
}

impl Relay {
    /// Listens for `id` at `dir/ssh-N.sock` (mode 0600); returns the socket path for the
    /// engine. Connections are relayed until the listener task is dropped with the build.
    pub fn listen(
        &self,
        dir: &Path,
        n: usize,
        id: &str,
        tx: mpsc::Sender<Result<proto::BuildServerMessage, tonic::Status>>,
    ) -> std::io::Result<(PathBuf, tokio::task::JoinHandle<()>)> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(format!("ssh-{n}.sock"));
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let relay = self.clone();
        let id = id.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = relay.next.fetch_add(1, Ordering::Relaxed);
                let (to_step_tx, mut to_step) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
                if let Ok(mut c) = relay.conns.lock() {
                    c.insert(conn, to_step_tx);
                }
                let conn_id = id.clone();
                let send =
                    move |data: Vec<u8>, open: bool, close: bool| proto::BuildServerMessage {
                        msg: Some(Msg::Ssh(proto::SshData {
                            id: conn_id.clone(),
                            conn,
                            data,
                            open,
                            close,
                        })),
                    };
                if tx.send(Ok(send(Vec::new(), true, false))).await.is_err() {
                    return;
                }
                let (mut rd, mut wr) = stream.into_split();
                let tx2 = tx.clone();
                let up = send.clone();
                // Step → client.
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = tx2.send(Ok(up(Vec::new(), false, true))).await;
                                return;
                            }
                            Ok(n) => {
                                if tx2
                                    .send(Ok(up(buf[..n].to_vec(), false, false)))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                });
                // Client → step.
                tokio::spawn(async move {
                    while let Some(Some(data)) = to_step.recv().await {
                        if wr.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    let _ = wr.shutdown().await;
                });
            }
        });
        Ok((path, task))
    }

    /// Data (or a close) the client sent for a connection.
    pub fn from_client(&self, d: proto::SshData) {
        let Ok(mut conns) = self.conns.lock() else {
            return;
        };
        if d.close {
            if let Some(c) = conns.remove(&d.conn) {
                let _ = c.send(None);
            }
        } else if let Some(c) = conns.get(&d.conn) {
            let _ = c.send(Some(d.data));
        }
    }
}
