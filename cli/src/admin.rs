//! `kiln admin …`: the operator's commands, over kilnd's local admin socket (not over gRPC:
//! these see every tenant and the store itself).

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;

use crate::commands::Failure;

/// Which socket, and how to print.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// kilnd's admin socket (`admin_socket` in kilnd.toml; its default is
    /// `STATE_DIR/admin.sock`).
    #[arg(
        long,
        value_name = "PATH",
        env = "KILN_ADMIN_SOCKET",
        default_value = "/var/lib/kilnd/admin.sock"
    )]
    pub socket: PathBuf,
    /// Print kilnd's JSON answer as it is.
    #[arg(long)]
    pub json: bool,
}

/// `kiln admin …` commands. They talk to kilnd's unix-domain admin socket on this host,
/// which serves only root and the user kilnd runs as.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Is kilnd up: its version, uptime and the builds running now.
    Health(AdminArgs),
    /// Check the store's integrity inside kilnd (it holds the store): every blob hashes to
    /// its name, every record points only at blobs and layers that exist. Leftovers of
    /// interrupted builds are listed as reclaimable (`kiln prune` removes them), not as
    /// problems. Exits 1 when it finds a problem, printing each.
    Fsck(AdminArgs),
    /// Every tenant's builds: running, queued, finished, and those a restart interrupted.
    Builds(AdminArgs),
    /// Collect the build cache now by kilnd.toml's [gc] policy (once no build runs).
    Gc(AdminArgs),
}

/// Runs one `kiln admin` command.
pub fn run(cmd: AdminCommand) -> Result<(), Failure> {
    let (command, args) = match &cmd {
        AdminCommand::Health(a) => ("health", a),
        AdminCommand::Fsck(a) => ("fsck", a),
        AdminCommand::Builds(a) => ("builds", a),
        AdminCommand::Gc(a) => ("gc", a),
    };
    let answer = kiln_daemon::admin::request(&args.socket, command).map_err(anyhow::Error::msg)?;
    if answer["ok"] != serde_json::Value::Bool(true) {
        let error = answer["error"]
            .as_str()
            .unwrap_or("kilnd refused the request");
        return Err(anyhow::anyhow!("kilnd: {error}").into());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{answer}")?;
        return match command {
            "fsck" if answer["clean"] != serde_json::Value::Bool(true) => Err(Failure::silent(1)),
            _ => Ok(()),
        };
    }
    let n = |k: &str| answer[k].as_u64().unwrap_or(0);
    match command {
        "health" => writeln!(
            out,
            "kilnd {}: healthy, up {} s, {} build(s) running, {} in progress",
            answer["version"].as_str().unwrap_or("?"),
            n("uptime_secs"),
            n("running_builds"),
            n("builds_in_progress"),
        )?,
        "gc" => writeln!(
            out,
            "gc: removed {} cache records, {} layers, {} blobs; reclaimed {} bytes",
            n("cache_records"),
            n("layers"),
            n("blobs"),
            n("bytes"),
        )?,
        "builds" => {
            writeln!(
                out,
                "{:<26} {:<12} {:<10} {:<12} IMAGE",
                "BUILD", "TENANT", "STATE", "CREATED"
            )?;
            for b in answer["builds"].as_array().into_iter().flatten() {
                let s = |k: &str| b[k].as_str().unwrap_or("").to_owned();
                let error = s("error");
                writeln!(
                    out,
                    "{:<26} {:<12} {:<10} {:<12} {}{}",
                    s("id"),
                    s("tenant"),
                    s("state"),
                    b["created"].as_u64().unwrap_or(0),
                    s("manifest_digest"),
                    if error.is_empty() {
                        String::new()
                    } else {
                        format!(" ({error})")
                    }
                )?;
            }
        }
        _ => {
            let problems: Vec<&str> = answer["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .collect();
            for p in &problems {
                writeln!(out, "problem: {p}")?;
            }
            for r in answer["reclaimable"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
            {
                writeln!(out, "reclaimable: {r}")?;
            }
            writeln!(
                out,
                "fsck: {} blobs ({} bytes) hashed, {} layers, {} records checked in {} ms: {}; {} reclaimable",
                n("blobs"),
                n("blob_bytes"),
                n("snapshots"),
                n("records"),
                n("millis"),
                if problems.is_empty() {
                    "no problems".to_owned()
                } else {
                    format!("{} PROBLEM(S)", problems.len())
                },
                n("reclaimable_count"),
            )?;
            if !problems.is_empty() || answer["clean"] != serde_json::Value::Bool(true) {
                return Err(Failure::silent(1));
            }
        }
    }
    Ok(())
}
