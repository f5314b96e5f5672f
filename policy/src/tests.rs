#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use serde_json::json;

fn policy(rego: &str) -> Result<Policy, PolicyError> {
    Policy::from_sources(
        "t",
        &[("p.rego".to_owned(), rego.to_owned())],
        &[],
        Limits {
            eval_time: Duration::from_millis(200),
            ..Limits::default()
        },
    )
}

#[test]
fn deny_messages_are_sorted_and_a_gate_without_a_package_allows() {
    let p = policy(
        r#"package kiln.exec
deny contains "b: second" if input.step.network == "host"
deny contains {"msg": "a: first"} if input.step.network == "host"
"#,
    )
    .unwrap();
    let d = p.evaluate(Gate::Exec, &json!({"step": {"network": "host"}}));
    assert!(!d.allow);
    assert_eq!(d.messages, ["a: first", "b: second"]);
    assert!(!d.error);
    assert!(
        p.evaluate(Gate::Exec, &json!({"step": {"network": "none"}}))
            .allow
    );
    let other = p.evaluate(Gate::Admission, &json!({}));
    assert!(other.allow && other.messages.is_empty());
    assert_eq!(p.gates(), [Gate::Exec]);
}

#[test]
fn load_errors_name_the_file_and_empty_policies_are_refused() {
    let e = policy("package kiln.exec\ndeny contains x if {").unwrap_err();
    assert!(e.to_string().contains("p.rego"), "{e}");
    let e = policy("package other\nallow := true").unwrap_err();
    assert!(e.to_string().contains("no package decides a gate"), "{e}");
}

#[test]
fn evaluation_errors_and_wrong_shapes_deny() {
    let p = policy(
        "package kiln.admission\ndeny contains msg if { msg := sprintf(\"%s\", input.x + 1) }",
    )
    .unwrap();
    let d = p.evaluate(Gate::Admission, &json!({"x": "not a number"}));
    assert!(!d.allow && d.error, "{d:?}");
    let p = policy("package kiln.admission\ndeny := 3").unwrap();
    let d = p.evaluate(Gate::Admission, &json!({}));
    assert!(
        !d.allow && d.error && d.messages[0].contains("set of messages"),
        "{d:?}"
    );
}

#[test]
fn a_long_evaluation_is_cut_off_and_denied() {
    let p = policy(
        "package kiln.admission\ndeny contains \"never\" if { count([x | some x in numbers.range(1, 100000); some y in numbers.range(1, 100000); x == y + 1]) < 0 }",
    )
    .unwrap();
    let d = p.evaluate(Gate::Admission, &json!({}));
    assert!(!d.allow && d.error, "{d:?}");
    assert!(d.messages[0].contains("bound"), "{d:?}");
    // 10^10 iterations: only the time bound can have ended it (no timing assertion here).
}

#[test]
fn source_rewrite_is_returned_only_when_allowed() {
    let p = policy(
        r#"package kiln.source
rewrite := "alpine@sha256:0000000000000000000000000000000000000000000000000000000000000000" if input.source.image.ref == "alpine:3.20"
deny contains "no latest" if endswith(input.source.image.ref, ":latest")
"#,
    )
    .unwrap();
    let d = p.evaluate(
        Gate::Source,
        &json!({"source": {"type": "image", "image": {"ref": "alpine:3.20"}}}),
    );
    assert!(d.allow);
    assert!(d.rewrite.as_deref().unwrap().starts_with("alpine@sha256:"));
    let d = p.evaluate(
        Gate::Source,
        &json!({"source": {"type": "image", "image": {"ref": "alpine:latest"}}}),
    );
    assert!(!d.allow && d.rewrite.is_none());
}

#[test]
fn digest_changes_with_any_file_and_tests_run() {
    let a = policy(
        "package kiln.exec\ndeny contains \"x\" if false\ntest_ok if true\ntest_bad if false",
    )
    .unwrap();
    let b = policy(
        "package kiln.exec\ndeny contains \"y\" if false\ntest_ok if true\ntest_bad if false",
    )
    .unwrap();
    assert_ne!(a.digest(), b.digest());
    let r = a.run_tests(None);
    assert_eq!(r.results.len(), 2);
    assert_eq!(r.passed(), 1);
    assert!(!r.ok());
    let r = a.run_tests(Some("test_ok"));
    assert!(r.ok());
}

#[test]
fn schemas_are_json() {
    for g in Gate::ALL {
        let v: serde_json::Value = serde_json::from_str(g.input_schema()).unwrap();
        assert_eq!(v["title"], format!("kiln.{} input", g.name()));
    }
}

#[test]
fn a_package_with_only_a_rewrite_or_only_a_deny_is_fine() {
    let p = policy("package kiln.source\nrewrite := \"a@sha256:00\" if false").unwrap();
    let d = p.evaluate(Gate::Source, &json!({}));
    assert!(d.allow && d.rewrite.is_none() && !d.error, "{d:?}");
    let p = policy("package kiln.source\ndeny contains \"x\" if input.no").unwrap();
    let d = p.evaluate(Gate::Source, &json!({}));
    assert!(d.allow && !d.error, "{d:?}");
}
