//! `kilnd --config kilnd.toml`: kiln's build daemon. Its code is the `kiln_daemon` crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

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
    // Before anything else, and before any thread exists: as a step's init this does not
    // return.
    kiln_sandbox::init_main_if_requested();
    let args = Args::parse();
    kiln_daemon::serve::init_logging();
    match kiln_daemon::serve::run(&args.config, args.check) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kilnd: {e}");
            ExitCode::FAILURE
        }
    }
}
