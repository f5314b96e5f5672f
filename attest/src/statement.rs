//! in-toto Statement v1: the subject (what the attestation is about) and a typed predicate.
//!
//! Parsing is strict where kiln relies on a field (`_type`, `subject`, digests,
//! `predicateType`) and lenient elsewhere (unknown fields are ignored; `predicate` is optional as
//! in the spec and reads as `null` when absent).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::canonical;
use crate::media::STATEMENT_V1;

/// Why bytes are not an in-toto Statement v1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatementError {
    /// Not JSON, or not a JSON object.
    #[error("statement is not a JSON object: {reason}")]
    NotJson {
        /// What the JSON parser said.
        reason: String,
    },
    /// `_type` is not [`STATEMENT_V1`].
    #[error("statement _type is {found:?}, expected {STATEMENT_V1:?}")]
    WrongType {
        /// The `_type` found (`None` when absent or not a string).
        found: Option<String>,
    },
    /// A required field is absent or has the wrong JSON type.
    #[error("statement field {field} is missing or not {expected}")]
    MissingField {
        /// JSON path of the field.
        field: String,
        /// The JSON type expected.
        expected: &'static str,
    },
    /// `subject` is an empty array.
    #[error("statement has no subject")]
    NoSubject,
    /// A digest value is not lowercase hex of the algorithm's length.
    #[error("subject[{index}] digest {algorithm}:{value:?} is not valid lowercase hex")]
    BadDigest {
        /// Index of the subject.
        index: usize,
        /// Digest algorithm (`sha256`).
        algorithm: String,
        /// The offending value.
        value: String,
    },
}

/// One artifact the statement is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Name of the artifact (an image reference or file name); may be empty.
    pub name: String,
    /// Digests by algorithm (`sha256` → lowercase hex).
    pub digest: BTreeMap<String, String>,
}

/// An in-toto Statement v1.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// What the statement is about (at least one subject).
    pub subject: Vec<Subject>,
    /// URI naming the predicate's schema (`media::SLSA_PROVENANCE_V1`).
    pub predicate_type: String,
    /// The predicate (`Value::Null` when the statement had none).
    pub predicate: Value,
}

impl Statement {
    /// A statement about `subject`.
    pub fn new(subject: Vec<Subject>, predicate_type: impl Into<String>, predicate: Value) -> Self {
        Self {
            subject,
            predicate_type: predicate_type.into(),
            predicate,
        }
    }

    /// Canonical JSON (keys sorted at every depth, compact) with `_type` = [`STATEMENT_V1`].
    /// A `null` predicate is omitted; an empty subject name is omitted.
    pub fn to_json(&self) -> Vec<u8> {
        write_statement(&self.subject, &self.predicate_type, 0, |out| {
            if self.predicate.is_null() {
                return false;
            }
            canonical::write(&self.predicate, out);
            true
        })
    }

    /// [`Statement::to_json`] of a statement whose predicate is already canonical JSON bytes
    /// (an SBOM document of megabytes, written straight to bytes by
    /// [`crate::sbom::spdx_json`] or [`crate::sbom::cyclonedx_json`]). The caller vouches that
    /// `predicate` is one canonical JSON value; it is copied as it is.
    pub fn to_json_with_predicate(
        subject: &[Subject],
        predicate_type: &str,
        predicate: &[u8],
    ) -> Vec<u8> {
        write_statement(subject, predicate_type, predicate.len(), |out| {
            out.extend_from_slice(predicate);
            true
        })
    }

    /// Parses a Statement v1. Rejects a wrong or missing `_type`, a missing or empty `subject`,
    /// a subject without a `digest` object, digests that are not lowercase hex (of the right
    /// length for sha256/sha384/sha512/sha1), and a missing `predicateType`.
    pub fn from_json(bytes: &[u8]) -> Result<Statement, StatementError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| StatementError::NotJson {
            reason: e.to_string(),
        })?;
        let Value::Object(mut obj) = value else {
            return Err(StatementError::NotJson {
                reason: "top level is not an object".into(),
            });
        };
        match obj.get("_type") {
            Some(Value::String(t)) if t == STATEMENT_V1 => {}
            other => {
                return Err(StatementError::WrongType {
                    found: other.and_then(Value::as_str).map(str::to_owned),
                });
            }
        }
        let Some(Value::Array(raw_subjects)) = obj.remove("subject") else {
            return Err(missing("subject", "an array"));
        };
        if raw_subjects.is_empty() {
            return Err(StatementError::NoSubject);
        }
        let mut subject = Vec::with_capacity(raw_subjects.len());
        for (index, raw) in raw_subjects.into_iter().enumerate() {
            subject.push(parse_subject(index, raw)?);
        }
        let Some(Value::String(predicate_type)) = obj.remove("predicateType") else {
            return Err(missing("predicateType", "a string"));
        };
        let predicate = obj.remove("predicate").unwrap_or(Value::Null);
        Ok(Statement {
            subject,
            predicate_type,
            predicate,
        })
    }
}

fn missing(field: impl Into<String>, expected: &'static str) -> StatementError {
    StatementError::MissingField {
        field: field.into(),
        expected,
    }
}

fn parse_subject(index: usize, raw: Value) -> Result<Subject, StatementError> {
    let Value::Object(mut m) = raw else {
        return Err(missing(format!("subject[{index}]"), "an object"));
    };
    let name = match m.remove("name") {
        None => String::new(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(missing(format!("subject[{index}].name"), "a string")),
    };
    let Some(Value::Object(raw_digest)) = m.remove("digest") else {
        return Err(missing(format!("subject[{index}].digest"), "an object"));
    };
    if raw_digest.is_empty() {
        return Err(missing(
            format!("subject[{index}].digest"),
            "a non-empty object",
        ));
    }
    let mut digest = BTreeMap::new();
    for (algorithm, v) in raw_digest {
        let Value::String(value) = v else {
            return Err(missing(
                format!("subject[{index}].digest.{algorithm}"),
                "a string",
            ));
        };
        if !is_valid_digest(&algorithm, &value) {
            return Err(StatementError::BadDigest {
                index,
                algorithm,
                value,
            });
        }
        digest.insert(algorithm, value);
    }
    Ok(Subject { name, digest })
}

/// Lowercase hex, non-empty, even length, and the exact length for the common SHA algorithms.
pub(crate) fn is_valid_digest(algorithm: &str, value: &str) -> bool {
    let hex_ok = !value.is_empty()
        && value.len().is_multiple_of(2)
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let expected_len = match algorithm {
        "sha1" => Some(40),
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    };
    hex_ok && expected_len.is_none_or(|n| value.len() == n)
}

/// The statement object's members in canonical (byte) order, written directly: the predicate
/// can be megabytes of SBOM and is not copied into a new object. `predicate` writes the
/// predicate's value and says whether it wrote one (a `null` predicate is omitted).
/// The statement's bytes, the predicate written by `predicate` (`false`: none); room for
/// `predicate_len` bytes of it is made up front (an SBOM of megabytes would otherwise be
/// copied again when the fields after it outgrow the buffer).
fn write_statement(
    subject: &[Subject],
    predicate_type: &str,
    predicate_len: usize,
    predicate: impl FnOnce(&mut Vec<u8>) -> bool,
) -> Vec<u8> {
    let subjects: Vec<Value> = subject
        .iter()
        .map(|s| {
            let mut m = Map::new();
            if !s.name.is_empty() {
                m.insert("name".into(), Value::String(s.name.clone()));
            }
            let digest: Map<String, Value> = s
                .digest
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            m.insert("digest".into(), Value::Object(digest));
            Value::Object(m)
        })
        .collect();
    let mut out = Vec::with_capacity(predicate_len + 1024);
    out.extend_from_slice(b"{\"_type\":");
    canonical::write_str(STATEMENT_V1, &mut out);
    let mark = out.len();
    out.extend_from_slice(b",\"predicate\":");
    if !predicate(&mut out) {
        out.truncate(mark);
    }
    out.extend_from_slice(b",\"predicateType\":");
    canonical::write_str(predicate_type, &mut out);
    out.extend_from_slice(b",\"subject\":");
    canonical::write(&Value::Array(subjects), &mut out);
    out.push(b'}');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn sample() -> Statement {
        let mut digest = BTreeMap::new();
        digest.insert("sha256".to_string(), HEX.to_string());
        Statement::new(
            vec![Subject {
                name: "example.invalid/app".into(),
                digest,
            }],
            crate::media::SLSA_PROVENANCE_V1,
            serde_json::json!({"z": 1, "a": {"y": 2, "b": 3}}),
        )
    }

    #[test]
    fn to_json_is_the_canonical_form_of_the_statement_object() {
        for predicate in [
            serde_json::json!({"z": [1, {"b": 2, "a": "x"}], "a": null}),
            Value::Null,
        ] {
            let s = Statement::new(sample().subject, "https://example.com/p", predicate.clone());
            let mut m = Map::new();
            m.insert("_type".into(), Value::String(STATEMENT_V1.into()));
            let subject: Value =
                serde_json::from_slice::<Value>(&s.to_json()).unwrap()["subject"].clone();
            m.insert("subject".into(), subject);
            m.insert(
                "predicateType".into(),
                Value::String("https://example.com/p".into()),
            );
            if !predicate.is_null() {
                m.insert("predicate".into(), predicate);
            }
            assert_eq!(s.to_json(), canonical::to_vec(&Value::Object(m)));
        }
    }

    #[test]
    fn a_predicate_given_as_canonical_bytes_gives_the_same_statement() {
        let s = sample();
        assert_eq!(
            Statement::to_json_with_predicate(
                &s.subject,
                &s.predicate_type,
                &canonical::to_vec(&s.predicate)
            ),
            s.to_json()
        );
    }

    #[test]
    fn to_json_is_canonical_with_statement_v1_type() {
        let json = String::from_utf8(sample().to_json()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"_type":"https://in-toto.io/Statement/v1","predicate":{{"a":{{"b":3,"y":2}},"z":1}},"predicateType":"https://slsa.dev/provenance/v1","subject":[{{"digest":{{"sha256":"{HEX}"}},"name":"example.invalid/app"}}]}}"#
            )
        );
    }

    #[test]
    fn round_trip_preserves_the_statement() {
        let s = sample();
        assert_eq!(Statement::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn wrong_type_is_rejected() {
        let json = String::from_utf8(sample().to_json()).unwrap();
        let old = json.replace(STATEMENT_V1, "https://in-toto.io/Statement/v0.1");
        assert!(matches!(
            Statement::from_json(old.as_bytes()),
            Err(StatementError::WrongType { found: Some(t) }) if t.ends_with("v0.1")
        ));
    }

    #[test]
    fn missing_fields_are_rejected() {
        for field in ["subject", "predicateType", "_type"] {
            let mut v: Value = serde_json::from_slice(&sample().to_json()).unwrap();
            v.as_object_mut().unwrap().remove(field);
            let err = Statement::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(
                matches!(
                    err,
                    StatementError::MissingField { .. } | StatementError::WrongType { .. }
                ),
                "{field}: {err}"
            );
        }
        let empty =
            br#"{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"x"}"#;
        assert!(matches!(
            Statement::from_json(empty),
            Err(StatementError::NoSubject)
        ));
    }

    #[test]
    fn non_hex_or_wrong_length_digests_are_rejected() {
        for bad in [
            HEX.replace('a', "g"),
            HEX.to_uppercase(),
            HEX[..62].to_string(),
            String::new(),
        ] {
            let json = String::from_utf8(sample().to_json())
                .unwrap()
                .replace(HEX, &bad);
            assert!(
                matches!(
                    Statement::from_json(json.as_bytes()),
                    Err(StatementError::BadDigest { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }
}
