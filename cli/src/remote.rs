//! `kiln build --addr …` and `kiln remote …`: the same build through kilnd over mutual TLS.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use kiln_daemon::client::{self, BuildSpec, ClientError, Remote};
use kiln_daemon::proto;
use kiln_engine::output::OutputSpec;

use crate::commands::{Failure, usage};

/// Where kilnd is, and the client's certificate.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// Build on this kilnd (`https://HOST:PORT`) instead of in this process.
    #[arg(long, value_name = "URL", env = "KILN_ADDR")]
    pub addr: Option<String>,
    /// CA certificate(s) kilnd's server certificate must chain to (PEM).
    #[arg(long, value_name = "FILE", env = "KILN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The client certificate kilnd maps to a tenant (PEM).
    #[arg(long, value_name = "FILE", env = "KILN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", env = "KILN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl RemoteArgs {
    /// The daemon to reach, when `--addr` is given.
    pub fn remote(&self) -> Result<Option<Remote>, Failure> {
        let Some(addr) = &self.addr else {
            return Ok(None);
        };
        let ca = self
            .tls_ca
            .clone()
            .ok_or_else(|| usage("--addr needs --tls-ca (the CA of kilnd's certificate)".into()))?;
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err(usage("--tls-cert and --tls-key go together".into())),
        };
        Ok(Some(Remote {
            addr: addr.clone(),
            ca,
            identity,
        }))
    }
}

/// `kiln remote …` commands.
#[derive(Debug, clap::Subcommand)]
pub enum RemoteCommand {
    /// Show the daemon's version, your tenant and the kernel features builds get.
    Info(RemoteArgs),
    /// List your tenant's builds (running, queued, recent).
    Ls(RemoteArgs),
    /// Disk usage: your tenant's cache mounts and context copies, and the shared store.
    Du(RemoteArgs),
    /// Remove your tenant's cache mounts and context copies that no build is using.
    Prune(RemoteArgs),
    /// Cancel one of your tenant's builds.
    Cancel {
        /// The build id (`kiln remote ls`).
        build_id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?)
}

fn client_failure(e: ClientError) -> Failure {
    match e {
        ClientError::Usage(m) => usage(m),
        other => anyhow::anyhow!("{other}").into(),
    }
}

fn need_remote(args: &RemoteArgs) -> Result<Remote, Failure> {
    args.remote()?
        .ok_or_else(|| usage("--addr https://HOST:PORT (or KILN_ADDR) is required".into()))
}

/// Runs a `kiln remote` command.
pub fn run(cmd: RemoteCommand) -> Result<(), Failure> {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            RemoteCommand::Info(args) => {
                let mut c = client::connect(&need_remote(&args)?)
                    .await
                    .map_err(client_failure)?;
                let i = c
                    .info(proto::InfoRequest {})
                    .await
                    .map_err(|s| client_failure(client::status_error(&s)))?
                    .into_inner();
                let k = i.kernel.unwrap_or_default();
                println!("kilnd {}", i.version);
                println!("tenant: {} (identity {})", i.tenant, i.identity);
                println!(
                    "entitlements: {}",
                    if i.entitlements.is_empty() {
                        "none".to_owned()
                    } else {
                        i.entitlements.join(", ")
                    }
                );
                println!("concurrent builds: {}", i.max_concurrent_builds);
                println!(
                    "kernel {}: landlock ABI {}, cgroup {}, user namespaces {}, overlayfs {}",
                    k.release, k.landlock_abi, k.cgroup_mode, k.user_namespaces, k.overlayfs
                );
                Ok(())
            }
            RemoteCommand::Ls(args) => {
                let mut c = client::connect(&need_remote(&args)?)
                    .await
                    .map_err(client_failure)?;
                let l = c
                    .list_builds(proto::ListBuildsRequest {})
                    .await
                    .map_err(|s| client_failure(client::status_error(&s)))?
                    .into_inner();
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<26} {:<10} {:<12} IMAGE",
                    "BUILD", "STATE", "CREATED"
                )?;
                for b in l.builds {
                    writeln!(
                        out,
                        "{:<26} {:<10} {:<12} {}{}",
                        b.build_id,
                        b.state,
                        b.created,
                        b.manifest_digest,
                        if b.error.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", b.error)
                        }
                    )?;
                }
                Ok(())
            }
            RemoteCommand::Du(args) => {
                let mut c = client::connect(&need_remote(&args)?)
                    .await
                    .map_err(client_failure)?;
                let u = c
                    .disk_usage(proto::DiskUsageRequest {})
                    .await
                    .map_err(|s| client_failure(client::status_error(&s)))?
                    .into_inner();
                println!("{:<28} {:>14} {:>8}", "TYPE", "BYTES", "COUNT");
                println!(
                    "{:<28} {:>14} {:>8}",
                    "cache mounts (yours)", u.cache_mount_bytes, u.cache_mounts
                );
                println!(
                    "{:<28} {:>14} {:>8}",
                    "context copies (yours)", u.context_bytes, u.context_copies
                );
                println!(
                    "{:<28} {:>14} {:>8}",
                    "layers and blobs (shared)", u.shared_bytes, "-"
                );
                Ok(())
            }
            RemoteCommand::Prune(args) => {
                let mut c = client::connect(&need_remote(&args)?)
                    .await
                    .map_err(client_failure)?;
                let p = c
                    .prune(proto::PruneRequest {})
                    .await
                    .map_err(|s| client_failure(client::status_error(&s)))?
                    .into_inner();
                println!(
                    "removed {} cache mounts and {} context copies; reclaimed {} bytes",
                    p.cache_mounts, p.context_copies, p.bytes
                );
                Ok(())
            }
            RemoteCommand::Cancel { build_id, remote } => {
                let mut c = client::connect(&need_remote(&remote)?)
                    .await
                    .map_err(client_failure)?;
                c.cancel(proto::CancelRequest {
                    build_id: build_id.clone(),
                })
                .await
                .map_err(|s| client_failure(client::status_error(&s)))?;
                eprintln!("cancelled {build_id}");
                Ok(())
            }
        }
    })
}

/// The `-o` spec as `kiln build` parses it, with the client's destination.
fn spec_string(o: &OutputSpec) -> Result<String, Failure> {
    Ok(match o {
        OutputSpec::Oci { dest } => format!("type=oci,dest={}", dest.display()),
        OutputSpec::OciDir { dest } => format!("type=oci-dir,dest={}", dest.display()),
        OutputSpec::Docker { dest } => format!("type=docker,dest={}", dest.display()),
        OutputSpec::Local { dest } => format!("type=local,dest={}", dest.display()),
        OutputSpec::Tar { dest } => format!("type=tar,dest={}", dest.display()),
        _ => {
            return Err(usage(
                "-o type=registry is not available through kilnd yet: export with type=oci and \
                 push from here"
                    .into(),
            ));
        }
    })
}

/// Everything `kiln build --addr` needs from the build's flags.
#[derive(Debug)]
pub struct RemoteBuild {
    /// Context directory.
    pub context: PathBuf,
    /// `-f`.
    pub dockerfile: Option<PathBuf>,
    /// The header fields the flags set.
    pub header: proto::BuildHeader,
    /// `-o`.
    pub outputs: Vec<OutputSpec>,
    /// Secret values by id.
    pub secrets: Vec<(String, Vec<u8>)>,
    /// `--build-context NAME=DIR`.
    pub named: Vec<(String, PathBuf)>,
    /// `--ssh`: agent sockets by id.
    pub ssh: Vec<(String, PathBuf)>,
    /// The progress view (the same as an embedded build's).
    pub mode: crate::ui::Mode,
    /// Print only the digest.
    pub quiet: bool,
}

/// Runs a build on kilnd and prints what `kiln build` prints.
pub fn build(remote: &Remote, mut b: RemoteBuild) -> Result<(), Failure> {
    b.header.outputs = b
        .outputs
        .iter()
        .map(spec_string)
        .collect::<Result<_, _>>()?;
    let spec = BuildSpec {
        context: b.context.clone(),
        dockerfile: b.dockerfile.clone(),
        header: b.header.clone(),
        secrets: b.secrets,
        named: b.named,
        ssh: b.ssh,
    };
    let rt = runtime()?;
    let (mode, quiet) = (b.mode, b.quiet);
    let (result, stats) = rt
        .block_on(async {
            // kilnd's events go to the same view an embedded build uses; the client's own
            // (accepted, context) are printed beside them.
            let (events, rx) = tokio::sync::mpsc::unbounded_channel();
            let ui = tokio::spawn(crate::ui::render(rx, mode));
            let r = async {
                let mut c = client::connect(remote).await?;
                client::build(&mut c, spec, |e| {
                    match serde_json::from_str::<kiln_engine::progress::Event>(e) {
                        Ok(event) => {
                            let _ = events.send(event);
                        }
                        Err(_) => print_event(e, mode),
                    }
                })
                .await
            }
            .await;
            drop(events);
            let _ = ui.await;
            r
        })
        .map_err(client_failure)?;
    if !quiet {
        eprintln!(
            "context: sent {} of {} bytes ({} of {} files; {} bytes already on kilnd)",
            stats.bytes_sent,
            stats.context_bytes,
            stats.files_sent,
            stats.files,
            stats.reused_bytes
        );
        for w in &result.warnings {
            eprintln!("WARN: {w}");
        }
        if !result.unused_build_args.is_empty() {
            eprintln!(
                "warning: build-args not consumed by any ARG: {}",
                result.unused_build_args.join(", ")
            );
        }
        if let Some(index) = &result.index_digest {
            let signed = result.attestations.iter().filter(|a| a.signed).count();
            eprintln!(
                "attestations ({}) {} in index {index}",
                result.attestations.len(),
                if signed == 0 {
                    "attached UNSIGNED (kilnd has no signing key)"
                } else {
                    "signed by kilnd and attached"
                }
            );
        }
        eprintln!(
            "built {} on {} ({} steps run, {} cached)",
            result.manifest_digest, remote.addr, result.executed, result.cached
        );
    }
    println!("{}", result.manifest_digest);
    Ok(())
}

/// One of the client's own events (accepted, context; kilnd's go to the view): as is in JSON
/// mode, else a plain line.
fn print_event(json: &str, mode: crate::ui::Mode) {
    match mode {
        crate::ui::Mode::Quiet => return,
        crate::ui::Mode::Json => {
            println!("{json}");
            return;
        }
        _ => {}
    }
    let Ok(e) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    let v = &e["vertex"];
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
    let line = match e["event"].as_str().unwrap_or_default() {
        "accepted" => format!("kilnd: build {} for tenant {}", s("build_id"), s("tenant")),
        "started" => format!("#{v} {}", s("name")),
        "cached" => format!("#{v} CACHED {}", s("name")),
        "log" => format!("#{v} {}", s("data").trim_end()),
        "done" => format!("#{v} DONE {:.1}s", e["duration"].as_f64().unwrap_or(0.0)),
        "error" => format!("#{v} ERROR {}", s("message")),
        "phase" => format!("=> {}", s("name")),
        "policy" => format!(
            "policy {}: {}",
            e["decision"]["gate"].as_str().unwrap_or_default(),
            if e["decision"]["allow"] == true {
                "allow"
            } else {
                "DENY"
            }
        ),
        "context" => format!(
            "context: {} of {} files to send ({} bytes)",
            e["files_sent"], e["files"], e["bytes_sent"]
        ),
        _ => return,
    };
    eprintln!("{line}");
}
