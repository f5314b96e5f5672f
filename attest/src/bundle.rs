//! Sigstore bundle v0.3 holding one DSSE envelope verified with a known public key (no
//! certificate, no transparency-log entry), and the `.intoto.jsonl` form.
//!
//! [`MAX_DOCUMENT_SIZE`] bounds what is parsed: 16 MiB. The payload is an in-toto statement
//! base64-encoded inside JSON; an SBOM predicate for a large image (tens of thousands of
//! packages and files) runs to several MiB, and base64 adds a third. 16 MiB leaves room for
//! that and still keeps a hostile document from costing more than a few tens of MiB of memory
//! when parsed.

use serde::{Deserialize, Serialize};

use crate::dsse::Envelope;
use crate::media::SIGSTORE_BUNDLE_V03;

/// Largest bundle [`Bundle::from_json`] parses, in bytes.
pub const MAX_DOCUMENT_SIZE: usize = 16 * 1024 * 1024;

/// Why bytes are not a bundle kiln can read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Larger than the limit; not parsed.
    #[error("bundle is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not valid bundle JSON (including truncated input).
    #[error("malformed bundle: {reason}")]
    Malformed {
        /// What the parser said.
        reason: String,
    },
    /// A `mediaType` other than sigstore bundle v0.3.
    #[error("unknown bundle mediaType {found:?}; kiln reads {SIGSTORE_BUNDLE_V03:?}")]
    UnknownMediaType {
        /// The mediaType found.
        found: String,
    },
    /// The bundle holds no DSSE envelope (a message signature, or nothing).
    #[error("bundle has no dsseEnvelope")]
    NoEnvelope,
}

/// A sigstore bundle with a DSSE envelope and a public-key hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// `verificationMaterial.publicKey.hint` (kiln writes the key id). Unauthenticated.
    pub public_key_hint: Option<String>,
    /// The envelope.
    pub envelope: Envelope,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    media_type: String,
    verification_material: VerificationMaterial,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dsse_envelope: Option<Envelope>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerificationMaterial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<PublicKeyIdentifier>,
    #[serde(default)]
    tlog_entries: Vec<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct PublicKeyIdentifier {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

impl Bundle {
    /// A bundle for `envelope` whose hint is the key id of its first signature (if any).
    pub fn new(envelope: Envelope) -> Bundle {
        let public_key_hint = envelope
            .signatures
            .first()
            .map(|s| s.keyid.clone())
            .filter(|k| !k.is_empty());
        Bundle {
            public_key_hint,
            envelope,
        }
    }

    /// Bundle JSON: `{"mediaType", "verificationMaterial": {"publicKey": {"hint"},
    /// "tlogEntries": []}, "dsseEnvelope"}`.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = Wire {
            media_type: SIGSTORE_BUNDLE_V03.into(),
            verification_material: VerificationMaterial {
                public_key: Some(PublicKeyIdentifier {
                    hint: self.public_key_hint.clone(),
                }),
                tlog_entries: Vec::new(),
            },
            dsse_envelope: Some(self.envelope.clone()),
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses a bundle: the size is checked before any parsing, then the JSON, then the
    /// `mediaType`.
    pub fn from_json(bytes: &[u8]) -> Result<Bundle, BundleError> {
        Self::from_json_with_limit(bytes, MAX_DOCUMENT_SIZE)
    }

    /// [`Bundle::from_json`] with another size limit.
    pub fn from_json_with_limit(bytes: &[u8], limit: usize) -> Result<Bundle, BundleError> {
        if bytes.len() > limit {
            return Err(BundleError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        // The mediaType is read first so that a newer bundle version is reported as such, not
        // as whatever field it happens to lack.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Head {
            media_type: Option<String>,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed {
            reason: e.to_string(),
        })?;
        match head.media_type {
            Some(m) if m == SIGSTORE_BUNDLE_V03 => {}
            Some(found) => return Err(BundleError::UnknownMediaType { found }),
            None => {
                return Err(BundleError::Malformed {
                    reason: "no mediaType".into(),
                });
            }
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed {
            reason: e.to_string(),
        })?;
        let envelope = wire.dsse_envelope.ok_or(BundleError::NoEnvelope)?;
        let public_key_hint = wire.verification_material.public_key.and_then(|p| p.hint);
        Ok(Bundle {
            public_key_hint,
            envelope,
        })
    }
}

/// The `.intoto.jsonl` form: one envelope's JSON per line, each line ending in `\n`.
pub fn to_intoto_jsonl(envelopes: &[Envelope]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in envelopes {
        out.extend_from_slice(&e.to_json());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::dsse::sign;
    use crate::keys::{Algorithm, SigningKey};

    #[test]
    fn bundle_json_has_the_v03_shape_and_round_trips() {
        let key = SigningKey::generate(Algorithm::EcdsaP256);
        let bundle = Bundle::new(sign("application/vnd.in-toto+json", b"{}", &key).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&bundle.to_json()).unwrap();
        assert_eq!(v["mediaType"], SIGSTORE_BUNDLE_V03);
        assert_eq!(
            v["verificationMaterial"]["publicKey"]["hint"],
            key.public_key().key_id()
        );
        assert_eq!(
            v["verificationMaterial"]["tlogEntries"],
            serde_json::json!([])
        );
        assert_eq!(v["dsseEnvelope"]["payload"], "e30=");
        assert_eq!(Bundle::from_json(&bundle.to_json()).unwrap(), bundle);
    }

    #[test]
    fn unknown_media_type_and_oversize_are_rejected_clearly() {
        let v02 = br#"{"mediaType":"application/vnd.dev.sigstore.bundle+json;version=0.2"}"#;
        let err = Bundle::from_json(v02).unwrap_err();
        assert!(matches!(err, BundleError::UnknownMediaType { .. }));
        assert!(err.to_string().contains("version=0.2"), "{err}");
        assert!(matches!(
            Bundle::from_json_with_limit(b"{}", 1),
            Err(BundleError::TooLarge { size: 2, limit: 1 })
        ));
    }

    #[test]
    fn jsonl_is_one_envelope_per_line() {
        let key = SigningKey::generate(Algorithm::Ed25519);
        let a = sign("t", b"a", &key).unwrap();
        let b = sign("t", b"b", &key).unwrap();
        let out = to_intoto_jsonl(&[a.clone(), b.clone()]);
        let lines: Vec<&[u8]> = out.split(|c| *c == b'\n').collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].is_empty());
        assert_eq!(Envelope::from_json(lines[0]).unwrap(), a);
        assert_eq!(Envelope::from_json(lines[1]).unwrap(), b);
    }
}
