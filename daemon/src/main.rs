//! `kilnd --config kilnd.toml`: the build daemon. See the crate documentation of
//! `kiln_daemon` and the README.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use kiln_daemon::config::Config;
use kiln_daemon::proto::kiln_server::KilnServer;
use kiln_daemon::server::Daemon;

/// kiln's multi-tenant build daemon: gRPC over mutual TLS 1.3, one tenant per client
/// certificate identity (kilnd.toml maps SAN URIs or CNs to tenants, each with its own
/// policy, cache namespace, limits and entitlements).
///
/// Example:
///   kiln pki init --dir pki && kiln pki issue --dir pki server --name kilnd
///   kilnd --config /etc/kilnd/kilnd.toml
#[derive(Debug, Parser)]
#[command(name = "kilnd", version, verbatim_doc_comment)]
struct Args {
    /// The configuration file.
    #[arg(
        long,
        value_name = "FILE",
        env = "KILND_CONFIG",
        default_value = "/etc/kilnd/kilnd.toml"
    )]
    config: PathBuf,
    /// Check the configuration (TLS material, tenants, policies) and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    // Before anything else, and before any thread exists: as a step's init this does not return.
    kiln_sandbox::init_main_if_requested();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kilnd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let tenants = config.tenants()?;
    let tls = kiln_daemon::tls::server_config(&config.tls)?;
    let signer = match &config.signing {
        Some(s) => {
            let pem = std::fs::read_to_string(&s.key)
                .map_err(|e| format!("signing key {}: {e}", s.key.display()))?;
            let pass =
                std::env::var_os("KILND_SIGN_KEY_PASSPHRASE").map(|v| v.into_encoded_bytes());
            let key = kiln_attest::keys::SigningKey::from_pkcs8_pem(&pem, pass.as_deref())
                .map_err(|e| format!("signing key {}: {e}", s.key.display()))?;
            Some((key, s.builder_id.clone()))
        }
        None => None,
    };
    if args.check {
        eprintln!(
            "kilnd: {} is valid ({} tenants)",
            args.config.display(),
            tenants.all().len()
        );
        return Ok(());
    }
    if !rustix::process::geteuid().is_root() {
        return Err(
            "kilnd needs root in this version (steps run in new namespaces on overlayfs)".into(),
        );
    }
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| format!("state_dir {}: {e}", config.state_dir.display()))?;
    // Per-build directories left by a crash: nothing in them is referenced; reclaim them.
    let builds = config.state_dir.join("builds");
    if builds.exists() {
        std::fs::remove_dir_all(&builds).map_err(|e| format!("{}: {e}", builds.display()))?;
    }
    std::fs::create_dir_all(&builds).map_err(|e| format!("{}: {e}", builds.display()))?;
    let store = kiln_engine::store::Store::open(&config.state_dir.join("store"))
        .map_err(|e| format!("store: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let engine = kiln_engine::builder::Engine::new(store, exe);
    let daemon = Arc::new(Daemon::new(engine, &config, tenants, signer));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("listen {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, tenants = daemon_tenants(&config), "kilnd listening (TLS 1.3, client certificates required)");
        let incoming = kiln_daemon::tls::incoming(listener, tls);
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| e.to_string())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down: no new connections");
            Ok::<(), String>(())
        };
        tonic::transport::Server::builder()
            .add_service(KilnServer::new(daemon))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown.await;
            })
            .await
            .map_err(|e| e.to_string())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(config_grace(args)));
    Ok(())
}

fn daemon_tenants(config: &Config) -> usize {
    config.tenants.len()
}

fn config_grace(args: &Args) -> u64 {
    Config::load(&args.config)
        .map(|c| c.shutdown_grace_secs)
        .unwrap_or(30)
}
