//! The gRPC service: every call is made for the tenant the caller's certificate maps to, and
//! sees only that tenant's builds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_engine::builder::{BuildRequest, Engine};
use kiln_engine::output::OutputSpec;
use kiln_engine::progress::Progress;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{Config, Tenant, Tenants};
use crate::context::Mirror;
use crate::proto::kiln_server::Kiln;
use crate::proto::{self, build_client_message::Msg as ClientMsg, build_server_message::Msg};
use crate::records::{Records, RecordsError, StoredBuild};
use crate::tls::Peer;

/// Bytes per output chunk sent back.
const CHUNK: usize = 1 << 20;

/// One build, as `ListBuilds` shows it; kept on disk too ([`Records`]).
#[derive(Debug, Clone)]
struct BuildRecord {
    tenant: String,
    state: &'static str,
    created: u64,
    manifest_digest: String,
    error: String,
    cancel: watch::Sender<bool>,
}

impl BuildRecord {
    fn stored(&self, id: &str) -> StoredBuild {
        StoredBuild {
            id: id.to_owned(),
            tenant: self.tenant.clone(),
            state: self.state.to_owned(),
            created: self.created,
            manifest_digest: self.manifest_digest.clone(),
            error: self.error.clone(),
        }
    }

    /// A record read back at start (its build is over: [`Records::load`] failed the
    /// interrupted ones).
    fn loaded(b: StoredBuild) -> Self {
        let (state, error) = match b.state.as_str() {
            "succeeded" => ("succeeded", b.error),
            "cancelled" => ("cancelled", b.error),
            "failed" => ("failed", b.error),
            other => (
                "failed",
                format!("unknown state {other:?} in the build record"),
            ),
        };
        Self {
            tenant: b.tenant,
            state,
            created: b.created,
            manifest_digest: b.manifest_digest,
            error,
            cancel: watch::channel(false).0,
        }
    }
}

/// The daemon's shared state.
pub struct Daemon {
    engine: Arc<Engine>,
    tenants: Tenants,
    state_dir: PathBuf,
    signer: Option<(Arc<kiln_attest::keys::SigningKey>, String)>,
    builds: Mutex<HashMap<String, BuildRecord>>,
    records: Records,
    slots: HashMap<String, Arc<Semaphore>>,
    mirrors: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    running: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// A daemon over `engine` for `config`'s tenants, with the build records of earlier runs
    /// (builds a crash interrupted are marked failed).
    pub fn new(
        engine: Engine,
        config: &Config,
        tenants: Tenants,
        signer: Option<(kiln_attest::keys::SigningKey, String)>,
    ) -> Result<Self, RecordsError> {
        let records = Records::open(&config.state_dir)?;
        let builds = records
            .load()?
            .into_iter()
            .map(|b| (b.id.clone(), BuildRecord::loaded(b)))
            .collect();
        let slots = tenants
            .all()
            .iter()
            .map(|t| {
                (
                    t.id.as_str().to_owned(),
                    Arc::new(Semaphore::new(t.config.max_concurrent_builds)),
                )
            })
            .collect();
        Ok(Self {
            engine: Arc::new(engine),
            tenants,
            state_dir: config.state_dir.clone(),
            signer: signer.map(|(k, id)| (Arc::new(k), id)),
            builds: Mutex::new(builds),
            records,
            slots,
            mirrors: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// The caller's tenant, or the reason there is none.
    fn tenant<T>(&self, req: &Request<T>) -> Result<(Tenant, String), Status> {
        let peer = req
            .extensions()
            .get::<Peer>()
            .ok_or_else(|| Status::unauthenticated("no verified client certificate"))?;
        let tenant = self.tenants.find(&peer.identity).ok_or_else(|| {
            tracing::warn!(identity = %peer.identity, addr = %peer.addr, "identity maps to no tenant");
            Status::permission_denied(format!(
                "client certificate identity {} maps to no tenant of this daemon",
                peer.identity
            ))
        })?;
        Ok((tenant.clone(), peer.identity.to_string()))
    }

    /// Changes a build's record and saves it (under the lock, so saves keep their order).
    fn set_state(&self, id: &str, f: impl FnOnce(&mut BuildRecord)) {
        if let Ok(mut b) = self.builds.lock()
            && let Some(r) = b.get_mut(id)
        {
            f(r);
            self.persist(id, r);
        }
    }

    /// Saves one record; a failure is logged (the build goes on; after a crash its record
    /// may show an older state).
    fn persist(&self, id: &str, r: &BuildRecord) {
        if let Err(e) = self.records.save(&r.stored(id)) {
            tracing::error!(build = %id, error = %e, "build record not saved");
        }
    }

    /// The store the builds use (for the admin socket's `fsck`).
    pub fn store(&self) -> &kiln_engine::store::Store {
        self.engine.store()
    }

    /// Every tenant's builds, oldest first (for the admin socket).
    pub fn all_builds(&self) -> Vec<StoredBuild> {
        let b = self.builds.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<StoredBuild> = b.iter().map(|(id, r)| r.stored(id)).collect();
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        out
    }

    /// Builds running now, all tenants.
    pub fn running_builds(&self) -> usize {
        let r = self.running.lock().unwrap_or_else(|e| e.into_inner());
        r.values().sum()
    }

    /// The lock of one context copy (held for the sync and the build that reads it).
    fn mirror_lock(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.mirrors.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(dir.to_owned()).or_default().clone()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex_sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn new_build_id() -> String {
    let mut b = [0u8; 12];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    hex::encode(b)
}

type Tx = mpsc::Sender<Result<proto::BuildServerMessage, Status>>;

async fn send(tx: &Tx, msg: Msg) -> Result<(), Status> {
    tx.send(Ok(proto::BuildServerMessage { msg: Some(msg) }))
        .await
        .map_err(|_| Status::cancelled("the client went away"))
}

#[tonic::async_trait]
impl Kiln for Arc<Daemon> {
    async fn info(
        &self,
        req: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::InfoResponse>, Status> {
        let (tenant, identity) = self.tenant(&req)?;
        let f = kiln_sandbox::probe();
        let release = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        Ok(Response::new(proto::InfoResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            tenant: tenant.id.as_str().into(),
            identity,
            kernel: Some(proto::Kernel {
                release,
                landlock_abi: f.landlock_abi,
                cgroup_mode: serde_json::to_value(f.cgroup)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                user_namespaces: f.user_namespaces,
                overlayfs: f.overlay,
            }),
            entitlements: tenant.config.entitlements.clone(),
            max_concurrent_builds: u32::try_from(tenant.config.max_concurrent_builds)
                .unwrap_or(u32::MAX),
        }))
    }

    type BuildStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::BuildServerMessage, Status>>;

    async fn build(
        &self,
        req: Request<Streaming<proto::BuildClientMessage>>,
    ) -> Result<Response<Self::BuildStream>, Status> {
        let (tenant, identity) = self.tenant(&req)?;
        let mut input = req.into_inner();
        let header = match input.next().await {
            Some(Ok(proto::BuildClientMessage {
                msg: Some(ClientMsg::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("a build starts with its header")),
        };
        for e in &header.entitlements {
            if !crate::config::ENTITLEMENTS.contains(&e.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "unknown entitlement {e:?}"
                )));
            }
            if !tenant.allows(e) {
                return Err(Status::permission_denied(format!(
                    "entitlement {e} is not granted to tenant {} (kilnd.toml: entitlements)",
                    tenant.id
                )));
            }
        }
        let (tx, rx) = mpsc::channel(64);
        let id = new_build_id();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        if let Ok(mut b) = self.builds.lock() {
            let r = BuildRecord {
                tenant: tenant.id.as_str().into(),
                state: "syncing",
                created: unix_now(),
                manifest_digest: String::new(),
                error: String::new(),
                cancel: cancel_tx,
            };
            self.persist(&id, &r);
            b.insert(id.clone(), r);
        }
        tracing::info!(build = %id, tenant = %tenant.id, %identity, "build accepted");
        let daemon = Arc::clone(self);
        tokio::spawn(async move {
            let result = daemon
                .run_build(&id, &tenant, header, &mut input, &tx, cancel_rx)
                .await;
            let (state, error) = match &result {
                Ok(()) => ("succeeded", String::new()),
                Err(s) if s.code() == tonic::Code::Cancelled => ("cancelled", s.message().into()),
                Err(s) => ("failed", s.message().into()),
            };
            daemon.set_state(&id, |r| {
                r.state = state;
                r.error = error.clone();
            });
            tracing::info!(build = %id, tenant = %tenant.id, state, error = %error, "build finished");
            if let Err(s) = result {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn cancel(
        &self,
        req: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::CancelResponse>, Status> {
        let (tenant, _) = self.tenant(&req)?;
        let id = &req.get_ref().build_id;
        let b = self
            .builds
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        match b.get(id) {
            // Another tenant's build does not exist, as far as this caller can tell.
            Some(r) if r.tenant == tenant.id.as_str() => {
                let _ = r.cancel.send(true);
                tracing::info!(build = %id, tenant = %tenant.id, "cancel requested");
                Ok(Response::new(proto::CancelResponse {}))
            }
            _ => Err(Status::not_found(format!("no build {id:?}"))),
        }
    }

    async fn list_builds(
        &self,
        req: Request<proto::ListBuildsRequest>,
    ) -> Result<Response<proto::ListBuildsResponse>, Status> {
        let (tenant, _) = self.tenant(&req)?;
        let b = self
            .builds
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let mut builds: Vec<proto::BuildInfo> = b
            .iter()
            .filter(|(_, r)| r.tenant == tenant.id.as_str())
            .map(|(id, r)| proto::BuildInfo {
                build_id: id.clone(),
                state: r.state.into(),
                created: r.created,
                manifest_digest: r.manifest_digest.clone(),
                error: r.error.clone(),
            })
            .collect();
        builds.sort_by(|a, b| (a.created, &a.build_id).cmp(&(b.created, &b.build_id)));
        Ok(Response::new(proto::ListBuildsResponse { builds }))
    }
}

impl Daemon {
    async fn run_build(
        &self,
        id: &str,
        tenant: &Tenant,
        header: proto::BuildHeader,
        input: &mut Streaming<proto::BuildClientMessage>,
        tx: &Tx,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<(), Status> {
        send(
            tx,
            Msg::Accepted(proto::Accepted {
                build_id: id.into(),
                tenant: tenant.id.as_str().into(),
            }),
        )
        .await?;
        if header.context_key.is_empty() || header.context_key.len() > 256 {
            return Err(Status::invalid_argument("context_key: 1 to 256 bytes"));
        }
        let outputs: Vec<OutputSpec> = header
            .outputs
            .iter()
            .map(|o| OutputSpec::parse(o).map_err(|e| Status::invalid_argument(e.to_string())))
            .collect::<Result<_, _>>()?;
        if outputs
            .iter()
            .any(|o| matches!(o, OutputSpec::Registry { .. }))
        {
            return Err(Status::unimplemented(
                "type=registry outputs are not supported through kilnd yet: push from the client",
            ));
        }

        // The context: the tenant's copy for this key, locked for the sync and the build.
        let mirror_dir = self
            .state_dir
            .join("contexts")
            .join(hex_sha256(tenant.id.as_str()))
            .join(hex_sha256(&header.context_key));
        let lock = self.mirror_lock(&mirror_dir);
        let _guard = lock.lock().await;
        let mut mirror = Mirror::open(&mirror_dir).map_err(|e| Status::internal(e.to_string()))?;
        let mut files = Vec::new();
        loop {
            match input.next().await {
                Some(Ok(proto::BuildClientMessage {
                    msg: Some(ClientMsg::Manifest(m)),
                })) => {
                    files.extend(m.files);
                    if files.len() > crate::context::MAX_ENTRIES {
                        return Err(Status::invalid_argument("context: too many entries"));
                    }
                    if m.last {
                        break;
                    }
                }
                Some(Err(e)) => return Err(e),
                _ => return Err(Status::invalid_argument("expected the context manifest")),
            }
        }
        let total: u64 = files.iter().map(|f| f.size).sum();
        let (need, reused) = mirror
            .plan(files)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(build = %id, files = need.len(), reused, total, "context sync");
        send(
            tx,
            Msg::NeedFiles(proto::NeedFiles {
                indexes: need,
                reused_bytes: reused,
            }),
        )
        .await?;
        while !mirror.complete() {
            match input.next().await {
                Some(Ok(proto::BuildClientMessage {
                    msg: Some(ClientMsg::File(c)),
                })) => mirror
                    .write_chunk(c.index, &c.data, c.eof)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
                Some(Err(e)) => return Err(e),
                _ => return Err(Status::invalid_argument("expected context file content")),
            }
        }

        // Secrets the client offered: asked for now, kept in memory for this build only.
        let mut secrets = kiln_engine::ops::secrets::Secrets::new();
        if !header.secret_ids.is_empty() {
            send(
                tx,
                Msg::NeedSecrets(proto::NeedSecrets {
                    ids: header.secret_ids.clone(),
                }),
            )
            .await?;
            for _ in 0..header.secret_ids.len() {
                match input.next().await {
                    Some(Ok(proto::BuildClientMessage {
                        msg: Some(ClientMsg::Secret(s)),
                    })) if header.secret_ids.contains(&s.id) => secrets.insert(s.id, s.value),
                    Some(Err(e)) => return Err(e),
                    _ => return Err(Status::invalid_argument("expected an offered secret")),
                }
            }
        }

        // A per-build directory: the Dockerfile and the outputs before they go back.
        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(self.state_dir.join("builds"))
            .map_err(|e| Status::internal(format!("build directory: {e}")))?;
        let name = Path::new(&header.dockerfile_name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "Dockerfile".into());
        let dockerfile = work.path().join(&name);
        std::fs::write(&dockerfile, &header.dockerfile)
            .map_err(|e| Status::internal(format!("Dockerfile: {e}")))?;
        if let Some(ignore) = &header.dockerfile_ignore {
            std::fs::write(work.path().join(format!("{name}.dockerignore")), ignore)
                .map_err(|e| Status::internal(format!("dockerignore: {e}")))?;
        }
        let out_dir = work.path().join("out");
        std::fs::create_dir(&out_dir).map_err(|e| Status::internal(e.to_string()))?;
        let mut local_outputs = Vec::new();
        let mut daemon_outputs = Vec::new();
        for (i, o) in outputs.iter().enumerate() {
            let dest = out_dir.join(i.to_string());
            let (spec, is_dir) = match o {
                OutputSpec::Oci { .. } => (OutputSpec::Oci { dest: dest.clone() }, false),
                OutputSpec::Docker { .. } => (OutputSpec::Docker { dest: dest.clone() }, false),
                OutputSpec::Tar { .. } => (OutputSpec::Tar { dest: dest.clone() }, false),
                OutputSpec::OciDir { .. } => (OutputSpec::OciDir { dest: dest.clone() }, true),
                OutputSpec::Local { .. } => (OutputSpec::Local { dest: dest.clone() }, true),
                _ => return Err(Status::unimplemented("output type")),
            };
            daemon_outputs.push(spec);
            local_outputs.push((dest, is_dir));
        }

        let mut req = BuildRequest::new(mirror.tree());
        req.dockerfile = Some(dockerfile);
        req.build_args = header.build_args.into_iter().collect();
        req.target = (!header.target.is_empty()).then_some(header.target);
        req.no_cache = header.no_cache;
        req.outputs = daemon_outputs;
        req.allow_host_network = header.entitlements.iter().any(|e| e == "network.host");
        req.allow_insecure = header.entitlements.iter().any(|e| e == "security.insecure");
        req.tenant = tenant.id.clone();
        req.policy = tenant.policy.clone();
        req.step_limits = tenant.limits.clone();
        req.secrets = secrets;
        req.epoch = header.source_date_epoch;
        if header.max_parallelism > 0 {
            req.max_parallelism = req.max_parallelism.min(header.max_parallelism as usize);
        }
        req.compression = match header.compression.as_str() {
            "" | "gzip" => kiln_engine::oci::compress::Compression::Gzip,
            "zstd" => kiln_engine::oci::compress::Compression::Zstd,
            other => {
                return Err(Status::invalid_argument(format!(
                    "compression {other:?} (gzip or zstd)"
                )));
            }
        };
        if let Some((key, builder_id)) = &self.signer {
            req.attest.signer = Some(Arc::clone(key));
            req.attest.builder_id = builder_id.clone();
        }

        // Wait for one of the tenant's build slots.
        let slots = self
            .slots
            .get(tenant.id.as_str())
            .cloned()
            .ok_or_else(|| Status::internal("tenant without build slots"))?;
        self.set_state(id, |r| r.state = "queued");
        let _slot = tokio::select! {
            s = slots.acquire_owned() => s.map_err(|_| Status::unavailable("shutting down"))?,
            _ = cancel.wait_for(|c| *c) => return Err(Status::cancelled("cancelled while queued")),
        };
        self.set_state(id, |r| r.state = "running");
        let running = {
            let mut r = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let n = r.entry(tenant.id.as_str().into()).or_default();
            *n += 1;
            *n
        };
        tracing::info!(build = %id, tenant = %tenant.id, running, limit = tenant.config.max_concurrent_builds, "build started");
        let (progress, mut events) = Progress::channel();
        let forward = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    if let Ok(json) = serde_json::to_string(&e) {
                        let _ = send(&tx, Msg::EventJson(json)).await;
                    }
                }
            })
        };
        let engine = Arc::clone(&self.engine);
        let result = tokio::select! {
            r = engine.build(&req, progress) => Some(r),
            _ = cancel.wait_for(|c| *c) => None,
            _ = tx.closed() => None,
        };
        {
            let mut r = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = r.get_mut(tenant.id.as_str()) {
                *n -= 1;
            }
        }
        tracing::info!(build = %id, tenant = %tenant.id, "build stopped running");
        let _ = forward.await;
        let result = match result {
            None => return Err(Status::cancelled("build cancelled")),
            Some(Err(e)) => return Err(Status::aborted(e.to_string())),
            Some(Ok(r)) => r,
        };
        self.set_state(id, |r| {
            r.manifest_digest = result.manifest_digest.to_string()
        });

        // Outputs back to the client.
        for (i, (path, is_dir)) in local_outputs.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let bytes = if *is_dir {
                tar_dir(path).map_err(|e| Status::internal(format!("output {i}: {e}")))?
            } else {
                std::fs::read(path).map_err(|e| Status::internal(format!("output {i}: {e}")))?
            };
            let mut chunks = bytes.chunks(CHUNK).peekable();
            if chunks.peek().is_none() {
                send(
                    tx,
                    Msg::Output(proto::OutputChunk {
                        index,
                        data: Vec::new(),
                        eof: true,
                    }),
                )
                .await?;
            }
            while let Some(c) = chunks.next() {
                send(
                    tx,
                    Msg::Output(proto::OutputChunk {
                        index,
                        data: c.to_vec(),
                        eof: chunks.peek().is_none(),
                    }),
                )
                .await?;
            }
        }
        send(
            tx,
            Msg::Result(proto::BuildResult {
                manifest_digest: result.manifest_digest.to_string(),
                config_digest: result.config_digest.to_string(),
                executed: u32::try_from(result.executed).unwrap_or(u32::MAX),
                cached: u32::try_from(result.cached).unwrap_or(u32::MAX),
                index_digest: result.index_digest.map(|d| d.to_string()),
                warnings: result.warnings.clone(),
                unused_build_args: result.unused_build_args.clone(),
                policy_decisions: result
                    .policy_decisions
                    .iter()
                    .map(|d| d.to_json().to_string())
                    .collect(),
                attestations: result
                    .attestations
                    .iter()
                    .map(|(t, s)| proto::Attestation {
                        predicate_type: t.clone(),
                        signed: *s,
                    })
                    .collect(),
            }),
        )
        .await
    }
}

/// A directory output as a tar stream (the client unpacks it where it asked).
fn tar_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)?;
    b.into_inner()
}
