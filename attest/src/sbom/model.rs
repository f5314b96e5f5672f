//! The format-neutral SBOM model: what the catalogers found, before SPDX or CycloneDX.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Everything catalogued in one file system. Every list is sorted and deduplicated, so the
/// same tree always gives the same value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Sbom {
    /// The distribution, from `/etc/os-release` (else `/usr/lib/os-release`).
    pub distro: Option<Distro>,
    /// Packages, sorted by (kind, name, version, found_in).
    pub packages: Vec<Package>,
    /// Every regular file with its digests, sorted by path.
    pub files: Vec<FileDigest>,
    /// What the catalogers skipped or could not read, and why (sorted). Not an error: the SBOM
    /// is still correct for what it lists, and these say what it does not.
    pub notes: Vec<String>,
}

/// The distribution named by `os-release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distro {
    /// `ID` (`debian`, `alpine`).
    pub id: String,
    /// `VERSION_ID` (`12`, `3.20.3`).
    pub version_id: Option<String>,
    /// `NAME`.
    pub name: Option<String>,
    /// `PRETTY_NAME`.
    pub pretty_name: Option<String>,
}

/// Which ecosystem a [`Package`] comes from. The order of the variants is the SBOM's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PackageKind {
    /// A Debian package (dpkg status database).
    Deb,
    /// An Alpine package (apk installed database).
    Apk,
    /// An RPM package (reserved: the rpm database is detected, not yet read).
    Rpm,
    /// A Python distribution (`.dist-info`, `.egg-info`).
    Python,
    /// An npm package (`node_modules`, `package-lock.json`).
    Npm,
    /// A Rust crate (`Cargo.lock`, cargo-auditable data in binaries).
    Cargo,
    /// A Go module (build information in Go binaries).
    Go,
    /// An executable no package database owns, recognised by its version banner (busybox).
    Binary,
}

impl PackageKind {
    /// The lowercase name used in documents and golden files (`deb`, `python`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deb => "deb",
            Self::Apk => "apk",
            Self::Rpm => "rpm",
            Self::Python => "python",
            Self::Npm => "npm",
            Self::Cargo => "cargo",
            Self::Go => "go",
            Self::Binary => "binary",
        }
    }
}

/// One package found in the file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Ecosystem.
    pub kind: PackageKind,
    /// Name as the ecosystem spells it (`libc6`, `@babel/core`, `Jinja2`).
    pub name: String,
    /// Version as the ecosystem spells it (`1:2.36-9+deb12u4`, `v1.2.3`).
    pub version: String,
    /// Package URL (<https://github.com/package-url/purl-spec>).
    pub purl: String,
    /// Licenses as declared by the package (free text or SPDX expressions; the writers decide
    /// how each one may be expressed). Sorted, deduplicated.
    pub licenses: Vec<String>,
    /// Files the package says it owns that exist in the tree as non-directories (sorted).
    pub files: Vec<String>,
    /// The database, manifest or binary the package was read from.
    pub found_in: String,
    /// Architecture (`amd64`, `x86_64`), when the ecosystem records one.
    pub arch: Option<String>,
    /// Supplier or maintainer (`Debian ... <...>`), when recorded.
    pub supplier: Option<String>,
    /// Source or origin package (dpkg `Source`, apk `o`), when it differs from the name.
    pub source: Option<String>,
}

impl Package {
    /// A short identifier unique to this package in one SBOM and stable across runs:
    /// `<kind>-<16 hex digits of SHA-256 over kind, name, version, found_in and purl>`. Used for
    /// SPDX ids and CycloneDX `bom-ref`s.
    #[must_use]
    pub fn stable_id(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.kind.as_str(),
            &self.name,
            &self.version,
            &self.found_in,
            &self.purl,
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let hex = hex::encode(h.finalize());
        format!("{}-{}", self.kind.as_str(), hex.get(..16).unwrap_or(&hex))
    }
}

/// One regular file and its digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Absolute path in the image.
    pub path: String,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// SHA-1 of the content, lowercase hex (SPDX 2.3 requires it for every file).
    pub sha1: String,
    /// Size in bytes.
    pub size: u64,
}

impl FileDigest {
    /// A stable identifier for the file: 16 hex digits of SHA-256 over its path.
    #[must_use]
    pub fn stable_id(&self) -> String {
        let hex = hex::encode(Sha256::digest(self.path.as_bytes()));
        hex.get(..16).unwrap_or(&hex).to_owned()
    }
}

/// What a document says about itself and its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentInfo {
    /// The image's name (or its digest when it has none).
    pub name: String,
    /// `sha256:<hex>` of the image manifest the SBOM describes.
    pub subject_digest: String,
    /// Creation time, seconds since the epoch (`SOURCE_DATE_EPOCH`).
    pub created_epoch: u64,
    /// The tool, `<name>-<version>` (`kiln-0.1.0`).
    pub tool: String,
}

impl DocumentInfo {
    /// The hex part of [`DocumentInfo::subject_digest`] (the whole string if it has no
    /// algorithm prefix).
    #[must_use]
    pub fn subject_hex(&self) -> &str {
        self.subject_digest
            .split_once(':')
            .map_or(self.subject_digest.as_str(), |(_, hex)| hex)
    }

    /// The tool's (name, version), split at the last `-` (`kiln-0.1.0` → `kiln`, `0.1.0`).
    #[must_use]
    pub fn tool_name_version(&self) -> (&str, Option<&str>) {
        match self.tool.rsplit_once('-') {
            Some((name, version)) if !name.is_empty() && !version.is_empty() => {
                (name, Some(version))
            }
            _ => (self.tool.as_str(), None),
        }
    }
}

/// Seconds since the epoch as RFC 3339 UTC with whole seconds (`2026-11-28T18:58:51Z`).
#[must_use]
pub fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let rem = epoch % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// An SBOM with a bit of everything the renderers write, for their tests: a distro, a package
/// that owns files and one that does not, licenses, a supplier, notes, and file paths that
/// JSON must escape.
#[cfg(test)]
pub(crate) fn sample_sbom() -> (Sbom, DocumentInfo) {
    let file = |path: &str, n: u8| FileDigest {
        path: path.to_owned(),
        sha256: hex::encode([n; 32]),
        sha1: hex::encode([n; 20]),
        size: u64::from(n),
    };
    let package = |kind, name: &str, files: &[&str], licenses: &[&str]| Package {
        kind,
        name: name.to_owned(),
        version: "1.0-1".to_owned(),
        purl: format!("pkg:generic/{name}@1.0-1"),
        licenses: licenses.iter().map(|&l| l.to_owned()).collect(),
        files: files.iter().map(|&f| f.to_owned()).collect(),
        found_in: "/var/lib/dpkg/status".to_owned(),
        arch: Some("amd64".to_owned()),
        supplier: Some("Jane Doe <jane@example.invalid>".to_owned()),
        source: None,
    };
    let sbom = Sbom {
        distro: Some(Distro {
            id: "debian".to_owned(),
            version_id: Some("12".to_owned()),
            name: Some("Debian GNU/Linux".to_owned()),
            pretty_name: Some("Debian GNU/Linux 12 (bookworm)".to_owned()),
        }),
        packages: vec![
            package(
                PackageKind::Deb,
                "libc6",
                &["/lib/libc.so.6", "/usr/share/doc/libc6/copyright"],
                &["GPL-2+", "public-domain"],
            ),
            package(PackageKind::Go, "app", &[], &["MIT OR Apache-2.0"]),
        ],
        files: vec![
            file("/app/quote\"and\\back", 1),
            file("/app/tab\there\u{1}ctl", 2),
            file("/app/\u{e9}t\u{e9} \u{1f600}", 3),
            file("/lib/libc.so.6", 4),
            file("/usr/share/doc/libc6/copyright", 5),
        ],
        notes: vec!["/x: skipped, \"odd\"".to_owned(), "second note".to_owned()],
    };
    let info = DocumentInfo {
        name: "example.invalid/app:1".to_owned(),
        subject_digest: format!("sha256:{}", "ab".repeat(32)),
        created_epoch: 1_700_000_000,
        tool: "kiln-0.1.0".to_owned(),
    };
    (sbom, info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_whole_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_356_331), "2025-11-28T18:58:51Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn tool_splits_at_last_dash() {
        let info = DocumentInfo {
            name: "x".into(),
            subject_digest: "sha256:ab".into(),
            created_epoch: 0,
            tool: "kiln-0.1.0".into(),
        };
        assert_eq!(info.tool_name_version(), ("kiln", Some("0.1.0")));
        assert_eq!(info.subject_hex(), "ab");
    }
}
