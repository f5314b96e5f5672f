//! What each op does. The solver calls [`cached`] and [`run`]; everything here works on plain
//! directories of the store (layer chains) and the client's context directories.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

mod cache;
mod exec;
mod file;
mod http;
mod image;
pub mod secrets;
pub mod ssh;

use kiln_sandbox as sandbox;

use crate::Digest;
use crate::fileop::{self, CopyRequest};
use crate::frontend::dockerignore::DockerIgnore;
use crate::fsview::LayerView;
use crate::graph::{CopyOp, ExecMountKind, ExecOp, FileOp, Network, Op, SourceOp, VertexIdx};
use crate::progress::{Event, Progress};
use crate::store::{CacheRecord, LayerRecord, SnapshotId, StagedRecords, Store, StoreError};

/// Errors running an op.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// The command exited non-zero.
    #[error("process {cmd:?} did not complete successfully: exit code: {code}")]
    ExitCode {
        /// The command, as shown to the user.
        cmd: String,
        /// Its exit code.
        code: i32,
    },
    /// The step ran past the build's `--step-timeout` and was killed with its process tree.
    #[error("process {cmd:?} did not complete: killed after the step timeout of {}s", .after.as_secs_f64())]
    TimedOut {
        /// The command, as shown to the user.
        cmd: String,
        /// The limit.
        after: Duration,
    },
    /// The step was killed by the kernel's OOM killer at its memory limit.
    #[error("process {cmd:?} did not complete: out of memory (the step's memory limit is {}; raise it with --memory)", limit.map_or_else(|| "unlimited".to_owned(), crate::ops::human_bytes))]
    OutOfMemory {
        /// The command, as shown to the user.
        cmd: String,
        /// The limit in bytes.
        limit: Option<u64>,
    },
    /// The step reached its pids limit (a fork bomb, or a build needing more processes).
    #[error("process {cmd:?} did not complete successfully: exit code: {code}; the step reached its pids limit of {} processes (raise it with --pids-limit)", limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string()))]
    PidsLimit {
        /// The command, as shown to the user.
        cmd: String,
        /// Its exit code.
        code: i32,
        /// The limit.
        limit: Option<u64>,
    },
    /// The sandbox failed to start or run the step.
    #[error("sandbox: {0}")]
    Sandbox(#[from] sandbox::SandboxError),
    /// A file operation failed.
    #[error(transparent)]
    File(#[from] fileop::FileOpError),
    /// The copying snapshotter failed.
    #[error(transparent)]
    CopyDiff(#[from] crate::copydiff::CopyDiffError),
    /// The file system view failed.
    #[error(transparent)]
    View(#[from] crate::fsview::FsViewError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A base image could not be read.
    #[error("image {name}: {message}")]
    Image {
        /// Its reference.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A layer could not be unpacked.
    #[error("unpacking layer {digest}: {message}")]
    Unpack {
        /// Blob digest.
        digest: Digest,
        /// Cause.
        message: String,
    },
    /// Downloading an `ADD <url>` source failed.
    #[error("fetching {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A download did not match its `--checksum`; nothing was stored.
    #[error(transparent)]
    ChecksumMismatch(Box<ChecksumMismatch>),
    /// A cache mount could not be set up.
    #[error(transparent)]
    CacheMount(#[from] crate::store::CacheMountError),
    /// A cache mount's `from`/`source` is not a directory.
    #[error("cache mount source {path:?} is not a directory")]
    CacheSeed {
        /// The path in the `from` file system.
        path: String,
    },
    /// A cache mount's `uid`/`gid` lies outside the `--userns-remap` range.
    #[error("cache mount owner id {id} is outside the user-namespace mapping")]
    CacheOwnerUnmapped {
        /// The id.
        id: u32,
    },
    /// A step mounts a secret marked `required` that the build was not given.
    #[error("secret {id:?} is required but was not provided (kiln build --secret id={id},src=…)")]
    SecretRequired {
        /// The secret's id.
        id: String,
    },
    /// A step mounts an ssh agent marked `required` that the build was not given.
    #[error("ssh agent {id:?} is required but was not provided (kiln build --ssh {id})")]
    SshRequired {
        /// The agent's id.
        id: String,
    },
    /// An ssh agent proxy could not be set up.
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    /// The build was cancelled (another step failed).
    #[error("cancelled")]
    Cancelled,
    /// Client files changed while the step read them.
    #[error("files in the build context changed while this step read them; build again")]
    ContextChanged,
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a `RUN` step's root file system is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Snapshotter {
    /// Pick overlayfs when the kernel has it, else copy.
    #[default]
    Auto,
    /// An overlayfs mount of the parent layers with a fresh upper directory (the step's diff).
    Overlay,
    /// A private copy of the merged parent layers; the diff is computed after the step.
    Copy,
}

impl Snapshotter {
    /// Resolves `Auto` against the running kernel.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if sandbox::probe().overlay => Self::Overlay,
            Self::Auto => Self::Copy,
            other => other,
        }
    }
}

/// An `ADD <url>` download whose content did not hash to its `--checksum`.
#[derive(Debug, thiserror::Error)]
#[error(
    "ADD {url}: checksum mismatch: expected {expected}, got {actual} ({size} bytes downloaded)"
)]
pub struct ChecksumMismatch {
    /// The URL.
    pub url: String,
    /// The pinned digest (`--checksum`).
    pub expected: Digest,
    /// The digest of what the server sent.
    pub actual: Digest,
    /// How many bytes it sent.
    pub size: u64,
}

/// A vertex's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A file system as a chain of layer directories, bottom first.
    Layers(Arc<Vec<SnapshotId>>),
    /// A client context directory, by name.
    Context(String),
}

/// A client directory made available to the build.
#[derive(Debug, Clone)]
pub struct ContextDir {
    /// Host path.
    pub dir: PathBuf,
    /// Its `.dockerignore` rules.
    pub ignore: DockerIgnore,
}

/// Connect timeout for `ADD <url>` downloads.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default overall timeout for one `ADD <url>` download.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Redirects followed by `ADD <url>` downloads.
pub const MAX_REDIRECTS: u32 = 10;

/// The file-hash cache of a build: what earlier builds remembered (loaded on first use) plus
/// what this build learns (committed with its records).
#[derive(Debug)]
pub struct FileHashes {
    store: Arc<Store>,
    known: std::sync::OnceLock<HashMap<fileop::FileKey, fileop::FileHash>>,
    learned: Mutex<std::collections::BTreeMap<fileop::FileKey, fileop::FileHash>>,
}

impl FileHashes {
    fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            known: std::sync::OnceLock::new(),
            learned: Mutex::default(),
        }
    }

    /// What this build learned.
    pub fn take_learned(&self) -> std::collections::BTreeMap<fileop::FileKey, fileop::FileHash> {
        self.learned
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

impl fileop::FileHashCache for FileHashes {
    fn get(&self, key: &fileop::FileKey) -> Option<fileop::FileHash> {
        // A store that cannot be read only means no hits.
        let known = self
            .known
            .get_or_init(|| self.store.meta.file_hashes().unwrap_or_default());
        if let Some(d) = known.get(key) {
            return Some(*d);
        }
        self.learned.lock().ok().and_then(|l| l.get(key).copied())
    }

    fn put(&self, key: fileop::FileKey, hash: fileop::FileHash) {
        // "Racy git": file times have the kernel's coarse clock granularity, so a file changed
        // again within the same tick after it was hashed would keep its key. Only files whose
        // status changed more than two seconds ago are remembered.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let ctime_sec = key.0[5];
        if ctime_sec.saturating_add(2) >= now {
            return;
        }
        if let Ok(mut l) = self.learned.lock() {
            l.insert(key, hash);
        }
    }
}

/// Files a COPY wrote with their content known, by path in its layer.
pub type CopiedDigests = Arc<std::collections::BTreeMap<String, fileop::KnownContent>>;

/// Everything ops need, shared by a build's tasks.
#[derive(Debug)]
pub struct OpContext {
    /// The store.
    pub store: Arc<Store>,
    /// The step executor.
    pub sandbox: sandbox::Sandbox,
    /// Named client directories (`context` is the main one).
    pub contexts: HashMap<String, ContextDir>,
    /// Progress sink.
    pub progress: Progress,
    /// Ignore cached results (`--no-cache`).
    pub no_cache: bool,
    /// Whose build this is (part of every cache key).
    pub tenant: crate::TenantId,
    /// How step root file systems are made.
    pub snapshotter: Snapshotter,
    /// Hashes of client files, remembered across builds.
    pub file_hashes: FileHashes,
    /// Content digests of client paths computed in this build, by (context, paths): a
    /// `COPY . /x` key and the provenance's context digest walk the context once.
    context_digests: Mutex<HashMap<(String, Vec<String>), Digest>>,
    /// The files COPY steps of this build wrote from client contexts with their content
    /// digests known (the cache key's walk hashed them), by the layer written. The SBOM
    /// catalog takes these rather than reading the files again.
    copied_digests: Mutex<HashMap<SnapshotId, CopiedDigests>>,
    /// Records to commit when the build succeeds.
    pub staged: Mutex<StagedRecords>,
    /// Overall time limit for one `ADD <url>` download (connecting is limited to
    /// [`CONNECT_TIMEOUT`] within it).
    pub fetch_timeout: Duration,
    /// Time limit of one RUN step (`None`: none).
    pub step_timeout: Option<Duration>,
    /// Cgroup limits of one RUN step.
    pub step_limits: sandbox::Limits,
    /// User-namespace mapping for RUN steps (only with [`Snapshotter::Copy`]).
    pub userns: Option<sandbox::IdMap>,
    /// The network step: every URL this build downloaded, with its verified digest, in the
    /// order the downloads finished (cache hits download nothing and are not listed).
    pub fetched: Mutex<Vec<(String, Digest)>>,
    /// How each RUN step that ran in this build was confined (the sandbox's record), for the
    /// provenance.
    pub confinements:
        Mutex<std::collections::BTreeMap<crate::graph::VertexIdx, sandbox::Confinement>>,
    /// The build's secrets (`--secret`), by id.
    pub secrets: secrets::Secrets,
    /// The build's ssh agents (`--ssh`), by id.
    pub ssh: ssh::SshAgents,
    /// `--cache-from` caches, consulted when a step's key is not in the store.
    pub remote_cache: Option<Arc<crate::cache_export::RemoteCaches>>,
    /// The store's secret MAC key, read (or made) the first time a step mounts a secret.
    secret_mac_key: OnceLock<sandbox::SecretBytes>,
    http: OnceLock<ureq::Agent>,
    /// Running steps' killers, by vertex.
    killers: Mutex<Vec<(VertexIdx, sandbox::Killer)>>,
    cancelled: AtomicBool,
}

/// `64 MiB`, `1.5 GiB`: a byte count for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl OpContext {
    /// A context for one build.
    pub fn new(
        store: Arc<Store>,
        sandbox: sandbox::Sandbox,
        contexts: HashMap<String, ContextDir>,
        progress: Progress,
        no_cache: bool,
        tenant: crate::TenantId,
        snapshotter: Snapshotter,
    ) -> Self {
        Self {
            file_hashes: FileHashes::new(store.clone()),
            context_digests: Mutex::default(),
            copied_digests: Mutex::default(),
            store,
            sandbox,
            contexts,
            progress,
            no_cache,
            tenant,
            snapshotter,
            staged: Mutex::default(),
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            step_timeout: None,
            step_limits: sandbox::Limits::defaults(),
            userns: None,
            fetched: Mutex::default(),
            confinements: Mutex::default(),
            secrets: secrets::Secrets::new(),
            ssh: ssh::SshAgents::new(),
            remote_cache: None,
            secret_mac_key: OnceLock::new(),
            http: OnceLock::new(),
            killers: Mutex::default(),
            cancelled: AtomicBool::new(false),
        }
    }

    /// What `op`'s secrets add to its cache key (`None` when it mounts none); fails when a
    /// required secret is missing. See [`secrets`].
    pub fn secret_cache_input(&self, op: &Op) -> Result<Option<Vec<u8>>, OpError> {
        secrets::cache_input(op, &self.secrets, &|| {
            if let Some(k) = self.secret_mac_key.get() {
                return Ok(k.clone());
            }
            let k = secrets::load_or_create_mac_key(self.store.root())?;
            Ok(self.secret_mac_key.get_or_init(|| k).clone())
        })
    }

    /// Fails, naming the id, when `op` mounts a required ssh agent the build was not given.
    pub fn check_ssh(&self, op: &Op) -> Result<(), OpError> {
        ssh::check_required(op, &self.ssh)
    }

    /// Cancels the build: kills running steps; ops check this flag before starting.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Ok(k) = self.killers.lock() {
            for (_, killer) in k.iter() {
                killer.kill();
            }
        }
    }

    /// The CPU time each running RUN step has used so far (`None`: not measurable), for the
    /// solver's idle-slot lending.
    pub(crate) fn step_cpu_times(&self) -> Vec<(VertexIdx, Option<Duration>)> {
        self.killers
            .lock()
            .map(|k| {
                k.iter()
                    .map(|(v, killer)| (*v, killer.cpu_time()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn check_cancelled(&self) -> Result<(), OpError> {
        if self.cancelled.load(Ordering::SeqCst) {
            Err(OpError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// What COPY steps knew of the files they wrote into `layer` (see `copied_digests`);
    /// empty when none did.
    pub fn copied_digests(&self, layer: &SnapshotId) -> CopiedDigests {
        self.copied_digests
            .lock()
            .ok()
            .and_then(|m| m.get(layer).cloned())
            .unwrap_or_default()
    }

    fn staged(&self) -> Result<std::sync::MutexGuard<'_, StagedRecords>, OpError> {
        self.staged
            .lock()
            .map_err(|e| OpError::Internal(format!("staged records lock poisoned: {e}")))
    }

    fn layer_dirs(&self, chain: &[SnapshotId]) -> Vec<PathBuf> {
        chain
            .iter()
            .map(|id| self.store.snapshots.path(id))
            .collect()
    }

    /// The content digest of `paths` of the client context `name` (blocking), computed once
    /// per build unless `fresh` asks to read the files again (the check after a step that
    /// read them: the memo would hide a change).
    pub fn context_digest(
        &self,
        name: &str,
        paths: &[String],
        fresh: bool,
    ) -> Result<Digest, OpError> {
        let key = (name.to_owned(), paths.to_vec());
        if !fresh
            && let Some(d) = self
                .context_digests
                .lock()
                .ok()
                .and_then(|m| m.get(&key).copied())
        {
            return Ok(d);
        }
        let view = self.view(&Output::Context(name.to_owned()))?;
        let d = fileop::content_digest_cached(&view, paths, Some(&self.file_hashes))?;
        if let Ok(mut m) = self.context_digests.lock() {
            m.insert(key, d);
        }
        Ok(d)
    }

    /// A read view of an output.
    fn view(&self, out: &Output) -> Result<LayerView, OpError> {
        match out {
            Output::Layers(chain) => Ok(LayerView::new(self.layer_dirs(chain))),
            Output::Context(name) => {
                let c = self
                    .contexts
                    .get(name)
                    .ok_or_else(|| OpError::Internal(format!("context {name:?} not provided")))?;
                Ok(crate::fsview::context_view(&c.dir, &c.ignore))
            }
        }
    }
}

/// Whether the op is shown in progress output (sources and merges are bookkeeping).
pub fn announces(op: &Op) -> bool {
    matches!(
        op,
        Op::Exec(_) | Op::File(_) | Op::Source(SourceOp::Image { .. } | SourceOp::Http { .. })
    )
}

/// What stands for the op in its cache key, when that is not its definition digest: an
/// `ADD <url>` download is identified by its pinned content and file name, not its URL, so a
/// cached download is reused whatever URL (mirror) names the same checksum.
pub fn cache_identity(op: &Op) -> Option<Digest> {
    match op {
        Op::Source(SourceOp::Http {
            checksum, filename, ..
        }) => {
            let enc = serde_json::json!({
                "v": 1,
                "http": { "checksum": checksum, "filename": filename, "mode": http::HTTP_FILE_MODE },
            });
            Some(Digest::of(enc.to_string().as_bytes()))
        }
        _ => None,
    }
}

/// The digest of client content an op reads, which joins its cache key. `fresh` reads the
/// files again instead of taking this build's earlier digest of the same paths.
pub async fn content_digest(
    ctx: &Arc<OpContext>,
    op: &Op,
    inputs: &[Output],
    fresh: bool,
) -> Result<Option<Digest>, OpError> {
    let mut reads: Vec<(usize, Vec<String>)> = Vec::new();
    match op {
        Op::File(FileOp::Copy(c)) => reads.push((c.src, c.sources.clone())),
        Op::Exec(e) => {
            for m in &e.mounts {
                match &m.kind {
                    ExecMountKind::Bind { input, source, .. } => {
                        reads.push((*input, vec![source.clone()]));
                    }
                    // A cache seeded from the client's files depends on what they hold.
                    ExecMountKind::Cache {
                        from: Some(seed), ..
                    } => reads.push((seed.input, vec![seed.source.clone()])),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    let mut parts = Vec::new();
    for (input, paths) in reads {
        let Some(Output::Context(name)) = inputs.get(input).cloned() else {
            continue;
        };
        let c = ctx.clone();
        let d = tokio::task::spawn_blocking(move || c.context_digest(&name, &paths, fresh))
            .await
            .map_err(|e| OpError::Internal(e.to_string()))??;
        parts.push(d);
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let mut enc = Vec::new();
    for p in parts {
        enc.extend_from_slice(p.as_bytes());
    }
    Ok(Some(Digest::of(&enc)))
}

/// A result available without running the op: trivial ops, cache hits, unpacked images.
pub fn cached(
    ctx: &OpContext,
    op: &Op,
    key: &Digest,
    inputs: &[Output],
) -> Result<Option<Output>, OpError> {
    match op {
        Op::Source(SourceOp::Scratch) => return Ok(Some(Output::Layers(Arc::default()))),
        Op::Source(SourceOp::Context { name }) => return Ok(Some(Output::Context(name.clone()))),
        Op::Merge => return merge(inputs).map(Some),
        Op::Source(SourceOp::Image { manifest, .. }) => return unpacked_image(ctx, manifest),
        _ if ctx.no_cache => return Ok(None),
        _ => {}
    }
    let k = key.hex();
    // Bound first: in a match scrutinee the staged-records guard would live through the
    // arms, and the arm that marks the record used locks it again (a self-deadlock).
    let staged = ctx.staged()?.cache.get(&k).cloned();
    let rec = match staged {
        Some(r) => Some(r),
        None => {
            let rec = ctx.store.meta.cache(&k)?;
            // Used again: marked (for GC) when this build commits, at most hourly.
            if let Some(r) = &rec {
                let now = crate::store::meta::unix_now();
                if now.saturating_sub(r.last_used) >= crate::store::meta::TOUCH_INTERVAL {
                    let mut touched = r.clone();
                    touched.last_used = now;
                    if touched.tenant.is_empty() {
                        touched.tenant = ctx.tenant.as_str().to_owned();
                    }
                    ctx.staged()?.cache.insert(k.clone(), touched);
                }
            }
            rec
        }
    };
    let Some(rec) = rec else {
        // A shared cache may have it: fetched, verified and staged on demand.
        return Ok(ctx
            .remote_cache
            .as_ref()
            .and_then(|rc| rc.lookup(&ctx.store, &k, &ctx.staged))
            .map(|chain| Output::Layers(Arc::new(chain))));
    };
    if rec
        .layers
        .iter()
        .all(|id| ctx.store.snapshots.path(id).is_dir())
    {
        Ok(Some(Output::Layers(Arc::new(rec.layers))))
    } else {
        Ok(None)
    }
}

/// The layer chain of an image whose layers are all unpacked already.
fn unpacked_image(ctx: &OpContext, manifest: &Digest) -> Result<Option<Output>, OpError> {
    let Ok(img) = crate::image::load(&ctx.store, manifest) else {
        return Ok(None); // `run` reports the error
    };
    let mut chain = Vec::with_capacity(img.manifest.layers.len());
    for layer in &img.manifest.layers {
        // The guard is dropped before the fallback (a match scrutinee's guard would live
        // through the arms).
        let staged = ctx.staged()?.unpacked.get(&layer.digest).cloned();
        let known = match staged {
            Some(id) => Some(id),
            None => ctx.store.meta.unpacked(&layer.digest)?,
        };
        match known {
            Some(id) if ctx.store.snapshots.path(&id).is_dir() => chain.push(id),
            _ => return Ok(None),
        }
    }
    Ok(Some(Output::Layers(Arc::new(chain))))
}

fn merge(inputs: &[Output]) -> Result<Output, OpError> {
    let mut chain = Vec::new();
    for i in inputs {
        match i {
            Output::Layers(l) => chain.extend(l.iter().cloned()),
            Output::Context(_) => return Err(OpError::Internal("merge of a context".into())),
        }
    }
    Ok(Output::Layers(Arc::new(chain)))
}

fn chain_of(out: Option<&Output>) -> Result<Arc<Vec<SnapshotId>>, OpError> {
    match out {
        Some(Output::Layers(l)) => Ok(l.clone()),
        Some(Output::Context(_)) => Err(OpError::Internal(
            "a context is not a root file system".into(),
        )),
        None => Err(OpError::Internal("missing input".into())),
    }
}

/// Runs an op whose result was not cached.
pub async fn run(
    ctx: &Arc<OpContext>,
    vertex: VertexIdx,
    op: &Op,
    inputs: Vec<Output>,
    key: &Digest,
) -> Result<Output, OpError> {
    ctx.check_cancelled()?;
    let c = ctx.clone();
    let op = op.clone();
    let key = *key;
    let out = tokio::task::spawn_blocking(move || -> Result<Output, OpError> {
        match &op {
            Op::Source(SourceOp::Image { name, manifest }) => {
                image::unpack_image(&c, name, manifest)
            }
            Op::Exec(e) => exec::exec(&c, vertex, e, &inputs, &key),
            Op::File(f) => file::file(&c, vertex, f, &inputs, &key),
            Op::Source(SourceOp::Scratch) => Ok(Output::Layers(Arc::default())),
            Op::Source(SourceOp::Context { name }) => Ok(Output::Context(name.clone())),
            Op::Source(SourceOp::Http {
                url,
                checksum,
                filename,
            }) => http::http_source(&c, vertex, url, checksum, filename, &key),
            Op::Merge => merge(&inputs),
        }
    })
    .await
    .map_err(|e| OpError::Internal(format!("step task: {e}")))??;
    Ok(out)
}

/// Stages the cache record for a new chain and returns it as an output.
fn finish(ctx: &OpContext, key: &Digest, chain: Vec<SnapshotId>) -> Result<Output, OpError> {
    ctx.staged()?.cache.insert(
        key.hex(),
        CacheRecord {
            layers: chain.clone(),
            last_used: crate::store::meta::unix_now(),
            tenant: ctx.tenant.as_str().to_owned(),
        },
    );
    Ok(Output::Layers(Arc::new(chain)))
}

fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

fn commit_layer(
    ctx: &OpContext,
    pending: crate::store::snapshot::PendingSnapshot,
) -> Result<SnapshotId, OpError> {
    let empty = is_empty_dir(&pending.dir);
    let id = ctx.store.snapshots.commit(pending)?;
    ctx.staged()?.layers.insert(
        id.clone(),
        LayerRecord {
            empty,
            ..Default::default()
        },
    );
    Ok(id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A cache record last used long ago is marked used again while it is looked up; the
    /// lookup must not hold the staged records' lock when it does (it deadlocked once).
    #[test]
    fn a_cache_hit_on_an_old_record_is_marked_used_without_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let pending = store.snapshots.create().unwrap();
        let id = store.snapshots.commit(pending).unwrap();
        let key = Digest::of(b"a step");
        let mut staged = StagedRecords::default();
        staged.cache.insert(
            key.hex(),
            crate::store::CacheRecord {
                layers: vec![id.clone()],
                last_used: 0,
                tenant: String::new(),
            },
        );
        store.meta.commit(&staged).unwrap();
        let ctx = OpContext::new(
            store,
            sandbox::Sandbox::new(PathBuf::from("/nonexistent")),
            HashMap::new(),
            Progress::discard(),
            false,
            crate::TenantId::new("t").unwrap(),
            Snapshotter::Copy,
        );
        let op = Op::File(crate::graph::FileOp::Mkfiles {
            files: vec![("f".into(), "x".into())],
            mode: None,
        });
        // On a thread, so a deadlock fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let out = cached(&ctx, &op, &key, &[]).map(|o| o.is_some());
            let touched = ctx
                .staged()
                .unwrap()
                .cache
                .get(&key.hex())
                .map(|r| r.last_used);
            let _ = tx.send((out.unwrap(), touched));
        });
        let (hit, touched) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the cache lookup deadlocked");
        assert!(hit);
        assert!(touched.is_some_and(|t| t > 0), "marked used: {touched:?}");
    }
}
