//! `/etc/os-release`, else `/usr/lib/os-release` (os-release(5)): the distribution.

use super::{Ctx, limits};
use crate::sbom::SbomError;
use crate::sbom::model::Distro;

/// Where os-release may be, in order. A symlink is not followed (it usually points at the
/// second path, which is then read directly).
const PATHS: &[&str] = &["/etc/os-release", "/usr/lib/os-release"];

/// The distribution, or `None` when neither file is a readable regular file with an `ID`.
pub(super) fn find(ctx: &mut Ctx<'_>) -> Result<Option<Distro>, SbomError> {
    for path in PATHS {
        if ctx
            .entry(path)
            .is_some_and(|e| e.kind != crate::sbom::EntryKind::Regular)
        {
            continue;
        }
        let Some(text) = ctx.read_text(path, limits::SMALL_BYTES)? else {
            continue;
        };
        let mut distro = Distro {
            id: String::new(),
            version_id: None,
            name: None,
            pretty_name: None,
        };
        for line in text.lines() {
            let Some((key, raw)) = line.trim().split_once('=') else {
                continue;
            };
            let value = unquote(raw);
            match key {
                "ID" => distro.id = value,
                "VERSION_ID" => distro.version_id = Some(value),
                "NAME" => distro.name = Some(value),
                "PRETTY_NAME" => distro.pretty_name = Some(value),
                _ => {}
            }
        }
        if distro.id.is_empty() {
            ctx.note(format!("{path}: no ID, ignored"));
            continue;
        }
        return Ok(Some(distro));
    }
    Ok(None)
}

/// Shell-style value: `"a \"b\""`, `'a'` or bare.
fn unquote(raw: &str) -> String {
    let raw = raw.trim();
    if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        inner.to_owned()
    } else {
        raw.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::unquote;

    #[test]
    fn values_are_unquoted() {
        assert_eq!(
            unquote("\"Debian GNU/Linux 12 (bookworm)\""),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(unquote("'x'"), "x");
        assert_eq!(unquote("alpine"), "alpine");
        assert_eq!(unquote("\"a \\\"b\\\"\""), "a \"b\"");
    }
}
