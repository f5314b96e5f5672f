//! SPDX 2.3 JSON (<https://spdx.github.io/spdx-spec/v2.3/>).
//!
//! Shape: the image is one package (`SPDXRef-Image`) that the document DESCRIBES; it CONTAINS
//! the operating system, every catalogued package, and the files no package claims; a package
//! CONTAINS the files it owns. Packages that contain files have `filesAnalyzed: true` and a
//! package verification code (SPDX 2.3 §7.9); the others `filesAnalyzed: false`. Ids are
//! derived from content, the namespace from the subject digest: no randomness, no clock.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use super::license;
use super::model::{DocumentInfo, FileDigest, PackageKind, Sbom, rfc3339};

/// The SPDX version written.
pub const SPDX_VERSION: &str = "SPDX-2.3";
/// The data license every SPDX document carries.
const DATA_LICENSE: &str = "CC0-1.0";
/// Prefix of `documentNamespace`; the subject digest's hex follows. `.invalid` (RFC 2606):
/// the URI names the document and is never fetched.
pub const NAMESPACE_PREFIX: &str = "https://example.invalid/kiln/spdx/";
const NOASSERTION: &str = "NOASSERTION";
const IMAGE_ID: &str = "SPDXRef-Image";
const OS_ID: &str = "SPDXRef-OperatingSystem";

/// The SBOM as an SPDX 2.3 JSON document. Same input, same bytes.
#[must_use]
pub fn to_spdx(sbom: &Sbom, info: &DocumentInfo) -> Value {
    let digests: BTreeMap<&str, &FileDigest> =
        sbom.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut relationships = vec![rel("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE_ID)];
    let mut packages = Vec::new();
    let mut extracted: BTreeMap<String, String> = BTreeMap::new();
    let mut owned: BTreeSet<&str> = BTreeSet::new();

    if let Some(d) = &sbom.distro {
        let mut os = json!({
            "SPDXID": OS_ID,
            "name": d.id,
            "downloadLocation": NOASSERTION,
            "filesAnalyzed": false,
            "primaryPackagePurpose": "OPERATING_SYSTEM",
        });
        if let Some(v) = &d.version_id {
            os["versionInfo"] = json!(v);
        }
        if let Some(p) = &d.pretty_name {
            os["description"] = json!(p);
        }
        packages.push(os);
        relationships.push(rel(IMAGE_ID, "CONTAINS", OS_ID));
    }

    for p in &sbom.packages {
        let id = format!("SPDXRef-Package-{}", p.stable_id());
        let files: Vec<&FileDigest> = p
            .files
            .iter()
            .filter_map(|f| digests.get(f.as_str()).copied())
            .collect();
        let mut pkg = json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": NOASSERTION,
            "filesAnalyzed": !files.is_empty(),
            "licenseDeclared": declared(&p.licenses, &mut extracted),
            "sourceInfo": format!("{} found in {}", source_label(p.kind), p.found_in),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": p.purl,
            }],
            "primaryPackagePurpose": if matches!(p.kind, PackageKind::Go | PackageKind::Binary) { "APPLICATION" } else { "LIBRARY" },
        });
        if !files.is_empty() {
            pkg["packageVerificationCode"] =
                json!({ "packageVerificationCodeValue": verification_code(&files) });
        }
        if let Some(s) = &p.supplier {
            pkg["supplier"] = json!(format!("Person: {}", actor(s)));
        }
        packages.push(pkg);
        relationships.push(rel(IMAGE_ID, "CONTAINS", &id));
        for f in files {
            owned.insert(f.path.as_str());
            relationships.push(rel(&id, "CONTAINS", &file_id(f)));
        }
    }

    let unowned: Vec<&FileDigest> = sbom
        .files
        .iter()
        .filter(|f| !owned.contains(f.path.as_str()))
        .collect();
    for f in &unowned {
        relationships.push(rel(IMAGE_ID, "CONTAINS", &file_id(f)));
    }
    let mut image = json!({
        "SPDXID": IMAGE_ID,
        "name": info.name,
        "versionInfo": info.subject_digest,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": !unowned.is_empty(),
        "primaryPackagePurpose": "CONTAINER",
    });
    if !unowned.is_empty() {
        image["packageVerificationCode"] =
            json!({ "packageVerificationCodeValue": verification_code(&unowned) });
    }
    let hex = info.subject_hex();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        image["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": hex }]);
    }
    packages.insert(0, image);

    let files: Vec<Value> = sbom
        .files
        .iter()
        .map(|f| {
            json!({
                "SPDXID": file_id(f),
                "fileName": format!(".{}", f.path),
                "checksums": [
                    { "algorithm": "SHA1", "checksumValue": f.sha1 },
                    { "algorithm": "SHA256", "checksumValue": f.sha256 },
                ],
            })
        })
        .collect();

    let (tool_name, tool_version) = info.tool_name_version();
    let tool = match tool_version {
        Some(v) => format!("Tool: {tool_name}-{v}"),
        None => format!("Tool: {tool_name}"),
    };
    let mut doc = json!({
        "spdxVersion": SPDX_VERSION,
        "dataLicense": DATA_LICENSE,
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": info.name,
        "documentNamespace": format!("{NAMESPACE_PREFIX}{hex}"),
        "creationInfo": {
            "created": rfc3339(info.created_epoch),
            "creators": [tool],
        },
    });
    // Moved in, not through `json!` (which would serialise a copy of every file).
    doc["packages"] = Value::Array(packages);
    doc["files"] = Value::Array(files);
    doc["relationships"] = Value::Array(relationships);
    if !sbom.notes.is_empty() {
        doc["comment"] = json!(sbom.notes.join("\n"));
    }
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = extracted
            .into_iter()
            .map(|(id, text)| json!({ "licenseId": id, "extractedText": text, "name": text }))
            .collect();
    }
    doc
}

/// `licenseDeclared`: the declared licenses ANDed, each a normalised SPDX expression or a
/// `LicenseRef-` (recorded in `extracted`); `NOASSERTION` when none is declared.
fn declared(licenses: &[String], extracted: &mut BTreeMap<String, String>) -> String {
    let terms: Vec<String> = licenses
        .iter()
        .map(|raw| match license::to_expression(raw) {
            Some(expr) => expr,
            None => {
                let id = license::license_ref(raw);
                extracted.insert(id.clone(), raw.clone());
                id
            }
        })
        .collect();
    match terms.as_slice() {
        [] => NOASSERTION.to_owned(),
        [one] => one.clone(),
        many => many
            .iter()
            .map(|t| {
                if license::is_compound(t) {
                    format!("({t})")
                } else {
                    t.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" AND "),
    }
}

/// SPDX 2.3 §7.9: SHA-1 over the sorted, concatenated SHA-1s of the package's files.
fn verification_code(files: &[&FileDigest]) -> String {
    let mut sums: Vec<&str> = files.iter().map(|f| f.sha1.as_str()).collect();
    sums.sort_unstable();
    let mut h = Sha1::new();
    for s in sums {
        h.update(s.as_bytes());
    }
    hex::encode(h.finalize())
}

fn file_id(f: &FileDigest) -> String {
    format!("SPDXRef-File-{}", f.stable_id())
}

fn rel(a: &str, ty: &str, b: &str) -> Value {
    json!({ "spdxElementId": a, "relationshipType": ty, "relatedSpdxElement": b })
}

/// `Name <mail>` as an SPDX actor `Name (mail)`.
fn actor(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| !matches!(c, '(' | ')' | '\n'))
        .collect();
    match cleaned.split_once('<') {
        Some((name, rest)) => format!("{} ({})", name.trim(), rest.trim_end_matches('>').trim()),
        None => cleaned.trim().to_owned(),
    }
}

fn source_label(kind: PackageKind) -> &'static str {
    match kind {
        PackageKind::Deb => "dpkg database",
        PackageKind::Apk => "apk database",
        PackageKind::Rpm => "rpm database",
        PackageKind::Python => "Python package metadata",
        PackageKind::Npm => "npm package metadata",
        PackageKind::Cargo => "Cargo metadata",
        PackageKind::Go => "Go build information",
        PackageKind::Binary => "the executable's version banner",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_licenses_become_license_refs() {
        let mut ex = BTreeMap::new();
        let d = declared(
            &["MIT OR Apache-2.0".into(), "public-domain".into()],
            &mut ex,
        );
        let (id, text) = ex
            .iter()
            .next()
            .map(|(a, b)| (a.clone(), b.clone()))
            .unwrap_or_default();
        assert_eq!(d, format!("(MIT OR Apache-2.0) AND {id}"));
        assert_eq!(text, "public-domain");
        assert_eq!(declared(&[], &mut ex), "NOASSERTION");
    }

    #[test]
    fn maintainers_become_actors() {
        assert_eq!(
            actor("GNU Libc Maintainers <debian-glibc@lists.debian.org>"),
            "GNU Libc Maintainers (debian-glibc@lists.debian.org)"
        );
    }
}
