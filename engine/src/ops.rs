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
    /// The build was cancelled (another step failed).
    #[error("cancelled")]
    Cancelled,
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
    /// Records to commit when the build succeeds.
    pub staged: Mutex<StagedRecords>,
    /// Overall time limit for one `ADD <url>` download (connecting is limited to
    /// [`CONNECT_TIMEOUT`] within it).
    pub fetch_timeout: Duration,
    /// The network step: every URL this build downloaded, with its verified digest, in the
    /// order the downloads finished (cache hits download nothing and are not listed).
    pub fetched: Mutex<Vec<(String, Digest)>>,
    http: OnceLock<ureq::Agent>,
    killers: Mutex<Vec<sandbox::Killer>>,
    cancelled: AtomicBool,
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
            store,
            sandbox,
            contexts,
            progress,
            no_cache,
            tenant,
            snapshotter,
            staged: Mutex::default(),
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            fetched: Mutex::default(),
            http: OnceLock::new(),
            killers: Mutex::default(),
            cancelled: AtomicBool::new(false),
        }
    }

    /// Cancels the build: kills running steps; ops check this flag before starting.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Ok(k) = self.killers.lock() {
            for killer in k.iter() {
                killer.kill();
            }
        }
    }

    fn check_cancelled(&self) -> Result<(), OpError> {
        if self.cancelled.load(Ordering::SeqCst) {
            Err(OpError::Cancelled)
        } else {
            Ok(())
        }
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
                "http": { "checksum": checksum, "filename": filename, "mode": HTTP_FILE_MODE },
            });
            Some(Digest::of(enc.to_string().as_bytes()))
        }
        _ => None,
    }
}

/// The digest of client content an op reads, which joins its cache key.
pub async fn content_digest(
    ctx: &Arc<OpContext>,
    op: &Op,
    inputs: &[Output],
) -> Result<Option<Digest>, OpError> {
    let mut reads: Vec<(usize, Vec<String>)> = Vec::new();
    match op {
        Op::File(FileOp::Copy(c)) => reads.push((c.src, c.sources.clone())),
        Op::Exec(e) => {
            for m in &e.mounts {
                if let ExecMountKind::Bind { input, source, .. } = &m.kind {
                    reads.push((*input, vec![source.clone()]));
                }
            }
        }
        _ => {}
    }
    let mut parts = Vec::new();
    for (input, paths) in reads {
        let Some(Output::Context(_)) = inputs.get(input) else {
            continue;
        };
        let out = inputs.get(input).cloned();
        let c = ctx.clone();
        let d = tokio::task::spawn_blocking(move || -> Result<Digest, OpError> {
            let out = out.ok_or_else(|| OpError::Internal("missing input".into()))?;
            let view = c.view(&out)?;
            Ok(fileop::content_digest(&view, &paths)?)
        })
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
    let rec = match ctx.staged()?.cache.get(&k).cloned() {
        Some(r) => Some(r),
        None => ctx.store.meta.cache(&k)?,
    };
    let Some(rec) = rec else { return Ok(None) };
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
        let known = match ctx.staged()?.unpacked.get(&layer.digest).cloned() {
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
            Op::Source(SourceOp::Image { name, manifest }) => unpack_image(&c, name, manifest),
            Op::Exec(e) => exec(&c, vertex, e, &inputs, &key),
            Op::File(f) => file(&c, f, &inputs, &key),
            Op::Source(SourceOp::Scratch) => Ok(Output::Layers(Arc::default())),
            Op::Source(SourceOp::Context { name }) => Ok(Output::Context(name.clone())),
            Op::Source(SourceOp::Http {
                url,
                checksum,
                filename,
            }) => http_source(&c, vertex, url, checksum, filename, &key),
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

fn unpack_image(ctx: &OpContext, name: &str, manifest: &Digest) -> Result<Output, OpError> {
    let img = crate::image::load(&ctx.store, manifest).map_err(|e| OpError::Image {
        name: name.to_owned(),
        message: e.to_string(),
    })?;
    let mut chain = Vec::new();
    for (i, layer) in img.manifest.layers.iter().enumerate() {
        ctx.check_cancelled()?;
        let known = match ctx.staged()?.unpacked.get(&layer.digest).cloned() {
            Some(id) => Some(id),
            None => ctx.store.meta.unpacked(&layer.digest)?,
        };
        if let Some(id) = known
            && ctx.store.snapshots.path(&id).is_dir()
        {
            chain.push(id);
            continue;
        }
        let pending = ctx.store.snapshots.create()?;
        let blob = ctx.store.content.open_blob(&layer.digest)?;
        let reader =
            crate::oci::compress::decompress(std::io::BufReader::new(blob)).map_err(|e| {
                OpError::Unpack {
                    digest: layer.digest,
                    message: e.to_string(),
                }
            })?;
        crate::oci::apply::apply_layer(reader, &pending.dir, crate::oci::apply::ApplyMode::Overlay)
            .map_err(|e| OpError::Unpack {
                digest: layer.digest,
                message: e.to_string(),
            })?;
        let empty = is_empty_dir(&pending.dir);
        let id = ctx.store.snapshots.commit(pending)?;
        let mut staged = ctx.staged()?;
        staged.unpacked.insert(layer.digest, id.clone());
        staged.layers.insert(
            id.clone(),
            LayerRecord {
                diff_id: img.config.rootfs.diff_ids.get(i).copied(),
                empty,
                blobs: vec![crate::store::LayerBlob {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest,
                    size: layer.size,
                }],
            },
        );
        chain.push(id);
    }
    Ok(Output::Layers(Arc::new(chain)))
}

fn exec(
    ctx: &OpContext,
    vertex: VertexIdx,
    e: &ExecOp,
    inputs: &[Output],
    key: &Digest,
) -> Result<Output, OpError> {
    let base = chain_of(inputs.first())?;
    let pending = ctx.store.snapshots.create()?;
    let mut lowers = ctx.layer_dirs(&base);
    lowers.reverse(); // overlay wants the top layer first
    let work = pending.scratch.join("work");
    let mountpoint = pending.scratch.join("root");
    for d in [&work, &mountpoint] {
        fs::create_dir_all(d).map_err(|source| StoreError::Io {
            op: "create",
            path: d.clone(),
            source,
        })?;
    }
    // Mount points the sandbox has to create are removed again after the step if they are
    // still empty (BuildKit's mount stub cleaner): a mount never leaves a trace in a layer.
    let lower_view = LayerView::new(ctx.layer_dirs(&base));
    let mut stubs: Vec<String> = Vec::new();
    for m in &e.mounts {
        let mut p = crate::fileop::absolute_path(&m.target, "/");
        while p != "/" && !p.is_empty() {
            if lower_view.lookup(&p)?.is_some() {
                break;
            }
            if !stubs.contains(&p) {
                stubs.push(p.clone());
            }
            p = match p.rfind('/') {
                Some(0) | None => "/".to_owned(),
                Some(i) => p[..i].to_owned(),
            };
        }
    }
    // Deepest first, so a parent is tried after its children.
    stubs.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    let mut mounts = Vec::new();
    for (n, m) in e.mounts.iter().enumerate() {
        let kind = match &m.kind {
            ExecMountKind::Bind {
                input,
                source,
                readwrite,
            } => {
                // The bind source is materialised as a private copy in the step's scratch
                // space: the step never sees a store directory or a client path directly.
                let src_out = inputs.get(*input).ok_or_else(|| {
                    OpError::Internal(format!("bind mount input {input} missing"))
                })?;
                let view = ctx.view(src_out)?;
                let dest = pending.scratch.join(format!("bind{n}"));
                fs::create_dir_all(&dest).map_err(|source| StoreError::Io {
                    op: "create",
                    path: dest.clone(),
                    source,
                })?;
                let path = materialize(&view, source, &dest)?;
                sandbox::MountKind::Bind {
                    source: path,
                    readonly: !readwrite,
                }
            }
            ExecMountKind::Tmpfs { size } => sandbox::MountKind::Tmpfs {
                size: *size,
                mode: 0o1777,
            },
        };
        mounts.push(sandbox::Mount {
            target: m.target.clone(),
            kind,
        });
    }
    let rootfs = match ctx.snapshotter {
        Snapshotter::Overlay | Snapshotter::Auto => sandbox::Rootfs::Overlay {
            lowers,
            upper: pending.dir.clone(),
            work,
            mountpoint: mountpoint.clone(),
        },
        Snapshotter::Copy => {
            // No overlayfs: the step runs on a private copy of its parents' merged view and
            // its diff is computed afterwards (see `copydiff`).
            crate::copydiff::materialize(&lower_view, &mountpoint)?;
            sandbox::Rootfs::Dir {
                path: mountpoint.clone(),
            }
        }
    };
    let mut spec = sandbox::StepSpec::new(e.args.clone(), rootfs);
    spec.env = e.env.clone();
    spec.cwd = e.cwd.clone();
    spec.user = e.user.clone();
    spec.hostname = "kiln".into();
    spec.network = match e.network {
        Network::None => sandbox::NetworkMode::None,
        Network::Host => sandbox::NetworkMode::Host,
    };
    spec.mounts = mounts;
    ctx.check_cancelled()?;
    let mut step = ctx.sandbox.spawn(&spec)?;
    let killer = step.killer();
    ctx.killers
        .lock()
        .map_err(|e| OpError::Internal(e.to_string()))?
        .push(killer);
    // A cancel that raced the registration above still has to stop this step.
    if ctx.cancelled.load(Ordering::SeqCst) {
        step.killer().kill();
    }
    let mut readers = Vec::new();
    for (stream, r) in [
        (
            1u8,
            step.take_stdout()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        ),
        (
            2u8,
            step.take_stderr()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(mut r) = r else { continue };
        let progress = ctx.progress.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => progress.send(Event::Log {
                        vertex,
                        stream,
                        data: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    }),
                }
            }
        }));
    }
    let exit = step.wait();
    for r in readers {
        let _ = r.join();
    }
    let exit = exit?;
    ctx.check_cancelled()?;
    if exit.code != 0 {
        return Err(OpError::ExitCode {
            cmd: shown_command(&e.args),
            code: exit.code,
        });
    }
    if ctx.snapshotter == Snapshotter::Copy {
        crate::copydiff::diff(&lower_view, &mountpoint, &pending.dir)?;
    }
    for stub in &stubs {
        // `remove_dir` only removes an empty directory; anything else stays as the step left it.
        let p = pending.dir.join(stub.trim_start_matches('/'));
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let _ = fs::remove_dir(&p);
        }
    }
    let id = commit_layer(ctx, pending)?;
    let mut chain = base.as_ref().clone();
    chain.push(id);
    finish(ctx, key, chain)
}

/// The command as BuildKit shows it: `/bin/sh -c echo hi` for shell form.
fn shown_command(args: &[String]) -> String {
    args.join(" ")
}

/// Copies `source` of `view` into `dest` (a private directory) for a bind mount; returns the
/// path to mount (the directory, or the file inside it when the source is a file).
fn materialize(view: &LayerView, source: &str, dest: &Path) -> Result<PathBuf, OpError> {
    let resolved = view
        .resolve(source, true)?
        .and_then(|r| r.entry().map(|e| e.metadata().kind))
        .ok_or_else(|| OpError::Internal(format!("bind mount source {source:?} not found")))?;
    let empty = LayerView::new(Vec::new());
    let is_dir = matches!(resolved, crate::fsview::FileKind::Dir);
    let req = CopyRequest {
        sources: vec![source.to_owned()],
        dest: if is_dir {
            "/".to_owned()
        } else {
            "/file".to_owned()
        },
        workdir: "/".to_owned(),
        keep_owner: true,
        allow_wildcard: false,
        ..CopyRequest::default()
    };
    fileop::copy(&req, view, &empty, dest)?;
    Ok(if is_dir {
        dest.to_path_buf()
    } else {
        dest.join("file")
    })
}

fn mkfiles(
    ctx: &OpContext,
    files: &[(String, String)],
    mode: u32,
    key: &Digest,
) -> Result<Output, OpError> {
    let pending = ctx.store.snapshots.create()?;
    for (name, content) in files {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(OpError::Internal(format!(
                "invalid heredoc file name {name:?}"
            )));
        }
        let p = pending.dir.join(name);
        std::fs::write(&p, content).map_err(|source| StoreError::Io {
            op: "write",
            path: p.clone(),
            source,
        })?;
        std::fs::set_permissions(
            &p,
            std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
        )
        .map_err(|source| StoreError::Io {
            op: "chmod",
            path: p.clone(),
            source,
        })?;
    }
    let id = commit_layer(ctx, pending)?;
    finish(ctx, key, vec![id])
}

fn file(ctx: &OpContext, f: &FileOp, inputs: &[Output], key: &Digest) -> Result<Output, OpError> {
    match f {
        FileOp::Mkfiles { files, mode } => mkfiles(ctx, files, mode.unwrap_or(0o644), key),
        FileOp::Copy(c) => copy(ctx, c, inputs, key),
        FileOp::Mkdir { path, owner } => {
            let base = chain_of(inputs.first())?;
            let view = LayerView::new(ctx.layer_dirs(&base));
            let owner = match owner {
                Some(u) if !u.is_empty() => Some(fileop::resolve_user(&view, u)?),
                _ => None,
            };
            let pending = ctx.store.snapshots.create()?;
            fileop::mkdir(path, "/", owner, &view, &pending.dir)?;
            let id = commit_layer(ctx, pending)?;
            let mut chain = base.as_ref().clone();
            chain.push(id);
            finish(ctx, key, chain)
        }
    }
}

fn copy(ctx: &OpContext, c: &CopyOp, inputs: &[Output], key: &Digest) -> Result<Output, OpError> {
    let src_out = inputs
        .get(c.src)
        .ok_or_else(|| OpError::Internal("copy source input missing".into()))?;
    let src = ctx.view(src_out)?;
    let base = match c.dest {
        Some(d) => chain_of(inputs.get(d))?,
        None => Arc::default(),
    };
    let dest = LayerView::new(ctx.layer_dirs(&base));
    let chown = match &c.chown {
        Some(u) if !u.is_empty() => Some(fileop::resolve_user(&dest, u)?),
        _ => None,
    };
    let req = CopyRequest {
        sources: c.sources.clone(),
        dest: c.dest_path.clone(),
        workdir: c.workdir.clone(),
        chown,
        chmod: c.chmod,
        keep_owner: c.keep_owner,
        parents: c.parents,
        excludes: c.excludes.clone(),
        unpack: c.unpack,
        allow_wildcard: true,
        allow_empty_wildcard: true,
    };
    let pending = ctx.store.snapshots.create()?;
    fileop::copy(&req, &src, &dest, &pending.dir)?;
    let id = commit_layer(ctx, pending)?;
    let mut chain = base.as_ref().clone();
    chain.push(id);
    finish(ctx, key, chain)
}

/// Mode of a downloaded file before `--chmod` (BuildKit's http source).
pub const HTTP_FILE_MODE: u32 = 0o600;

impl OpContext {
    /// The HTTP client for downloads, built on first use: rustls with the aws-lc-rs provider
    /// and the system's root certificates (an empty set if none are found: https then fails
    /// verification instead of trusting anything), connect timeout [`CONNECT_TIMEOUT`],
    /// overall [`OpContext::fetch_timeout`], at most [`MAX_REDIRECTS`] redirects, proxies
    /// from the usual environment variables, no compression (the checksum is over the bytes
    /// the server sends).
    fn http_agent(&self) -> &ureq::Agent {
        self.http.get_or_init(|| {
            let roots = rustls_native_certs::load_native_certs();
            let certs: Vec<ureq::tls::Certificate<'static>> = roots
                .certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect();
            let tls = ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build();
            ureq::Agent::config_builder()
                .tls_config(tls)
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_global(Some(self.fetch_timeout))
                .max_redirects(MAX_REDIRECTS)
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                .build()
                .new_agent()
        })
    }

    fn record_fetch(&self, url: &str, digest: Digest) -> Result<(), OpError> {
        self.fetched
            .lock()
            .map_err(|e| OpError::Internal(format!("fetched list lock poisoned: {e}")))?
            .push((url.to_owned(), digest));
        Ok(())
    }
}

/// `ADD <url>`: downloads `url` into the content store, verifying `checksum` as it streams
/// (a mismatch stores nothing), then lays the blob out as the single file `filename`, mode
/// [`HTTP_FILE_MODE`], of a one-layer file system. Runs in the engine process, not in a
/// sandboxed step; the URL and digest are recorded in [`OpContext::fetched`].
fn http_source(
    ctx: &OpContext,
    vertex: VertexIdx,
    url: &str,
    checksum: &Digest,
    filename: &str,
    key: &Digest,
) -> Result<Output, OpError> {
    if filename.is_empty() || filename.contains('/') || filename == "." || filename == ".." {
        return Err(OpError::Internal(format!(
            "invalid download file name {filename:?}"
        )));
    }
    let log = |data: String| {
        ctx.progress.send(Event::Log {
            vertex,
            stream: 2,
            data,
        });
    };
    let digest = if !ctx.no_cache && ctx.store.content.contains(checksum) {
        // Downloaded before (by a build whose records were not committed, say): the blob is
        // named by its verified digest, so there is nothing to fetch.
        log(format!(
            "{checksum} is in the content store; not fetching {url}\n"
        ));
        *checksum
    } else {
        download(ctx, url, checksum, &log)?
    };
    materialize_download(ctx, &digest, filename, key)
}

/// Streams `url` into the content store; the blob is kept only if it hashes to `checksum`.
fn download(
    ctx: &OpContext,
    url: &str,
    checksum: &Digest,
    log: &dyn Fn(String),
) -> Result<Digest, OpError> {
    let fetch_err = |message: String| OpError::Fetch {
        url: url.to_owned(),
        message,
    };
    log(format!("fetching {url}\n"));
    let start = std::time::Instant::now();
    let response = ctx
        .http_agent()
        .get(url)
        .call()
        .map_err(|e| fetch_err(e.to_string()))?;
    let mut body = response.into_body().into_reader();
    let mut writer = ctx.store.content.writer()?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        ctx.check_cancelled()?;
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fetch_err(e.to_string())),
        };
        let chunk = buf.get(..n).ok_or_else(|| fetch_err("short read".into()))?;
        std::io::Write::write_all(&mut writer, chunk).map_err(|source| StoreError::Io {
            op: "ingest",
            path: ctx.store.content.path(checksum),
            source,
        })?;
    }
    let size = writer.len();
    let digest = writer.commit(Some(*checksum)).map_err(|e| match e {
        StoreError::DigestMismatch {
            expected, actual, ..
        } => OpError::ChecksumMismatch(Box::new(ChecksumMismatch {
            url: url.to_owned(),
            expected,
            actual,
            size,
        })),
        other => other.into(),
    })?;
    log(format!(
        "fetched {url}: {size} bytes, {digest} verified ({:.1}s)\n",
        start.elapsed().as_secs_f64()
    ));
    ctx.record_fetch(url, digest)?;
    Ok(digest)
}

/// A one-layer file system holding the blob `digest` as `/filename`, mode [`HTTP_FILE_MODE`].
fn materialize_download(
    ctx: &OpContext,
    digest: &Digest,
    filename: &str,
    key: &Digest,
) -> Result<Output, OpError> {
    let digest = *digest;
    let pending = ctx.store.snapshots.create()?;
    let path = pending.dir.join(filename);
    let mut blob = ctx.store.content.open_blob(&digest)?;
    let file = fs::File::options()
        .write(true)
        .create_new(true)
        .mode(HTTP_FILE_MODE)
        .open(&path)
        .map_err(|source| StoreError::Io {
            op: "create",
            path: path.clone(),
            source,
        })?;
    // The blob is re-hashed on its way into the layer: what lands there is what was pinned.
    let mut sink = HashingWriter {
        inner: std::io::BufWriter::new(file),
        hasher: crate::digest::Hasher::new(),
    };
    std::io::copy(&mut blob, &mut sink).map_err(|source| StoreError::Io {
        op: "write",
        path: path.clone(),
        source,
    })?;
    let HashingWriter { inner, hasher } = sink;
    inner
        .into_inner()
        .map_err(|e| StoreError::Io {
            op: "flush",
            path: path.clone(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(|source| StoreError::Io {
            op: "fsync",
            path: path.clone(),
            source,
        })?;
    let written = hasher.finish();
    if written != digest {
        return Err(StoreError::DigestMismatch {
            what: format!("blob {digest} copied to {}", path.display()),
            expected: digest,
            actual: written,
        }
        .into());
    }
    // The umask may have narrowed the mode; set it exactly.
    fs::set_permissions(&path, fs::Permissions::from_mode(HTTP_FILE_MODE)).map_err(|source| {
        StoreError::Io {
            op: "chmod",
            path: path.clone(),
            source,
        }
    })?;
    let id = commit_layer(ctx, pending)?;
    finish(ctx, key, vec![id])
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: crate::digest::Hasher,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
