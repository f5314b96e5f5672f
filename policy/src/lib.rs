//! kiln-policy: Rego (OPA v1 syntax) evaluated in-process at kiln's gates.
//!
//! The crate decides; it never enforces. The engine builds a gate's JSON input (documented by a
//! JSON Schema in `policy/schema/`), asks [`Policy::evaluate`], and acts on the [`Decision`].
//! Apart from reading the policy files in [`Policy::load`], nothing here does I/O.
//!
//! Every gate is a Rego package: `kiln.admission`, `kiln.source`, `kiln.exec`, `kiln.export`,
//! `kiln.verify`. A package's `deny` rule is a set of messages (strings, or objects with a `msg`
//! string, as conftest writes them); the gate allows exactly when the set is empty or undefined.
//! `kiln.source` may also define `rewrite`: a reference (usually pinned by digest) that replaces
//! the source, like BuildKit's source-policy CONVERT.
//!
//! Fail closed: a policy that does not load, an evaluation error (a builtin error, a type
//! error, a `deny` that is not a set of messages), or an evaluation that exceeds its time
//! bound is a deny whose message is the error. Builtin errors are strict (OPA's
//! `--strict-builtin-errors`), so a typo that would make a rule silently undefined in OPA denies
//! here instead.

use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};

mod tests_runner;

pub use tests_runner::{TestOutcome, TestReport, TestResult};

/// The gates, in the order a build meets them (`verify` belongs to `kiln verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    /// Before anything runs: the whole request.
    Admission,
    /// Each source reference (base image, `ADD <url>`): allow, deny or rewrite.
    Source,
    /// Each RUN step, before it runs.
    Exec,
    /// The finished image, its provenance and SBOM, before anything leaves the store.
    Export,
    /// `kiln verify`, after the signature checks.
    Verify,
}

impl Gate {
    /// Every gate.
    pub const ALL: [Gate; 5] = [
        Gate::Admission,
        Gate::Source,
        Gate::Exec,
        Gate::Export,
        Gate::Verify,
    ];

    /// The gate's name (`admission`, …).
    pub fn name(self) -> &'static str {
        match self {
            Gate::Admission => "admission",
            Gate::Source => "source",
            Gate::Exec => "exec",
            Gate::Export => "export",
            Gate::Verify => "verify",
        }
    }

    /// The Rego package that decides it (`kiln.admission`, …).
    pub fn package(self) -> String {
        format!("kiln.{}", self.name())
    }

    /// Parses a gate name.
    pub fn parse(s: &str) -> Option<Gate> {
        Gate::ALL.into_iter().find(|g| g.name() == s)
    }

    /// The JSON Schema of the gate's input (`policy/schema/<gate>.json`).
    pub fn input_schema(self) -> &'static str {
        match self {
            Gate::Admission => include_str!("../schema/admission.json"),
            Gate::Source => include_str!("../schema/source.json"),
            Gate::Exec => include_str!("../schema/exec.json"),
            Gate::Export => include_str!("../schema/export.json"),
            Gate::Verify => include_str!("../schema/verify.json"),
        }
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bounds on one evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time for one gate evaluation; over it, the gate denies.
    pub eval_time: Duration,
    /// Largest input document accepted (serialized JSON bytes); larger denies.
    pub max_input_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            eval_time: Duration::from_millis(500),
            max_input_bytes: 8 << 20,
        }
    }
}

/// Largest policy file accepted (each `.rego` or `data.json`).
pub const MAX_POLICY_FILE: u64 = 4 << 20;

/// A policy that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("policy {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A Rego file does not parse or compile.
    #[error("policy {path}: {message}")]
    Rego {
        /// Path.
        path: String,
        /// Parser or compiler message (with line and column).
        message: String,
    },
    /// `data.json` is not a JSON object.
    #[error("policy data {path}: {message}")]
    Data {
        /// Path.
        path: String,
        /// Why.
        message: String,
    },
    /// Nothing to load, or nothing kiln would ever ask.
    #[error("policy {path}: {message}")]
    Empty {
        /// Path.
        path: String,
        /// Why.
        message: String,
    },
}

/// A loaded policy: Rego modules and data, ready to evaluate at every gate.
///
/// Cheap to share: evaluation clones the prepared engine (reference-counted modules).
#[derive(Clone)]
pub struct Policy {
    engine: regorus::Engine,
    digest: String,
    files: Vec<String>,
    gates: Vec<Gate>,
    limits: Limits,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("digest", &self.digest)
            .field("files", &self.files)
            .field("gates", &self.gates)
            .finish_non_exhaustive()
    }
}

/// One gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Which gate.
    pub gate: Gate,
    /// What was decided about, when the gate runs more than once per build (the source
    /// reference, the step), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `sha256:` over the policy's files (see [`Policy::digest`]).
    pub policy_digest: String,
    /// Allowed (no deny messages and no error).
    pub allow: bool,
    /// The deny messages, sorted; for an error, the error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    /// `kiln.source` only: the reference to use instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// The decision came from an error (load, evaluation, bound), not from the policy's rules.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub error: bool,
    /// Evaluation time in microseconds.
    pub eval_us: u64,
}

impl Decision {
    /// A deny made by an error (fail closed).
    pub fn error(gate: Gate, policy_digest: &str, message: String, took: Duration) -> Self {
        Self {
            gate,
            subject: None,
            policy_digest: policy_digest.to_owned(),
            allow: false,
            messages: vec![message],
            rewrite: None,
            error: true,
            eval_us: micros(took),
        }
    }

    /// Sets the subject.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The decision as a JSON value (what the provenance records).
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Policy {
    /// Loads a policy from a `.rego` file or a directory: every `*.rego` below it (sorted,
    /// hidden entries skipped) and every `data.json`, merged into `data`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let io = |source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mut rego = Vec::new();
        let mut data = Vec::new();
        if meta.is_dir() {
            collect(path, path, &mut rego, &mut data)?;
        } else {
            rego.push((path.display().to_string(), read_bounded(path)?));
        }
        rego.sort();
        data.sort();
        Self::from_sources(&path.display().to_string(), &rego, &data, Limits::default())
    }

    /// Builds a policy from in-memory sources: `(name, text)` pairs of Rego modules and of
    /// `data.json` documents.
    pub fn from_sources(
        label: &str,
        rego: &[(String, String)],
        data: &[(String, String)],
        limits: Limits,
    ) -> Result<Self, PolicyError> {
        if rego.is_empty() {
            return Err(PolicyError::Empty {
                path: label.to_owned(),
                message: "no .rego files".into(),
            });
        }
        let mut engine = regorus::Engine::new();
        engine.set_strict_builtin_errors(true);
        engine.set_gather_prints(true);
        let mut h = Sha256::new();
        let mut files = Vec::new();
        for (name, text) in rego {
            hash_file(&mut h, "rego", name, text);
            engine
                .add_policy(name.clone(), text.clone())
                .map_err(|e| PolicyError::Rego {
                    path: name.clone(),
                    message: e.to_string(),
                })?;
            files.push(name.clone());
        }
        for (name, text) in data {
            hash_file(&mut h, "data", name, text);
            let v = regorus::Value::from_json_str(text).map_err(|e| PolicyError::Data {
                path: name.clone(),
                message: e.to_string(),
            })?;
            if v.as_object().is_err() {
                return Err(PolicyError::Data {
                    path: name.clone(),
                    message: "must be a JSON object".into(),
                });
            }
            engine.add_data(v).map_err(|e| PolicyError::Data {
                path: name.clone(),
                message: e.to_string(),
            })?;
            files.push(name.clone());
        }
        let packages = engine.get_packages().map_err(|e| PolicyError::Rego {
            path: label.to_owned(),
            message: e.to_string(),
        })?;
        let gates: Vec<Gate> = Gate::ALL
            .into_iter()
            .filter(|g| {
                let p = format!("data.{}", g.package());
                packages.contains(&p)
            })
            .collect();
        let has_tests = !tests_runner::discover(&mut engine).is_empty();
        if gates.is_empty() && !has_tests {
            return Err(PolicyError::Empty {
                path: label.to_owned(),
                message: format!(
                    "no package decides a gate: declare one of {} (found: {})",
                    Gate::ALL.map(Gate::package).join(", "),
                    if packages.is_empty() {
                        "none".to_owned()
                    } else {
                        packages.join(", ")
                    }
                ),
            });
        }
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: limits.eval_time,
            check_interval: NonZeroU32::MIN,
        });
        // Prepare once now: a rule conflict, an unsafe variable or recursion is a load error,
        // not a deny at every evaluation; clones share the prepared modules.
        engine
            .eval_query("true".to_owned(), false)
            .map_err(|e| PolicyError::Rego {
                path: label.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self {
            engine,
            digest: format!("sha256:{}", hex::encode(h.finalize())),
            files,
            gates,
            limits,
        })
    }

    /// `sha256:` over the files' kinds, names and contents, in load order: the identity of the
    /// policy that decided, recorded with every decision.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The files loaded (Rego then data), as named at load.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Gates this policy has a package for; the others allow everything.
    pub fn gates(&self) -> &[Gate] {
        &self.gates
    }

    /// The evaluation bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Evaluates one gate. Never fails: every error is a deny with the error as its message.
    pub fn evaluate(&self, gate: Gate, input: &Json) -> Decision {
        let start = Instant::now();
        let fail = |m: String| Decision::error(gate, &self.digest, m, start.elapsed());
        if !self.gates.contains(&gate) {
            return Decision {
                gate,
                subject: None,
                policy_digest: self.digest.clone(),
                allow: true,
                messages: Vec::new(),
                rewrite: None,
                error: false,
                eval_us: micros(start.elapsed()),
            };
        }
        let text = match serde_json::to_string(input) {
            Ok(t) => t,
            Err(e) => return fail(format!("input: {e}")),
        };
        if text.len() > self.limits.max_input_bytes {
            return fail(format!(
                "input is {} bytes, over the {} byte bound",
                text.len(),
                self.limits.max_input_bytes
            ));
        }
        let value = match regorus::Value::from_json_str(&text) {
            Ok(v) => v,
            Err(e) => return fail(format!("input: {e}")),
        };
        let mut engine = self.engine.clone();
        engine.set_input(value);
        let pkg = gate.package();
        let deny = match eval_path(&mut engine, &format!("data.{pkg}.deny")) {
            Ok(v) => v,
            Err(e) => return fail(eval_error(gate, &e, start.elapsed(), self.limits)),
        };
        let mut messages = match deny_messages(&deny) {
            Ok(m) => m,
            Err(m) => return fail(format!("data.{pkg}.deny {m}")),
        };
        messages.sort();
        messages.dedup();
        let mut rewrite = None;
        if gate == Gate::Source && messages.is_empty() {
            match eval_path(&mut engine, &format!("data.{pkg}.rewrite")) {
                Ok(regorus::Value::Undefined) | Ok(regorus::Value::Null) => {}
                Ok(regorus::Value::String(s)) if !s.is_empty() => rewrite = Some(s.to_string()),
                Ok(other) => {
                    return fail(format!(
                        "data.{pkg}.rewrite must be a non-empty string, got {}",
                        other.to_json_str().unwrap_or_default()
                    ));
                }
                Err(e) => return fail(eval_error(gate, &e, start.elapsed(), self.limits)),
            }
        }
        Decision {
            gate,
            subject: None,
            policy_digest: self.digest.clone(),
            allow: messages.is_empty(),
            messages,
            rewrite,
            error: false,
            eval_us: micros(start.elapsed()),
        }
    }

    /// Runs every `test_*` rule of every package, as `opa test` does.
    pub fn run_tests(&self, filter: Option<&str>) -> TestReport {
        tests_runner::run(&self.engine, filter)
    }
}

/// The value of a rule path; `Undefined` when the package does not define it (eval_rule calls
/// that an error).
fn eval_path(engine: &mut regorus::Engine, path: &str) -> Result<regorus::Value, String> {
    let results = engine
        .eval_query(path.to_owned(), false)
        .map_err(|e| e.to_string())?;
    Ok(results
        .result
        .into_iter()
        .next()
        .and_then(|r| r.expressions.into_iter().next())
        .map(|e| e.value)
        .unwrap_or(regorus::Value::Undefined))
}

fn eval_error(gate: Gate, text: &str, took: Duration, limits: Limits) -> String {
    if took >= limits.eval_time || text.contains("time limit") || text.contains("TimeLimit") {
        format!(
            "policy evaluation of {} exceeded its {} ms bound",
            gate.package(),
            limits.eval_time.as_millis()
        )
    } else {
        format!("policy evaluation of {} failed: {text}", gate.package())
    }
}

/// The messages of a `deny` value: a set (or array) of strings or of objects with a `msg`.
fn deny_messages(v: &regorus::Value) -> Result<Vec<String>, String> {
    let one = |v: &regorus::Value| -> Result<String, String> {
        match v {
            regorus::Value::String(s) => Ok(s.to_string()),
            regorus::Value::Object(o) => match o.get(&regorus::Value::from("msg")) {
                Some(regorus::Value::String(s)) => Ok(s.to_string()),
                _ => Err("has an object without a string \"msg\"".to_owned()),
            },
            other => Err(format!(
                "must hold strings, found {}",
                other.to_json_str().unwrap_or_default()
            )),
        }
    };
    match v {
        regorus::Value::Undefined => Ok(Vec::new()),
        regorus::Value::Set(s) => s.iter().map(one).collect(),
        regorus::Value::Array(a) => a.iter().map(one).collect(),
        other => Err(format!(
            "must be a set of messages, got {}",
            other.to_json_str().unwrap_or_default()
        )),
    }
}

fn hash_file(h: &mut Sha256, kind: &str, name: &str, text: &str) {
    for part in [kind.as_bytes(), name.as_bytes(), text.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
}

fn read_bounded(path: &Path) -> Result<String, PolicyError> {
    let io = |source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_POLICY_FILE {
        return Err(PolicyError::Empty {
            path: path.display().to_string(),
            message: format!(
                "{} bytes, over the {MAX_POLICY_FILE} byte bound",
                meta.len()
            ),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

type Files = Vec<(String, String)>;

fn collect(root: &Path, dir: &Path, rego: &mut Files, data: &mut Files) -> Result<(), PolicyError> {
    let io = |source| PolicyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        let ft = e.file_type().map_err(io)?;
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if ft.is_dir() {
            collect(root, &path, rego, data)?;
        } else if name.ends_with(".rego") {
            rego.push((rel, read_bounded(&path)?));
        } else if name == "data.json" {
            data.push((rel, read_bounded(&path)?));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
