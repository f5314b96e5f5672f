//! SLSA Provenance v1 predicate for a kiln build (buildType [`BUILD_TYPE`]).
//!
//! The engine fills a plain [`ProvenanceInput`]; [`predicate`] turns it into the predicate in
//! `min` or `max` mode. Every field is documented in `docs/provenance.md`. Output is
//! deterministic: maps are sorted, lists of names are sorted and de-duplicated, dependency and
//! byproduct lists are sorted; only `steps` keeps the engine's (build) order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::media::BUILD_TYPE;

/// An in-toto ResourceDescriptor: a reference to an artifact by URI and digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceDescriptor {
    /// Where the artifact came from (`docker-image://…`, `git+https://…`, a path).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// Digests by algorithm (`sha256` → lowercase hex).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Media type of the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How the build was confined (facts the sandbox reports).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxFacts {
    /// Landlock ABI version enforced, `None` when landlock was unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock_abi: Option<u32>,
    /// `sha256:<hex>` of the seccomp profile applied to steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile_digest: Option<String>,
    /// User-namespace mode (`"rootless"`, `"mapped"`), `None` when not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<String>,
    /// Snapshotter used for step file systems.
    pub snapshotter: String,
}

/// One executed (or cached) build step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// The vertex digest (`sha256:<hex>`).
    pub id: String,
    /// Display name (`RUN make`).
    pub name: String,
    /// Whether the result came from the cache.
    pub cached: bool,
    /// Network mode of the step (`none`, `host`).
    pub network: String,
    /// Security mode (`sandbox`, `insecure`).
    pub security: String,
    /// What the sandbox applied to the step, as the sandbox reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confinement: Option<Value>,
}

/// Everything the engine knows about a build that provenance records.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProvenanceInput {
    /// `runDetails.builder.id`.
    pub builder_id: String,
    /// `runDetails.metadata.invocationId`.
    pub invocation_id: String,
    /// RFC 3339 UTC, seconds.
    pub started_on: String,
    /// RFC 3339 UTC, seconds.
    pub finished_on: String,
    /// Frontend name (`dockerfile.v0`).
    pub frontend: String,
    /// The Dockerfile: path as uri/name and its sha256.
    pub dockerfile: ResourceDescriptor,
    /// Build arguments given by the caller.
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    pub target: Option<String>,
    /// Target platforms (`linux/amd64`).
    pub platforms: Vec<String>,
    /// Secret ids made available (never values).
    pub secret_ids: Vec<String>,
    /// SSH agent ids forwarded.
    pub ssh_ids: Vec<String>,
    /// Named contexts: name → uri/digest as given.
    pub named_contexts: BTreeMap<String, String>,
    /// kiln's version.
    pub kiln_version: String,
    /// Sandbox facts.
    pub sandbox: SandboxFacts,
    /// Steps in build order.
    pub steps: Vec<StepRecord>,
    /// Policy decisions (opaque JSON).
    pub policy_decisions: Vec<Value>,
    /// Base images, context, named contexts, ADD urls.
    pub resolved_dependencies: Vec<ResourceDescriptor>,
    /// Other artifacts the build produced.
    pub byproducts: Vec<ResourceDescriptor>,
}

/// How much the provenance says (BuildKit's `--attest provenance=mode=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Build-argument names only (no values); no `steps`.
    #[default]
    Min,
    /// Everything in [`ProvenanceInput`].
    Max,
}

/// The SLSA Provenance v1 predicate (spec field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// What was built and from what.
    pub build_definition: BuildDefinition,
    /// Who built it and when.
    pub run_details: RunDetails,
}

/// `buildDefinition`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// `buildType` URI.
    pub build_type: String,
    /// Parameters under the caller's control.
    pub external_parameters: Value,
    /// Parameters under the builder's control.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub internal_parameters: Value,
    /// Inputs the build fetched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// `runDetails`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetails {
    /// The builder.
    pub builder: Builder,
    /// Invocation metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BuildMetadata>,
    /// Other artifacts produced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub byproducts: Vec<ResourceDescriptor>,
}

/// `runDetails.builder`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Builder {
    /// Builder identity URI.
    pub id: String,
    /// Component versions (`kiln` → version).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub version: BTreeMap<String, String>,
}

/// `runDetails.metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetadata {
    /// Invocation id.
    pub invocation_id: String,
    /// Start time (RFC 3339).
    pub started_on: String,
    /// End time (RFC 3339).
    pub finished_on: String,
}

fn sorted_unique(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

fn sorted_descriptors(v: &[ResourceDescriptor]) -> Vec<ResourceDescriptor> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// Builds the typed predicate; see [`predicate`].
pub fn provenance(input: &ProvenanceInput, mode: Mode) -> Provenance {
    let mut external = serde_json::Map::new();
    external.insert("frontend".into(), Value::String(input.frontend.clone()));
    external.insert("configSource".into(), descriptor_value(&input.dockerfile));
    let arg_names: Vec<Value> = input
        .build_args
        .keys()
        .cloned()
        .map(Value::String)
        .collect();
    external.insert("argNames".into(), Value::Array(arg_names));
    if mode == Mode::Max {
        let args = input
            .build_args
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        external.insert("args".into(), Value::Object(args));
    }
    if let Some(target) = &input.target {
        external.insert("target".into(), Value::String(target.clone()));
    }
    external.insert(
        "platforms".into(),
        strings(&sorted_unique(&input.platforms)),
    );
    external.insert("secrets".into(), strings(&sorted_unique(&input.secret_ids)));
    external.insert("ssh".into(), strings(&sorted_unique(&input.ssh_ids)));
    let named = input
        .named_contexts
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    external.insert("namedContexts".into(), Value::Object(named));

    let mut internal = serde_json::Map::new();
    internal.insert(
        "kilnVersion".into(),
        Value::String(input.kiln_version.clone()),
    );
    internal.insert("sandbox".into(), to_value_or_null(&input.sandbox));
    internal.insert(
        "policyDecisions".into(),
        Value::Array(input.policy_decisions.clone()),
    );
    if mode == Mode::Max {
        let steps = input.steps.iter().map(to_value_or_null).collect();
        internal.insert("steps".into(), Value::Array(steps));
    }

    let mut version = BTreeMap::new();
    version.insert("kiln".to_string(), input.kiln_version.clone());
    Provenance {
        build_definition: BuildDefinition {
            build_type: BUILD_TYPE.into(),
            external_parameters: Value::Object(external),
            internal_parameters: Value::Object(internal),
            resolved_dependencies: sorted_descriptors(&input.resolved_dependencies),
        },
        run_details: RunDetails {
            builder: Builder {
                id: input.builder_id.clone(),
                version,
            },
            metadata: Some(BuildMetadata {
                invocation_id: input.invocation_id.clone(),
                started_on: input.started_on.clone(),
                finished_on: input.finished_on.clone(),
            }),
            byproducts: sorted_descriptors(&input.byproducts),
        },
    }
}

/// The SLSA Provenance v1 predicate as JSON. [`Mode::Min`] keeps build-argument names only and
/// drops `internalParameters.steps`; [`Mode::Max`] keeps everything. Secrets and SSH are ids
/// only in both modes.
pub fn predicate(input: &ProvenanceInput, mode: Mode) -> Value {
    to_value_or_null(&provenance(input, mode))
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

fn descriptor_value(d: &ResourceDescriptor) -> Value {
    to_value_or_null(d)
}

/// Serialising these plain types (string keys, no non-finite floats in our own fields) cannot
/// fail; `null` is a visible, non-panicking fallback.
fn to_value_or_null<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    pub(crate) fn sample_input() -> ProvenanceInput {
        let mut dockerfile_digest = BTreeMap::new();
        dockerfile_digest.insert("sha256".into(), "ab".repeat(32));
        ProvenanceInput {
            builder_id: "https://example.invalid/kiln/builder@v1".into(),
            invocation_id: "inv-1".into(),
            started_on: "2026-11-28T19:00:00Z".into(),
            finished_on: "2026-11-28T19:01:00Z".into(),
            frontend: "dockerfile.v0".into(),
            dockerfile: ResourceDescriptor {
                uri: "Dockerfile".into(),
                digest: dockerfile_digest,
                name: Some("Dockerfile".into()),
                ..Default::default()
            },
            build_args: [
                ("VERSION".to_string(), "1.2.3".to_string()),
                ("A".into(), "secretish".into()),
            ]
            .into_iter()
            .collect(),
            target: Some("release".into()),
            platforms: vec!["linux/arm64".into(), "linux/amd64".into()],
            secret_ids: vec!["npmrc".into(), "aws".into(), "npmrc".into()],
            ssh_ids: vec!["default".into()],
            named_contexts: [("base".to_string(), "docker-image://alpine:3.20".to_string())]
                .into_iter()
                .collect(),
            kiln_version: "0.1.0".into(),
            sandbox: SandboxFacts {
                landlock_abi: Some(7),
                seccomp_profile_digest: Some(format!("sha256:{}", "cd".repeat(32))),
                userns: None,
                snapshotter: "overlay".into(),
            },
            steps: vec![StepRecord {
                id: format!("sha256:{}", "ef".repeat(32)),
                name: "RUN make".into(),
                cached: false,
                network: "none".into(),
                security: "sandbox".into(),
                confinement: None,
            }],
            policy_decisions: vec![],
            resolved_dependencies: vec![
                ResourceDescriptor {
                    uri: "git+https://example.invalid/repo@refs/heads/main".into(),
                    ..Default::default()
                },
                ResourceDescriptor {
                    uri: "docker-image://alpine:3.20".into(),
                    ..Default::default()
                },
            ],
            byproducts: vec![],
        }
    }

    #[test]
    fn min_mode_keeps_arg_names_but_no_values_and_no_steps() {
        let p = predicate(&sample_input(), Mode::Min);
        let text = serde_json::to_string(&p).unwrap();
        assert!(
            !text.contains("1.2.3") && !text.contains("secretish"),
            "{text}"
        );
        let ext = &p["buildDefinition"]["externalParameters"];
        assert_eq!(ext["argNames"], serde_json::json!(["A", "VERSION"]));
        assert!(ext.get("args").is_none());
        assert!(
            p["buildDefinition"]["internalParameters"]
                .get("steps")
                .is_none()
        );
    }

    #[test]
    fn max_mode_keeps_arg_values_and_steps() {
        let p = predicate(&sample_input(), Mode::Max);
        assert_eq!(
            p["buildDefinition"]["externalParameters"]["args"]["VERSION"],
            "1.2.3"
        );
        assert_eq!(
            p["buildDefinition"]["internalParameters"]["steps"][0]["name"],
            "RUN make"
        );
    }

    #[test]
    fn output_uses_spec_field_names_and_is_sorted() {
        let p = predicate(&sample_input(), Mode::Max);
        assert_eq!(p["buildDefinition"]["buildType"], BUILD_TYPE);
        assert_eq!(
            p["runDetails"]["builder"]["id"],
            "https://example.invalid/kiln/builder@v1"
        );
        assert_eq!(p["runDetails"]["metadata"]["invocationId"], "inv-1");
        assert_eq!(
            p["runDetails"]["metadata"]["startedOn"],
            "2026-11-28T19:00:00Z"
        );
        let ext = &p["buildDefinition"]["externalParameters"];
        assert_eq!(
            ext["platforms"],
            serde_json::json!(["linux/amd64", "linux/arm64"])
        );
        assert_eq!(ext["secrets"], serde_json::json!(["aws", "npmrc"]));
        let deps = &p["buildDefinition"]["resolvedDependencies"];
        assert_eq!(deps[0]["uri"], "docker-image://alpine:3.20");
        // Empty/None descriptor fields are skipped.
        assert!(deps[0].get("digest").is_none() && deps[0].get("name").is_none());
        // Deterministic: the same input gives the same bytes.
        assert_eq!(
            crate::canonical::to_vec(&p),
            crate::canonical::to_vec(&predicate(&sample_input(), Mode::Max))
        );
        // The typed form parses back.
        let typed: Provenance = serde_json::from_value(p).unwrap();
        assert_eq!(typed.run_details.builder.version["kiln"], "0.1.0");
    }
}
