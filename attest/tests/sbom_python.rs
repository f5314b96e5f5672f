//! kiln's SBOMs pass third-party validators: `pyspdxtools` (spdx-tools) for SPDX 2.3 and
//! cyclonedx-python-lib's strict JSON validator for CycloneDX 1.6. Both are installed by
//! `KILN_DEPS_FULL=1 scripts/deps.sh`; a missing tool fails the test (it does not skip).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_attest::sbom::{DirTree, DocumentInfo, catalog, to_cyclonedx, to_spdx};
use sha2::{Digest, Sha256};

const INSTALL_HINT: &str = "install the SBOM validators with `KILN_DEPS_FULL=1 scripts/deps.sh`";

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

/// Writes `<case>.spdx.json` and `<case>.cdx.json` for every fixture into `out`.
fn write_documents(out: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut spdx, mut cdx) = (Vec::new(), Vec::new());
    for case in fixture_cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let info = DocumentInfo {
            name: format!("example.invalid/kiln-test/{name}:latest"),
            subject_digest: format!("sha256:{}", hex::encode(Sha256::digest(name.as_bytes()))),
            created_epoch: 1_700_000_000,
            tool: "kiln-0.1.0".into(),
        };
        let sbom = catalog(&DirTree::new(case.join("rootfs"))).unwrap();
        let s = out.join(format!("{name}.spdx.json"));
        std::fs::write(
            &s,
            serde_json::to_vec_pretty(&to_spdx(&sbom, &info)).unwrap(),
        )
        .unwrap();
        let c = out.join(format!("{name}.cdx.json"));
        std::fs::write(
            &c,
            serde_json::to_vec_pretty(&to_cyclonedx(&sbom, &info)).unwrap(),
        )
        .unwrap();
        spdx.push(s);
        cdx.push(c);
    }
    (spdx, cdx)
}

#[test]
fn pyspdxtools_accepts_kiln_spdx_documents() {
    let dir = tempfile::tempdir().unwrap();
    let (spdx, _) = write_documents(dir.path());
    // `KILN_SBOM_OUT=<dir>` keeps a copy of the documents for a human to read.
    if let Some(keep) = std::env::var_os("KILN_SBOM_OUT") {
        std::fs::create_dir_all(&keep).unwrap();
        write_documents(Path::new(&keep));
    }
    for doc in spdx {
        let out = Command::new("pyspdxtools")
            .arg("-i")
            .arg(&doc)
            .output()
            .unwrap_or_else(|e| panic!("pyspdxtools not runnable ({e}); {INSTALL_HINT}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("invalid"),
            "pyspdxtools rejected {}:\n{stdout}\n{stderr}",
            doc.display()
        );
    }
}

#[test]
fn the_python_validators_do_reject_a_broken_document() {
    let dir = tempfile::tempdir().unwrap();
    let (spdx, cdx) = write_documents(dir.path());
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spdx[0]).unwrap()).unwrap();
    doc["packages"][0]["licenseDeclared"] = "Not A License".into();
    let bad = dir.path().join("bad.spdx.json");
    std::fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = Command::new("pyspdxtools")
        .arg("-i")
        .arg(&bad)
        .output()
        .unwrap_or_else(|e| panic!("pyspdxtools ({e}); {INSTALL_HINT}"));
    assert!(
        !out.status.success(),
        "pyspdxtools accepted a free-text licenseDeclared"
    );

    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cdx[0]).unwrap()).unwrap();
    doc["components"][0]["type"] = "not-a-type".into();
    let bad = dir.path().join("bad.cdx.json");
    std::fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/sbom_validate_cyclonedx.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(&bad)
        .output()
        .unwrap_or_else(|e| panic!("python3 ({e}); {INSTALL_HINT}"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cyclonedx_python_lib_accepts_kiln_cyclonedx_documents() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cdx) = write_documents(dir.path());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/sbom_validate_cyclonedx.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .args(&cdx)
        .output()
        .unwrap_or_else(|e| panic!("python3 not runnable ({e}); {INSTALL_HINT}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(3), "{stderr}\n{INSTALL_HINT}");
    assert!(
        out.status.success(),
        "cyclonedx-python-lib rejected kiln's output:\n{stderr}"
    );
}
