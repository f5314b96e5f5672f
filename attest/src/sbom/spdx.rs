//! SPDX 2.3 JSON (<https://spdx.github.io/spdx-spec/v2.3/>).
//!
//! Shape: the image is one package (`SPDXRef-Image`) that the document DESCRIBES; it CONTAINS
//! the operating system, every catalogued package, and the files no package claims; a package
//! CONTAINS the files it owns. Packages that contain files have `filesAnalyzed: true` and a
//! package verification code (SPDX 2.3 §7.9); the others `filesAnalyzed: false`. Ids are
//! derived from content, the namespace from the subject digest: no randomness, no clock.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use super::license;
use super::model::{DocumentInfo, FileDigest, PackageKind, Sbom, rfc3339};
use crate::canonical;

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

/// The SBOM as an SPDX 2.3 JSON document (parsed from [`spdx_json`]'s bytes).
#[must_use]
pub fn to_spdx(sbom: &Sbom, info: &DocumentInfo) -> Value {
    serde_json::from_slice(&spdx_json(sbom, info)).unwrap_or_default()
}

/// The SBOM as an SPDX 2.3 JSON document, in canonical JSON (keys sorted, compact). Same
/// input, same bytes. The per-file arrays (`files`, `relationships`) are written straight to
/// bytes: an image of 20,000 files has 40,000 of their objects.
#[must_use]
pub fn spdx_json(sbom: &Sbom, info: &DocumentInfo) -> Vec<u8> {
    let file_ids: Vec<String> = sbom.files.iter().map(file_id).collect();
    let index: BTreeMap<&str, usize> = sbom
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.path.as_str(), i))
        .collect();
    // (spdxElementId, relationshipType, relatedSpdxElement)
    let mut relationships: Vec<(&str, &str, &str)> =
        vec![("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE_ID)];
    let mut packages = Vec::new();
    let mut extracted: BTreeMap<String, String> = BTreeMap::new();
    let mut owned = vec![false; sbom.files.len()];

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
        relationships.push((IMAGE_ID, "CONTAINS", OS_ID));
    }

    let package_ids: Vec<String> = sbom
        .packages
        .iter()
        .map(|p| format!("SPDXRef-Package-{}", p.stable_id()))
        .collect();
    for (p, id) in sbom.packages.iter().zip(&package_ids) {
        let files: Vec<usize> = p
            .files
            .iter()
            .filter_map(|f| index.get(f.as_str()).copied())
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
            let digests: Vec<&FileDigest> =
                files.iter().filter_map(|&i| sbom.files.get(i)).collect();
            pkg["packageVerificationCode"] =
                json!({ "packageVerificationCodeValue": verification_code(&digests) });
        }
        if let Some(s) = &p.supplier {
            pkg["supplier"] = json!(format!("Person: {}", actor(s)));
        }
        packages.push(pkg);
        relationships.push((IMAGE_ID, "CONTAINS", id));
        for i in files {
            if let (Some(o), Some(fid)) = (owned.get_mut(i), file_ids.get(i)) {
                *o = true;
                relationships.push((id, "CONTAINS", fid));
            }
        }
    }

    let mut unowned: Vec<&FileDigest> = Vec::new();
    for ((f, fid), o) in sbom.files.iter().zip(&file_ids).zip(&owned) {
        if !o {
            unowned.push(f);
            relationships.push((IMAGE_ID, "CONTAINS", fid));
        }
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
    doc["packages"] = Value::Array(packages);
    if !sbom.notes.is_empty() {
        doc["comment"] = json!(sbom.notes.join("\n"));
    }
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = extracted
            .into_iter()
            .map(|(id, text)| json!({ "licenseId": id, "extractedText": text, "name": text }))
            .collect();
    }

    // Each object's keys in byte order, as canonical JSON has them.
    let mut files = Vec::with_capacity(sbom.files.len() * 256 + 2);
    let mut name = String::new();
    files.push(b'[');
    for (i, (f, fid)) in sbom.files.iter().zip(&file_ids).enumerate() {
        if i > 0 {
            files.push(b',');
        }
        files.extend_from_slice(b"{\"SPDXID\":");
        canonical::write_str(fid, &mut files);
        files.extend_from_slice(b",\"checksums\":[{\"algorithm\":\"SHA1\",\"checksumValue\":");
        canonical::write_str(&f.sha1, &mut files);
        files.extend_from_slice(b"},{\"algorithm\":\"SHA256\",\"checksumValue\":");
        canonical::write_str(&f.sha256, &mut files);
        files.extend_from_slice(b"}],\"fileName\":");
        name.clear();
        name.push('.');
        name.push_str(&f.path);
        canonical::write_str(&name, &mut files);
        files.push(b'}');
    }
    files.push(b']');
    let mut rels = Vec::with_capacity(relationships.len() * 128 + 2);
    rels.push(b'[');
    for (i, (a, ty, b)) in relationships.into_iter().enumerate() {
        if i > 0 {
            rels.push(b',');
        }
        rels.extend_from_slice(b"{\"relatedSpdxElement\":");
        canonical::write_str(b, &mut rels);
        rels.extend_from_slice(b",\"relationshipType\":");
        canonical::write_str(ty, &mut rels);
        rels.extend_from_slice(b",\"spdxElementId\":");
        canonical::write_str(a, &mut rels);
        rels.push(b'}');
    }
    rels.push(b']');

    let empty = serde_json::Map::new();
    let mut out = Vec::with_capacity(files.len() + rels.len() + 4096);
    canonical::write_object_with(
        doc.as_object().unwrap_or(&empty),
        &[("files", &files), ("relationships", &rels)],
        &mut out,
    );
    out
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
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    /// The document is written straight to bytes: they must be the canonical form of the JSON
    /// they parse to (keys sorted at every depth, compact), for every kind of member.
    #[test]
    fn the_bytes_are_the_canonical_form_of_the_document() {
        let (sbom, info) = super::super::model::sample_sbom();
        let bytes = spdx_json(&sbom, &info);
        let value: Value = serde_json::from_slice(&bytes).expect("SPDX bytes parse");
        assert_eq!(
            String::from_utf8_lossy(&crate::canonical::to_vec(&value)),
            String::from_utf8_lossy(&bytes)
        );
    }

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
