//! `kiln policy test`: every rule whose name starts with `test_` is a test, as in `opa test`. A
//! test passes when it evaluates to `true`; `false`, undefined or an error fail it.

use std::time::{Duration, Instant};

use serde::Serialize;

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestOutcome {
    /// Evaluated to `true`.
    Pass,
    /// Evaluated to something else, or was undefined.
    Fail,
    /// Evaluation failed.
    Error,
}

/// One test's result.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    /// `data.<package>.<rule>`.
    pub name: String,
    /// The file that declares it.
    pub file: String,
    /// Outcome.
    pub outcome: TestOutcome,
    /// For a failure: the value it had; for an error: the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Output of `print` calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prints: Vec<String>,
    /// Evaluation time.
    #[serde(serialize_with = "as_micros")]
    pub duration: Duration,
}

fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Every test's result, in file then declaration order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TestReport {
    /// Results.
    pub results: Vec<TestResult>,
}

impl TestReport {
    /// Tests that passed.
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == TestOutcome::Pass)
            .count()
    }

    /// Whether every test passed (and there was at least one).
    pub fn ok(&self) -> bool {
        !self.results.is_empty() && self.passed() == self.results.len()
    }
}

/// A test rule: (rule path `data.pkg.test_x`, file).
pub(crate) fn discover(engine: &mut regorus::Engine) -> Vec<(String, String)> {
    let packages = engine.get_packages().unwrap_or_default();
    let mut out: Vec<(String, String)> = Vec::new();
    for (module, pkg) in engine.get_modules().iter().zip(packages) {
        let file = module.package.span.source.get_path().to_string();
        for rule in &module.policy {
            let regorus::unstable::Rule::Spec { head, .. } = rule.as_ref() else {
                continue;
            };
            let refr = match head {
                regorus::unstable::RuleHead::Compr { refr, .. }
                | regorus::unstable::RuleHead::Set { refr, .. } => refr,
                // Functions are helpers, never tests.
                regorus::unstable::RuleHead::Func { .. } => continue,
            };
            let name = refr.span().text();
            if name.starts_with("test_")
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                let path = format!("{pkg}.{name}");
                // Incremental definitions of one rule are one test.
                if !out.iter().any(|(p, _)| *p == path) {
                    out.push((path, file.clone()));
                }
            }
        }
    }
    out
}

pub(crate) fn run(engine: &regorus::Engine, filter: Option<&str>) -> TestReport {
    let mut probe = engine.clone();
    let tests = discover(&mut probe);
    let mut report = TestReport::default();
    for (name, file) in tests {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let mut e = engine.clone();
        e.set_input(regorus::Value::Undefined);
        let start = Instant::now();
        let result = e.eval_rule(name.clone());
        let duration = start.elapsed();
        let prints = e.take_prints().unwrap_or_default();
        let (outcome, detail) = match result {
            Ok(regorus::Value::Bool(true)) => (TestOutcome::Pass, None),
            Ok(regorus::Value::Undefined) => (TestOutcome::Fail, Some("undefined".to_owned())),
            Ok(v) => (TestOutcome::Fail, Some(v.to_json_str().unwrap_or_default())),
            Err(err) => (TestOutcome::Error, Some(err.to_string())),
        };
        report.results.push(TestResult {
            name,
            file,
            outcome,
            detail,
            prints,
            duration,
        });
    }
    report
}
