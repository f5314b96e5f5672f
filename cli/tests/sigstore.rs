//! Sigstore bundles through the real `kiln` binary: `kiln sigstore verify-bundle` driven exactly
//! as sigstore-conformance's runner drives a client, over every case directory of the suite
//! (`$KILN_SHARED_VECTORS/sigstore-conformance`, else `shared/vectors` beside the checkout);
//! specific failure reasons in text and JSON; usage errors; and `kiln verify` with keyless
//! bundles about an artifact, whose `kiln.verify` policy gets the certificate identity and its
//! Fulcio extensions (and the shipped example pins the signing workflow).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "support/schema.rs"]
mod schema;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::kiln::{Kiln, Run};

const DEFAULT_IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const DEFAULT_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// sha256 of the suite's `a.txt`.
const A_TXT: &str = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf";

/// Cases whose verdict is still wrong, and why: the test fails when one starts passing (remove
/// it then) or an unlisted one fails.
const KNOWN_GAPS: &[(&str, &str)] = &[];

fn suite() -> PathBuf {
    std::env::var_os("KILN_SHARED_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"))
        .join("sigstore-conformance")
}

/// The arguments sigstore-conformance's runner passes for a case directory: `verify-bundle
/// --bundle B (--key K | --certificate-identity I --certificate-oidc-issuer O)
/// [--trusted-root T] ARTIFACT`.
fn conformance_args(dir: &Path) -> Vec<String> {
    let text = |f: &str| {
        fs::read_to_string(dir.join(f))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let mut args: Vec<String> = vec![
        "sigstore".into(),
        "verify-bundle".into(),
        "--bundle".into(),
        dir.join("bundle.sigstore.json").display().to_string(),
    ];
    if dir.join("key.pub").is_file() {
        args.extend(["--key".into(), dir.join("key.pub").display().to_string()]);
    } else {
        args.extend([
            "--certificate-identity".into(),
            text("identity").unwrap_or_else(|| DEFAULT_IDENTITY.into()),
            "--certificate-oidc-issuer".into(),
            text("issuer").unwrap_or_else(|| DEFAULT_ISSUER.into()),
        ]);
    }
    let root = dir.join("trusted_root.json");
    let suite_root = dir.parent().unwrap().join("public-good-trusted_root.json");
    // The public-good root is kiln's default; pass the suite's copy only when the case has
    // its own root, so the shipped default is what most cases exercise.
    if root.is_file() {
        args.extend(["--trusted-root".into(), root.display().to_string()]);
    } else {
        assert!(suite_root.is_file(), "{}", suite_root.display());
    }
    let artifact = dir.join("artifact");
    let artifact = if artifact.is_file() {
        artifact
    } else {
        dir.parent().unwrap().join("a.txt")
    };
    args.push(artifact.display().to_string());
    args
}

fn kiln(args: &[String]) -> Run {
    let k = Kiln::empty();
    k.run(k.root(), args)
}

#[test]
fn conformance_suite_through_the_cli_protocol() {
    let mut cases: Vec<PathBuf> = fs::read_dir(suite())
        .expect("sigstore-conformance suite directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("bundle.sigstore.json").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let k = Kiln::empty();
    let mut right = 0;
    let mut problems = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let r = k.run(k.root(), conformance_args(dir));
        assert!(
            r.code == 0 || r.code == 1 || r.code == 2,
            "{name}: exit {} (a crash?)\n{}",
            r.code,
            r.stderr
        );
        let verified = r.code == 0;
        let correct = verified != name.ends_with("_fail");
        if correct {
            right += 1;
        }
        eprintln!(
            "{name}: {} (exit {}) {}",
            if correct { "expected verdict" } else { "WRONG" },
            r.code,
            r.stderr.lines().next().unwrap_or_default()
        );
        match (correct, KNOWN_GAPS.iter().find(|(n, _)| *n == name)) {
            (true, Some((_, why))) => problems.push(format!(
                "{name} now passes: remove it from KNOWN_GAPS ({why})"
            )),
            (false, None) => problems.push(format!("{name}: exit {}: {}", r.code, r.stderr)),
            _ => {}
        }
    }
    println!(
        "kiln sigstore verify-bundle: {right}/{} conformance cases give the expected verdict",
        cases.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn failure_reasons_name_the_check_and_the_value_in_text_and_json() {
    let s = suite();
    let case = |c: &str| s.join(c).join("bundle.sigstore.json").display().to_string();
    let a_txt = s.join("a.txt").display().to_string();
    let verify = |bundle: &str, extra: &[&str], json: bool| {
        let mut args: Vec<String> = ["sigstore", "verify-bundle", "--bundle", bundle]
            .iter()
            .map(ToString::to_string)
            .collect();
        args.extend(extra.iter().map(ToString::to_string));
        if json {
            args.extend(["--output".into(), "json".into()]);
        }
        args.push(a_txt.clone());
        kiln(&args)
    };
    let who = [
        "--certificate-identity",
        DEFAULT_IDENTITY,
        "--certificate-oidc-issuer",
        DEFAULT_ISSUER,
    ];

    // A checkpoint for another tree: the Tlog check, with both root hashes.
    let bad = case("checkpoint-wrong-roothash_fail");
    let text = verify(&bad, &who, false);
    assert_eq!(text.code, 1, "{}", text.stderr);
    assert!(
        text.stderr.contains("error: Tlog: entry 0")
            && text.stderr.contains("checkpoint root hash"),
        "{}",
        text.stderr
    );
    let json = verify(&bad, &who, true);
    assert_eq!(json.code, 1);
    let doc: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(doc["verified"], false);
    assert_eq!(doc["artifact"], A_TXT);
    let failures = doc["failures"].as_array().unwrap();
    assert!(
        failures.iter().any(|f| f["check"] == "Tlog"
            && f["detail"]
                .as_str()
                .unwrap()
                .contains("does not match the inclusion proof")),
        "{doc:#}"
    );

    // The right bundle, the wrong identity: the Identity check names the SAN it found.
    let good = case("happy-path-v0.3");
    let r = verify(
        &good,
        &[
            "--certificate-identity",
            "https://github.com/other/repo/.github/workflows/release.yml@refs/heads/main",
            "--certificate-oidc-issuer",
            DEFAULT_ISSUER,
        ],
        true,
    );
    assert_eq!(r.code, 1);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["failures"][0]["check"], "Identity", "{doc:#}");
    assert!(
        doc["failures"][0]["detail"]
            .as_str()
            .unwrap()
            .contains(DEFAULT_IDENTITY)
    );

    // Regular expressions are anchored: a prefix without `.*` does not match.
    let prefix = "https://github.com/sigstore-conformance/";
    let r = verify(
        &good,
        &[
            "--certificate-identity-regexp",
            prefix,
            "--certificate-oidc-issuer",
            DEFAULT_ISSUER,
        ],
        false,
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("as a whole"), "{}", r.stderr);
    let r = verify(
        &good,
        &[
            "--certificate-identity-regexp",
            &format!("{prefix}.*"),
            "--certificate-oidc-issuer-regexp",
            r"https://token\.actions\.githubusercontent\.com",
        ],
        true,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["verified"], true);
    assert_eq!(doc["summary"]["identity"]["san"], DEFAULT_IDENTITY);
    assert_eq!(
        doc["summary"]["identity"]["extensions"]["source_repository_ref"],
        "refs/heads/main"
    );
    assert_eq!(doc["summary"]["signing_times"][0], "2024-03-19T17:26:26Z");

    // A digest stands for the artifact (prehashed ECDSA).
    let mut args: Vec<String> = ["sigstore", "verify-bundle", "--bundle", &good]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend(who.iter().map(ToString::to_string));
    args.push(A_TXT.into());
    let r = kiln(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    args.pop();
    args.push(format!("sha256:{}", "0".repeat(64)));
    let r = kiln(&args);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("error: Signature:"), "{}", r.stderr);
}

#[test]
fn usage_errors_are_clear() {
    let s = suite();
    let bundle = s
        .join("happy-path-v0.3/bundle.sigstore.json")
        .display()
        .to_string();
    let a_txt = s.join("a.txt").display().to_string();
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = ["sigstore", "verify-bundle", "--bundle", &bundle]
            .iter()
            .map(ToString::to_string)
            .collect();
        args.extend(extra.iter().map(ToString::to_string));
        args.push(a_txt.clone());
        kiln(&args)
    };
    let r = run(&[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("say who must have signed"),
        "{}",
        r.stderr
    );
    let r = run(&["--certificate-identity", DEFAULT_IDENTITY]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("needs --certificate-oidc-issuer"),
        "{}",
        r.stderr
    );
    let r = run(&[
        "--certificate-identity-regexp",
        "(",
        "--certificate-oidc-issuer",
        DEFAULT_ISSUER,
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--certificate-identity-regexp"),
        "{}",
        r.stderr
    );
    let r = run(&[
        "--staging",
        "--certificate-identity",
        DEFAULT_IDENTITY,
        "--certificate-oidc-issuer",
        DEFAULT_ISSUER,
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no staging trusted root"), "{}", r.stderr);
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k.pub");
    fs::write(
        &key,
        "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let r = run(&["--key", key.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not base64"), "{}", r.stderr);
    let root = tmp.path().join("root.json");
    fs::write(&root, "{\"mediaType\": 3}").unwrap();
    let r = run(&[
        "--trusted-root",
        root.to_str().unwrap(),
        "--certificate-identity",
        DEFAULT_IDENTITY,
        "--certificate-oidc-issuer",
        DEFAULT_ISSUER,
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--trusted-root"), "{}", r.stderr);
}

/// `kiln verify` on an artifact with keyless bundles: the verify gate gets the certificate
/// identity and Fulcio extensions (captured by a policy that denies with its own input), in
/// the documented schema, and the shipped example pins the workflow.
#[test]
fn kiln_verify_gives_the_policy_the_certificate_identity() {
    let s = suite();
    let dsse = s
        .join("happy-path-intoto-in-dsse-v3/bundle.sigstore.json")
        .display()
        .to_string();
    let message = s
        .join("happy-path-v0.3/bundle.sigstore.json")
        .display()
        .to_string();
    let subject = format!("file:{}", s.join("a.txt").display());
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy/keyless");
    let tmp = tempfile::tempdir().unwrap();
    let verify = |policy: &str, regexp: &str| {
        kiln(
            &[
                "verify",
                &subject,
                "--bundle",
                &dsse,
                "--bundle",
                &message,
                "--certificate-identity-regexp",
                regexp,
                "--certificate-oidc-issuer",
                DEFAULT_ISSUER,
                "--policy",
                policy,
                "--output",
                "json",
            ]
            .map(String::from),
        )
    };

    // The input, as the policy sees it.
    let capture = tmp.path().join("capture");
    fs::create_dir(&capture).unwrap();
    fs::write(
        capture.join("verify.rego"),
        "package kiln.verify\ndeny contains json.marshal(input)\n",
    )
    .unwrap();
    let r = verify(
        capture.to_str().unwrap(),
        "https://github.com/sigstore-conformance/.*",
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    let input: Value =
        serde_json::from_str(doc["policy"]["messages"][0].as_str().unwrap()).unwrap();
    schema::assert_matches_schema("verify", &input);
    assert_eq!(input["image"]["manifest_digest"], A_TXT);
    assert_eq!(input["image"]["config"], Value::Null);
    assert_eq!(input["signature"]["verified"], true);
    let ids = input["signature"]["identities"].as_array().unwrap();
    // Two bundles from two runs of the same workflow: two identities (their commits differ).
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(
        ids[0]["extensions"]["source_repository_digest"],
        ids[1]["extensions"]["source_repository_digest"]
    );
    assert_eq!(ids[1]["san"], DEFAULT_IDENTITY);
    assert_eq!(ids[0]["san"], DEFAULT_IDENTITY);
    assert_eq!(ids[0]["issuer"], DEFAULT_ISSUER);
    assert_eq!(
        ids[0]["extensions"]["build_signer_uri"], DEFAULT_IDENTITY,
        "{ids:?}"
    );
    assert_eq!(ids[0]["extensions"]["runner_environment"], "github-hosted");
    assert_eq!(
        input["provenance"]["buildDefinition"]["buildType"],
        "https://actions.github.io/buildtypes/workflow/v1"
    );

    // The shipped example allows the pinned workflow...
    let r = verify(example, "https://github.com/sigstore-conformance/.*");
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["policy"]["allow"], true);
    assert_eq!(doc["attestations"].as_array().unwrap().len(), 1);
    assert_eq!(doc["signatures"].as_array().unwrap().len(), 1);

    // ...and refuses another workflow of the same repository.
    let pinned = tmp.path().join("pinned");
    support::kiln::copy_tree(Path::new(example), &pinned, &|_| false);
    let data = fs::read_to_string(pinned.join("data.json"))
        .unwrap()
        .replace(
            "oidc-beacon.yml@refs/heads/main\"",
            "release.yml@refs/heads/main\"",
        );
    fs::write(pinned.join("data.json"), data).unwrap();
    let r = verify(
        pinned.to_str().unwrap(),
        "https://github.com/sigstore-conformance/.*",
    );
    assert_eq!(r.code, 1);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        doc["errors"]
            .to_string()
            .contains("is not the release workflow"),
        "{doc:#}"
    );

    // The identity check comes before the policy: another signer never reaches it.
    let r = verify(example, "https://github.com/other/.*");
    assert_eq!(r.code, 1);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["policy"], Value::Null);
    assert!(
        doc["rejected"]
            .to_string()
            .contains("\"kind\":\"Identity\""),
        "{doc:#}"
    );

    // An artifact needs its bundles on the command line.
    let r = kiln(&["verify", &subject, "--key", &dsse].map(String::from));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("pass its bundles with --bundle"),
        "{}",
        r.stderr
    );

    // The example's own Rego tests pass.
    let r = kiln(&["policy", "test", example].map(String::from));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// `kiln verify --key` on a key-signed sigstore bundle with a transparency-log entry (as cosign
/// writes them): the entry is verified too, not ignored, so a forged one fails.
#[test]
fn kiln_verify_with_a_key_checks_the_bundles_log_entry() {
    let s = suite();
    let case = s.join("managed-key-happy-path");
    let subject = format!("file:{}", s.join("a.txt").display());
    let key = case.join("key.pub").display().to_string();
    let verify = |bundle: &Path| {
        kiln(
            &[
                "verify",
                &subject,
                "--key",
                &key,
                "--bundle",
                bundle.to_str().unwrap(),
                "--output",
                "json",
            ]
            .map(String::from),
        )
    };
    let original = case.join("bundle.sigstore.json");
    let r = verify(&original);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["signatures"].as_array().unwrap().len(), 1, "{doc:#}");

    // The same bundle with its log entry's integrated time moved: the signed entry timestamp
    // no longer verifies.
    let mut bundle: Value = serde_json::from_slice(&fs::read(&original).unwrap()).unwrap();
    let entry = &mut bundle["verificationMaterial"]["tlogEntries"][0];
    let t: u64 = entry["integratedTime"].as_str().unwrap().parse().unwrap();
    entry["integratedTime"] = Value::String((t + 1).to_string());
    let tmp = tempfile::tempdir().unwrap();
    let forged = tmp.path().join("forged.json");
    fs::write(&forged, serde_json::to_vec(&bundle).unwrap()).unwrap();
    let r = verify(&forged);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        doc["rejected"].to_string().contains("\"kind\":\"Tlog\""),
        "{doc:#}"
    );
}
