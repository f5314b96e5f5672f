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
    mirrors: Mutex<HashMap<PathBuf, Arc<tokio::sync::RwLock<()>>>>,
    running: Mutex<HashMap<String, usize>>,
    /// Builds hold it shared while the engine runs; garbage collection exclusively (a running
    /// build's new layers are reachable from no record yet).
    gc_lock: tokio::sync::RwLock<()>,
    gc_interval: Option<std::time::Duration>,
    gc_policy: kiln_engine::gc::GcPolicy,
    history: crate::records::Retention,
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
        let daemon = Self {
            engine: Arc::new(engine),
            tenants,
            state_dir: config.state_dir.clone(),
            signer: signer.map(|(k, id)| (Arc::new(k), id)),
            builds: Mutex::new(builds),
            records,
            slots,
            mirrors: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            gc_lock: tokio::sync::RwLock::new(()),
            // Checked when the configuration was loaded.
            gc_interval: config.gc.policy().map(|p| p.0).unwrap_or_default(),
            gc_policy: config.gc.policy().map(|p| p.1).unwrap_or_default(),
            history: config.history.retention().unwrap_or_default(),
        };
        daemon.prune_history();
        Ok(daemon)
    }

    /// Collects the build cache by the configured policy, once no build runs (builds
    /// waiting meanwhile). Logged.
    pub async fn gc(self: &Arc<Self>) -> Result<kiln_engine::gc::Pruned, String> {
        let _exclusive = self.gc_lock.write().await;
        let daemon = Arc::clone(self);
        let started = std::time::Instant::now();
        let p = tokio::task::spawn_blocking(move || {
            kiln_engine::gc::collect(
                daemon.engine.store(),
                &daemon.gc_policy,
                kiln_engine::store::meta::unix_now(),
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        tracing::info!(
            cache_records = p.cache_records,
            layers = p.snapshots,
            blobs = p.blobs,
            bytes = p.bytes,
            ms = started.elapsed().as_millis() as u64,
            "gc: collected"
        );
        Ok(p)
    }

    /// Cancels every build (all tenants); returns how many were asked to stop.
    pub fn cancel_all(&self) -> usize {
        let b = self.builds.lock().unwrap_or_else(|e| e.into_inner());
        b.values()
            .filter(|r| matches!(r.state, "syncing" | "queued" | "running"))
            .map(|r| r.cancel.send(true))
            .filter(Result::is_ok)
            .count()
    }

    /// A graceful shutdown began (no new connections): cancel the builds now, or after the
    /// grace period if they have not finished.
    pub fn begin_shutdown(
        self: &Arc<Self>,
        on: crate::config::OnShutdown,
        grace: std::time::Duration,
    ) {
        let daemon = Arc::clone(self);
        tokio::spawn(async move {
            if on == crate::config::OnShutdown::Finish {
                tokio::time::sleep(grace).await;
            }
            let n = daemon.cancel_all();
            tracing::info!(cancelled = n, "shutdown: running builds cancelled");
        });
    }

    /// Held shared, keeps garbage collection out (an `fsck` meanwhile sees no half-done
    /// collection).
    pub async fn hold_off_gc(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gc_lock.read().await
    }

    /// Runs [`Self::gc`] every configured interval (nothing without one).
    pub fn spawn_gc(self: &Arc<Self>) {
        let Some(every) = self.gc_interval else {
            return;
        };
        let daemon = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = daemon.gc().await {
                    tracing::warn!(error = %e, "gc failed");
                }
            }
        });
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

    /// Deletes the records of finished builds `[history]` no longer keeps.
    fn prune_history(&self) {
        let mut b = self.builds.lock().unwrap_or_else(|e| e.into_inner());
        let expired = self.history.expired(
            b.iter()
                .map(|(id, r)| (id.as_str(), r.tenant.as_str(), r.state, r.created)),
            unix_now(),
        );
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            b.remove(id);
            if let Err(e) = self.records.remove(id) {
                tracing::warn!(build = %id, error = %e, "expired build record not deleted");
            }
        }
        tracing::info!(
            removed = expired.len(),
            kept = b.len(),
            "pruned the records of finished builds ([history])"
        );
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

    /// The lock of one context copy: written by a sync, read by the builds that use it.
    fn mirror_lock(&self, dir: &Path) -> Arc<tokio::sync::RwLock<()>> {
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
            daemon.prune_history();
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

    async fn disk_usage(
        &self,
        req: Request<proto::DiskUsageRequest>,
    ) -> Result<Response<proto::DiskUsageResponse>, Status> {
        let (tenant, _) = self.tenant(&req)?;
        let daemon = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let store = daemon.engine.store();
            let (cache_mounts, cache_mount_bytes) = store
                .cache_mounts
                .usage_for(Some(tenant.cache_namespace.as_ref().unwrap_or(&tenant.id)));
            let copies = daemon.context_copies(&tenant);
            let shared =
                kiln_engine::gc::usage(store).map_err(|e| Status::internal(e.to_string()))?;
            Ok(Response::new(proto::DiskUsageResponse {
                cache_mounts: cache_mounts as u64,
                cache_mount_bytes,
                context_copies: copies.len() as u64,
                context_bytes: copies
                    .iter()
                    .map(|d| kiln_engine::store::tree_size(d.as_path()))
                    .sum(),
                shared_bytes: shared.snapshot_bytes + shared.blob_bytes,
            }))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    async fn prune(
        &self,
        req: Request<proto::PruneRequest>,
    ) -> Result<Response<proto::PruneResponse>, Status> {
        let (tenant, _) = self.tenant(&req)?;
        // Context copies not in use: their lock is free; held while removing.
        let mut removed = 0u64;
        let mut bytes = 0u64;
        for dir in self.context_copies(&tenant) {
            let lock = self.mirror_lock(&dir);
            let Ok(_guard) = lock.try_write() else {
                continue;
            };
            bytes += kiln_engine::store::tree_size(&dir);
            if std::fs::remove_dir_all(&dir).is_ok() {
                removed += 1;
            }
        }
        let daemon = Arc::clone(self);
        let caches = tokio::task::spawn_blocking(move || {
            daemon
                .engine
                .store()
                .cache_mounts
                .prune_for(Some(tenant.cache_namespace.as_ref().unwrap_or(&tenant.id)))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::PruneResponse {
            cache_mounts: caches.caches as u64,
            context_copies: removed,
            bytes: bytes + caches.bytes,
        }))
    }
}

impl Daemon {
    /// The tenant's context copies on disk.
    fn context_copies(&self, tenant: &Tenant) -> Vec<PathBuf> {
        let dir = self
            .state_dir
            .join("contexts")
            .join(hex_sha256(tenant.id.as_str()));
        std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Daemon {
    /// Syncs one context (`name` "" = the main one) into the tenant's copy for `key`; returns
    /// the copy's tree and the read guard the build holds.
    async fn sync_context(
        &self,
        id: &str,
        tenant: &Tenant,
        (name, key): (&str, &str),
        files: Vec<proto::FileMeta>,
        input: &mut Streaming<proto::BuildClientMessage>,
        tx: &Tx,
    ) -> Result<(PathBuf, tokio::sync::OwnedRwLockReadGuard<()>), Status> {
        if key.is_empty() || key.len() > 256 {
            return Err(Status::invalid_argument("context key: 1 to 256 bytes"));
        }
        // Main and named copies live apart, so one directory is never both (lock order).
        let dir = self
            .state_dir
            .join(if name.is_empty() {
                "contexts"
            } else {
                "named-contexts"
            })
            .join(hex_sha256(tenant.id.as_str()))
            .join(hex_sha256(key));
        let total: u64 = files.iter().map(|f| f.size).sum();
        // Builds of an unchanged copy share it (read lock); a sync that changes it waits for
        // the builds reading it, and the build after it reads what it synced (downgrade).
        let lock = self.mirror_lock(&dir);
        let internal = |e: crate::context::SyncError| Status::internal(e.to_string());
        let read = Arc::clone(&lock).read_owned().await;
        let mut mirror = Mirror::open(&dir).map_err(internal)?;
        let guard = if mirror.is_current(&files) {
            tracing::info!(build = %id, context = name, files = 0, reused = total, total, "context sync: unchanged");
            send(
                tx,
                Msg::NeedFiles(proto::NeedFiles {
                    indexes: Vec::new(),
                    reused_bytes: total,
                    context: name.into(),
                }),
            )
            .await?;
            read
        } else {
            drop(read);
            let write = Arc::clone(&lock).write_owned().await;
            mirror = Mirror::open(&dir).map_err(internal)?;
            let (need, reused) = mirror
                .plan(files)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            tracing::info!(build = %id, context = name, files = need.len(), reused, total, "context sync");
            send(
                tx,
                Msg::NeedFiles(proto::NeedFiles {
                    indexes: need,
                    reused_bytes: reused,
                    context: name.into(),
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
            write.downgrade()
        };
        Ok((mirror.tree().to_owned(), guard))
    }

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

        // The contexts: the main one, then each named one, each into the tenant's copy for
        // its key, locked (shared while unchanged) until the build ends.
        if header.named_contexts.len() > 64 {
            return Err(Status::invalid_argument("at most 64 named contexts"));
        }
        // Every manifest comes first (main, then the named ones in name order); then each
        // context is synced in turn.
        let mut manifests: HashMap<String, (Vec<proto::FileMeta>, bool)> = HashMap::new();
        manifests.insert(String::new(), (Vec::new(), false));
        for name in header.named_contexts.keys() {
            manifests.insert(name.clone(), (Vec::new(), false));
        }
        let mut entries = 0usize;
        while manifests.values().any(|(_, done)| !done) {
            match input.next().await {
                Some(Ok(proto::BuildClientMessage {
                    msg: Some(ClientMsg::Manifest(m)),
                })) => {
                    let Some((files, done)) = manifests.get_mut(&m.context).filter(|e| !e.1) else {
                        return Err(Status::invalid_argument(format!(
                            "a manifest for context {:?}, which is not expected",
                            m.context
                        )));
                    };
                    entries += m.files.len();
                    if entries > crate::context::MAX_ENTRIES {
                        return Err(Status::invalid_argument("context: too many entries"));
                    }
                    files.extend(m.files);
                    *done = m.last;
                }
                Some(Err(e)) => return Err(e),
                _ => return Err(Status::invalid_argument("expected the context manifests")),
            }
        }
        let mut take = |name: &str| manifests.remove(name).map(|(f, _)| f).unwrap_or_default();
        let mut guards = Vec::new();
        let main_files = take("");
        let main = self
            .sync_context(id, tenant, ("", &header.context_key), main_files, input, tx)
            .await?;
        let context_dir = main.0.clone();
        guards.push(main.1);
        let mut named = std::collections::BTreeMap::new();
        let mut names: Vec<(&String, &String)> = header.named_contexts.iter().collect();
        names.sort();
        for (name, key) in names {
            if name.is_empty() {
                return Err(Status::invalid_argument("a named context needs a name"));
            }
            let files = take(name);
            let (dir, guard) = self
                .sync_context(id, tenant, (name, key), files, input, tx)
                .await?;
            named.insert(name.clone(), kiln_engine::builder::ContextSource::Dir(dir));
            guards.push(guard);
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

        // ssh agents: a socket per id, relayed to the client's agent.
        let relay = crate::ssh::Relay::default();
        let mut ssh = kiln_engine::ops::ssh::SshAgents::new();
        let mut ssh_tasks = Vec::new();
        if header.ssh_ids.len() > 16 {
            return Err(Status::invalid_argument("at most 16 --ssh ids"));
        }
        for (n, id) in header.ssh_ids.iter().enumerate() {
            let (path, task) = relay
                .listen(work.path(), n, id, tx.clone())
                .map_err(|e| Status::internal(format!("ssh socket: {e}")))?;
            ssh.insert(id.clone(), path);
            ssh_tasks.push(task);
        }

        let mut req = BuildRequest::new(context_dir);
        req.ssh = ssh;
        req.build_contexts = named;
        req.dockerfile = Some(dockerfile);
        req.build_args = header.build_args.into_iter().collect();
        req.target = (!header.target.is_empty()).then_some(header.target);
        req.no_cache = header.no_cache;
        req.outputs = daemon_outputs;
        req.allow_host_network = header.entitlements.iter().any(|e| e == "network.host");
        req.allow_insecure = header.entitlements.iter().any(|e| e == "security.insecure");
        req.tenant = tenant.id.clone();
        req.cache_namespace = tenant.cache_namespace.clone();
        req.policy = tenant.policy.clone();
        req.step_limits = tenant.limits.clone();
        // Secrets: of those the client offered, the ones this build's steps mount (read from
        // its plan; all offered if it does not plan, and the build reports why), asked for
        // now and kept in memory for this build only.
        let offered: std::collections::BTreeSet<String> =
            header.secret_ids.iter().cloned().collect();
        let wanted: Vec<String> = if offered.is_empty() {
            Vec::new()
        } else {
            match self.engine.plan(&req) {
                Ok(planned) => planned
                    .graph
                    .vertices()
                    .iter()
                    .filter_map(|v| match &v.op {
                        kiln_engine::graph::Op::Exec(e) => Some(e.mounts.iter()),
                        _ => None,
                    })
                    .flatten()
                    .filter_map(|m| match &m.kind {
                        kiln_engine::graph::ExecMountKind::Secret { id, .. } => Some(id.clone()),
                        _ => None,
                    })
                    .filter(|id| offered.contains(id))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                Err(_) => offered.iter().cloned().collect(),
            }
        };
        let mut secrets = kiln_engine::ops::secrets::Secrets::new();
        if !wanted.is_empty() {
            send(
                tx,
                Msg::NeedSecrets(proto::NeedSecrets {
                    ids: wanted.clone(),
                }),
            )
            .await?;
            for _ in 0..wanted.len() {
                match input.next().await {
                    Some(Ok(proto::BuildClientMessage {
                        msg: Some(ClientMsg::Secret(s)),
                    })) if wanted.contains(&s.id) => secrets.insert(s.id, s.value),
                    Some(Err(e)) => return Err(e),
                    _ => return Err(Status::invalid_argument("expected an asked-for secret")),
                }
            }
        }
        tracing::info!(build = %id, offered = offered.len(), asked = wanted.len(), "secrets");
        req.secrets = secrets;
        req.epoch = header.source_date_epoch;
        // The daemon's bound is a hard one: its operator sized the host for it, and many
        // tenants' builds share it (no idle-slot lending).
        req.lend_idle_slots = false;
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
        let _no_gc = self.gc_lock.read().await;
        // While the build runs, the client sends only ssh-agent traffic; its stream ending
        // means it went away.
        let pump = async {
            while let Some(Ok(m)) = input.next().await {
                if let Some(ClientMsg::Ssh(d)) = m.msg {
                    relay.from_client(d);
                }
            }
        };
        let result = tokio::select! {
            r = engine.build(&req, progress) => Some(r),
            _ = cancel.wait_for(|c| *c) => None,
            _ = tx.closed() => None,
            _ = pump => None,
        };
        for t in &ssh_tasks {
            t.abort();
        }
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

        // Outputs back to the client, streamed from disk in chunks (a directory as a tar
        // written next to it first): an output is never held in memory whole.
        for (i, (path, is_dir)) in local_outputs.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let io = |e: std::io::Error| Status::internal(format!("output {i}: {e}"));
            let file = if *is_dir {
                let tar = path.with_extension("tar");
                let (dir, dest) = (path.clone(), tar.clone());
                tokio::task::spawn_blocking(move || tar_dir(&dir, &dest))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(io)?;
                tar
            } else {
                path.clone()
            };
            let mut f = tokio::fs::File::open(&file).await.map_err(io)?;
            let mut buf = vec![0u8; CHUNK];
            let mut pending: Option<Vec<u8>> = None;
            loop {
                use tokio::io::AsyncReadExt as _;
                let n = f.read(&mut buf).await.map_err(io)?;
                // Each chunk is sent once the next read tells whether it is the last.
                if let Some(data) = pending.take() {
                    send(
                        tx,
                        Msg::Output(proto::OutputChunk {
                            index,
                            data,
                            eof: n == 0,
                        }),
                    )
                    .await?;
                } else if n == 0 {
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
                if n == 0 {
                    break;
                }
                pending = Some(buf[..n].to_vec());
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
fn tar_dir(dir: &Path, dest: &Path) -> std::io::Result<()> {
    let mut b = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(dest)?));
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)?;
    std::io::Write::flush(&mut b.into_inner()?)
}
