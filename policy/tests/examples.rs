//! The example policy (`policy/examples/`): it loads as one policy, decides every gate, and its
//! Rego tests (`*_test.rego`) pass under `Policy::run_tests`, as `kiln policy test` runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_policy::{Gate, Policy, TestOutcome};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn examples_load_and_their_tests_pass() {
    let policy = Policy::load(&examples()).unwrap();
    assert_eq!(policy.gates(), Gate::ALL, "every gate has a package");
    let report = policy.run_tests(None);
    let failed: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.outcome != TestOutcome::Pass)
        .map(|r| format!("{} ({}): {:?} {:?}", r.name, r.file, r.outcome, r.detail))
        .collect();
    assert!(
        report.ok(),
        "{} of {} tests did not pass:\n{}",
        failed.len(),
        report.results.len(),
        failed.join("\n")
    );
    let mut per_gate: BTreeMap<Gate, usize> = BTreeMap::new();
    for r in &report.results {
        let gate = Gate::ALL
            .into_iter()
            .find(|g| r.name.starts_with(&format!("data.{}_test.", g.package())))
            .unwrap_or_else(|| panic!("test {} is in no gate's test package", r.name));
        *per_gate.entry(gate).or_default() += 1;
    }
    for gate in Gate::ALL {
        let n = per_gate.get(&gate).copied().unwrap_or(0);
        assert!(n >= 2, "gate {gate}: only {n} tests");
    }
}

/// Copies the examples into a temporary directory.
fn copy_examples(to: &Path) {
    for e in std::fs::read_dir(examples()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_failing_rego_test_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    copy_examples(dir.path());
    assert!(Policy::load(dir.path()).unwrap().run_tests(None).ok());

    // A test whose expectation is wrong: a root image is denied, not allowed.
    std::fs::write(
        dir.path().join("broken_test.rego"),
        r#"package kiln.broken_test

import data.kiln.export

test_root_image_allowed if {
	count(export.deny) == 0 with input as {"image": {"config": {"user": "root"}}, "sbom": null}
}
"#,
    )
    .unwrap();
    let report = Policy::load(dir.path()).unwrap().run_tests(None);
    assert!(!report.ok());
    let broken: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.outcome != TestOutcome::Pass)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(broken, ["data.kiln.broken_test.test_root_image_allowed"]);

    // An erroring test (a strict builtin error) fails the run too.
    std::fs::write(
        dir.path().join("broken_test.rego"),
        "package kiln.broken_test\n\ntest_error if to_number(\"x\") == 1\n",
    )
    .unwrap();
    let report = Policy::load(dir.path()).unwrap().run_tests(None);
    assert!(!report.ok());
    assert!(
        report
            .results
            .iter()
            .any(|r| r.name.ends_with("test_error") && r.outcome == TestOutcome::Error),
        "{report:?}"
    );
}

#[test]
fn example_decisions_at_every_gate() {
    let policy = Policy::load(&examples()).unwrap();
    // A source the example allows and does not pin: allowed, not rewritten.
    let d = policy.evaluate(
        Gate::Source,
        &serde_json::json!({"tenant": "t", "source": {"type": "image", "image": {
            "ref": "golang:1.23", "normalized": "docker.io/library/golang:1.23",
            "registry": "docker.io", "repository": "library/golang", "tag": "1.23", "digest": null}}}),
    );
    assert!(d.allow && d.rewrite.is_none() && !d.error, "{d:?}");
    let d = policy.evaluate(
        Gate::Source,
        &serde_json::json!({"tenant": "t", "source": {"type": "image", "image": {
            "ref": "alpine:3.20", "normalized": "docker.io/library/alpine:3.20",
            "registry": "docker.io", "repository": "library/alpine", "tag": "3.20", "digest": null}}}),
    );
    assert_eq!(
        d.rewrite.as_deref(),
        Some(
            "docker.io/library/alpine:3.20@sha256:9eb908302b2f0669713ef2246088951e9478d232331951dfebb427fba5610b18"
        ),
        "{d:?}"
    );
    let d = policy.evaluate(
        Gate::Export,
        &serde_json::json!({"tenant": "t", "image": {"config": {"user": ""}}, "sbom": null}),
    );
    assert!(!d.allow && !d.error, "{d:?}");
}
