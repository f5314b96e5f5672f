//! Command-line surface, shaped like `docker buildx build` and `buildctl debug`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_engine::builder::{BuildRequest, ContextSource, Engine};
use kiln_engine::frontend::parser;
use kiln_engine::frontend::shell::Lexer;
use kiln_engine::oci::compress::Compression;
use kiln_engine::output::OutputSpec;
use kiln_engine::progress::Progress;
use kiln_engine::store::Store;

/// kiln builds container images from Dockerfiles: every step sandboxed, every result cached
/// by content, every image reproducible bit for bit.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Store directory (cache, layers, local images).
    #[arg(long, global = true, env = "KILN_ROOT", default_value = Store::DEFAULT_ROOT, value_name = "DIR")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image from a Dockerfile.
    ///
    /// Examples:
    ///   kiln build -t app:1 .
    ///   kiln build -f build/Dockerfile --target test --build-arg VERSION=1.2 .
    ///   kiln build -o type=oci,dest=app.tar -o type=local,dest=rootfs .
    ///   kiln build --build-context base=oci-layout://./base-layout .
    #[command(verbatim_doc_comment)]
    Build(Box<BuildArgs>),
    /// List images in the local image store.
    Images,
    /// Show disk usage of the store.
    Du,
    /// Remove build cache: every cached step result and layer no image references.
    Prune {
        /// Also remove every image from the local image store.
        #[arg(long)]
        all: bool,
    },
    /// Signing keys for attestations.
    #[command(subcommand)]
    Key(crate::attest::KeyCommand),
    /// Verify an image's signed attestations: signature over the exact DSSE bytes, subject =
    /// the image manifest's digest, predicate type, builder id, source. Exit 0, or 1 with every
    /// reason.
    ///
    /// Examples:
    ///   kiln verify oci-archive:app.tar --key builder.pub
    ///   kiln verify oci:layout:app --key builder.pub --builder-id https://ci.example/kiln
    ///   kiln verify app:1 --key builder.pub --predicate-type https://slsa.dev/provenance/v1
    #[command(verbatim_doc_comment)]
    Verify(Box<crate::attest::VerifyArgs>),
    /// Print summaries of an image's provenance and SBOMs (signed or not).
    Inspect(crate::attest::InspectArgs),
    /// Sigstore bundles: verify one offline against an artifact (sigstore-conformance's
    /// protocol).
    #[command(subcommand)]
    Sigstore(crate::sigstore::SigstoreCommand),
    /// Talk to a kilnd: its info, your tenant's builds, cancel one (builds: `kiln build
    /// --addr`).
    #[command(subcommand)]
    Remote(crate::remote::RemoteCommand),
    /// Operate a kilnd on this host through its admin socket (root or kilnd's user):
    /// health, a store integrity check, every tenant's builds.
    ///
    /// Examples:
    ///   kiln admin health --socket /var/lib/kilnd/admin.sock
    ///   kiln admin fsck          # exit 1 and each problem printed if the store is damaged
    ///   kiln admin builds --json
    #[command(subcommand, verbatim_doc_comment)]
    Admin(crate::admin::AdminCommand),
    /// Rego policies: evaluate a gate, run a policy's tests, print a gate's input schema.
    #[command(subcommand)]
    Policy(crate::policy::PolicyCommand),
    /// Development PKI for kilnd's mutual TLS: a CA, server and tenant client certificates.
    /// Production: your own CA, SPIFFE, short-lived certificates (README).
    ///
    /// Examples:
    ///   kiln pki init --dir pki
    ///   kiln pki issue --dir pki server --name kilnd
    ///   kiln pki issue --dir pki client --name alpha --uri spiffe://kiln.test/tenant/alpha
    #[command(subcommand, verbatim_doc_comment)]
    Pki(crate::pki::PkiCommand),
    /// Debugging aids, like `buildctl debug`.
    #[command(subcommand)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Print a Dockerfile's parse tree in BuildKit's dump format.
    DumpAst {
        /// The Dockerfile.
        file: PathBuf,
    },
    /// Print a word's expansion with Dockerfile rules (exit 1 with the error if it fails).
    Expand {
        /// Variables, K=V (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Escape character.
        #[arg(long, default_value = "\\")]
        escape: char,
        /// Split the result into words (like RUN/EXPOSE arguments) and print one per line.
        #[arg(long)]
        words: bool,
        /// The word.
        word: String,
    },
    /// Print the build graph a Dockerfile converts to, as JSON.
    DumpGraph(PlanArgs),
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Build-time variable (repeatable).
    #[arg(long = "build-arg", value_name = "K=V", value_parser = parse_kv)]
    build_args: Vec<(String, String)>,
    /// Stage to build.
    #[arg(long)]
    target: Option<String>,
    /// Extra context: NAME=DIR, NAME=oci-layout://PATH[@sha256:…] or NAME=docker-archive://PATH.tar.
    #[arg(long = "build-context", value_name = "NAME=SRC", value_parser = parse_context)]
    build_contexts: Vec<(String, ContextSource)>,
    /// DANGEROUS: grant an entitlement that weakens isolation. `network.host` gives steps that
    /// ask for `RUN --network=host` the host's network (default: no network at all);
    /// `security.insecure` lets `RUN --security=insecure` steps run with every capability,
    /// mount and namespaces allowed and no landlock: root in such a step is root on the host
    /// (like `docker run --privileged`); grant it only to trusted Dockerfiles.
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_parser = ["network.host", "security.insecure"])]
    allow: Vec<String>,
    /// The build context directory.
    context: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProgressMode {
    /// A live view on a terminal, plain lines otherwise.
    Auto,
    /// The live view.
    Tty,
    /// Plain lines (`#N …`, like BuildKit).
    Plain,
    /// One JSON event per line.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LayerCompression {
    Gzip,
    Zstd,
}

#[derive(Debug, Args)]
struct BuildArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// Name the image in the local image store (repeatable).
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// Do not use cached step results.
    #[arg(long)]
    no_cache: bool,
    /// Output: type=oci|oci-dir|docker|local|tar,dest=PATH, or type=registry,ref=REG/NAME:TAG
    /// (alias type=image,name=REG/NAME:TAG,push=true) to push (repeatable).
    #[arg(short = 'o', long = "output", value_name = "SPEC", value_parser = parse_output)]
    outputs: Vec<OutputSpec>,
    /// Progress output.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Run at most N steps at once. Without it: as many CPU-busy steps as there are CPUs,
    /// and a RUN step that waits without using the CPU (sleep, network, a slow pipe) lends
    /// its slot to the next ready step, up to 4 × CPUs steps in all.
    #[arg(long, value_name = "N")]
    max_parallelism: Option<usize>,
    /// Layer compression.
    #[arg(long, value_enum, default_value = "gzip")]
    compression: LayerCompression,
    /// Print only the image digest on stdout.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// How RUN steps get their root file system: overlayfs, or a private copy of the parent
    /// layers diffed afterwards (slower; for kernels without overlayfs).
    #[arg(long, value_enum, default_value = "auto", env = "KILN_SNAPSHOTTER")]
    snapshotter: SnapshotterArg,
    /// Time limit for each `ADD <url>` download, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "KILN_FETCH_TIMEOUT",
        default_value_t = 600
    )]
    fetch_timeout: u64,
    /// Kill a RUN step, with every process it started, when it runs longer than this many
    /// seconds (0: no limit).
    #[arg(
        long,
        value_name = "SECONDS",
        env = "KILN_STEP_TIMEOUT",
        default_value_t = 0
    )]
    step_timeout: u64,
    /// Memory limit of each RUN step's cgroup, e.g. `512m`, `4g`, or `max` for none. A step
    /// that exceeds it is OOM-killed and the build says so (default: half of the host's RAM).
    #[arg(long, value_name = "BYTES", env = "KILN_MEMORY", value_parser = parse_memory)]
    memory: Option<MaxOr<u64>>,
    /// Most processes and threads a RUN step may have at once, or `max` for no limit
    /// (default: 4096; stops fork bombs).
    #[arg(long, value_name = "N", env = "KILN_PIDS_LIMIT", value_parser = parse_max_or::<u64>)]
    pids_limit: Option<MaxOr<u64>>,
    /// Run RUN steps in a user namespace, so root in a step is an unprivileged id range on the
    /// host: `default` (100000:100000:65536, as dockerd) or `UID:GID:COUNT`. Needs the copying
    /// snapshotter (an overlay mount can not be idmapped), which it selects.
    #[arg(long, value_name = "RANGE", env = "KILN_USERNS_REMAP", value_parser = parse_userns)]
    userns_remap: Option<kiln_sandbox::IdMap>,
    /// CPU time of each RUN step, in CPUs (e.g. `1.5`), or `max` for no limit (default).
    #[arg(long, value_name = "CPUS", env = "KILN_CPUS", value_parser = parse_max_or::<f64>)]
    cpus: Option<MaxOr<f64>>,
    /// A secret for `RUN --mount=type=secret` (repeatable): `id=ID,src=PATH` (a file) or
    /// `id=ID,env=VAR` (an environment variable); `type=file|env` as in buildx. Values stay in
    /// memory; the image, the cache and the logs never hold them.
    #[arg(long = "secret", value_name = "SPEC", value_parser = crate::secrets::parse_secret)]
    secrets: Vec<crate::secrets::SecretSpec>,
    /// An SSH agent for `RUN --mount=type=ssh` (repeatable): `default` or `ID` (the agent at
    /// `$SSH_AUTH_SOCK`), or `ID=SOCKET` (an agent's socket). The step gets a socket that
    /// forwards the agent protocol; no key ever enters the step.
    #[arg(long = "ssh", value_name = "ID[=SOCKET]", value_parser = crate::ssh::parse_ssh)]
    ssh: Vec<crate::ssh::SshSpec>,
    #[command(flatten)]
    attest: crate::attest::AttestArgs,
    #[command(flatten)]
    registry: crate::registry::RegistryArgs,
    /// A Rego policy (a .rego file, or a directory of them with data.json) that gates the
    /// build: kiln.admission before any step, kiln.source for each base image and download
    /// (it may pin a tag to a digest), kiln.exec for each RUN step, kiln.export before anything
    /// is written or pushed. A deny, or any error in the policy, stops the build (exit 1) with
    /// every message; every decision is recorded in the provenance. See `kiln policy --help`.
    #[arg(long, value_name = "PATH", env = "KILN_POLICY")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    remote: crate::remote::RemoteArgs,
}

/// `default` or `UID:GID:COUNT`.
fn parse_userns(s: &str) -> Result<kiln_sandbox::IdMap, String> {
    if s == "default" {
        return Ok(kiln_sandbox::IdMap::DEFAULT);
    }
    let bad = || format!("{s:?} is not `default` or UID:GID:COUNT (e.g. 100000:100000:65536)");
    let parts: Vec<u32> = s
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [host_uid, host_gid, size] if size > 0 && host_uid > 0 && host_gid > 0 => {
            if host_uid.checked_add(size).is_none() || host_gid.checked_add(size).is_none() {
                return Err(bad());
            }
            Ok(kiln_sandbox::IdMap {
                host_uid,
                host_gid,
                size,
            })
        }
        _ => Err(format!(
            "{}; the range must not start at host id 0 (that would keep root as root)",
            bad()
        )),
    }
}

/// A limit value, or `max` for none (cgroup syntax).
#[derive(Debug, Clone, Copy)]
enum MaxOr<T> {
    Max,
    Value(T),
}

impl<T> MaxOr<T> {
    fn into_option(self) -> Option<T> {
        match self {
            Self::Max => None,
            Self::Value(v) => Some(v),
        }
    }
}

fn parse_max_or<T: std::str::FromStr>(s: &str) -> Result<MaxOr<T>, String> {
    if s == "max" {
        return Ok(MaxOr::Max);
    }
    s.parse()
        .map(MaxOr::Value)
        .map_err(|_| format!("{s:?} is not a number or `max`"))
}

/// `1073741824`, `512k`, `64m`, `1.5g`, `2GiB`, `max`. Suffixes are powers of 1024, as
/// Docker's `--memory`.
fn parse_memory(s: &str) -> Result<MaxOr<u64>, String> {
    if s == "max" {
        return Ok(MaxOr::Max);
    }
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, shift) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 10),
        Some((i, 'm')) => (&lower[..i], 20),
        Some((i, 'g')) => (&lower[..i], 30),
        Some((i, 't')) => (&lower[..i], 40),
        _ => (lower, 0),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512m, 4g, or max)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{s:?} is not a size"));
    }
    Ok(MaxOr::Value((n * (1u64 << shift) as f64) as u64))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SnapshotterArg {
    /// overlayfs when available, else copy.
    Auto,
    /// overlayfs.
    Overlay,
    /// Copy and diff.
    Copy,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => {
            // `--build-arg NAME` takes the value from the environment, like docker.
            if !s.is_empty() && !s.contains('=') {
                return std::env::var(s).map(|v| (s.to_owned(), v)).map_err(|_| {
                    format!("{s:?}: expected KEY=VALUE (or a KEY set in the environment)")
                });
            }
            Err(format!("{s:?}: expected KEY=VALUE"))
        }
    }
}

fn parse_context(s: &str) -> Result<(String, ContextSource), String> {
    ContextSource::parse_flag(s).map_err(|e| e.reason)
}

fn parse_output(s: &str) -> Result<OutputSpec, String> {
    OutputSpec::parse(s).map_err(|e| e.reason)
}

/// A command failure, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    err: anyhow::Error,
    code: u8,
    silent: bool,
}

impl Failure {
    /// A failure whose reasons were already printed: only the exit code remains.
    pub fn silent(code: u8) -> Self {
        Self {
            err: anyhow::anyhow!("failed"),
            code,
            silent: true,
        }
    }

    /// Whether the message was already printed.
    pub fn is_silent(&self) -> bool {
        self.silent
    }

    /// 1 for build failures, 2 for usage errors.
    pub fn exit_code(&self) -> u8 {
        self.code
    }

    /// The error and its causes, each cause added only if the text so far does not already
    /// say it (many of kiln's errors include their cause in their own message).
    pub fn message(&self) -> String {
        let mut out = String::new();
        for cause in self.err.chain() {
            let text = cause.to_string();
            if out.contains(&text) {
                continue;
            }
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        out
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() {
            write!(f, "{:#}", self.err)
        } else {
            write!(f, "{}", self.err)
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            err: e.into(),
            code: 1,
            silent: false,
        }
    }
}

pub(crate) fn usage(msg: String) -> Failure {
    Failure {
        err: anyhow::anyhow!(msg),
        code: 2,
        silent: false,
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Build(b) => build(&cli.root, *b),
        Command::Images => images(&cli.root),
        Command::Du => du(&cli.root),
        Command::Prune { all } => prune(&cli.root, all),
        Command::Key(k) => crate::attest::key(k),
        Command::Verify(v) => crate::attest::verify(&cli.root, *v),
        Command::Inspect(i) => crate::attest::inspect(&cli.root, i),
        Command::Policy(p) => crate::policy::run(p),
        Command::Sigstore(s) => crate::sigstore::run(s),
        Command::Remote(r) => crate::remote::run(r),
        Command::Admin(a) => crate::admin::run(a),
        Command::Pki(p) => crate::pki::run(p),
        Command::Debug(DebugCommand::DumpAst { file }) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| usage(format!("{}: {e}", file.display())))?;
            let ast = parser::parse(&text).map_err(|e| {
                anyhow::anyhow!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message)
            })?;
            print!("{}", parser::dump(&ast));
            Ok(())
        }
        Command::Debug(DebugCommand::Expand {
            env,
            escape,
            words,
            word,
        }) => {
            let mut vars: Vec<(String, String)> = Vec::new();
            for kv in env {
                vars.push(parse_kv(&kv).map_err(usage)?);
            }
            let lexer = Lexer::new(escape);
            if words {
                for w in lexer.process_words(&word, &vars)? {
                    println!("{w}");
                }
            } else {
                println!("{}", lexer.process_word(&word, &vars)?);
            }
            Ok(())
        }
        Command::Debug(DebugCommand::DumpGraph(p)) => {
            let req = request(&p)?;
            // Planning may import image contexts into the store, so it needs one.
            let engine = open_engine(&cli.root)?;
            let planned = engine.plan(&req)?;
            let json = planned.graph.to_json(&[planned.target]);
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(())
        }
    }
}

fn request(p: &PlanArgs) -> Result<BuildRequest, Failure> {
    if !p.context.is_dir() {
        return Err(usage(format!(
            "build context {} is not a directory",
            p.context.display()
        )));
    }
    let mut req = BuildRequest::new(p.context.clone());
    req.dockerfile = p.file.clone();
    req.build_args = p.build_args.iter().cloned().collect::<BTreeMap<_, _>>();
    req.target = p.target.clone();
    req.build_contexts = p.build_contexts.iter().cloned().collect();
    req.allow_host_network = p.allow.iter().any(|a| a == "network.host");
    req.allow_insecure = p.allow.iter().any(|a| a == "security.insecure");
    req.epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.parse().map_err(|_| {
            usage(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
            ))
        })?,
        _ => 0,
    };
    Ok(req)
}

fn open_engine(root: &std::path::Path) -> Result<Engine, Failure> {
    let store = Store::open(root)?;
    let exe = std::env::current_exe()?;
    Ok(Engine::new(store, exe))
}

/// The progress view for `--progress` and `-q` (embedded and remote builds alike).
fn progress_mode(progress: ProgressMode, quiet: bool) -> crate::ui::Mode {
    match progress {
        _ if quiet => crate::ui::Mode::Quiet,
        ProgressMode::Auto => {
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                crate::ui::Mode::Tty
            } else {
                crate::ui::Mode::Plain
            }
        }
        ProgressMode::Tty => crate::ui::Mode::Tty,
        ProgressMode::Plain => crate::ui::Mode::Plain,
        ProgressMode::Json => crate::ui::Mode::Json,
    }
}

fn build(root: &std::path::Path, b: BuildArgs) -> Result<(), Failure> {
    if let Some(remote) = b.remote.remote()? {
        return remote_build(&remote, b);
    }
    let mut req = request(&b.plan)?;
    req.tags = b.tags.clone();
    req.no_cache = b.no_cache;
    req.secrets = crate::secrets::load(&b.secrets).map_err(usage)?;
    req.ssh = crate::ssh::load(&b.ssh).map_err(usage)?;
    req.attest = crate::attest::options(&b.attest)?;
    if let Some(p) = &b.policy {
        req.policy = Some(std::sync::Arc::new(crate::policy::load(p)?));
    }
    if b.fetch_timeout == 0 {
        return Err(usage("--fetch-timeout must be at least 1 second".into()));
    }
    req.fetch_timeout = std::time::Duration::from_secs(b.fetch_timeout);
    req.step_timeout = (b.step_timeout > 0).then(|| std::time::Duration::from_secs(b.step_timeout));
    if let Some(m) = b.memory {
        req.step_limits.memory_bytes = m.into_option();
    }
    if let Some(p) = b.pids_limit {
        req.step_limits.pids = p.into_option();
    }
    if let Some(c) = b.cpus {
        req.step_limits.cpu = match c.into_option() {
            None => None,
            Some(cpus) => Some(
                kiln_sandbox::CpuLimit::from_cpus(cpus)
                    .map_err(|e| usage(format!("--cpus: {e}")))?,
            ),
        };
    }
    if let Some(map) = b.userns_remap {
        if matches!(b.snapshotter, SnapshotterArg::Overlay) {
            return Err(usage(
                "--userns-remap needs the copying snapshotter (an overlay mount can not be idmapped); drop --snapshotter overlay".into(),
            ));
        }
        req.userns = Some(map);
    }
    req.step_limits
        .validate()
        .map_err(|e| usage(format!("step limits: {e}")))?;
    req.outputs = b.outputs.clone();
    crate::registry::apply(&b.registry, &mut req);
    if let Some(n) = b.max_parallelism {
        if n == 0 {
            return Err(usage("--max-parallelism must be at least 1".into()));
        }
        req.max_parallelism = n;
        req.lend_idle_slots = false;
    }
    req.snapshotter = match b.snapshotter {
        SnapshotterArg::Auto => kiln_engine::ops::Snapshotter::Auto,
        SnapshotterArg::Overlay => kiln_engine::ops::Snapshotter::Overlay,
        SnapshotterArg::Copy => kiln_engine::ops::Snapshotter::Copy,
    };
    if req.userns.is_some() {
        req.snapshotter = kiln_engine::ops::Snapshotter::Copy;
    }
    req.compression = match b.compression {
        LayerCompression::Gzip => Compression::Gzip,
        LayerCompression::Zstd => Compression::Zstd,
    };
    if !rustix::process::geteuid().is_root() {
        return Err(anyhow::anyhow!(
            "kiln build needs root in this version: steps run in new namespaces on overlayfs \
             and files keep their owners (run it with sudo)"
        )
        .into());
    }
    // Steps a kiln process killed outright (SIGKILL, OOM) left running, with nothing to time
    // them out: their owner's pid is gone. End them before this build adds its own.
    if let Ok(removed) = kiln_sandbox::remove_orphaned_cgroups()
        && !removed.is_empty()
    {
        eprintln!(
            "kiln: killed the steps a kiln process that is gone left running ({} cgroup directories removed)",
            removed.len()
        );
    }
    let engine = open_engine(root)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(req.max_parallelism.clamp(1, 64))
        .build()?;
    let (progress, rx) = Progress::channel();
    let mode = progress_mode(b.progress, b.quiet);
    let result = rt.block_on(async {
        let ui = tokio::spawn(crate::ui::render(rx, mode));
        let r = engine.build(&req, progress).await;
        let _ = ui.await;
        r
    });
    // After a failure, engine-side work of cancelled steps (a large COPY, an unpack, a
    // download) may still be running on blocking threads: do not wait for it to finish.
    rt.shutdown_background();
    let result = result?;
    if let Some(p) = &req.policy {
        let denied = result.policy_decisions.iter().filter(|d| !d.allow).count();
        eprintln!(
            "policy {}: {} decisions, {} denied",
            p.digest(),
            result.policy_decisions.len(),
            denied
        );
    }
    for w in &result.warnings {
        eprintln!("WARN: {w}");
    }
    if !result.unused_build_args.is_empty() {
        eprintln!(
            "warning: build-args not consumed by any ARG: {}",
            result.unused_build_args.join(", ")
        );
    }
    if b.quiet {
        println!("{}", result.manifest_digest);
    } else {
        for (url, digest) in &result.fetched {
            eprintln!("fetched {url} {digest}");
        }
        for t in &result.tags {
            eprintln!("naming to {t}");
        }
        for (r, d) in &result.pushed {
            eprintln!("pushed {r}@{d}");
        }
        if let Some(index) = &result.index_digest {
            let signed = result.attestations.iter().filter(|a| a.1).count();
            let kinds: Vec<&str> = result
                .attestations
                .iter()
                .map(|a| kiln_engine::attest::file_stem(&a.0))
                .collect();
            if signed == 0 {
                eprintln!(
                    "attestations ({}) attached UNSIGNED in index {index}: pass --sign-key to sign them",
                    kinds.join(", ")
                );
            } else {
                eprintln!(
                    "attestations ({}) signed and attached in index {index}",
                    kinds.join(", ")
                );
            }
            for f in &result.attest_files {
                eprintln!("wrote {}", f.display());
            }
        }
        eprintln!(
            "built {} ({} steps run, {} cached)",
            result.manifest_digest, result.executed, result.cached
        );
        println!("{}", result.manifest_digest);
    }
    Ok(())
}

/// `kiln build --addr`: the same flags, run by kilnd for the tenant of the client
/// certificate; the flags that belong to the daemon (its policy, keys, limits, registries)
/// are refused by name.
fn remote_build(remote: &kiln_daemon::client::Remote, b: BuildArgs) -> Result<(), Failure> {
    let mut unsupported: Vec<&str> = Vec::new();
    if !b.tags.is_empty() {
        unsupported.push("-t (kilnd keeps no names for you: use -o)");
    }
    if b.policy.is_some() {
        unsupported.push("--policy (kilnd applies your tenant's policy)");
    }
    if b.memory.is_some() || b.pids_limit.is_some() || b.cpus.is_some() {
        unsupported.push("--memory/--pids-limit/--cpus (your tenant's limits apply)");
    }
    if b.userns_remap.is_some() || !matches!(b.snapshotter, SnapshotterArg::Auto) {
        unsupported.push("--userns-remap/--snapshotter");
    }
    let mut named = Vec::new();
    for (name, source) in &b.plan.build_contexts {
        match source {
            ContextSource::Dir(dir) => named.push((name.clone(), dir.clone())),
            _ => unsupported
                .push("--build-context NAME=oci-layout://|docker-archive:// (directories only)"),
        }
    }
    unsupported.extend(b.attest.remote_unsupported());
    unsupported.extend(crate::registry::remote_unsupported(&b.registry));
    if !unsupported.is_empty() {
        return Err(usage(format!(
            "not available with --addr yet: {}",
            unsupported.join(", ")
        )));
    }
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.parse().map_err(|_| {
            usage(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
            ))
        })?,
        _ => 0,
    };
    let header = kiln_daemon::proto::BuildHeader {
        build_args: b.plan.build_args.iter().cloned().collect(),
        target: b.plan.target.clone().unwrap_or_default(),
        no_cache: b.no_cache,
        entitlements: b.plan.allow.clone(),
        max_parallelism: b
            .max_parallelism
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or(0),
        source_date_epoch: epoch,
        compression: match b.compression {
            LayerCompression::Gzip => "gzip".into(),
            LayerCompression::Zstd => "zstd".into(),
        },
        ..Default::default()
    };
    crate::remote::build(
        remote,
        crate::remote::RemoteBuild {
            context: b.plan.context.clone(),
            dockerfile: b.plan.file.clone(),
            header,
            outputs: b.outputs.clone(),
            secrets: crate::secrets::values(&b.secrets).map_err(usage)?,
            named,
            ssh: {
                let agents = crate::ssh::load(&b.ssh).map_err(usage)?;
                agents
                    .ids()
                    .filter_map(|id| Some((id.to_owned(), agents.get(id)?.to_path_buf())))
                    .collect()
            },
            mode: progress_mode(b.progress, b.quiet),
            quiet: b.quiet,
        },
    )
}

fn images(root: &std::path::Path) -> Result<(), Failure> {
    let store = Store::open(root)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<40} {:<20} {:>10}", "NAME", "ID", "SIZE")?;
    for (name, rec) in store.meta.images()? {
        let size: u64 = kiln_engine::image::load(&store, &rec.manifest)
            .map(|i| i.manifest.layers.iter().map(|l| l.size).sum::<u64>() + i.manifest.config.size)
            .unwrap_or(0);
        let id = rec.manifest.to_string();
        writeln!(
            out,
            "{:<40} {:<20} {:>10}",
            name,
            &id[..id.len().min(19)],
            human(size)
        )?;
    }
    Ok(())
}

fn du(root: &std::path::Path) -> Result<(), Failure> {
    let store = Store::open(root)?;
    let u = kiln_engine::gc::usage(&store)?;
    println!("{:<24} {:>10} {:>8}", "TYPE", "SIZE", "COUNT");
    println!(
        "{:<24} {:>10} {:>8}",
        "layers (snapshots)",
        human(u.snapshot_bytes),
        u.snapshots
    );
    println!(
        "{:<24} {:>10} {:>8}",
        "blobs (content store)",
        human(u.blob_bytes),
        u.blobs
    );
    println!("{:<24} {:>10} {:>8}", "cache records", "-", u.cache_records);
    println!("{:<24} {:>10} {:>8}", "images", "-", u.images);
    println!(
        "{:<24} {:>10} {:>8}",
        "cache mounts",
        human(u.cache_mount_bytes),
        u.cache_mounts
    );
    println!(
        "{:<24} {:>10} {:>8}",
        "reclaimable",
        human(u.reclaimable_bytes),
        "-"
    );
    Ok(())
}

fn prune(root: &std::path::Path, all: bool) -> Result<(), Failure> {
    let store = Store::open(root)?;
    let r = kiln_engine::gc::prune(&store, all)?;
    println!(
        "removed {} cache records, {} layers, {} blobs, {} cache mounts; reclaimed {}",
        r.cache_records,
        r.snapshots,
        r.blobs,
        r.cache_mounts,
        human(r.bytes)
    );
    Ok(())
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
}

#[cfg(test)]
mod limit_flag_tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_like_dockers() {
        let v = |s: &str| match parse_memory(s) {
            Ok(MaxOr::Value(n)) => Some(n),
            _ => None,
        };
        assert_eq!(v("1048576"), Some(1 << 20));
        assert_eq!(v("512k"), Some(512 << 10));
        assert_eq!(v("64m"), Some(64 << 20));
        assert_eq!(v("64MiB"), Some(64 << 20));
        assert_eq!(v("1.5g"), Some(3 << 29));
        assert_eq!(v("2GB"), Some(2 << 30));
        assert!(matches!(parse_memory("max"), Ok(MaxOr::Max)));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("-1m").is_err());
        assert!(matches!(parse_max_or::<u64>("64"), Ok(MaxOr::Value(64))));
        assert!(parse_max_or::<u64>("sixty").is_err());
    }
}
