//! Debian: `/var/lib/dpkg/status`, `/var/lib/dpkg/info/<pkg>[:<arch>].list`, and DEP-5
//! `/usr/share/doc/<pkg>/copyright`.

use super::{Ctx, limits};
use crate::sbom::SbomError;
use crate::sbom::model::{Package, PackageKind};
use crate::sbom::purl::Purl;

const STATUS: &str = "/var/lib/dpkg/status";
/// The DEP-5 format line prefix (http or https).
const DEP5_FORMAT: &str = "www.debian.org/doc/packaging-manuals/copyright-format/1.0";

pub(super) fn catalog(ctx: &mut Ctx<'_>) -> Result<(), SbomError> {
    let Some(text) = ctx.read_text(STATUS, limits::DATABASE_BYTES)? else {
        return Ok(());
    };
    let (distro_id, distro_q) = match &ctx.distro {
        Some(d) => (
            d.id.clone(),
            d.version_id.as_ref().map(|v| format!("{}-{v}", d.id)),
        ),
        None => ("debian".to_owned(), None),
    };
    let mut count = 0usize;
    for para in paragraphs(&text) {
        let field = |name: &str| {
            para.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        };
        if field("Status") != Some("install ok installed") {
            continue;
        }
        let (Some(name), Some(version)) = (field("Package"), field("Version")) else {
            ctx.note(format!(
                "{STATUS}: an installed entry without Package or Version, skipped"
            ));
            continue;
        };
        if !valid_name(name) {
            ctx.note(format!("{STATUS}: invalid package name {name:?}, skipped"));
            continue;
        }
        count += 1;
        if count > limits::PACKAGES_PER_SOURCE {
            ctx.note(format!(
                "{STATUS}: over {} packages, the rest skipped",
                limits::PACKAGES_PER_SOURCE
            ));
            break;
        }
        let arch = field("Architecture").map(str::to_owned);
        let source = field("Source")
            .map(|s| s.split_whitespace().next().unwrap_or(s).to_owned())
            .filter(|s| s != name);
        let supplier = field("Maintainer").map(str::to_owned);
        let purl = Purl::new("deb", name, version)
            .namespace([distro_id.as_str()])
            .qualifier("arch", arch.clone())
            .qualifier("distro", distro_q.clone())
            .build();
        let files = owned_files(ctx, name, arch.as_deref())?;
        let licenses = copyright_licenses(ctx, name)?;
        ctx.push(Package {
            kind: PackageKind::Deb,
            name: name.to_owned(),
            version: version.to_owned(),
            purl,
            licenses,
            files,
            found_in: STATUS.to_owned(),
            arch,
            supplier,
            source,
        });
    }
    Ok(())
}

/// Debian package names: `[a-z0-9][a-z0-9+.-]+` (policy 5.6.1); checked so a name can be
/// used in a path.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && !name.starts_with('.')
}

/// RFC 822-style paragraphs: `Field: value` with continuation lines starting with a blank.
pub(super) fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn owned_files(
    ctx: &mut Ctx<'_>,
    name: &str,
    arch: Option<&str>,
) -> Result<Vec<String>, SbomError> {
    let mut candidates = vec![format!("/var/lib/dpkg/info/{name}.list")];
    if let Some(a) = arch {
        candidates.insert(0, format!("/var/lib/dpkg/info/{name}:{a}.list"));
    }
    for list in candidates {
        if ctx.entry(&list).is_none() {
            continue;
        }
        let Some(text) = ctx.read_text(&list, limits::MANIFEST_BYTES)? else {
            continue;
        };
        let mut listed: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('/'))
            .collect();
        listed.sort_unstable();
        // A path with listed paths below it is one of the package's directories (which may be
        // a symlink in a usrmerged tree: `/lib` → `usr/lib`); it is not a file it owns.
        let paths: Vec<String> = listed
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                !listed.get(i + 1).is_some_and(|next| {
                    next.strip_prefix(**p)
                        .is_some_and(|rest| rest.starts_with('/'))
                })
            })
            .map(|(_, p)| (*p).to_owned())
            .collect();
        return Ok(ctx.existing_files(paths));
    }
    Ok(Vec::new())
}

/// `License:` short names of a machine-readable (DEP-5) copyright file; none otherwise.
fn copyright_licenses(ctx: &mut Ctx<'_>, name: &str) -> Result<Vec<String>, SbomError> {
    let path = format!("/usr/share/doc/{name}/copyright");
    if ctx.entry(&path).is_none() {
        return Ok(Vec::new());
    }
    let Some(text) = ctx.read_text(&path, limits::SMALL_BYTES)? else {
        return Ok(Vec::new());
    };
    let first = text.lines().next().unwrap_or_default();
    if !(first.starts_with("Format:") && first.contains(DEP5_FORMAT)) {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("License:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_fold_continuations() {
        let p = paragraphs("Package: a\nDescription: x\n y\n\n\nPackage: b\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0][1], ("Description".to_owned(), "x\ny".to_owned()));
        assert!(valid_name("libc6") && valid_name("g++-12") && !valid_name("../x"));
    }
}
