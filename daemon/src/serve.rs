//! Running kilnd: configuration, TLS, the store, the listener, graceful shutdown. The
//! `kilnd` binary (in the `kiln` package, beside `kiln`) is a thin wrapper around [`run`].

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::proto::kiln_server::KilnServer;
use crate::server::Daemon;

/// Structured logs to stderr; the level from `KILND_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs kilnd with the configuration at `config_path` until SIGTERM or SIGINT; with `check`,
/// only loads and checks the configuration (TLS material, tenants, policies, signing key).
pub fn run(config_path: &Path, check: bool) -> Result<(), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let tenants = config.tenants()?;
    let tls = crate::tls::server_config(&config.tls)?;
    let signer = match &config.signing {
        Some(s) => {
            let pem = std::fs::read_to_string(&s.key)
                .map_err(|e| format!("signing key {}: {e}", s.key.display()))?;
            let pass =
                std::env::var_os("KILND_SIGN_KEY_PASSPHRASE").map(|v| v.into_encoded_bytes());
            // Checked whole now (its public key too): kilnd signs for as long as it runs.
            let key = kiln_attest::keys::SigningKey::from_pkcs8_pem(&pem, pass.as_deref())
                .and_then(|k| k.check().map(|()| k))
                .map_err(|e| format!("signing key {}: {e}", s.key.display()))?;
            Some((key, s.builder_id.clone()))
        }
        None => None,
    };
    if check {
        eprintln!(
            "kilnd: {} is valid ({} tenants)",
            config_path.display(),
            tenants.all().len()
        );
        return Ok(());
    }
    if !rustix::process::geteuid().is_root() {
        return Err(
            "kilnd needs root in this version (steps run in new namespaces on overlayfs)".into(),
        );
    }
    crate::confine::restrict_self().map_err(|e| e.to_string())?; // before any thread exists
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
    // What builds a crash interrupted left in the store's temp areas: unreferenced (records
    // are committed last), and nothing runs yet. Their build records are failed below.
    let freed = kiln_engine::gc::reclaim_interrupted(&store).map_err(|e| format!("store: {e}"))?;
    if freed > 0 {
        tracing::info!(
            bytes = freed,
            "reclaimed what interrupted builds left in the store"
        );
    }
    // Steps of a kilnd (or kiln) that was killed outright still run, reparented, with no
    // timeout: kill them and remove their cgroups before anything new starts.
    match kiln_sandbox::remove_orphaned_cgroups() {
        Ok(removed) if !removed.is_empty() => tracing::warn!(
            cgroups = removed.len(),
            "killed the steps of a kiln process that is gone (crash or kill -9) and removed their cgroups"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("could not look for steps left by a dead kiln process: {e}"),
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let engine = kiln_engine::builder::Engine::new(store, exe);
    let daemon =
        Arc::new(Daemon::new(engine, &config, tenants, signer).map_err(|e| e.to_string())?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let grace = config.shutdown_grace_secs;
    let started = std::time::Instant::now();
    let admin_path = config.admin_socket_path();
    rt.block_on(async move {
        let admin = crate::admin::bind(&admin_path).map_err(|e| e.to_string())?;
        tracing::info!(socket = %admin_path.display(), "admin socket listening (root and kilnd's user only)");
        tokio::spawn(crate::admin::serve(admin, Arc::clone(&daemon), started));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("listen {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, tenants = daemon_tenants(&config), "kilnd listening (TLS 1.3, client certificates required)");
        daemon.spawn_gc();
        let incoming = crate::tls::incoming(listener, tls);
        let on_shutdown = config.on_shutdown;
        let stopping = Arc::clone(&daemon);
        let shutdown = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| e.to_string())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!(?on_shutdown, grace_secs = grace, "shutting down: no new connections");
            stopping.begin_shutdown(on_shutdown, std::time::Duration::from_secs(grace));
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
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(())
}

fn daemon_tenants(config: &Config) -> usize {
    config.tenants.len()
}
