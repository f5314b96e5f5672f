//! One build, end to end: read the Dockerfile → convert → solve → assemble → emit outputs →
//! commit. Both the embedded `kiln build` and (later) the daemon run this.
//!
//! Ordering is the invariant: nothing is written outside the store until the image is fully
//! assembled, and no metadata record is committed until every output has been written, so a
//! failing build leaves committed records exactly as they were.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::Digest;
use crate::frontend::convert::{self, ConvertOptions, ResolvedImage, Resolver};
use crate::frontend::dockerignore::DockerIgnore;
use crate::frontend::{instructions, parser};
use crate::graph::Graph;
use crate::image::{self, AssembleOptions, Assembled};
use crate::oci::compress::Compression;
use crate::ops::{ContextDir, OpContext, Output};
use crate::output::{self, OutputSpec};
use crate::progress::{Event, Progress};
use crate::store::{ImageRecord, StagedRecords, Store};

/// Where a named build context comes from (`--build-context NAME=SRC`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContextSource {
    /// A local directory.
    Dir(PathBuf),
    /// An OCI image layout directory, optionally a manifest digest in it.
    OciLayout {
        /// Layout directory.
        path: PathBuf,
        /// Which manifest.
        digest: Option<Digest>,
    },
    /// A `docker save` tarball.
    DockerArchive(PathBuf),
}

/// Errors in a `--build-context` or `-o` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct SpecError {
    /// Which flag.
    pub what: &'static str,
    /// The value given.
    pub value: String,
    /// Why it is wrong.
    pub reason: String,
}

impl ContextSource {
    /// Parses `NAME=SRC` into its parts.
    pub fn parse_flag(s: &str) -> Result<(String, Self), SpecError> {
        let err = |reason: &str| SpecError {
            what: "--build-context",
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, src) = s
            .split_once('=')
            .ok_or_else(|| err("expected NAME=SOURCE"))?;
        if name.is_empty() || src.is_empty() {
            return Err(err("expected NAME=SOURCE"));
        }
        let source = if let Some(rest) = src.strip_prefix("oci-layout://") {
            let (path, digest) = match rest.rsplit_once('@') {
                Some((p, d)) => (
                    p,
                    Some(d.parse::<Digest>().map_err(|e| err(&e.to_string()))?),
                ),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(err("oci-layout:// needs a path"));
            }
            Self::OciLayout {
                path: PathBuf::from(path),
                digest,
            }
        } else if let Some(rest) = src.strip_prefix("docker-archive://") {
            if rest.is_empty() {
                return Err(err("docker-archive:// needs a path"));
            }
            Self::DockerArchive(PathBuf::from(rest))
        } else if src.contains("://") {
            return Err(err(
                "unsupported source; use a directory, oci-layout://PATH[@sha256:…] or docker-archive://PATH.tar",
            ));
        } else {
            Self::Dir(PathBuf::from(src))
        };
        Ok((name.to_owned(), source))
    }
}

/// A build request.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (default `CONTEXT/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    /// `-t` names for the local image store.
    pub tags: Vec<String>,
    /// `--build-arg`.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `-o`.
    pub outputs: Vec<OutputSpec>,
    /// `--build-context`.
    pub build_contexts: BTreeMap<String, ContextSource>,
    /// How many steps run at once: `--max-parallelism`, default the CPUs.
    pub max_parallelism: usize,
    /// Whether a RUN step waiting without using the CPU lends its slot to another step (see
    /// [`crate::solver::Parallelism`]): on by default, off when `--max-parallelism` is given.
    pub lend_idle_slots: bool,
    /// `--allow network.host`.
    pub allow_host_network: bool,
    /// `--allow security.insecure` (DANGEROUS).
    pub allow_insecure: bool,
    /// Kill a RUN step (its whole process tree) after this long; `None`: no limit.
    pub step_timeout: Option<std::time::Duration>,
    /// Memory, pids and CPU limits of each RUN step's cgroup.
    pub step_limits: kiln_sandbox::Limits,
    /// Run RUN steps in a user namespace with this mapping (needs the copying snapshotter).
    pub userns: Option<kiln_sandbox::IdMap>,
    /// Layer compression.
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH` (0 when unset).
    pub epoch: u64,
    /// Whose build this is.
    pub tenant: crate::TenantId,
    /// The cache namespace (cache keys, cache mounts) when it is not the tenant's own:
    /// tenants an operator configured to share content-addressed results (kilnd.toml
    /// `cache_namespace`). `None`: the tenant's.
    pub cache_namespace: Option<crate::TenantId>,
    /// How RUN steps get their root file system.
    pub snapshotter: crate::ops::Snapshotter,
    /// Overall time limit for one `ADD <url>` download.
    pub fetch_timeout: std::time::Duration,
    /// `--secret`: values for `RUN --mount=type=secret`, by id (kept in memory only).
    pub secrets: crate::ops::secrets::Secrets,
    /// `--ssh`: agent sockets for `RUN --mount=type=ssh`, by id.
    pub ssh: crate::ops::ssh::SshAgents,
    /// `--attest`, `--sbom`, `--sign-key`, `--attest-dest`: what the build attests.
    pub attest: crate::attest::AttestOptions,
    /// Registry settings (`--insecure-registry`, `--registry-ca`, docker config).
    pub registry: crate::registry::RegistryOptions,
    /// `--pull`: refresh `FROM` tags from their registry.
    pub pull: bool,
    /// `--cache-to`.
    pub cache_to: Vec<crate::cache_export::CacheSpec>,
    /// `--cache-from`.
    pub cache_from: Vec<crate::cache_export::CacheSpec>,
    /// `--policy`: the Rego policy that gates this build (admission, source, exec, export).
    pub policy: Option<Arc<kiln_policy::Policy>>,
}

impl BuildRequest {
    /// A request with defaults for a context directory.
    pub fn new(context: impl Into<PathBuf>) -> Self {
        Self {
            context: context.into(),
            dockerfile: None,
            tags: Vec::new(),
            build_args: BTreeMap::new(),
            target: None,
            no_cache: false,
            outputs: Vec::new(),
            build_contexts: BTreeMap::new(),
            max_parallelism: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            lend_idle_slots: true,
            allow_host_network: false,
            allow_insecure: false,
            step_timeout: None,
            step_limits: kiln_sandbox::Limits::defaults(),
            userns: None,
            compression: Compression::Gzip,
            epoch: 0,
            tenant: crate::TenantId::local(),
            cache_namespace: None,
            snapshotter: crate::ops::Snapshotter::Auto,
            fetch_timeout: crate::ops::DEFAULT_FETCH_TIMEOUT,
            secrets: crate::ops::secrets::Secrets::new(),
            ssh: crate::ops::ssh::SshAgents::new(),
            attest: crate::attest::AttestOptions::default(),
            registry: crate::registry::RegistryOptions::default(),
            pull: false,
            cache_to: Vec::new(),
            cache_from: Vec::new(),
            policy: None,
        }
    }
}

/// Build errors. `is_usage` tells the CLI which exit code to use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The Dockerfile is wrong.
    #[error("{file}:{line}:{column}: {message}")]
    Dockerfile {
        /// File.
        file: String,
        /// Line.
        line: usize,
        /// Column.
        column: usize,
        /// Message.
        message: String,
    },
    /// A client file could not be read.
    #[error("{what} {path}: {source}")]
    Input {
        /// What was read.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A named context could not be imported.
    #[error("build context {name:?}: {message}")]
    Context {
        /// Name.
        name: String,
        /// Why.
        message: String,
    },
    /// A step failed.
    #[error(transparent)]
    Solve(#[from] crate::solver::SolveError),
    /// Making the attestations failed.
    #[error(transparent)]
    Attest(#[from] crate::attest::AttestError),
    /// Assembling the image failed.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// Writing an output failed.
    #[error(transparent)]
    Output(#[from] output::OutputError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Pushing to a registry failed.
    #[error("pushing {reference}: {source}")]
    Push {
        /// Where to.
        reference: String,
        /// Why.
        source: Box<crate::registry::RegistryError>,
    },
    /// Exporting the cache failed.
    #[error(transparent)]
    Cache(#[from] Box<crate::cache_export::CacheError>),
    /// The policy denied the build.
    #[error(transparent)]
    Policy(#[from] crate::gate::Denied),
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// The image manifest digest.
    pub manifest_digest: Digest,
    /// The config digest.
    pub config_digest: Digest,
    /// Names stored in the local image store.
    pub tags: Vec<String>,
    /// Steps run.
    pub executed: usize,
    /// Steps from the cache.
    pub cached: usize,
    /// `--build-arg`s no ARG consumed.
    pub unused_build_args: Vec<String>,
    /// Lint warnings of the Dockerfile (`SecretsUsedInArgOrEnv`).
    pub warnings: Vec<String>,
    /// The network step: every `ADD <url>` this build downloaded, with the verified digest,
    /// sorted by URL. Downloads satisfied from the cache are not listed (nothing was fetched);
    /// every URL the image depends on is a [`crate::graph::SourceOp::Http`] vertex of the
    /// graph.
    pub fetched: Vec<(String, Digest)>,
    /// The index over the image and its attestations, when the build attested it.
    pub index_digest: Option<Digest>,
    /// The attestations made: predicate type and whether it was signed.
    pub attestations: Vec<(String, bool)>,
    /// Files written to `--attest-dest`.
    pub attest_files: Vec<PathBuf>,
    /// Every base image `FROM`/`--from` resolved to, as (reference as written, manifest
    /// digest), local or pulled, in resolution order.
    pub base_images: Vec<(String, Digest)>,
    /// Registry outputs: (reference, pushed manifest digest).
    pub pushed: Vec<(String, Digest)>,
    /// Every policy decision, in the order made (empty without `--policy`).
    pub policy_decisions: Vec<kiln_policy::Decision>,
}

/// The embedded engine: a store and the sandbox's init binary.
#[derive(Debug, Clone)]
pub struct Engine {
    store: Arc<Store>,
    init_exe: PathBuf,
}

/// A parsed build, before solving (also what `kiln debug dump-graph` prints).
#[derive(Debug)]
pub struct Planned {
    /// The graph.
    pub graph: Graph,
    /// Target vertex.
    pub target: usize,
    /// Image metadata.
    pub image: convert::ImageState,
    /// Unused build args.
    pub unused_build_args: Vec<String>,
    /// Lint warnings.
    pub warnings: Vec<String>,
    /// The Dockerfile as given, and the sha256 of its bytes.
    pub dockerfile: (String, Digest),
    /// Base images resolved (reference, manifest digest).
    pub base_images: Vec<(String, Digest)>,
    /// The stages the target needs: (index, `AS` name, base after expansion).
    pub stages: Vec<(usize, Option<String>, String)>,
    contexts: HashMap<String, ContextDir>,
    registry: Option<Arc<crate::registry::Client>>,
}

impl Engine {
    /// An engine on `store` whose steps run via `init_exe` (normally the `kiln` binary).
    pub fn new(store: Store, init_exe: PathBuf) -> Self {
        Self {
            store: Arc::new(store),
            init_exe,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reads and converts the Dockerfile; imports image build contexts.
    pub fn plan(&self, req: &BuildRequest) -> Result<Planned, BuildError> {
        self.plan_gated(req, None)
    }

    /// [`Engine::plan`], with every image reference passed through the policy's `source` gate
    /// before it is resolved.
    fn plan_gated(
        &self,
        req: &BuildRequest,
        gate: Option<&crate::gate::Gatekeeper>,
    ) -> Result<Planned, BuildError> {
        let dockerfile = req
            .dockerfile
            .clone()
            .unwrap_or_else(|| req.context.join("Dockerfile"));
        let file = dockerfile.display().to_string();
        let text = std::fs::read_to_string(&dockerfile).map_err(|source| BuildError::Input {
            what: "reading Dockerfile",
            path: dockerfile.clone(),
            source,
        })?;
        let df_err = |line: usize, column: usize, message: String| BuildError::Dockerfile {
            file: file.clone(),
            line,
            column,
            message,
        };
        let dockerfile_digest = Digest::of(text.as_bytes());
        let ast = parser::parse(&text).map_err(|e| df_err(e.line, e.column, e.message.clone()))?;
        let df = instructions::parse_dockerfile(&ast)
            .map_err(|e| df_err(e.line, e.column, e.message.clone()))?;

        let ignore = load_dockerignore(&req.context, &dockerfile)?;
        let mut contexts = HashMap::new();
        contexts.insert(
            "context".to_owned(),
            ContextDir {
                dir: req.context.clone(),
                ignore,
            },
        );
        let mut images = HashMap::new();
        for (name, src) in &req.build_contexts {
            match src {
                ContextSource::Dir(d) => {
                    let ignore = load_dockerignore(d, &d.join("Dockerfile"))?;
                    contexts.insert(
                        name.clone(),
                        ContextDir {
                            dir: d.clone(),
                            ignore,
                        },
                    );
                }
                ContextSource::OciLayout { path, digest } => {
                    let img = crate::import::oci_layout(&self.store, path, digest.as_ref())
                        .map_err(|e| BuildError::Context {
                            name: name.clone(),
                            message: e.to_string(),
                        })?;
                    images.insert(name.clone(), img);
                }
                ContextSource::DockerArchive(path) => {
                    let img = crate::import::docker_archive(&self.store, path).map_err(|e| {
                        BuildError::Context {
                            name: name.clone(),
                            message: e.to_string(),
                        }
                    })?;
                    images.insert(name.clone(), img);
                }
            }
        }
        let resolver = StoreResolver {
            registry: crate::registry::resolve::ImageResolver::new(
                &self.store,
                req.registry.clone(),
                req.pull,
                convert::host_platform(),
            ),
            images,
            dirs: contexts
                .keys()
                .filter(|k| *k != "context")
                .cloned()
                .collect(),
            gate,
        };
        let opts = ConvertOptions {
            build_args: req.build_args.clone(),
            target: req.target.clone(),
            allow_host_network: req.allow_host_network,
            allow_insecure: req.allow_insecure,
            platform: convert::host_platform(),
        };
        let c = match convert::convert(&df, &opts, &resolver) {
            Ok(c) => c,
            Err(e) => {
                if let Some(denied) = gate.and_then(crate::gate::Gatekeeper::take_source_denial) {
                    return Err(denied.into());
                }
                return Err(df_err(e.line, e.column, e.message));
            }
        };
        Ok(Planned {
            graph: c.graph,
            target: c.target,
            image: c.image,
            unused_build_args: c.unused_build_args,
            warnings: c.warnings,
            dockerfile: (
                provenance_path(&req.context, &dockerfile),
                dockerfile_digest,
            ),
            base_images: resolver.registry.seen(),
            stages: c.stages,
            contexts,
            registry: resolver.registry.client(),
        })
    }

    /// Runs a build.
    pub async fn build(
        &self,
        req: &BuildRequest,
        progress: Progress,
    ) -> Result<BuildResult, BuildError> {
        for o in &req.outputs {
            o.check()?;
        }
        let started = unix_now();
        let gate = req
            .policy
            .as_ref()
            .map(|p| crate::gate::Gatekeeper::new(p.clone(), &req.tenant, progress.clone()));
        let planned = self.plan_gated(req, gate.as_ref())?;
        if let Some(g) = &gate {
            let entitlements = entitlements(req);
            g.admission(&admission_input(req, &planned, g.tenant(), &entitlements))?;
            g.graph(&planned.graph, planned.target, &entitlements)?;
        }
        let graph = Arc::new(planned.graph);
        let mut ctx = OpContext::new(
            self.store.clone(),
            kiln_sandbox::Sandbox::new(self.init_exe.clone()),
            planned.contexts,
            progress.clone(),
            req.no_cache,
            // Cache keys and cache mounts: the tenant's own namespace unless the operator
            // made tenants share one.
            req.cache_namespace
                .clone()
                .unwrap_or_else(|| req.tenant.clone()),
            req.snapshotter.resolve(),
        );
        ctx.fetch_timeout = req.fetch_timeout;
        ctx.step_timeout = req.step_timeout;
        ctx.step_limits = req.step_limits.clone();
        ctx.userns = req.userns;
        ctx.secrets = req.secrets.clone();
        ctx.ssh = req.ssh.clone();
        let mut warnings = planned.warnings;
        if !req.no_cache && !req.cache_from.is_empty() {
            ctx.remote_cache = Some(Arc::new(crate::cache_export::RemoteCaches::open(
                &self.store,
                planned.registry.as_ref(),
                &req.registry,
                &req.cache_from,
                progress.clone(),
            )));
        }
        let ctx = Arc::new(ctx);
        let mut solved = crate::solver::solve(
            graph.clone(),
            &[planned.target],
            ctx.clone(),
            crate::solver::Parallelism {
                busy: req.max_parallelism,
                lend_idle: req.lend_idle_slots,
            },
        )
        .await?;
        if let Some(rc) = &ctx.remote_cache {
            warnings.extend(rc.finish());
        }
        let chain = match solved.outputs.get(&planned.target) {
            Some(Output::Layers(l)) => l.as_ref().clone(),
            _ => {
                return Err(BuildError::Context {
                    name: "target".into(),
                    message: "the target stage is a context, not an image".into(),
                });
            }
        };
        let mut fetched: Vec<(String, Digest)> = std::mem::take(
            &mut *ctx
                .fetched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        fetched.sort();
        let mut staged: StagedRecords = std::mem::take(
            &mut *ctx
                .staged
                .lock()
                .map_err(|_| crate::store::StoreError::Locked(self.store.root().to_path_buf()))?,
        );

        // The SBOM's catalog of the final file system needs no digest: it runs while the layers
        // are compressed.
        // It is cached by the layer chain: a build whose every step hit the cache has the same
        // chain and reuses the catalog instead of reading (and hashing) every file again.
        let catalog_key =
            (req.attest.spdx || req.attest.cyclonedx).then(|| crate::attest::catalog_key(&chain));
        let catalog_job = (req.attest.spdx || req.attest.cyclonedx).then(|| {
            let layers: Vec<PathBuf> = chain
                .iter()
                .map(|id| self.store.snapshots.path(id))
                .collect();
            let key = crate::attest::catalog_key(&chain);
            let store = self.store.clone();
            let made_now = crate::attest::MadeNow {
                ids: staged
                    .layers
                    .keys()
                    .map(|id| id.as_str().to_owned())
                    .collect(),
                copied: chain
                    .iter()
                    .filter(|id| staged.layers.contains_key(*id))
                    .map(|id| (id.as_str().to_owned(), ctx.copied_digests(id)))
                    .filter(|(_, files)| !files.is_empty())
                    .collect(),
            };
            move || crate::attest::catalog_cached(&store, &key, layers, made_now)
        });
        // A build that made layers catalogs them now, beside the compression. One whose every
        // step hit the cache (a no-op rebuild) usually has its SBOM statements cached too, so
        // it loads the catalog only if something needs it (below).
        let (catalog, mut catalog_job) = match catalog_job {
            Some(job) if !staged.layers.is_empty() => {
                (Some(tokio::task::spawn_blocking(job)), None)
            }
            job => (None, job),
        };

        // The content digests of the build context and of named directory contexts (for the
        // provenance), meanwhile too.
        let context_task = (req.attest.provenance.is_some() || gate.is_some()).then(|| {
            let c = ctx.clone();
            tokio::task::spawn_blocking(move || {
                let mut out = std::collections::BTreeMap::new();
                for name in c.contexts.keys() {
                    // Usually known already: a `COPY . …` step's key walked the same tree.
                    if let Ok(digest) = c.context_digest(name, &[".".to_owned()], false) {
                        out.insert(name.clone(), digest);
                    }
                }
                out
            })
        });

        // Assemble: everything below writes only into the store.
        let start = Instant::now();
        progress.send(Event::Phase {
            name: "exporting layers".into(),
        });
        let store = self.store.clone();
        let state = planned.image.clone();
        let opts = AssembleOptions {
            epoch: req.epoch,
            compression: req.compression,
            parallelism: req.max_parallelism,
            block_namespace: req
                .cache_namespace
                .as_ref()
                .unwrap_or(&req.tenant)
                .as_str()
                .to_owned(),
        };
        let assemble_opts = opts.clone();
        let (assembled, staged) = tokio::task::spawn_blocking(
            move || -> Result<(Assembled, StagedRecords), BuildError> {
                let a = image::assemble(&store, &chain, &state, &assemble_opts, &mut staged)?;
                Ok((a, staged))
            },
        )
        .await
        .map_err(|e| BuildError::Context {
            name: "export".into(),
            message: e.to_string(),
        })??;
        // The checks of the steps that read the client's files ran beside the export: before
        // anything is pushed, attested, written out or committed, they must have passed.
        if let Err(e) = solved.verify().await {
            if let crate::solver::SolveError::Vertex { vertex, error, .. } = &e {
                progress.send(Event::Error {
                    vertex: *vertex,
                    message: error.to_string(),
                });
            }
            return Err(e.into());
        }
        let mut staged = staged;
        for spec in &req.cache_to {
            crate::cache_export::export_one(
                &self.store,
                planned.registry.as_ref(),
                &req.registry,
                spec,
                &graph,
                &solved,
                &assembled.chain,
                &opts,
                &mut staged,
                &progress,
            )
            .map_err(Box::new)?;
        }
        let (reused, blocks) = assembled.gzip_blocks_reused;
        let reused = if reused > 0 {
            format!(", {reused} of {blocks} gzip blocks reused")
        } else {
            String::new()
        };
        progress.send(Event::Phase {
            name: format!(
                "exporting manifest {} ({:.1}s{reused})",
                assembled.manifest_descriptor.digest,
                start.elapsed().as_secs_f64()
            ),
        });

        // Attest: statements about the assembled image. The provenance input is made when the
        // build attests or a policy's export gate needs it.
        let names: Vec<String> = req.tags.iter().map(|t| image::normalize_name(t)).collect();
        let attest_start = Instant::now();
        if req.attest.any() {
            progress.send(Event::Phase {
                name: "attesting (provenance, SBOM)".into(),
            });
        }
        // OCI archive outputs of an attested image start now, beside the attestations: the
        // image's own blobs are written while the provenance and statements are made and
        // signed; their blobs, the index and `index.json` follow (`export_oci_tar_staged`).
        // If the attestations fail, the outputs are abandoned (their sender dropped, here or
        // by an early return) and nothing is left at their paths.
        let mut early: Vec<EarlyOutput> = if req.attest.any() && gate.is_none() {
            self.start_early_outputs(req, &assembled, &names)
        } else {
            Vec::new()
        };
        // Every error return from here on abandons them and waits until they have removed
        // their temp files (the CLI does not wait for blocking tasks when it exits).
        let abandon = |early: Vec<EarlyOutput>| async move {
            for e in early {
                drop((e.attached, e.stored));
                let _ = e.task.await;
            }
        };
        let mut prov = if req.attest.any() || gate.is_some() {
            let context_digests = match context_task {
                Some(t) => match t.await {
                    Ok(digests) => digests,
                    Err(e) => {
                        abandon(early).await;
                        return Err(BuildError::Context {
                            name: "attest".into(),
                            message: e.to_string(),
                        });
                    }
                },
                None => Default::default(),
            };
            let confinements = ctx
                .confinements
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default();
            let facts = crate::attest::provenance::BuildFacts {
                req,
                graph: &graph,
                target: planned.target,
                dockerfile: planned.dockerfile.clone(),
                context_digests,
                confinements: &confinements,
                invocation_id: crate::store::content::random_hex(),
                started,
                finished: unix_now(),
                snapshotter: match ctx.snapshotter {
                    crate::ops::Snapshotter::Copy => "copy",
                    _ => "overlayfs",
                },
                builder_id: &req.attest.builder_id,
            };
            Some(crate::attest::provenance::input(&facts))
        } else {
            None
        };
        let waited = Instant::now();
        let sbom_name = names
            .first()
            .cloned()
            .unwrap_or_else(|| assembled.manifest_descriptor.digest.to_string());
        // Kept when the statements are cached, in case one cannot be read back after all.
        let mut catalog_fallback = None;
        let catalog = match (catalog, catalog_job.take()) {
            (Some(task), _) => Some(task),
            (None, Some(job)) => {
                let statements_cached = crate::attest::sbom_statements_cached(
                    &self.store,
                    &req.attest,
                    &assembled.manifest_descriptor.digest,
                    &sbom_name,
                    req.epoch,
                    catalog_key.as_deref(),
                );
                if gate.is_some() || !statements_cached {
                    Some(tokio::task::spawn_blocking(job))
                } else {
                    catalog_fallback = Some(job);
                    None
                }
            }
            (None, None) => None,
        };
        let sbom = match catalog {
            Some(task) => {
                let made = task
                    .await
                    .map_err(|e| BuildError::Context {
                        name: "attest".into(),
                        message: e.to_string(),
                    })
                    .and_then(|r| r.map_err(BuildError::from));
                let (sbom, fresh) = match made {
                    Ok(made) => made,
                    Err(e) => {
                        abandon(early).await;
                        return Err(e);
                    }
                };
                staged.sboms.extend(fresh);
                Some(sbom)
            }
            None => None,
        };
        let catalog_wait = waited.elapsed();

        // The export gate: after the provenance and SBOM exist, before anything is signed,
        // leaves the store or is named in it. A deny keeps the step cache (the work is not
        // lost) but no image record and no output.
        if let (Some(g), Some(p)) = (&gate, prov.as_mut()) {
            p.policy_decisions = g
                .decisions()
                .iter()
                .map(kiln_policy::Decision::to_json)
                .collect();
            let input = serde_json::json!({
                "tenant": g.tenant(),
                "image": {
                    "manifest_digest": assembled.manifest_descriptor.digest.to_string(),
                    "config_digest": assembled.config_digest.to_string(),
                    "config": config_json(&planned.image),
                    "tags": names,
                },
                "provenance": kiln_attest::slsa::predicate(p, kiln_attest::slsa::Mode::Max),
                "sbom": sbom.as_ref().map(kiln_attest::sbom::Summary::of),
                "outputs": req.outputs.iter().map(crate::gate::output_json).collect::<Vec<_>>(),
            });
            if let Err(denied) = g.export(&input) {
                self.commit(&ctx, staged)?;
                return Err(denied.into());
            }
            p.policy_decisions = g
                .decisions()
                .iter()
                .map(kiln_policy::Decision::to_json)
                .collect();
        }

        // With an export gate, OCI archives start only once it has allowed the export.
        if req.attest.any() && gate.is_some() {
            early = self.start_early_outputs(req, &assembled, &names);
        }

        let (attached, attestations, attest_files, publish) =
            if let (true, Some(prov)) = (req.attest.any(), prov) {
                let store = self.store.clone();
                let opts = req.attest.clone();
                let a = assembled.clone();
                let name = sbom_name;
                let epoch = req.epoch;
                let done = tokio::task::spawn_blocking(move || -> Result<_, BuildError> {
                    let late_sbom;
                    let mut inputs = crate::attest::Inputs {
                        manifest: a.manifest_descriptor.digest,
                        name,
                        sbom: sbom.as_ref(),
                        epoch,
                        provenance: prov,
                    };
                    let ck = catalog_key.as_deref();
                    let first = crate::attest::produce_cached(&store, &opts, &inputs, ck);
                    let (made, fresh) = match (first, catalog_fallback) {
                        // A cached statement could not be read back (its blob removed or damaged
                        // since the check): catalog now and make it.
                        (Err(crate::attest::AttestError::NotMade(_)), Some(job))
                            if inputs.sbom.is_none() =>
                        {
                            let (s, fresh_catalog) = job()?;
                            late_sbom = s;
                            inputs.sbom = Some(&late_sbom);
                            let (made, mut fresh) =
                                crate::attest::produce_cached(&store, &opts, &inputs, ck)?;
                            fresh.extend(fresh_catalog);
                            (made, fresh)
                        }
                        (first, _) => first?,
                    };
                    let files = match &opts.dest {
                        Some(dir) => crate::attest::write_dest(dir, &made)?,
                        None => Vec::new(),
                    };
                    // In memory only: the archives started early get it at once, and the
                    // content store gets it below, meanwhile.
                    let attached = crate::attest::attach::prepare(&a.manifest_descriptor, &made)?;
                    // The catalog (a path and two digests for every file) is freed on a thread
                    // of its own: for a large image that is tens of thousands of small strings,
                    // milliseconds that nothing needs to wait for.
                    drop(inputs);
                    if let Some(sbom) = sbom {
                        let _ = std::thread::Builder::new()
                            .name("kiln-free".into())
                            .spawn(move || drop(sbom));
                    }
                    Ok((attached, made, files, fresh))
                })
                .await
                .map_err(|e| BuildError::Context {
                    name: "attest".into(),
                    message: e.to_string(),
                })
                .and_then(|r| r);
                let done = match done {
                    Ok(done) => done,
                    Err(e) => {
                        abandon(early).await;
                        return Err(e);
                    }
                };
                for e in &early {
                    let _ = e.attached.send(done.0.clone());
                }
                // Written into the content store before the early archives are put in place
                // (a write that fails, on a full disk say, abandons them); made durable and
                // visible meanwhile, beside the archives' own syncs. The other outputs, which
                // read them from the store, and the commit wait for that.
                let (store, attached) = (self.store.clone(), done.0.clone());
                // A build that made layers syncs the store's file system before its commit:
                // one early `syncfs` makes the attestations' temp files durable, rather than
                // one sync each, and the commit's makes their renames durable.
                let whole_fs = syncs_store_at_commit(&staged) && self.store.content_beside_layers();
                let written = tokio::task::spawn_blocking(move || {
                    crate::attest::attach::stage(&store, &attached)
                })
                .await
                .map_err(|e| BuildError::Context {
                    name: "attest".into(),
                    message: e.to_string(),
                })
                .and_then(|r| r.map_err(BuildError::from));
                let written = match written {
                    Ok(w) => w,
                    Err(e) => {
                        abandon(early).await;
                        return Err(e);
                    }
                };
                for e in &early {
                    let _ = e.stored.send(());
                }
                let publish = tokio::task::spawn_blocking(move || written.publish(whole_fs));
                staged.sboms.extend(done.3);
                progress.send(Event::Phase {
                    name: format!(
                        "attested: index {} ({} ms, of which {} ms waiting for the SBOM catalog)",
                        done.0.index.digest,
                        attest_start.elapsed().as_millis(),
                        catalog_wait.as_millis()
                    ),
                });
                let list: Vec<(String, bool)> = done
                    .1
                    .iter()
                    .map(|a| (a.predicate_type.clone(), a.bundle.is_some()))
                    .collect();
                (Some(done.0), list, done.2, Some(publish))
            } else {
                (None, Vec::new(), Vec::new(), None)
            };

        // Emit outputs, then commit.
        let store = self.store.clone();
        let outputs = req.outputs.clone();
        let a2 = assembled.clone();
        let names2 = names.clone();
        let epoch = req.epoch;
        let attached2 = attached.clone();
        let push = crate::registry::push::Pusher::new(
            planned.registry.clone(),
            &req.registry,
            &planned.base_images,
            progress.clone(),
        );
        let started: Vec<usize> = early.iter().map(|e| e.index).collect();
        // The attestations' blobs durable and in place: the other outputs read them from the
        // store, so they wait for it; the commit (records naming them) always does.
        let mut publish = publish;
        let mut published: Result<(), BuildError> = Ok(());
        let join_publish = |p: tokio::task::JoinHandle<Result<(), crate::store::StoreError>>| async move {
            p.await
                .map_err(|e| BuildError::Context {
                    name: "attest".into(),
                    message: e.to_string(),
                })
                .and_then(|r| r.map_err(BuildError::from))
        };
        if req.outputs.len() > started.len()
            && let Some(p) = publish.take()
        {
            published = join_publish(p).await;
        }
        let others = published.is_ok();
        let pushed = tokio::task::spawn_blocking(move || -> Result<_, BuildError> {
            if !others {
                return Ok(Vec::new());
            }
            let mut pushed = Vec::new();
            for (_, o) in outputs
                .iter()
                .enumerate()
                .filter(|(i, _)| !started.contains(i))
            {
                if let OutputSpec::Registry { reference } = o {
                    pushed.push(push.push(&store, &a2, reference, attached2.as_ref())?);
                    continue;
                }
                output::write(&store, &a2, &names2, o, epoch, attached2.as_ref())?;
            }
            Ok(pushed)
        })
        .await
        .map_err(|e| BuildError::Context {
            name: "output".into(),
            message: e.to_string(),
        })
        .and_then(|r| r);
        // The other outputs' error first, else the first of these.
        let mut pushed = pushed;
        for e in early {
            drop((e.attached, e.stored));
            let r = e
                .task
                .await
                .map_err(|e| BuildError::Context {
                    name: "output".into(),
                    message: e.to_string(),
                })
                .and_then(|r| r.map_err(BuildError::from));
            if let (Err(e), Ok(_)) = (r, &pushed) {
                pushed = Err(e);
            }
        }
        if let Some(p) = publish.take() {
            published = join_publish(p).await;
        }
        let pushed = pushed?;
        published?;
        for n in &names {
            staged.images.insert(
                n.clone(),
                ImageRecord {
                    manifest: assembled.manifest_descriptor.digest,
                    config: assembled.config_digest,
                    size: assembled.manifest_descriptor.size,
                    layers: assembled.chain.clone(),
                    index: attached.as_ref().map(|a| a.index.digest),
                },
            );
        }
        self.commit(&ctx, staged)?;
        Ok(BuildResult {
            manifest_digest: assembled.manifest_descriptor.digest,
            config_digest: assembled.config_digest,
            tags: names,
            executed: solved.executed,
            cached: solved.cached,
            unused_build_args: planned.unused_build_args,
            warnings,
            fetched,
            index_digest: attached.map(|a| a.index.digest),
            attestations,
            attest_files,
            base_images: planned.base_images,
            pushed,
            policy_decisions: gate.map(|g| g.decisions()).unwrap_or_default(),
        })
    }
}

/// An output started before the attestations exist. Dropping either sender before it has
/// sent abandons the output (nothing is left at its path).
struct EarlyOutput {
    /// Its index among the request's outputs.
    index: usize,
    /// The attachments, once made.
    attached: std::sync::mpsc::Sender<crate::attest::Attached>,
    /// Sent once the attachments are written into the content store (their sync and rename
    /// run meanwhile, joined before the commit): the output may be put in place.
    stored: std::sync::mpsc::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), output::OutputError>>,
}

impl Engine {
    /// Starts writing the OCI archive outputs of an attested image before its attestations
    /// exist (see [`output::write_oci_staged`]); each waits for them on its channel.
    fn start_early_outputs(
        &self,
        req: &BuildRequest,
        assembled: &Assembled,
        names: &[String],
    ) -> Vec<EarlyOutput> {
        let mut early = Vec::new();
        for (i, o) in req.outputs.iter().enumerate() {
            let OutputSpec::Oci { dest } = o else {
                continue;
            };
            // Two outputs to one path are written one after the other, as before.
            let same_path = req.outputs.iter().filter(|other| {
                matches!(other,
                    OutputSpec::Oci { dest: d } | OutputSpec::OciDir { dest: d }
                    | OutputSpec::Docker { dest: d } | OutputSpec::Local { dest: d }
                    | OutputSpec::Tar { dest: d } if d == dest)
            });
            if same_path.count() > 1 {
                continue;
            }
            let (attached, attached_rx) = std::sync::mpsc::channel::<crate::attest::Attached>();
            let (stored, stored_rx) = std::sync::mpsc::channel::<()>();
            let (store, a, names, dest, epoch) = (
                self.store.clone(),
                assembled.clone(),
                names.to_vec(),
                dest.clone(),
                req.epoch,
            );
            let task = tokio::task::spawn_blocking(move || {
                output::write_oci_staged(
                    &store,
                    &a,
                    &names,
                    &dest,
                    epoch,
                    move || {
                        attached_rx
                            .recv()
                            .map_err(|_| "the attestations were not made".to_owned())
                    },
                    move || {
                        stored_rx
                            .recv()
                            .map_err(|_| "the attestations were not stored".to_owned())
                    },
                )
            });
            early.push(EarlyOutput {
                index: i,
                attached,
                stored,
                task,
            });
        }
        early
    }

    /// Commits a build's staged records with the client file hashes it learned, after making
    /// its layer directories durable (records only ever point at durable layers). That
    /// `syncfs` also makes durable the renames of attestation blobs published with
    /// `whole_fs` (`StagedBatch::publish`).
    fn commit(&self, ctx: &OpContext, mut staged: StagedRecords) -> Result<(), BuildError> {
        staged.file_hashes = ctx.file_hashes.take_learned();
        if syncs_store_at_commit(&staged) {
            self.store.snapshots.sync()?;
        }
        self.store.meta.commit(&staged)?;
        Ok(())
    }
}

/// Whether the commit of `staged` syncs the store's whole file system first: it made or
/// unpacked layer directories, which must be durable before a record names them.
fn syncs_store_at_commit(staged: &StagedRecords) -> bool {
    !staged.layers.is_empty() || !staged.unpacked.is_empty()
}

/// The entitlements the request asks for (`--allow`).
fn entitlements(req: &BuildRequest) -> Vec<&'static str> {
    let mut e = Vec::new();
    if req.allow_host_network {
        e.push("network.host");
    }
    if req.allow_insecure {
        e.push("security.insecure");
    }
    e
}

/// The `kiln.admission` input (`policy/schema/admission.json`).
fn admission_input(
    req: &BuildRequest,
    planned: &Planned,
    tenant: &str,
    entitlements: &[&str],
) -> serde_json::Value {
    use serde_json::json;
    let base_images: Vec<serde_json::Value> = planned
        .base_images
        .iter()
        .map(|(r, d)| {
            let mut v = crate::gate::image_ref(r);
            v["resolved"] = json!(d.to_string());
            v
        })
        .collect();
    let mut secret_mounts = std::collections::BTreeSet::new();
    for idx in planned.graph.ancestors(&[planned.target]) {
        if let Some(crate::graph::Vertex {
            op: crate::graph::Op::Exec(e),
            ..
        }) = planned.graph.get(idx)
        {
            for m in &e.mounts {
                if let crate::graph::ExecMountKind::Secret { id, .. } = &m.kind {
                    secret_mounts.insert(id.clone());
                }
            }
        }
    }
    let cache = |specs: &[crate::cache_export::CacheSpec]| -> Vec<String> {
        specs
            .iter()
            .map(|c| match c {
                crate::cache_export::CacheSpec::Registry { reference, .. } => {
                    format!("type=registry,ref={reference}")
                }
                crate::cache_export::CacheSpec::Local { dir, .. } => {
                    format!("type=local,dest={}", dir.display())
                }
            })
            .collect()
    };
    json!({
        "tenant": tenant,
        "request": {
            "frontend": "dockerfile.v0",
            "dockerfile": { "path": planned.dockerfile.0, "digest": planned.dockerfile.1.to_string() },
            "target": req.target,
            "stages": planned.stages.iter().map(|(i, n, b)| json!({"index": i, "name": n, "base": b})).collect::<Vec<_>>(),
            "base_images": base_images,
            "args": req.build_args,
            "secrets": req.secrets.ids().collect::<Vec<_>>(),
            "ssh": req.ssh.ids().collect::<Vec<_>>(),
            "secret_mounts": secret_mounts,
            "entitlements": entitlements,
            "platforms": [convert::host_platform()],
            "outputs": req.outputs.iter().map(crate::gate::output_json).collect::<Vec<_>>(),
            "tags": req.tags.iter().map(|t| image::normalize_name(t)).collect::<Vec<_>>(),
            "no_cache": req.no_cache,
            "cache_from": cache(&req.cache_from),
            "cache_to": cache(&req.cache_to),
        },
    })
}

/// The image configuration as the policy inputs show it (environment names only).
fn config_json(image: &convert::ImageState) -> serde_json::Value {
    serde_json::json!({
        "user": image.user,
        "exposed_ports": image.exposed_ports,
        "env_names": image.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        "entrypoint": image.entrypoint.clone().unwrap_or_default(),
        "cmd": image.cmd.clone().unwrap_or_default(),
        "workdir": image.workdir,
        "labels": image.labels,
    })
}

/// The Dockerfile as the provenance names it: relative to the context when inside it (so the
/// same build from another directory or machine says the same), else its file name.
fn provenance_path(context: &Path, dockerfile: &Path) -> String {
    let rel = |p: &Path| {
        p.strip_prefix(context)
            .ok()
            .map(|r| r.to_string_lossy().into_owned())
    };
    rel(dockerfile)
        .or_else(|| {
            let c = std::fs::canonicalize(context).ok()?;
            let d = std::fs::canonicalize(dockerfile).ok()?;
            d.strip_prefix(c)
                .ok()
                .map(|r| r.to_string_lossy().into_owned())
        })
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| {
            dockerfile
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "Dockerfile".into())
        })
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// `<Dockerfile>.dockerignore` next to the Dockerfile wins over `CONTEXT/.dockerignore`.
pub fn load_dockerignore(context: &Path, dockerfile: &Path) -> Result<DockerIgnore, BuildError> {
    let mut candidates = Vec::new();
    if let Some(name) = dockerfile.file_name() {
        let mut n = name.to_os_string();
        n.push(".dockerignore");
        candidates.push(dockerfile.with_file_name(n));
    }
    candidates.push(context.join(".dockerignore"));
    for c in candidates {
        match std::fs::read_to_string(&c) {
            Ok(text) => {
                return DockerIgnore::parse(&text).map_err(|e| BuildError::Dockerfile {
                    file: c.display().to_string(),
                    line: 0,
                    column: 0,
                    message: e.to_string(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BuildError::Input {
                    what: "reading",
                    path: c,
                    source,
                });
            }
        }
    }
    DockerIgnore::parse("").map_err(|e| BuildError::Dockerfile {
        file: ".dockerignore".into(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })
}

struct StoreResolver<'a> {
    registry: crate::registry::resolve::ImageResolver<'a>,
    images: HashMap<String, ResolvedImage>,
    dirs: Vec<String>,
    gate: Option<&'a crate::gate::Gatekeeper>,
}

impl Resolver for StoreResolver<'_> {
    fn image(&self, reference: &str) -> Result<Option<ResolvedImage>, String> {
        if let Some(i) = self.images.get(reference) {
            return Ok(Some(i.clone()));
        }
        match self.gate {
            Some(g) => self.registry.resolve(&g.source_image(reference)?),
            None => self.registry.resolve(reference),
        }
    }

    fn has_context(&self, name: &str) -> bool {
        self.dirs.iter().any(|d| d == name)
    }
}
