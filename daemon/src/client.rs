//! The client side of kilnd's API: a mutual-TLS channel, and a build driven over it (context
//! sync, secrets on request, progress, outputs written where the user asked).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use kiln_engine::output::OutputSpec;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::kiln_client::KilnClient;
use crate::proto::{self, build_client_message::Msg as ClientMsg, build_server_message::Msg};

/// Where the daemon is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `https://HOST:PORT`.
    pub addr: String,
    /// CA certificates the daemon's certificate must chain to (PEM).
    pub ca: PathBuf,
    /// The client certificate and key (PEM); `None` connects without one (and is refused).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A client-side failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad flags or files.
    #[error("{0}")]
    Usage(String),
    /// The daemon could not be reached or refused the connection.
    #[error("{0}")]
    Connect(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Status(String),
    /// Local I/O.
    #[error("{0}")]
    Io(String),
}

/// The whole chain of an error, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(e) = src {
        let t = e.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = e.source();
    }
    s
}

/// What a TLS refusal means for the user.
fn explain(detail: &str) -> Option<&'static str> {
    let d = detail.to_ascii_lowercase();
    if d.contains("certificaterequired") {
        Some("the daemon requires a client certificate: pass --tls-cert and --tls-key")
    } else if d.contains("certificateexpired") {
        Some("the daemon refused the client certificate: it has expired (or is not yet valid)")
    } else if d.contains("unknownca") || d.contains("badcertificate") || d.contains("decrypterror")
    {
        Some(
            "the daemon refused the client certificate: it does not chain to a CA the daemon \
             trusts",
        )
    } else if d.contains("protocolversion") {
        Some("the daemon speaks TLS 1.3 only")
    } else if d.contains("invalid peer certificate") || d.contains("unknownissuer") {
        Some("the daemon's certificate does not chain to --tls-ca (or names another host)")
    } else if d.contains("connection refused") {
        Some("nothing listens there: is kilnd running, and is --addr right?")
    } else {
        None
    }
}

fn connect_error(what: &str, e: &dyn std::error::Error) -> ClientError {
    let detail = chain(e);
    match explain(&detail) {
        Some(hint) => ClientError::Connect(format!("{what}: {hint} ({detail})")),
        None => ClientError::Connect(format!("{what}: {detail}")),
    }
}

/// The I/O errors connections of this process saw (a TLS alert the daemon sent after the
/// handshake, say), which HTTP/2 reports only as "connection closed".
static CONNECTION_ERRORS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The most telling connection error: a TLS alert if one was seen, else the first.
fn connection_error() -> Option<String> {
    let errors = CONNECTION_ERRORS.lock().ok()?;
    errors
        .iter()
        .find(|e| e.contains("alert"))
        .or(errors.first())
        .cloned()
}

/// A TLS stream that records its read and write errors in [`CONNECTION_ERRORS`]. After a
/// failed write (the daemon closed the connection) it polls one read, which yields the alert
/// the daemon sent before closing, if any.
struct Recording<T>(T);

fn record<R>(r: std::io::Result<R>) -> std::io::Result<R> {
    if let Err(e) = &r
        && let Ok(mut errors) = CONNECTION_ERRORS.lock()
        && errors.len() < 16
    {
        errors.push(e.to_string());
    }
    r
}

impl<T: tokio::io::AsyncRead + Unpin> Recording<T> {
    fn harvest_alert(&mut self, cx: &mut std::task::Context<'_>) {
        let mut buf = [0u8; 512];
        let mut rb = tokio::io::ReadBuf::new(&mut buf);
        if let std::task::Poll::Ready(r) = std::pin::Pin::new(&mut self.0).poll_read(cx, &mut rb) {
            let _ = record(r);
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Recording<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0)
            .poll_read(cx, buf)
            .map(record)
    }
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for Recording<T>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.0).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Err(_))) {
            self.harvest_alert(cx);
        }
        r.map(record)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.0).poll_flush(cx);
        if matches!(r, std::task::Poll::Ready(Err(_))) {
            self.harvest_alert(cx);
        }
        r.map(record)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A gRPC status as a user-facing error (TLS refusals explained).
pub fn status_error(s: &tonic::Status) -> ClientError {
    let mut detail = s.message().to_string();
    if let Some(src) = std::error::Error::source(s) {
        detail = format!("{detail}: {}", chain(src));
    }
    if s.code() != tonic::Code::PermissionDenied
        && let Some(io) = connection_error()
    {
        detail = format!("{detail}: {io}");
    }
    match (s.code(), explain(&detail)) {
        (_, Some(hint)) => ClientError::Connect(format!("kilnd: {hint} ({detail})")),
        (tonic::Code::PermissionDenied, None) => {
            ClientError::Status(format!("kilnd refused: {detail}"))
        }
        (code, None) => ClientError::Status(format!("kilnd: {detail} ({code:?})")),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))
}

/// Connects to the daemon: TLS (1.3 or 1.2 offered; kilnd accepts 1.3 only) with the client
/// certificate, HTTP/2.
pub async fn connect(remote: &Remote) -> Result<KilnClient<Channel>, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&remote.ca)? {
        roots
            .add(c)
            .map_err(|e| ClientError::Usage(format!("--tls-ca {}: {e}", remote.ca.display())))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Usage(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &remote.identity {
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ClientError::Usage(format!("--tls-key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Usage(format!("--tls-cert: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let uri: Uri = remote
        .addr
        .parse()
        .map_err(|e| ClientError::Usage(format!("--addr {:?}: {e}", remote.addr)))?;
    if uri.scheme_str() != Some("https") {
        return Err(ClientError::Usage(format!(
            "--addr {:?}: use https://HOST:PORT (kilnd speaks TLS only)",
            remote.addr
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| ClientError::Usage(format!("--addr {:?}: no host", remote.addr)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(7443);
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| ClientError::Usage(format!("--addr host {host:?}: {e}")))?;
    let endpoint = Endpoint::from_shared(format!("http://{}:{port}", uri.host().unwrap_or("")))
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let host = host.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(Recording(tls)))
            }
        }))
        .await
        .map_err(|e| {
            let mut err = connect_error(&format!("connecting to {}", remote.addr), &e);
            if let (ClientError::Connect(m), Some(io)) = (&mut err, connection_error()) {
                m.push_str(&format!(": {io}"));
            }
            err
        })?;
    Ok(KilnClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// A build to run remotely.
#[derive(Debug, Clone, Default)]
pub struct BuildSpec {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile (default `CONTEXT/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    /// Everything else, as sent (context key, Dockerfile and manifest are filled in here).
    pub header: proto::BuildHeader,
    /// Secret values by id, sent when the daemon asks.
    pub secrets: Vec<(String, Vec<u8>)>,
    /// `--build-context NAME=DIR` directories.
    pub named: Vec<(String, PathBuf)>,
    /// `--ssh ID=SOCKET`: agents the build's ssh mounts reach, relayed over the stream.
    pub ssh: Vec<(String, PathBuf)>,
}

/// What the transfer cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransferStats {
    /// Files in the context (after `.dockerignore`).
    pub files: usize,
    /// Bytes of file content in the context.
    pub context_bytes: u64,
    /// Files sent.
    pub files_sent: usize,
    /// Bytes of file content sent.
    pub bytes_sent: u64,
    /// Bytes the daemon already held unchanged.
    pub reused_bytes: u64,
    /// Bytes of outputs received.
    pub output_bytes: u64,
}

/// The context's name on the daemon: sha256 of this host's name and the context's absolute
/// path.
fn context_key(context: &Path) -> String {
    let abs = std::fs::canonicalize(context).unwrap_or_else(|_| context.to_owned());
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    hex::encode(Sha256::digest(
        format!("{host}\0{}", abs.display()).as_bytes(),
    ))
}

/// Runs a build on the daemon. `on_event` gets each progress event (JSON, as `kiln build
/// --progress json` prints it).
pub async fn build(
    client: &mut KilnClient<Channel>,
    spec: BuildSpec,
    mut on_event: impl FnMut(&str),
) -> Result<(proto::BuildResult, TransferStats), ClientError> {
    let dockerfile = spec
        .dockerfile
        .clone()
        .unwrap_or_else(|| spec.context.join("Dockerfile"));
    let mut header = spec.header.clone();
    header.dockerfile = std::fs::read(&dockerfile)
        .map_err(|e| ClientError::Usage(format!("{}: {e}", dockerfile.display())))?;
    header.dockerfile_name = dockerfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".into());
    let mut ignore_file = dockerfile.as_os_str().to_owned();
    ignore_file.push(".dockerignore");
    header.dockerfile_ignore = std::fs::read(&ignore_file).ok();
    header.context_key = context_key(&spec.context);
    header.secret_ids = spec.secrets.iter().map(|(id, _)| id.clone()).collect();
    header.ssh_ids = spec.ssh.iter().map(|(id, _)| id.clone()).collect();
    let outputs: Vec<OutputSpec> = header
        .outputs
        .iter()
        .map(|o| OutputSpec::parse(o).map_err(|e| ClientError::Usage(e.to_string())))
        .collect::<Result<_, _>>()?;

    let ignore = kiln_engine::builder::load_dockerignore(&spec.context, &dockerfile)
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    // Every context's entries: the main one (after .dockerignore) first, then the named
    // directories in name order (sent whole), as the daemon reads them.
    let mut named = spec.named.clone();
    named.sort();
    for (name, dir) in &named {
        if !dir.is_dir() {
            return Err(ClientError::Usage(format!(
                "--build-context {name}={}: not a directory (only directories travel to kilnd)",
                dir.display()
            )));
        }
        header.named_contexts.insert(name.clone(), context_key(dir));
    }
    let mut contexts: Vec<(
        String,
        PathBuf,
        kiln_engine::frontend::dockerignore::DockerIgnore,
    )> = vec![(String::new(), spec.context.clone(), ignore)];
    for (name, dir) in named {
        let none = kiln_engine::frontend::dockerignore::DockerIgnore::parse("")
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        contexts.push((name, dir, none));
    }
    let scanned = tokio::task::spawn_blocking(move || {
        contexts
            .into_iter()
            .map(|(name, dir, ignore)| {
                crate::context::scan(&dir, &ignore)
                    .map(|entries| (name, entries))
                    .map_err(|e| ClientError::Io(format!("reading {}: {e}", dir.display())))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ClientError::Io(e.to_string()))??;
    let mut stats = TransferStats {
        files: scanned.iter().map(|(_, e)| e.len()).sum(),
        context_bytes: scanned
            .iter()
            .flat_map(|(_, e)| e.iter().map(|(m, _)| m.size))
            .sum(),
        ..Default::default()
    };

    let (tx, rx) = mpsc::channel::<proto::BuildClientMessage>(16);
    let out = |msg: ClientMsg| proto::BuildClientMessage { msg: Some(msg) };
    tx.send(out(ClientMsg::Header(header)))
        .await
        .map_err(|_| ClientError::Io("request stream closed".into()))?;
    let mut manifests: Vec<(String, Vec<proto::FileMeta>)> = Vec::new();
    let mut paths: std::collections::HashMap<String, Vec<PathBuf>> = Default::default();
    for (name, entries) in scanned {
        manifests.push((
            name.clone(),
            entries.iter().map(|(m, _)| m.clone()).collect(),
        ));
        paths.insert(name, entries.into_iter().map(|(_, p)| p).collect());
    }
    let mut response = client
        .build(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    // The manifests, in messages of at most 4096 entries.
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            for (context, metas) in manifests {
                let mut chunks = metas.chunks(4096).peekable();
                if chunks.peek().is_none() {
                    let _ = tx
                        .send(out(ClientMsg::Manifest(proto::ContextManifest {
                            files: Vec::new(),
                            last: true,
                            context: context.clone(),
                        })))
                        .await;
                }
                while let Some(c) = chunks.next() {
                    let last = chunks.peek().is_none();
                    if tx
                        .send(out(ClientMsg::Manifest(proto::ContextManifest {
                            files: c.to_vec(),
                            last,
                            context: context.clone(),
                        })))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
    }

    let mut agents: std::collections::HashMap<u32, tokio::net::unix::OwnedWriteHalf> =
        Default::default();
    let mut files: Vec<Option<std::fs::File>> = (0..outputs.len()).map(|_| None).collect();
    // Directory outputs arrive as a tar, spooled to a temporary file and then unpacked.
    let mut dir_tars: Vec<Option<tempfile::NamedTempFile>> =
        (0..outputs.len()).map(|_| None).collect();
    // An upload that failed because kilnd stopped reading: kilnd's own reason (a result or a
    // status) usually follows on the response stream, and says more than "closed".
    let mut upload_failed: Option<ClientError> = None;
    loop {
        let msg = match response.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(upload_failed.unwrap_or_else(|| {
                    ClientError::Status("kilnd closed the build stream without a result".into())
                }));
            }
            Err(s) => return Err(status_error(&s)),
        };
        match msg.msg {
            Some(Msg::Accepted(a)) => {
                on_event(
                    &serde_json::json!({"event": "accepted", "build_id": a.build_id, "tenant": a.tenant})
                        .to_string(),
                );
            }
            Some(Msg::NeedFiles(need)) => {
                stats.reused_bytes += need.reused_bytes;
                stats.files_sent += need.indexes.len();
                let tx = tx.clone();
                let Some(context_paths) = paths.get(&need.context) else {
                    return Err(ClientError::Status(format!(
                        "kilnd asked for files of unknown context {:?}",
                        need.context
                    )));
                };
                let wanted: Vec<(u32, PathBuf, u64)> = need
                    .indexes
                    .iter()
                    .map(|&i| {
                        context_paths
                            .get(i as usize)
                            .map(|p| (i, p.clone(), 0))
                            .ok_or_else(|| {
                                ClientError::Status(format!("kilnd asked for unknown file {i}"))
                            })
                    })
                    .collect::<Result<_, _>>()?;
                // Sent from a blocking thread: reading files must not stall the stream.
                let sent = match tokio::task::spawn_blocking(move || send_files(&tx, wanted))
                    .await
                    .map_err(|e| ClientError::Io(e.to_string()))?
                {
                    Ok(sent) => sent,
                    Err(SendFailure::Closed) => {
                        upload_failed = Some(ClientError::Io(
                            "kilnd closed the build stream during the context upload".into(),
                        ));
                        continue;
                    }
                    Err(SendFailure::Local(e)) => return Err(e),
                };
                stats.bytes_sent += sent;
                on_event(
                    &serde_json::json!({
                        "event": "context",
                        "files": stats.files,
                        "bytes": stats.context_bytes,
                        "files_sent": stats.files_sent,
                        "bytes_sent": stats.bytes_sent,
                        "reused_bytes": stats.reused_bytes,
                    })
                    .to_string(),
                );
            }
            Some(Msg::NeedSecrets(need)) => {
                for id in need.ids {
                    let value = spec
                        .secrets
                        .iter()
                        .find(|(i, _)| *i == id)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| {
                            ClientError::Status(format!("kilnd asked for unknown secret {id:?}"))
                        })?;
                    tx.send(out(ClientMsg::Secret(proto::SecretValue { id, value })))
                        .await
                        .map_err(|_| ClientError::Io("request stream closed".into()))?;
                }
            }
            Some(Msg::EventJson(e)) => on_event(&e),
            Some(Msg::Output(chunk)) => {
                let i = chunk.index as usize;
                let Some(spec) = outputs.get(i) else {
                    return Err(ClientError::Status(format!(
                        "kilnd sent unknown output {i}"
                    )));
                };
                stats.output_bytes += chunk.data.len() as u64;
                match spec {
                    OutputSpec::Local { dest } | OutputSpec::OciDir { dest } => {
                        let io = |e: std::io::Error| {
                            ClientError::Io(format!("output {}: {e}", dest.display()))
                        };
                        if dir_tars[i].is_none() {
                            dir_tars[i] = Some(tempfile::NamedTempFile::new().map_err(io)?);
                        }
                        if let Some(t) = dir_tars[i].as_mut() {
                            t.write_all(&chunk.data).map_err(io)?;
                        }
                        if chunk.eof
                            && let Some(t) = dir_tars[i].take()
                        {
                            let f = t.reopen().map_err(io)?;
                            unpack(f, dest)?;
                        }
                    }
                    OutputSpec::Oci { dest }
                    | OutputSpec::Docker { dest }
                    | OutputSpec::Tar { dest } => {
                        if files[i].is_none() {
                            files[i] = Some(std::fs::File::create(dest).map_err(|e| {
                                ClientError::Io(format!("output {}: {e}", dest.display()))
                            })?);
                        }
                        if let Some(f) = files[i].as_mut() {
                            f.write_all(&chunk.data).map_err(|e| {
                                ClientError::Io(format!("output {}: {e}", dest.display()))
                            })?;
                            if chunk.eof {
                                f.sync_all().map_err(|e| ClientError::Io(e.to_string()))?;
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some(Msg::Ssh(d)) => {
                let reply = |data: Vec<u8>, close: bool| proto::BuildClientMessage {
                    msg: Some(ClientMsg::Ssh(proto::SshData {
                        id: d.id.clone(),
                        conn: d.conn,
                        data,
                        open: false,
                        close,
                    })),
                };
                if d.open {
                    let Some((_, socket)) = spec.ssh.iter().find(|(id, _)| *id == d.id) else {
                        let _ = tx.send(reply(Vec::new(), true)).await;
                        continue;
                    };
                    match tokio::net::UnixStream::connect(socket).await {
                        Ok(stream) => {
                            let (mut rd, wr) = stream.into_split();
                            agents.insert(d.conn, wr);
                            let tx = tx.clone();
                            let (id, conn) = (d.id.clone(), d.conn);
                            tokio::spawn(async move {
                                use tokio::io::AsyncReadExt as _;
                                let mut buf = vec![0u8; 16 * 1024];
                                loop {
                                    let (data, close) = match rd.read(&mut buf).await {
                                        Ok(0) | Err(_) => (Vec::new(), true),
                                        Ok(n) => (buf[..n].to_vec(), false),
                                    };
                                    let m = proto::BuildClientMessage {
                                        msg: Some(ClientMsg::Ssh(proto::SshData {
                                            id: id.clone(),
                                            conn,
                                            data,
                                            open: false,
                                            close,
                                        })),
                                    };
                                    if tx.send(m).await.is_err() || close {
                                        return;
                                    }
                                }
                            });
                        }
                        Err(_) => {
                            let _ = tx.send(reply(Vec::new(), true)).await;
                        }
                    }
                } else if d.close {
                    if let Some(mut w) = agents.remove(&d.conn) {
                        use tokio::io::AsyncWriteExt as _;
                        let _ = w.shutdown().await;
                    }
                } else if let Some(w) = agents.get_mut(&d.conn) {
                    use tokio::io::AsyncWriteExt as _;
                    if w.write_all(&d.data).await.is_err() {
                        agents.remove(&d.conn);
                        let _ = tx.send(reply(Vec::new(), true)).await;
                    }
                }
            }
            Some(Msg::Result(r)) => return Ok((r, stats)),
            None => {}
        }
    }
}

/// Why [`send_files`] stopped.
enum SendFailure {
    /// kilnd stopped reading the request stream (its reason follows on the response stream).
    Closed,
    /// A file could not be read here.
    Local(ClientError),
}

/// Sends the asked-for files, in order, in 1 MiB chunks; returns the bytes sent.
fn send_files(
    tx: &mpsc::Sender<proto::BuildClientMessage>,
    files: Vec<(u32, PathBuf, u64)>,
) -> Result<u64, SendFailure> {
    let mut sent = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for (index, path, _) in files {
        let local = |e: std::io::Error| {
            SendFailure::Local(ClientError::Io(format!("{}: {e}", path.display())))
        };
        let mut f = std::fs::File::open(&path).map_err(local)?;
        loop {
            let n = f.read(&mut buf).map_err(local)?;
            // One read past the end tells eof; a file that grew is caught by the daemon.
            let eof = n == 0;
            sent += n as u64;
            let msg = proto::BuildClientMessage {
                msg: Some(ClientMsg::File(proto::FileChunk {
                    index,
                    data: buf[..n].to_vec(),
                    eof,
                })),
            };
            if tx.blocking_send(msg).is_err() {
                return Err(SendFailure::Closed);
            }
            if eof {
                break;
            }
        }
    }
    Ok(sent)
}

/// Unpacks a directory output's tar into `dest` (created), refusing entries that would land
/// outside it.
fn unpack(tar: std::fs::File, dest: &Path) -> Result<(), ClientError> {
    std::fs::create_dir_all(dest)
        .map_err(|e| ClientError::Io(format!("output {}: {e}", dest.display())))?;
    let mut a = tar::Archive::new(std::io::BufReader::new(tar));
    a.set_preserve_permissions(true);
    a.set_overwrite(true);
    a.unpack(dest)
        .map_err(|e| ClientError::Io(format!("output {}: {e}", dest.display())))
}
