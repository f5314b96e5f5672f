//! [`verify_bundle`] against every case of sigstore-conformance's `bundle-verify` suite
//! (`$KILN_SHARED_VECTORS/sigstore-conformance`, else `../shared/vectors` beside the checkout).
//! Any directory with a `bundle.sigstore.json` is a case; a name ending in `_fail` must fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use super::trust;
use super::verify::{Artifact, Identity, verify_bundle};
use crate::keys::PublicKey;

const DEFAULT_IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const DEFAULT_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// Cases that still give the wrong verdict because a check is not written yet, and why. The
/// test fails when a listed case starts giving the right verdict (remove it then) and when an
/// unlisted case gives the wrong one.
const KNOWN_GAPS: &[(&str, &str)] = &[];

fn suite() -> PathBuf {
    std::env::var_os("KILN_SHARED_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"))
        .join("sigstore-conformance")
}

/// Runs one case; `Ok` = verified, `Err` = the failures, as text.
fn run_case(dir: &Path) -> Result<(), String> {
    let read = |f: &str| std::fs::read(dir.join(f)).ok();
    let text = |f: &str| read(f).map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let suite = dir.parent().unwrap();
    let root_bytes = read("trusted_root.json")
        .unwrap_or_else(|| std::fs::read(suite.join("public-good-trusted_root.json")).unwrap());
    let root = trust::parse(&root_bytes).map_err(|e| format!("trusted root: {e}"))?;
    let artifact = read("artifact").unwrap_or_else(|| std::fs::read(suite.join("a.txt")).unwrap());
    let bundle = read("bundle.sigstore.json").unwrap();
    let identity = text("identity").unwrap_or_else(|| DEFAULT_IDENTITY.to_owned());
    let issuer = text("issuer").unwrap_or_else(|| DEFAULT_ISSUER.to_owned());
    let key = match read("key.pub") {
        None => None,
        Some(pem) => Some(
            std::str::from_utf8(&pem)
                .map_err(|e| e.to_string())
                .and_then(|pem| PublicKey::from_pem(pem).map_err(|e| e.to_string()))
                .map_err(|e| format!("key.pub: {e}"))?
                .to_spki_der(),
        ),
    };
    let policy = match &key {
        Some(spki) => Identity::KeyPub(spki),
        None => Identity::Cert {
            identity: &identity,
            issuer: &issuer,
        },
    };
    verify_bundle(&bundle, Artifact::Bytes(&artifact), &root, policy)
        .map(|_| ())
        .map_err(|fs| {
            fs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" | ")
        })
}

#[test]
fn sigstore_conformance_end_to_end() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(suite())
        .expect("conformance suite directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("bundle.sigstore.json").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", suite().display());
    let mut right = 0;
    let mut problems = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let must_fail = name.ends_with("_fail");
        let result = run_case(dir);
        let correct = result.is_err() == must_fail;
        let gap = KNOWN_GAPS.iter().find(|(n, _)| *n == name);
        eprintln!(
            "{name}: {} ({})",
            if correct {
                "expected verdict"
            } else {
                "WRONG verdict"
            },
            result.as_ref().err().map_or("verified", String::as_str)
        );
        if correct {
            right += 1;
        }
        match (correct, gap) {
            (true, Some((_, why))) => problems.push(format!(
                "{name} now gives the expected verdict: remove it from KNOWN_GAPS ({why})"
            )),
            (false, None) => problems.push(format!(
                "{name}: {}",
                result
                    .err()
                    .unwrap_or_else(|| "verified, but must fail".into())
            )),
            _ => {}
        }
    }
    for (name, _) in KNOWN_GAPS {
        if !cases.iter().any(|d| d.file_name().unwrap() == *name) {
            eprintln!("KNOWN_GAPS lists {name}, which is not in this suite");
        }
    }
    println!(
        "sigstore-conformance: {right}/{} cases give the expected verdict",
        cases.len()
    );
    eprintln!(
        "sigstore-conformance: {right}/{} cases give the expected verdict",
        cases.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Truncations and byte flips of a real leaf certificate and RFC 3161 token: errors, no
/// panics.
#[test]
fn certificate_and_timestamp_readers_do_not_panic() {
    let dir = suite().join("rekor2-happy-path");
    let bundle =
        super::bundle::parse(&std::fs::read(dir.join("bundle.sigstore.json")).unwrap()).unwrap();
    let root = trust::parse(&std::fs::read(dir.join("trusted_root.json")).unwrap()).unwrap();
    let leaf = bundle
        .verification_material
        .signer
        .leaf_certificate()
        .unwrap()
        .to_vec();
    let token = bundle.verification_material.rfc3161_timestamps[0].clone();
    assert!(super::cert::parse(&leaf).is_ok());
    for n in 0..leaf.len() {
        assert!(super::cert::parse(&leaf[..n]).is_err());
        let mut flipped = leaf.clone();
        flipped[n] ^= 0xff;
        let _ = super::cert::parse(&flipped);
        let _ = super::cert::verify_chain(&flipped, &root, 1_750_000_000);
        if let Ok(info) = super::cert::parse(&flipped) {
            let _ = super::cert::PublicKey::from_spki(&info.spki);
        }
    }
    for n in 0..token.len() {
        assert!(super::tsa::verify(&token[..n], b"x", &root).is_err());
        let mut flipped = token.clone();
        flipped[n] ^= 0xff;
        let _ = super::tsa::verify(&flipped, b"x", &root);
    }
}
