//! Python: `<name>.dist-info/METADATA` (+ `RECORD`) and `<name>.egg-info/PKG-INFO` (+
//! `installed-files.txt`), or an `.egg-info` file holding PKG-INFO itself.

use super::{Ctx, join_normalised, limits, parent};
use crate::sbom::SbomError;
use crate::sbom::license;
use crate::sbom::model::{Package, PackageKind};
use crate::sbom::purl::Purl;

pub(super) fn catalog(ctx: &mut Ctx<'_>) -> Result<(), SbomError> {
    let metadata = ctx.regular_files(|p| {
        p.ends_with(".dist-info/METADATA")
            || p.ends_with(".egg-info/PKG-INFO")
            || p.ends_with(".egg-info")
    });
    for path in metadata {
        let Some(text) = ctx.read_text(&path, limits::MANIFEST_BYTES)? else {
            continue;
        };
        let headers = headers(&text);
        let get = |k: &str| {
            headers
                .iter()
                .find(|(h, _)| h.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let (Some(name), Some(version)) = (get("Name"), get("Version")) else {
            ctx.note(format!("{path}: no Name or Version, skipped"));
            continue;
        };
        let (name, version) = (name.trim().to_owned(), version.trim().to_owned());
        let licenses = licenses(&headers);
        let purl = Purl::new("pypi", &normalise(&name), &version).build();
        let meta_dir = if path.ends_with(".egg-info") {
            None
        } else {
            Some(parent(&path).to_owned())
        };
        let files = match &meta_dir {
            Some(dir) if dir.ends_with(".dist-info") => record_files(ctx, dir)?,
            Some(dir) => installed_files(ctx, dir)?,
            None => Vec::new(),
        };
        let supplier = get("Author")
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        ctx.push(Package {
            kind: PackageKind::Python,
            name,
            version,
            purl,
            licenses,
            files,
            found_in: path,
            arch: None,
            supplier,
            source: None,
        });
    }
    Ok(())
}

/// PEP 503: lowercase, runs of `-`, `_`, `.` become one `-`.
pub(crate) fn normalise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The header block (up to the first blank line), continuation lines folded.
fn headers(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// `License-Expression`, else a one-line `License`, else the trove classifiers' licenses.
fn licenses(headers: &[(String, String)]) -> Vec<String> {
    let get_all = |k: &'static str| {
        headers
            .iter()
            .filter(move |(h, _)| h.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.trim())
    };
    if let Some(expr) = get_all("License-Expression").find(|v| !v.is_empty()) {
        return vec![expr.to_owned()];
    }
    // A whole license text pasted in the field is not a license name.
    if let Some(l) = get_all("License").find(|v| {
        !v.is_empty() && !v.eq_ignore_ascii_case("UNKNOWN") && !v.contains('\n') && v.len() <= 200
    }) {
        return vec![l.to_owned()];
    }
    get_all("Classifier")
        .filter_map(|c| c.strip_prefix("License ::"))
        .filter_map(|c| c.rsplit("::").next().map(str::trim))
        .map(|last| license::from_classifier(last).map_or_else(|| last.to_owned(), str::to_owned))
        .collect()
}

/// `RECORD`: `path,hash,size` CSV, paths relative to the directory holding `.dist-info`.
fn record_files(ctx: &mut Ctx<'_>, dist_info: &str) -> Result<Vec<String>, SbomError> {
    let record = format!("{dist_info}/RECORD");
    if ctx.entry(&record).is_none() {
        return Ok(Vec::new());
    }
    let Some(text) = ctx.read_text(&record, limits::MANIFEST_BYTES)? else {
        return Ok(Vec::new());
    };
    let base = parent(dist_info).to_owned();
    let paths: Vec<String> = text
        .lines()
        .filter_map(first_csv_field)
        .filter_map(|p| join_normalised(&base, &p))
        .collect();
    Ok(ctx.existing_files(paths))
}

/// `installed-files.txt`: paths relative to the `.egg-info` directory.
fn installed_files(ctx: &mut Ctx<'_>, egg_info: &str) -> Result<Vec<String>, SbomError> {
    let list = format!("{egg_info}/installed-files.txt");
    if ctx.entry(&list).is_none() {
        return Ok(Vec::new());
    }
    let Some(text) = ctx.read_text(&list, limits::MANIFEST_BYTES)? else {
        return Ok(Vec::new());
    };
    let paths: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|p| join_normalised(egg_info, p))
        .collect();
    Ok(ctx.existing_files(paths))
}

/// The first field of a CSV line (quoted with `""` escapes, or bare).
fn first_csv_field(line: &str) -> Option<String> {
    let line = line.trim_end_matches('\r');
    if let Some(rest) = line.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    out.push('"');
                } else {
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let f = line.split(',').next().unwrap_or_default();
        (!f.is_empty()).then(|| f.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_pep503_normalised() {
        assert_eq!(normalise("Jinja2"), "jinja2");
        assert_eq!(normalise("zope.interface"), "zope-interface");
        assert_eq!(normalise("Foo__Bar-.baz"), "foo-bar-baz");
    }

    #[test]
    fn record_fields_are_parsed() {
        assert_eq!(
            first_csv_field("a/b.py,sha256=x,12").as_deref(),
            Some("a/b.py")
        );
        assert_eq!(
            first_csv_field("\"a,\"\"b\"\".py\",,").as_deref(),
            Some("a,\"b\".py")
        );
    }
}
