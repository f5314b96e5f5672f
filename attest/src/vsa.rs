//! SLSA Verification Summary Attestation v1 (<https://slsa.dev/spec/v1.0/verification_summary>):
//! what `kiln verify --vsa` signs after checking an image, so a later consumer can trust the
//! verdict without repeating the verification.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::statement::{Statement, Subject};

/// The VSA predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/verification_summary/v1";

/// What a verification found.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `verifier.id`: who verified.
    pub verifier_id: String,
    /// Verification time, seconds since the epoch.
    pub time_verified: u64,
    /// `resourceUri`: the artifact as the verifier was asked about it.
    pub resource_uri: String,
    /// The image manifest digest (`sha256:…`): the statement's subject.
    pub subject_digest: String,
    /// `policy.uri`.
    pub policy_uri: String,
    /// `policy.digest`: sha256 hex of the policy.
    pub policy_sha256: String,
    /// The attestations that were checked: (URI, sha256 hex of the bundle bytes).
    pub inputs: Vec<(String, String)>,
    /// Passed or failed.
    pub passed: bool,
    /// `verifiedLevels` (e.g. `SLSA_BUILD_LEVEL_2`); empty when failed.
    pub levels: Vec<String>,
}

/// The in-toto statement carrying the VSA.
pub fn statement(s: &Summary) -> Statement {
    let hex = s
        .subject_digest
        .strip_prefix("sha256:")
        .unwrap_or(&s.subject_digest)
        .to_owned();
    let mut digest = BTreeMap::new();
    digest.insert("sha256".to_owned(), hex);
    Statement::new(
        vec![Subject {
            name: s.resource_uri.clone(),
            digest,
        }],
        PREDICATE_TYPE,
        predicate(s),
    )
}

/// The predicate (spec field names).
pub fn predicate(s: &Summary) -> Value {
    let inputs: Vec<Value> = s
        .inputs
        .iter()
        .map(|(uri, sha)| json!({ "uri": uri, "digest": { "sha256": sha } }))
        .collect();
    json!({
        "verifier": { "id": s.verifier_id },
        "timeVerified": crate::sbom::rfc3339(s.time_verified),
        "resourceUri": s.resource_uri,
        "policy": { "uri": s.policy_uri, "digest": { "sha256": s.policy_sha256 } },
        "inputAttestations": inputs,
        "verificationResult": if s.passed { "PASSED" } else { "FAILED" },
        "verifiedLevels": if s.passed { s.levels.clone() } else { Vec::new() },
        "slsaVersion": "1.0",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_summaries_claim_no_level() {
        let s = Summary {
            verifier_id: "https://v.example".into(),
            time_verified: 0,
            resource_uri: "oci-archive:app.tar".into(),
            subject_digest: format!("sha256:{}", "a".repeat(64)),
            policy_uri: "file:///p".into(),
            policy_sha256: "b".repeat(64),
            inputs: vec![],
            passed: false,
            levels: vec!["SLSA_BUILD_LEVEL_2".into()],
        };
        let p = predicate(&s);
        assert_eq!(p["verificationResult"], "FAILED");
        assert_eq!(p["verifiedLevels"], json!([]));
        assert_eq!(p["timeVerified"], "1970-01-01T00:00:00Z");
        let st = statement(&s);
        assert_eq!(st.subject[0].digest["sha256"], "a".repeat(64));
        assert_eq!(st.predicate_type, PREDICATE_TYPE);
    }
}
