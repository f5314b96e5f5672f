//! Compiling the attack probe (`attack_probe.rs` beside this file), shared by the sandbox's
//! e2e test and the CLI's attack runner (both include this file by path).

use std::path::{Path, PathBuf};

/// Compile the probe static (glibc static-pie, so it runs in a root without a libc) with
/// `$RUSTC` or `rustc`, into `out`.
pub fn compile_probe(out: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("sandbox/probe/attack_probe.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let o = std::process::Command::new(&rustc)
        .args(["--edition=2024", "-O", "-C", "target-feature=+crt-static"])
        .args(["-C", "strip=symbols"])
        .arg(&src)
        .arg("-o")
        .arg(out)
        .output()
        .map_err(|err| format!("running {rustc}: {err}"))?;
    if !o.status.success() {
        return Err(format!(
            "compiling {}: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(out.to_path_buf())
}
