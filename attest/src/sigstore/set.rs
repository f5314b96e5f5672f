//! Rekor v1 signed entry timestamps (`inclusionPromise.signedEntryTimestamp`): the log's
//! signature over the canonical JSON
//! `{"body":"<base64 body>","integratedTime":N,"logID":"<hex log id>","logIndex":N}`
//! (keys sorted, no whitespace), as Rekor v1 signs it.

use super::bundle::TlogEntry;
use super::json::b64_encode;
use super::trust::TransparencyLog;
use crate::keys::PublicKey;

/// Why a signed entry timestamp does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SetError {
    /// The entry has no `inclusionPromise`.
    #[error("log entry has no signed entry timestamp")]
    Missing,
    /// The entry has no `integratedTime`, which the promise signs.
    #[error("log entry has a signed entry timestamp but no integratedTime")]
    NoIntegratedTime,
    /// The log's key is not a key kiln can verify with.
    #[error("transparency log key unusable: {reason}")]
    UnusableKey {
        /// Why.
        reason: String,
    },
    /// The signature does not verify.
    #[error("signed entry timestamp does not verify under the log key {log_id}")]
    InvalidSignature {
        /// Log id, hex.
        log_id: String,
    },
}

/// The bytes Rekor v1 signs for an entry's signed entry timestamp.
pub fn signed_payload(entry: &TlogEntry, integrated_time: u64) -> Vec<u8> {
    // Every value is base64, hex or a decimal number: nothing needs JSON escaping, and the
    // keys are written in sorted order.
    format!(
        r#"{{"body":"{}","integratedTime":{},"logID":"{}","logIndex":{}}}"#,
        b64_encode(&entry.canonicalized_body),
        integrated_time,
        hex::encode(&entry.log_id),
        entry.log_index,
    )
    .into_bytes()
}

/// Verifies the entry's signed entry timestamp with the log's key.
pub fn verify(entry: &TlogEntry, log: &TransparencyLog) -> Result<(), SetError> {
    let set = entry
        .signed_entry_timestamp
        .as_deref()
        .ok_or(SetError::Missing)?;
    let time = entry.integrated_time.ok_or(SetError::NoIntegratedTime)?;
    let key = PublicKey::from_spki_der(&log.public_key).map_err(|e| SetError::UnusableKey {
        reason: e.to_string(),
    })?;
    if !key.verify(&signed_payload(entry, time), set) {
        return Err(SetError::InvalidSignature {
            log_id: hex::encode(&entry.log_id),
        });
    }
    Ok(())
}
