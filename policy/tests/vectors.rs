//! Policy vectors (`vectors/policy/<case>/`, format in `vectors/policy/README.md`): each case's
//! policy is loaded, its gate evaluated on `input.json`, and the decision compared exactly to
//! `expected.json`. A policy that does not load denies as a build does (`Decision::error`).
//! Every `input.json` is validated against its gate's JSON Schema, except cases marked
//! `"schema_valid": false`, which must then actually be invalid.
//! `KILN_VECTORS_VERBOSE=1` prints every decision.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_policy::{Decision, Gate, Limits, Policy};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    gate: Gate,
    allow: bool,
    /// Exact deny messages, sorted (absent for error cases).
    #[serde(default)]
    messages: Option<Vec<String>>,
    /// The decision is an error (load, evaluation, bound).
    #[serde(default)]
    error: bool,
    /// For errors: a substring of the single message.
    #[serde(default)]
    message_contains: Option<String>,
    /// `kiln.source`: the rewritten reference.
    #[serde(default)]
    rewrite: Option<String>,
    /// `false`: input.json deliberately violates the gate's schema (a missing field).
    #[serde(default = "yes")]
    schema_valid: bool,
    /// A known defect of kiln-policy: the case states the documented behaviour, and is
    /// expected to FAIL until the defect is fixed (strict: once it passes, the test fails and
    /// says to remove the marker).
    #[serde(default)]
    known_issue: Option<String>,
}

fn yes() -> bool {
    true
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vectors/policy")
}

fn cases() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Loads and evaluates a case the way a build does: a load error is a deny.
fn decide(dir: &Path, gate: Gate, input: &Value) -> Decision {
    let rego = std::fs::read_to_string(dir.join("policy.rego")).unwrap();
    let data = dir.join("data.json");
    let data = if data.is_file() {
        vec![(
            "data.json".to_owned(),
            std::fs::read_to_string(&data).unwrap(),
        )]
    } else {
        Vec::new()
    };
    let label = dir.file_name().unwrap().to_string_lossy().into_owned();
    match Policy::from_sources(
        &label,
        &[("policy.rego".to_owned(), rego)],
        &data,
        Limits::default(),
    ) {
        Ok(p) => p.evaluate(gate, input),
        Err(e) => Decision::error(gate, "", e.to_string(), Duration::default()),
    }
}

/// Why a case fails, or `None`.
fn check(dir: &Path) -> Option<String> {
    let exp: Expected = match serde_json::from_value(read_json(&dir.join("expected.json"))) {
        Ok(e) => e,
        Err(e) => return Some(format!("{}: expected.json: {e}", dir.display())),
    };
    let input = read_json(&dir.join("input.json"));
    let mut problems = Vec::new();

    let schema: Value = serde_json::from_str(exp.gate.input_schema()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&input)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    match (exp.schema_valid, errors.is_empty()) {
        (true, false) => problems.push(format!("input.json violates the schema: {errors:?}")),
        (false, true) => {
            problems.push("marked schema_valid: false but input.json is valid".to_owned())
        }
        _ => {}
    }

    let d = decide(dir, exp.gate, &input);
    if std::env::var_os("KILN_VECTORS_VERBOSE").is_some() {
        eprintln!("{}: {}", dir.display(), d.to_json());
    }
    if d.allow != exp.allow {
        problems.push(format!("allow: got {}, want {}", d.allow, exp.allow));
    }
    if d.error != exp.error {
        problems.push(format!("error: got {}, want {}", d.error, exp.error));
    }
    if exp.error {
        let want = exp.message_contains.as_deref().unwrap_or("");
        if want.is_empty() {
            problems.push("error case without message_contains".to_owned());
        }
        if d.messages.len() != 1 || !d.messages[0].contains(want) {
            problems.push(format!(
                "messages: got {:?}, want one containing {want:?}",
                d.messages
            ));
        }
        if exp.messages.is_some() {
            problems.push("error case with exact messages".to_owned());
        }
    } else {
        let want = exp.messages.clone().unwrap_or_default();
        let mut sorted = want.clone();
        sorted.sort();
        if sorted != want {
            problems.push("expected.json messages are not sorted".to_owned());
        }
        if d.messages != want {
            problems.push(format!("messages: got {:?}, want {want:?}", d.messages));
        }
        if exp.message_contains.is_some() {
            problems.push("message_contains without error".to_owned());
        }
    }
    if d.rewrite != exp.rewrite {
        problems.push(format!(
            "rewrite: got {:?}, want {:?}",
            d.rewrite, exp.rewrite
        ));
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{}: {}\n    decision: {}",
            dir.display(),
            problems.join("; "),
            d.to_json()
        )
    })
}

#[test]
fn policy_vectors() {
    let cases = cases();
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    let mut failures = Vec::new();
    let mut verdicts: BTreeMap<Gate, BTreeSet<bool>> = BTreeMap::new();
    for dir in &cases {
        let exp: Expected = serde_json::from_value(read_json(&dir.join("expected.json")))
            .unwrap_or_else(|e| panic!("{}: expected.json: {e}", dir.display()));
        // Only passing cases count towards "every gate has an allow and a deny case".
        match (check(dir), exp.known_issue.as_deref()) {
            (Some(f), None) => failures.push(f),
            (Some(f), Some(issue)) => eprintln!("KNOWN ISSUE (still present): {issue}\n  {f}"),
            (None, Some(_)) => failures.push(format!(
                "{}: passes now: remove \"known_issue\" from its expected.json",
                dir.display()
            )),
            (None, None) => {
                verdicts.entry(exp.gate).or_default().insert(exp.allow);
            }
        }
    }
    for gate in Gate::ALL {
        let v = verdicts.get(&gate).cloned().unwrap_or_default();
        assert!(
            v.contains(&true) && v.contains(&false),
            "gate {gate} lacks an allow or a deny case: {v:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_case_is_complete_and_documented() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for dir in cases() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        for f in ["policy.rego", "input.json", "expected.json"] {
            assert!(dir.join(f).is_file(), "{name}: no {f}");
        }
        for e in std::fs::read_dir(&dir).unwrap() {
            let f = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                ["policy.rego", "input.json", "expected.json", "data.json"].contains(&f.as_str()),
                "{name}: unexpected file {f}"
            );
        }
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not listed in vectors/policy/README.md"
        );
    }
}
