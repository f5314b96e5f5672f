//! Executables that no package database owns, recognised by a version banner compiled into
//! them (what syft's binary classifiers do). A statically linked busybox — the usual base of
//! minimal images — carries `BusyBox v1.35.0 (Debian 1:1.35.0-4+b3)` in its text.

use super::Ctx;
use crate::sbom::model::{Package, PackageKind};
use crate::sbom::purl::Purl;

/// One classifier: a banner prefix, the package name, and the purl type/namespace to use.
struct Classifier {
    banner: &'static [u8],
    name: &'static str,
}

const CLASSIFIERS: &[Classifier] = &[Classifier {
    banner: b"BusyBox v",
    name: "busybox",
}];

/// The version right after `banner` (digits and dots, then a non-version byte), first match.
fn version_after(bytes: &[u8], banner: &[u8]) -> Option<String> {
    let first = *banner.first()?;
    let mut from = 0;
    // Scan for the banner's first byte (a tight loop the compiler vectorises), then compare.
    while let Some(pos) = bytes.get(from..)?.iter().position(|b| *b == first) {
        let at = from + pos;
        if bytes.get(at..at + banner.len()) != Some(banner) {
            from = at + 1;
            continue;
        }
        let start = at + banner.len();
        let v: Vec<u8> = bytes
            .get(start..)?
            .iter()
            .take(32)
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .copied()
            .collect();
        // `1.35.0`: starts with a digit, has a dot, does not end in one.
        if v.first().is_some_and(u8::is_ascii_digit) && v.contains(&b'.') && v.last() != Some(&b'.')
        {
            return String::from_utf8(v).ok();
        }
        from = start;
    }
    None
}

/// Records the package an executable's banner names, unless a package database already owns
/// the file (then the database's entry describes it).
pub(super) fn catalog_binary(ctx: &mut Ctx<'_>, path: &str, bytes: &[u8]) {
    if ctx
        .packages
        .iter()
        .any(|p| p.files.iter().any(|f| f == path))
    {
        return;
    }
    for c in CLASSIFIERS {
        let Some(version) = version_after(bytes, c.banner) else {
            continue;
        };
        let purl = Purl::new("generic", c.name, &version).build();
        ctx.push(Package {
            kind: PackageKind::Binary,
            name: c.name.to_owned(),
            version,
            purl,
            licenses: Vec::new(),
            files: vec![path.to_owned()],
            found_in: path.to_owned(),
            arch: None,
            supplier: None,
            source: None,
        });
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_banners_give_the_version() {
        let text =
            b"\x00\x01usage\x00BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call binary.\x00";
        assert_eq!(version_after(text, b"BusyBox v").as_deref(), Some("1.35.0"));
        // A format string before the real banner is skipped.
        let text = b"BusyBox v%s (%s)\x00BusyBox v1.36.1 (2023)";
        assert_eq!(version_after(text, b"BusyBox v").as_deref(), Some("1.36.1"));
        assert_eq!(version_after(b"BusyBox v. nope", b"BusyBox v"), None);
        assert_eq!(version_after(b"nothing here", b"BusyBox v"), None);
    }
}
