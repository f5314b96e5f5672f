//! npm: `node_modules/[@scope/]<name>/package.json` and `package-lock.json` (lockfile v2/v3
//! `packages` map).

use serde_json::Value;

use super::{Ctx, limits};
use crate::sbom::SbomError;
use crate::sbom::model::{Package, PackageKind};
use crate::sbom::purl::Purl;

pub(super) fn catalog(ctx: &mut Ctx<'_>) -> Result<(), SbomError> {
    for path in ctx.regular_files(is_installed_manifest) {
        let Some(json) = read_json(ctx, &path, limits::MANIFEST_BYTES)? else {
            continue;
        };
        let (Some(name), Some(version)) = (str_field(&json, "name"), str_field(&json, "version"))
        else {
            ctx.note(format!("{path}: no name or version, skipped"));
            continue;
        };
        // The package owns its directory, but not the packages nested in its node_modules.
        let files = ctx.files_below(super::parent(&path), "node_modules");
        push(ctx, name, version, licenses(&json), path.clone(), files);
    }
    for path in ctx.regular_files(|p| p.ends_with("/package-lock.json")) {
        let Some(json) = read_json(ctx, &path, limits::LOCKFILE_BYTES)? else {
            continue;
        };
        let Some(packages) = json.get("packages").and_then(Value::as_object) else {
            let v = json
                .get("lockfileVersion")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            ctx.note(format!(
                "{path}: lockfile version {v} has no `packages` map (v1 is not read), skipped"
            ));
            continue;
        };
        for (key, entry) in packages.iter().take(limits::PACKAGES_PER_SOURCE) {
            if key.is_empty() || entry.get("link").and_then(Value::as_bool) == Some(true) {
                continue; // the root project, or a symlinked workspace package
            }
            let from_key = key.rsplit_once("node_modules/").map(|(_, n)| n);
            let (Some(name), Some(version)) = (
                str_field(entry, "name").or(from_key),
                str_field(entry, "version"),
            ) else {
                ctx.note(format!(
                    "{path}: entry {key:?} without name or version, skipped"
                ));
                continue;
            };
            push(
                ctx,
                name,
                version,
                licenses(entry),
                path.clone(),
                Vec::new(),
            );
        }
    }
    Ok(())
}

/// `…/node_modules/<name>/package.json` or `…/node_modules/@scope/<name>/package.json`.
fn is_installed_manifest(path: &str) -> bool {
    let Some(dir) = path.strip_suffix("/package.json") else {
        return false;
    };
    let mut rev = dir.rsplit('/');
    let (Some(last), Some(prev)) = (rev.next(), rev.next()) else {
        return false;
    };
    if last.starts_with('.') || last.starts_with('@') {
        return false;
    }
    prev == "node_modules" || (prev.starts_with('@') && rev.next() == Some("node_modules"))
}

fn push(
    ctx: &mut Ctx<'_>,
    name: &str,
    version: &str,
    licenses: Vec<String>,
    found_in: String,
    files: Vec<String>,
) {
    let (scope, base) = match name.split_once('/') {
        Some((s, b)) if s.starts_with('@') => (Some(s), b),
        _ => (None, name),
    };
    let purl = Purl::new("npm", base, version).namespace(scope).build();
    ctx.push(Package {
        kind: PackageKind::Npm,
        name: name.to_owned(),
        version: version.to_owned(),
        purl,
        licenses,
        files,
        found_in,
        arch: None,
        supplier: None,
        source: None,
    });
}

fn read_json(ctx: &mut Ctx<'_>, path: &str, cap: u64) -> Result<Option<Value>, SbomError> {
    let Some(bytes) = ctx.read(path, cap)? else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            ctx.note(format!("{path}: not valid JSON ({e}), skipped"));
            Ok(None)
        }
    }
}

fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `license` (string or legacy `{type}`), or legacy `licenses: [{type}|string]`.
fn licenses(v: &Value) -> Vec<String> {
    let one = |l: &Value| match l {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Object(o) => o
            .get("type")
            .and_then(Value::as_str)
            .map(|s| s.trim().to_owned()),
        _ => None,
    };
    let mut out: Vec<String> = match (v.get("license"), v.get("licenses")) {
        (Some(l), _) => one(l).into_iter().collect(),
        (None, Some(Value::Array(ls))) => ls.iter().filter_map(one).collect(),
        _ => Vec::new(),
    };
    out.retain(|l| !l.is_empty() && l != "UNLICENSED" && !l.starts_with("SEE LICENSE IN"));
    out
}

#[cfg(test)]
mod tests {
    use super::is_installed_manifest;

    #[test]
    fn installed_manifests_are_recognised() {
        assert!(is_installed_manifest(
            "/app/node_modules/lodash/package.json"
        ));
        assert!(is_installed_manifest(
            "/app/node_modules/@babel/core/package.json"
        ));
        assert!(is_installed_manifest(
            "/app/node_modules/a/node_modules/b/package.json"
        ));
        assert!(!is_installed_manifest("/app/package.json"));
        assert!(!is_installed_manifest(
            "/app/node_modules/lodash/lib/package.json"
        ));
        assert!(!is_installed_manifest(
            "/app/node_modules/@babel/package.json"
        ));
    }
}
