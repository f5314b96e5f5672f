//! kiln's own schema validator against the CycloneDX conformance cases, and kiln's SPDX and
//! CycloneDX output against the official schemas; output is byte-for-byte deterministic.
//!
//! The schemas and cases live outside the repository (`../shared/vectors`, or
//! `$KILN_SHARED_VECTORS`); when absent those tests print `skipped: ...` and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kiln_attest::sbom::{
    DirTree, DocumentInfo, catalog, to_cyclonedx, to_spdx, validate_cyclonedx, validate_spdx,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn shared_vectors() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_SHARED_VECTORS").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors")),
        PathBuf::from,
    );
    dir.is_dir().then_some(dir)
}

fn fixture_cases() -> Vec<PathBuf> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/sbom"));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("rootfs").is_dir())
        .collect();
    out.sort();
    out
}

fn info(case: &Path) -> DocumentInfo {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    DocumentInfo {
        name: format!("example.invalid/kiln-test/{name}:latest"),
        subject_digest: format!("sha256:{}", hex::encode(Sha256::digest(name.as_bytes()))),
        created_epoch: 1_700_000_000,
        tool: "kiln-0.1.0".into(),
    }
}

#[test]
fn cyclonedx_validator_accepts_every_valid_case_and_rejects_every_invalid_one() {
    let Some(vectors) = shared_vectors() else {
        println!("skipped: shared vectors not found (set KILN_SHARED_VECTORS)");
        return;
    };
    let schema_dir = vectors.join("cyclonedx");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(schema_dir.join("1.6"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    cases.sort();
    let (mut valid, mut invalid, mut wrong) = (0, 0, Vec::new());
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let doc: Value = serde_json::from_slice(&std::fs::read(case).unwrap()).unwrap();
        let verdict = validate_cyclonedx(&doc, &schema_dir);
        if name.starts_with("valid-") {
            valid += 1;
            if let Err(errors) = verdict {
                wrong.push(format!("{name}: rejected: {errors:?}"));
            }
        } else if name.starts_with("invalid-") {
            invalid += 1;
            if verdict.is_ok() {
                wrong.push(format!("{name}: accepted"));
            }
        }
    }
    assert!(
        valid > 0 && invalid > 0,
        "no cases in {}",
        schema_dir.display()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn kiln_sboms_validate_against_the_spdx_and_cyclonedx_schemas() {
    let Some(vectors) = shared_vectors() else {
        println!("skipped: shared vectors not found (set KILN_SHARED_VECTORS)");
        return;
    };
    let mut failures = Vec::new();
    for case in fixture_cases() {
        let sbom = catalog(&DirTree::new(case.join("rootfs"))).unwrap();
        let info = info(&case);
        if let Err(e) = validate_spdx(
            &to_spdx(&sbom, &info),
            &vectors.join("spdx-2.3/spdx-schema.json"),
        ) {
            failures.push(format!("{} SPDX: {e:#?}", case.display()));
        }
        if let Err(e) = validate_cyclonedx(&to_cyclonedx(&sbom, &info), &vectors.join("cyclonedx"))
        {
            failures.push(format!("{} CycloneDX: {e:#?}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_validators_reject_a_broken_document() {
    let Some(vectors) = shared_vectors() else {
        println!("skipped: shared vectors not found (set KILN_SHARED_VECTORS)");
        return;
    };
    let case = fixture_cases().remove(0);
    let sbom = catalog(&DirTree::new(case.join("rootfs"))).unwrap();
    let mut spdx = to_spdx(&sbom, &info(&case));
    // The SPDX schema gives `created` no format: break a required property instead.
    spdx.as_object_mut().unwrap().remove("documentNamespace");
    assert!(validate_spdx(&spdx, &vectors.join("spdx-2.3/spdx-schema.json")).is_err());
    let mut cdx = to_cyclonedx(&sbom, &info(&case));
    cdx["metadata"]["timestamp"] = "yesterday".into();
    assert!(validate_cyclonedx(&cdx, &vectors.join("cyclonedx")).is_err());
}

#[test]
fn the_same_tree_gives_byte_identical_documents() {
    for case in fixture_cases() {
        let render = || {
            let sbom = catalog(&DirTree::new(case.join("rootfs"))).unwrap();
            let info = info(&case);
            (
                serde_json::to_vec(&to_spdx(&sbom, &info)).unwrap(),
                serde_json::to_vec(&to_cyclonedx(&sbom, &info)).unwrap(),
                serde_json::to_vec(&sbom).unwrap(),
            )
        };
        assert_eq!(render(), render(), "{}", case.display());
    }
}
