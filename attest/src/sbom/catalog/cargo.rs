//! Rust: `Cargo.lock` files (the `[[package]]` subset of TOML, read by hand) and
//! cargo-auditable data (the `.dep-v0` ELF section: zlib-compressed JSON) in executables.
//!
//! Only registry packages are catalogued: a `path` package is the project itself, and a git
//! dependency has no registry purl.

use std::io::Read;

use serde::Deserialize;

use super::elf::Elf;
use super::{Ctx, limits};
use crate::sbom::SbomError;
use crate::sbom::model::{Package, PackageKind};
use crate::sbom::purl::Purl;

/// The crates.io index, as `Cargo.lock` names it (git and sparse protocols).
const CRATES_IO: &[&str] = &[
    "registry+https://github.com/rust-lang/crates.io-index",
    "sparse+https://index.crates.io/",
];
/// Largest decompressed `.dep-v0` accepted.
const AUDITABLE_JSON_BYTES: u64 = 16 << 20;

pub(super) fn catalog_lockfiles(ctx: &mut Ctx<'_>) -> Result<(), SbomError> {
    for path in ctx.regular_files(|p| p.ends_with("/Cargo.lock")) {
        let Some(text) = ctx.read_text(&path, limits::LOCKFILE_BYTES)? else {
            continue;
        };
        let mut count = 0;
        for pkg in parse_lock(&text) {
            let (Some(name), Some(version), Some(source)) = (pkg.name, pkg.version, pkg.source)
            else {
                continue;
            };
            let Some(repository) = registry(&source) else {
                continue;
            };
            count += 1;
            if count > limits::PACKAGES_PER_SOURCE {
                ctx.note(format!(
                    "{path}: over {} packages, the rest skipped",
                    limits::PACKAGES_PER_SOURCE
                ));
                break;
            }
            push(ctx, name, version, repository, path.clone());
        }
    }
    Ok(())
}

/// `None` for a non-registry source; `Some(None)` for crates.io; `Some(Some(url))` for
/// another registry (a `repository_url` qualifier).
fn registry(source: &str) -> Option<Option<String>> {
    if CRATES_IO.contains(&source) {
        return Some(None);
    }
    source
        .strip_prefix("registry+")
        .or_else(|| source.strip_prefix("sparse+"))
        .map(|url| Some(url.to_owned()))
}

fn push(
    ctx: &mut Ctx<'_>,
    name: String,
    version: String,
    repository: Option<String>,
    found_in: String,
) {
    let purl = Purl::new("cargo", &name, &version)
        .qualifier("repository_url", repository)
        .build();
    ctx.push(Package {
        kind: PackageKind::Cargo,
        name,
        version,
        purl,
        licenses: Vec::new(),
        files: Vec::new(),
        found_in,
        arch: None,
        supplier: None,
        source: None,
    });
}

#[derive(Default)]
struct LockPackage {
    name: Option<String>,
    version: Option<String>,
    source: Option<String>,
}

/// The `name`, `version` and `source` keys of every `[[package]]` table.
fn parse_lock(text: &str) -> Vec<LockPackage> {
    let mut out = Vec::new();
    let mut cur: Option<LockPackage> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            out.extend(cur.take());
            if line == "[[package]]" {
                cur = Some(LockPackage::default());
            }
            continue;
        }
        let Some(pkg) = cur.as_mut() else { continue };
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let Some(value) = basic_string(value.trim()) else {
            continue;
        };
        match key.trim() {
            "name" => pkg.name = Some(value),
            "version" => pkg.version = Some(value),
            "source" => pkg.source = Some(value),
            _ => {}
        }
    }
    out.extend(cur);
    out
}

/// A TOML basic string on one line (`"..."`, with `\"` and `\\` escapes).
fn basic_string(v: &str) -> Option<String> {
    let inner = v.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// cargo-auditable's JSON (`rust-secure-code/cargo-auditable`, format v0).
#[derive(Deserialize)]
struct Auditable {
    packages: Vec<AuditablePackage>,
}

#[derive(Deserialize)]
struct AuditablePackage {
    name: String,
    version: String,
    source: String,
    #[serde(default)]
    kind: Option<String>,
}

pub(super) fn catalog_auditable(ctx: &mut Ctx<'_>, path: &str, elf: &Elf<'_>) {
    let Some(compressed) = elf.section(".dep-v0") else {
        return;
    };
    let mut json = Vec::new();
    let read = flate2::read::ZlibDecoder::new(compressed)
        .take(AUDITABLE_JSON_BYTES + 1)
        .read_to_end(&mut json);
    if let Err(e) = read {
        ctx.note(format!(
            "{path}: .dep-v0 section does not decompress ({e}), skipped"
        ));
        return;
    }
    if json.len() as u64 > AUDITABLE_JSON_BYTES {
        ctx.note(format!(
            "{path}: .dep-v0 section over {AUDITABLE_JSON_BYTES} bytes, skipped"
        ));
        return;
    }
    let data: Auditable = match serde_json::from_slice(&json) {
        Ok(d) => d,
        Err(e) => {
            ctx.note(format!(
                "{path}: .dep-v0 section is not cargo-auditable JSON ({e}), skipped"
            ));
            return;
        }
    };
    for p in data.packages.into_iter().take(limits::PACKAGES_PER_SOURCE) {
        // Build dependencies are not in the binary; only registry crates have a purl.
        if p.kind.as_deref() == Some("build") || p.source != "crates.io" {
            continue;
        }
        push(ctx, p.name, p.version, None, path.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_packages_are_read() {
        let lock = "version = 4\n\n[[package]]\nname = \"a\"\nversion = \"0.1.0\"\n\n[[package]]\nname = \"serde\"\nversion = \"1.0.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"00\"\ndependencies = [\n \"x\",\n]\n\n[metadata]\nname = \"no\"\n";
        let p = parse_lock(lock);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].name.as_deref(), Some("serde"));
        assert_eq!(
            registry(p[1].source.as_deref().unwrap_or_default()),
            Some(None)
        );
        assert_eq!(registry("git+https://x/y#abc"), None);
    }
}
