//! Policy gates of a build: the engine builds each gate's input (`policy/schema/`), asks
//! [`kiln_policy::Policy`], records every decision, and stops the build on a deny.
//!
//! Where each gate runs:
//! - `source`: while planning, for each image reference before it is resolved (so a rewrite
//!   pins what is pulled), and for each `ADD <url>` of the graph;
//! - `admission`: after planning (base images resolved) and before any step runs;
//! - `exec`: for every RUN step of the graph, cached or not, before any step runs;
//! - `export`: after the image is assembled and its provenance and SBOM are made, before any of
//!   it is signed, written outside the store, pushed, or named in the local image store.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use kiln_policy::{Decision, Gate, Policy};
use serde_json::{Value, json};

use crate::graph::{ExecMountKind, Graph, Network, Op, Security, SourceOp, VertexIdx};
use crate::output::OutputSpec;
use crate::progress::{Event, Progress};
use crate::registry::reference::Reference;

/// A build stopped by policy.
#[derive(Debug, thiserror::Error)]
#[error("denied by policy at {}:{}", .gate.package(), list(.messages))]
pub struct Denied {
    /// The gate.
    pub gate: Gate,
    /// Every message (for per-step gates, prefixed with the step).
    pub messages: Vec<String>,
}

fn list(messages: &[String]) -> String {
    messages.iter().map(|m| format!("\n  - {m}")).collect()
}

/// One build's gatekeeper: the policy, who is building, and the decisions so far.
#[derive(Debug)]
pub struct Gatekeeper {
    policy: Arc<Policy>,
    tenant: String,
    progress: Progress,
    decisions: Mutex<Vec<Decision>>,
    /// A deny met while planning (the planner only sees a string error).
    source_denied: Mutex<Option<Denied>>,
    /// Source decisions by reference: a reference used by several stages is judged once.
    sources: Mutex<std::collections::HashMap<String, Result<String, String>>>,
}

impl Gatekeeper {
    /// A gatekeeper for one build.
    pub fn new(policy: Arc<Policy>, tenant: &crate::TenantId, progress: Progress) -> Self {
        Self {
            policy,
            tenant: tenant.to_string(),
            progress,
            decisions: Mutex::default(),
            source_denied: Mutex::default(),
            sources: Mutex::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn record(&self, d: Decision) -> Decision {
        self.progress.send(Event::Policy {
            decision: d.clone(),
        });
        self.decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(d.clone());
        d
    }

    /// Every decision so far, in the order made.
    pub fn decisions(&self) -> Vec<Decision> {
        self.decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The deny the source gate met while planning, if any.
    pub fn take_source_denial(&self) -> Option<Denied> {
        self.source_denied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn evaluate(&self, gate: Gate, subject: Option<&str>, input: &Value) -> Decision {
        let mut d = self.policy.evaluate(gate, input);
        if let Some(s) = subject {
            d = d.with_subject(s);
        }
        self.record(d)
    }

    /// The `source` gate for an image reference: the reference to resolve (the policy's
    /// rewrite, or the reference itself), or the deny as a message for the planner.
    pub fn source_image(&self, reference: &str) -> Result<String, String> {
        if let Some(r) = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(reference)
        {
            return r.clone();
        }
        let r = self.judge_source_image(reference);
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(reference.to_owned(), r.clone());
        r
    }

    /// Keeps a source deny for the builder (the planner only passes a string on) and returns
    /// that string.
    fn source_deny(&self, messages: Vec<String>) -> String {
        let denied = Denied {
            gate: Gate::Source,
            messages,
        };
        let text = denied.to_string();
        *self
            .source_denied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(denied);
        text
    }

    fn judge_source_image(&self, reference: &str) -> Result<String, String> {
        let input = json!({
            "tenant": self.tenant,
            "source": { "type": "image", "image": image_ref(reference) },
        });
        let d = self.evaluate(Gate::Source, Some(reference), &input);
        if !d.allow {
            return Err(self.source_deny(
                d.messages
                    .iter()
                    .map(|m| format!("{reference}: {m}"))
                    .collect(),
            ));
        }
        match d.rewrite {
            Some(r) if r != reference => {
                if let Err(e) = Reference::parse(&r) {
                    return Err(self.source_deny(vec![format!(
                        "{reference}: rewrite to {r:?} is not a reference: {e}"
                    )]));
                }
                self.progress.send(Event::Phase {
                    name: format!("policy: {reference} rewritten to {r}"),
                });
                Ok(r)
            }
            _ => Ok(reference.to_owned()),
        }
    }

    /// The `source` gate for every `ADD <url>` and the `exec` gate for every RUN step the
    /// target needs. Every step is judged, so a deny lists every offending step at once.
    pub fn graph(
        &self,
        graph: &Graph,
        target: VertexIdx,
        entitlements: &[&str],
    ) -> Result<(), Denied> {
        let mut sources = Vec::new();
        let mut execs = Vec::new();
        for idx in graph.ancestors(&[target]) {
            let Some(v) = graph.get(idx) else { continue };
            match &v.op {
                Op::Source(SourceOp::Http { url, checksum, .. }) => {
                    let input = json!({
                        "tenant": self.tenant,
                        "source": {
                            "type": "http",
                            "url": url,
                            "checksum": checksum.to_string(),
                            "stage": stage_of(&v.name),
                        },
                    });
                    let d = self.evaluate(Gate::Source, Some(url), &input);
                    if d.rewrite.is_some() {
                        sources.push(format!(
                            "{url}: kiln.source rewrite applies to image references only"
                        ));
                    }
                    sources.extend(d.messages.iter().map(|m| format!("{url}: {m}")));
                }
                Op::Exec(_) => {
                    let input = exec_input(&self.tenant, graph, idx, entitlements);
                    let d = self.evaluate(Gate::Exec, Some(&v.name), &input);
                    execs.extend(d.messages.iter().map(|m| format!("{}: {m}", v.name)));
                }
                _ => {}
            }
        }
        if !sources.is_empty() {
            return Err(Denied {
                gate: Gate::Source,
                messages: sources,
            });
        }
        if !execs.is_empty() {
            return Err(Denied {
                gate: Gate::Exec,
                messages: execs,
            });
        }
        Ok(())
    }

    /// The `admission` gate.
    pub fn admission(&self, input: &Value) -> Result<(), Denied> {
        self.whole(Gate::Admission, input)
    }

    /// The `export` gate.
    pub fn export(&self, input: &Value) -> Result<(), Denied> {
        self.whole(Gate::Export, input)
    }

    fn whole(&self, gate: Gate, input: &Value) -> Result<(), Denied> {
        let d = self.evaluate(gate, None, input);
        if d.allow {
            Ok(())
        } else {
            Err(Denied {
                gate,
                messages: d.messages,
            })
        }
    }

    /// The tenant, as the inputs name it.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

/// An image reference as the inputs show it (`policy/schema/source.json`). A reference that
/// does not parse (a local name with upper case, say) is shown as written.
pub fn image_ref(reference: &str) -> Value {
    match Reference::parse(reference) {
        Ok(r) => json!({
            "ref": reference,
            "normalized": r.to_string(),
            "registry": r.registry,
            "repository": r.repository,
            "tag": r.tag,
            "digest": r.digest.map(|d| d.to_string()),
        }),
        Err(_) => json!({
            "ref": reference,
            "normalized": reference,
            "registry": "",
            "repository": reference,
            "tag": null,
            "digest": null,
        }),
    }
}

/// The stage label of a step's progress name (`[build 2/4] RUN make` → `build`).
fn stage_of(name: &str) -> Option<&str> {
    name.strip_prefix('[')?.split(' ').next()
}

fn exec_input(tenant: &str, graph: &Graph, idx: VertexIdx, entitlements: &[&str]) -> Value {
    let Some(v) = graph.get(idx) else {
        return Value::Null;
    };
    let Op::Exec(e) = &v.op else {
        return Value::Null;
    };
    let from = |input: usize| -> String {
        let Some(src) = v.inputs.get(input).and_then(|i| graph.get(*i)) else {
            return String::new();
        };
        match &src.op {
            Op::Source(SourceOp::Context { name }) => format!("context:{name}"),
            Op::Source(SourceOp::Image { name, manifest }) if name.is_empty() => {
                manifest.to_string()
            }
            Op::Source(SourceOp::Image { name, .. }) => name.clone(),
            Op::Source(SourceOp::Scratch) => "scratch".to_owned(),
            _ => stage_of(&src.name).unwrap_or_default().to_owned(),
        }
    };
    let mounts: Vec<Value> = e
        .mounts
        .iter()
        .map(|m| match &m.kind {
            ExecMountKind::Bind {
                input,
                source,
                readwrite,
            } => json!({
                "type": "bind", "target": m.target, "from": from(*input),
                "source": source, "readonly": !readwrite,
            }),
            ExecMountKind::Tmpfs { .. } => json!({ "type": "tmpfs", "target": m.target }),
            ExecMountKind::Cache {
                id,
                sharing,
                readonly,
                from: seed,
                ..
            } => {
                let mut c = json!({
                    "type": "cache", "target": m.target, "id": id,
                    "readonly": readonly,
                    "sharing": serde_json::to_value(sharing).unwrap_or(Value::Null),
                });
                if let Some(s) = seed {
                    c["from"] = json!(from(s.input));
                    c["source"] = json!(s.source);
                }
                c
            }
            ExecMountKind::Secret { id, required, .. } => json!({
                "type": "secret", "target": m.target, "id": id, "required": required,
            }),
            ExecMountKind::Ssh { id, required, .. } => json!({
                "type": "ssh", "target": m.target, "id": id, "required": required,
            }),
        })
        .collect();
    let env_names: BTreeSet<&str> = e
        .env
        .iter()
        .map(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k))
        .collect();
    json!({
        "tenant": tenant,
        "entitlements": entitlements,
        "step": {
            "stage": stage_of(&v.name).unwrap_or_default(),
            "name": v.name,
            "command": e.args,
            "network": match e.network { Network::None => "none", Network::Host => "host" },
            "security": match e.security { Security::Sandbox => "sandbox", Security::Insecure => "insecure" },
            "user": e.user,
            "workdir": e.cwd,
            "env_names": env_names,
            "mounts": mounts,
        },
    })
}

/// An output as the inputs show it.
pub fn output_json(o: &OutputSpec) -> Value {
    match o {
        OutputSpec::Oci { dest } => json!({"type": "oci", "dest": dest}),
        OutputSpec::OciDir { dest } => json!({"type": "oci-dir", "dest": dest}),
        OutputSpec::Docker { dest } => json!({"type": "docker", "dest": dest}),
        OutputSpec::Local { dest } => json!({"type": "local", "dest": dest}),
        OutputSpec::Tar { dest } => json!({"type": "tar", "dest": dest}),
        OutputSpec::Registry { reference } => json!({"type": "registry", "ref": reference}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_labels_come_from_progress_names() {
        assert_eq!(stage_of("[build 2/4] RUN make"), Some("build"));
        assert_eq!(stage_of("[stage-0 1/1] RUN x"), Some("stage-0"));
        assert_eq!(stage_of("RUN x"), None);
    }

    #[test]
    fn image_refs_are_parsed_for_the_policy() {
        let v = image_ref("alpine:3.20");
        assert_eq!(v["registry"], "docker.io");
        assert_eq!(v["repository"], "library/alpine");
        assert_eq!(v["tag"], "3.20");
        assert_eq!(v["digest"], Value::Null);
        let v = image_ref(
            "127.0.0.1:5000/team/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        );
        assert_eq!(v["registry"], "127.0.0.1:5000");
        assert!(
            v["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:"))
        );
    }
}
