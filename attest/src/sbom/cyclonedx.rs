//! CycloneDX 1.6 JSON (<https://cyclonedx.org/docs/1.6/json/>).
//!
//! The image is `metadata.component` (type `container`); `components` holds the operating
//! system, the packages (with purls and licenses) and every regular file (type `file`, SHA-1
//! and SHA-256). A license goes to `license.id` only when it is an SPDX id kiln knows, to
//! `expression` when it is a compound SPDX expression, else to `license.name`.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::license;
use super::model::{DocumentInfo, Package, PackageKind, Sbom, rfc3339};
use crate::canonical;

/// The CycloneDX spec version written.
pub const CYCLONEDX_SPEC_VERSION: &str = "1.6";
const IMAGE_REF: &str = "kiln:image";
const OS_REF: &str = "kiln:os";

/// The SBOM as a CycloneDX 1.6 JSON document (parsed from [`cyclonedx_json`]'s bytes).
#[must_use]
pub fn to_cyclonedx(sbom: &Sbom, info: &DocumentInfo) -> Value {
    serde_json::from_slice(&cyclonedx_json(sbom, info)).unwrap_or_default()
}

/// The SBOM as a CycloneDX 1.6 JSON document, in canonical JSON (keys sorted, compact). Same
/// input, same bytes. `components` is written straight to bytes: an image of 20,000 files
/// has as many of its objects.
#[must_use]
pub fn cyclonedx_json(sbom: &Sbom, info: &DocumentInfo) -> Vec<u8> {
    let mut components = Vec::with_capacity(sbom.files.len() * 256 + 2);
    components.push(b'[');
    let mut first = true;
    let mut comma = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    if let Some(d) = &sbom.distro {
        let mut os = json!({ "type": "operating-system", "bom-ref": OS_REF, "name": d.id });
        if let Some(v) = &d.version_id {
            os["version"] = json!(v);
        }
        if let Some(p) = &d.pretty_name {
            os["description"] = json!(p);
        }
        comma(&mut components);
        canonical::write(&os, &mut components);
    }
    for p in &sbom.packages {
        comma(&mut components);
        canonical::write(&package(p), &mut components);
    }
    // Each object's keys in byte order, as canonical JSON has them.
    let mut bom_ref = String::new();
    for f in &sbom.files {
        comma(&mut components);
        components.extend_from_slice(b"{\"bom-ref\":");
        bom_ref.clear();
        bom_ref.push_str("file:");
        bom_ref.push_str(&f.stable_id());
        canonical::write_str(&bom_ref, &mut components);
        components.extend_from_slice(b",\"hashes\":[{\"alg\":\"SHA-1\",\"content\":");
        canonical::write_str(&f.sha1, &mut components);
        components.extend_from_slice(b"},{\"alg\":\"SHA-256\",\"content\":");
        canonical::write_str(&f.sha256, &mut components);
        components.extend_from_slice(b"}],\"name\":");
        canonical::write_str(&f.path, &mut components);
        components.extend_from_slice(b",\"type\":\"file\"}");
    }
    components.push(b']');

    let (tool_name, tool_version) = info.tool_name_version();
    let mut tool = json!({ "type": "application", "name": tool_name });
    if let Some(v) = tool_version {
        tool["version"] = json!(v);
    }
    let mut image = json!({
        "type": "container",
        "bom-ref": IMAGE_REF,
        "name": info.name,
        "version": info.subject_digest,
    });
    let hex = info.subject_hex();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        image["hashes"] = json!([{ "alg": "SHA-256", "content": hex }]);
    }
    let mut metadata = json!({
        "timestamp": rfc3339(info.created_epoch),
        "tools": { "components": [tool] },
        "component": image,
    });
    if !sbom.notes.is_empty() {
        metadata["properties"] = sbom
            .notes
            .iter()
            .map(|n| json!({ "name": "kiln:sbom:note", "value": n }))
            .collect();
    }
    let mut bom = json!({
        "bomFormat": "CycloneDX",
        "specVersion": CYCLONEDX_SPEC_VERSION,
        "serialNumber": serial_number(&info.subject_digest),
        "version": 1,
    });
    bom["metadata"] = metadata;
    let empty = serde_json::Map::new();
    let mut out = Vec::with_capacity(components.len() + 4096);
    canonical::write_object_with(
        bom.as_object().unwrap_or(&empty),
        &[("components", &components)],
        &mut out,
    );
    out
}

fn package(p: &Package) -> Value {
    let mut c = json!({
        "type": if matches!(p.kind, PackageKind::Go | PackageKind::Binary) { "application" } else { "library" },
        "bom-ref": p.stable_id(),
        "name": p.name,
        "version": p.version,
        "purl": p.purl,
    });
    if let Some(l) = licenses(&p.licenses) {
        c["licenses"] = l;
    }
    if let Some(s) = &p.supplier {
        c["supplier"] = json!({ "name": s });
    }
    let mut props = vec![json!({ "name": "kiln:sbom:found_in", "value": p.found_in })];
    if let Some(a) = &p.arch {
        props.push(json!({ "name": "kiln:sbom:arch", "value": a }));
    }
    if let Some(s) = &p.source {
        props.push(json!({ "name": "kiln:sbom:source_package", "value": s }));
    }
    c["properties"] = Value::Array(props);
    c
}

/// The `licenses` array: one `expression`, or `license` objects (`id` for a known SPDX id,
/// `name` otherwise). The schema forbids mixing the two forms.
fn licenses(raw: &[String]) -> Option<Value> {
    if raw.is_empty() {
        return None;
    }
    let exprs: Vec<Option<String>> = raw.iter().map(|r| license::to_expression(r)).collect();
    let any_compound = exprs.iter().flatten().any(|e| license::is_compound(e));
    if any_compound && exprs.iter().all(Option::is_some) {
        let terms: Vec<String> = exprs.into_iter().flatten().collect();
        let expr = if let [one] = terms.as_slice() {
            one.clone()
        } else {
            terms
                .iter()
                .map(|t| {
                    if license::is_compound(t) {
                        format!("({t})")
                    } else {
                        t.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        return Some(json!([{ "expression": expr }]));
    }
    let items = raw
        .iter()
        .zip(exprs)
        .map(|(r, e)| match e {
            Some(id) if !license::is_compound(&id) => json!({ "license": { "id": id } }),
            _ => json!({ "license": { "name": r } }),
        })
        .collect();
    Some(Value::Array(items))
}

/// `urn:uuid:` in UUID shape (version 5 bits, RFC 4122 variant) from SHA-256 of the subject
/// digest: one serial number per subject, no randomness.
fn serial_number(subject_digest: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"kiln cyclonedx serial\0");
    h.update(subject_digest.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    for (dst, src) in b.iter_mut().zip(d.iter()) {
        *dst = *src;
    }
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        x.get(0..8).unwrap_or_default(),
        x.get(8..12).unwrap_or_default(),
        x.get(12..16).unwrap_or_default(),
        x.get(16..20).unwrap_or_default(),
        x.get(20..32).unwrap_or_default()
    )
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
        let bytes = cyclonedx_json(&sbom, &info);
        let value: Value = serde_json::from_slice(&bytes).expect("CycloneDX bytes parse");
        assert_eq!(
            String::from_utf8_lossy(&crate::canonical::to_vec(&value)),
            String::from_utf8_lossy(&bytes)
        );
    }

    #[test]
    fn unknown_ids_go_to_name_never_id() {
        let v = licenses(&["MIT".into(), "GPL-2+".into(), "public-domain".into()]);
        assert_eq!(
            v,
            Some(json!([
                { "license": { "id": "MIT" } },
                { "license": { "id": "GPL-2.0-or-later" } },
                { "license": { "name": "public-domain" } },
            ]))
        );
        let e = licenses(&["MIT OR Apache-2.0".into()]);
        assert_eq!(e, Some(json!([{ "expression": "MIT OR Apache-2.0" }])));
    }

    #[test]
    fn serial_is_uuid_shaped_and_stable() {
        let s = serial_number("sha256:00");
        assert_eq!(s, serial_number("sha256:00"));
        assert_eq!(s.len(), "urn:uuid:".len() + 36);
        assert_eq!(s.as_bytes()[23], b'5');
    }
}
