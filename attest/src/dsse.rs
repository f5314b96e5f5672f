//! DSSE (Dead Simple Signing Envelope) v1: the pre-authentication encoding, envelopes and their
//! standard JSON form, signing and verification.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keys::{KeyError, PublicKey, SigningKey};
use crate::statement::Statement;

/// Why an envelope does not verify, or does not parse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DsseError {
    /// The envelope has no signature.
    #[error("envelope has no signatures")]
    NoSignatures,
    /// No signature verifies with the key.
    #[error("no signature verifies with key {key_id}")]
    BadSignature {
        /// The key tried.
        key_id: String,
    },
    /// The JSON is not a DSSE envelope.
    #[error("malformed DSSE envelope: {reason}")]
    Malformed {
        /// What the parser said.
        reason: String,
    },
}

/// The DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths as decimal ASCII byte counts.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Key id hint (kiln: [`PublicKey::key_id`]); empty when absent. Unauthenticated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyid: String,
    /// Signature bytes (base64 in JSON).
    #[serde(with = "b64")]
    pub sig: Vec<u8>,
}

/// A DSSE envelope (standard JSON: `payload`, `payloadType`, `signatures`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The signed payload (base64 in JSON).
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// Media type of the payload.
    pub payload_type: String,
    /// Signatures over `pae(payload_type, payload)`.
    pub signatures: Vec<Signature>,
}

impl Envelope {
    /// Standard DSSE JSON (base64 with padding).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and byte vectors cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses standard DSSE JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, DsseError> {
        serde_json::from_slice(bytes).map_err(|e| DsseError::Malformed {
            reason: e.to_string(),
        })
    }
}

/// Signs `payload` as a one-signature envelope; `keyid` is the key's [`PublicKey::key_id`].
///
/// # Errors
/// The key's, from [`SigningKey::sign`].
pub fn sign(payload_type: &str, payload: &[u8], key: &SigningKey) -> Result<Envelope, KeyError> {
    let sig = key.sign(&pae(payload_type, payload))?;
    Ok(Envelope {
        payload: payload.to_vec(),
        payload_type: payload_type.to_owned(),
        signatures: vec![Signature {
            keyid: key.public_key().key_id(),
            sig,
        }],
    })
}

/// Signs an in-toto statement: its canonical JSON as the payload, `payloadType`
/// [`DSSE_PAYLOAD_TYPE`](crate::media::DSSE_PAYLOAD_TYPE).
///
/// # Errors
/// The key's, from [`SigningKey::sign`].
pub fn sign_statement(statement: &Statement, key: &SigningKey) -> Result<Envelope, KeyError> {
    sign(crate::media::DSSE_PAYLOAD_TYPE, &statement.to_json(), key)
}

/// Succeeds when at least one signature verifies with `key` over the exact PAE bytes. Key ids
/// are hints and are not consulted here (see `verify::verify_bundle` for kiln's stricter rules).
pub fn verify(envelope: &Envelope, key: &PublicKey) -> Result<(), DsseError> {
    if envelope.signatures.is_empty() {
        return Err(DsseError::NoSignatures);
    }
    let message = pae(&envelope.payload_type, &envelope.payload);
    if envelope
        .signatures
        .iter()
        .any(|s| key.verify(&message, &s.sig))
    {
        Ok(())
    } else {
        Err(DsseError::BadSignature {
            key_id: key.key_id(),
        })
    }
}

/// Base64 (standard alphabet, with padding) for byte fields. Decoding also accepts unpadded
/// input, which some producers emit.
pub(crate) mod b64 {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).map_err(serde::de::Error::custom)
    }

    pub(crate) fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        lenient.decode(text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::keys::Algorithm;

    #[test]
    fn pae_matches_the_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
        // Lengths count bytes, not characters.
        assert_eq!(pae("é", b"\xff"), b"DSSEv1 2 \xc3\xa9 1 \xff".to_vec());
    }

    #[test]
    fn json_is_standard_dsse() {
        let env = Envelope {
            payload: b"hi".to_vec(),
            payload_type: "t".into(),
            signatures: vec![Signature {
                keyid: String::new(),
                sig: vec![1, 2, 3, 4],
            }],
        };
        assert_eq!(
            String::from_utf8(env.to_json()).unwrap(),
            r#"{"payload":"aGk=","payloadType":"t","signatures":[{"sig":"AQIDBA=="}]}"#
        );
        assert_eq!(Envelope::from_json(&env.to_json()).unwrap(), env);
    }

    #[test]
    fn sign_statement_signs_its_canonical_json_as_in_toto() {
        let key = SigningKey::generate(Algorithm::EcdsaP256);
        let digest = [("sha256".to_string(), "ab".repeat(32))]
            .into_iter()
            .collect();
        let st = Statement::new(
            vec![crate::statement::Subject {
                name: "x".into(),
                digest,
            }],
            crate::media::SPDX_DOCUMENT,
            serde_json::json!({"b": 1, "a": 2}),
        );
        let env = sign_statement(&st, &key).unwrap();
        assert_eq!(env.payload_type, crate::media::DSSE_PAYLOAD_TYPE);
        assert_eq!(env.payload, st.to_json());
        verify(&env, &key.public_key()).unwrap();
    }

    #[test]
    fn sign_then_verify_and_any_change_fails() {
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = SigningKey::generate(alg);
            let env = sign("application/x", b"payload", &key).unwrap();
            assert_eq!(env.signatures[0].keyid, key.public_key().key_id());
            verify(&env, &key.public_key()).unwrap();
            let mut t = env.clone();
            t.payload_type = "application/y".into();
            assert!(matches!(
                verify(&t, &key.public_key()),
                Err(DsseError::BadSignature { .. })
            ));
            let mut t = env.clone();
            t.payload.push(b'!');
            assert!(verify(&t, &key.public_key()).is_err());
            let mut t = env.clone();
            t.signatures.clear();
            assert!(matches!(
                verify(&t, &key.public_key()),
                Err(DsseError::NoSignatures)
            ));
        }
    }
}
