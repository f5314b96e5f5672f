//! `kiln`: build container images from Dockerfiles, reproducibly, in a sandbox.
//!
//! The engine runs in this process (no daemon). The same binary is the sandbox's init: when
//! re-executed with the hidden init argument it becomes the step's init and never returns.

mod admin;
mod attest;
mod commands;
mod pki;
mod policy;
mod registry;
mod remote;
mod secrets;
mod sigstore;
mod ssh;
mod ui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Must run before anything else (and before any thread exists): in init mode this call
    // sets up the sandbox and execs the step; it does not return.
    kiln_sandbox::init_main_if_requested();

    let cli = match commands::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_silent() {
                eprintln!("error: {}", e.message());
            }
            ExitCode::from(e.exit_code())
        }
    }
}
