//! Signed-note checkpoints (C2SP `signed-note` and `tlog-checkpoint`): the log's signed
//! statement of its tree size and root hash, carried in `inclusionProof.checkpoint.envelope`.
//!
//! A note is a text ending in a newline, a blank line, then one or more signature lines
//! `— <key name> <base64(4-byte key hint || signature)>`. The checkpoint text is the origin
//! line, the decimal tree size, the base64 root hash, then optional extension lines. The log's
//! signature is the one whose key hint is the log key's: for an ECDSA log (Rekor v1) the first
//! 4 bytes of SHA-256 of its DER SubjectPublicKeyInfo; for an Ed25519 log (Rekor v2) the first 4
//! bytes of SHA-256(name || "\n" || 0x01 || 32-byte key), as in golang.org/x/mod/sumdb/note,
//! with the checkpoint origin as the name. Both equal the first 4 bytes of the log id in the
//! sigstore trusted roots (checked against the public-good and staging roots in the tests);
//! sigstore-python compares the hint with the log id's first 4 bytes directly.
//! Signatures by other keys (witness cosignatures) are ignored.

use sha2::{Digest, Sha256};

use super::bundle::InclusionProof;
use super::json::b64;
use super::trust::TransparencyLog;
use crate::keys::{Algorithm, PublicKey};

/// Largest checkpoint [`parse`] reads, in bytes.
pub const MAX_CHECKPOINT_SIZE: usize = 64 * 1024;
/// Most signature lines a checkpoint may carry.
pub const MAX_SIGNATURES: usize = 64;

/// Why a checkpoint is malformed, or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Larger than [`MAX_CHECKPOINT_SIZE`].
    #[error("checkpoint is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a signed note.
    #[error("checkpoint is not a signed note: {reason}")]
    MalformedNote {
        /// Why.
        reason: String,
    },
    /// The note text is not a checkpoint (origin, size, root hash).
    #[error("checkpoint text is malformed: {reason}")]
    MalformedCheckpoint {
        /// Why.
        reason: String,
    },
    /// The log's key cannot be used to verify notes.
    #[error("transparency log key unusable for checkpoints: {reason}")]
    UnusableKey {
        /// Why.
        reason: String,
    },
    /// No signature line has the log key's hint.
    #[error("checkpoint has no signature by the log key (hint {hint}); signers: {names:?}")]
    NoLogSignature {
        /// The log key's hint, hex.
        hint: String,
        /// The names on the signature lines.
        names: Vec<String>,
    },
    /// A signature line with the log key's hint does not verify.
    #[error("checkpoint signature by {name:?} (the log key) does not verify")]
    InvalidSignature {
        /// The key name on the line.
        name: String,
    },
    /// The checkpoint is for another tree than the inclusion proof.
    #[error("checkpoint {field} {checkpoint} does not match the inclusion proof's {proof}")]
    ProofMismatch {
        /// `tree size` or `root hash`.
        field: &'static str,
        /// Checkpoint value.
        checkpoint: String,
        /// Proof value.
        proof: String,
    },
}

/// One signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// First 4 bytes of the decoded signature.
    pub key_hint: [u8; 4],
    /// The rest: the signature.
    pub signature: Vec<u8>,
}

/// A parsed (not yet verified) checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The signed text, including its final newline.
    pub text: String,
    /// Origin line: the log's identity.
    pub origin: String,
    /// Tree size.
    pub tree_size: u64,
    /// Root hash.
    pub root_hash: Vec<u8>,
    /// Extension lines (opaque).
    pub extensions: Vec<String>,
    /// Signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

fn note(reason: impl Into<String>) -> CheckpointError {
    CheckpointError::MalformedNote {
        reason: reason.into(),
    }
}

fn body(reason: impl Into<String>) -> CheckpointError {
    CheckpointError::MalformedCheckpoint {
        reason: reason.into(),
    }
}

/// Parses a checkpoint envelope. Verifies nothing.
pub fn parse(envelope: &str) -> Result<Checkpoint, CheckpointError> {
    if envelope.len() > MAX_CHECKPOINT_SIZE {
        return Err(CheckpointError::TooLarge {
            size: envelope.len(),
            limit: MAX_CHECKPOINT_SIZE,
        });
    }
    if envelope.chars().any(|c| c.is_control() && c != '\n') {
        return Err(note("control character other than newline"));
    }
    let split = envelope
        .rfind("\n\n")
        .ok_or_else(|| note("no blank line before the signatures"))?;
    let (text, sigs) = (&envelope[..split + 1], &envelope[split + 2..]);
    if sigs.is_empty() {
        return Err(note("no signature lines"));
    }
    let Some(sigs) = sigs.strip_suffix('\n') else {
        return Err(note("signature lines do not end in a newline"));
    };
    let mut signatures = Vec::new();
    for line in sigs.split('\n') {
        if signatures.len() == MAX_SIGNATURES {
            return Err(note(format!("more than {MAX_SIGNATURES} signature lines")));
        }
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| note("signature line does not start with an em dash and a space"))?;
        let (name, sig) = rest
            .split_once(' ')
            .ok_or_else(|| note("signature line has no key name"))?;
        if name.is_empty() || name.contains('+') || sig.contains(' ') {
            return Err(note(format!("malformed signature line for {name:?}")));
        }
        let raw = b64("checkpoint signature", sig).map_err(|e| note(e.to_string()))?;
        if raw.len() < 5 {
            return Err(note(format!("signature by {name:?} is too short")));
        }
        let (hint, signature) = raw.split_at(4);
        signatures.push(NoteSignature {
            name: name.to_owned(),
            key_hint: [hint[0], hint[1], hint[2], hint[3]],
            signature: signature.to_vec(),
        });
    }
    let mut lines = text
        .strip_suffix('\n')
        .ok_or_else(|| note("text does not end in a newline"))?
        .split('\n');
    let origin = lines.next().unwrap_or_default();
    if origin.is_empty() {
        return Err(body("empty origin line"));
    }
    let size = lines.next().ok_or_else(|| body("no tree size line"))?;
    let size_ok = !size.is_empty()
        && size.bytes().all(|b| b.is_ascii_digit())
        && (size == "0" || !size.starts_with('0'));
    let tree_size = size
        .parse::<u64>()
        .ok()
        .filter(|_| size_ok)
        .ok_or_else(|| {
            body(format!(
                "tree size line is not a decimal number: {size:.40?}"
            ))
        })?;
    let root = lines.next().ok_or_else(|| body("no root hash line"))?;
    let root_hash = b64("checkpoint root hash", root).map_err(|e| body(e.to_string()))?;
    if root_hash.len() != 32 {
        return Err(body(format!("root hash is {} bytes", root_hash.len())));
    }
    let extensions: Vec<String> = lines.map(str::to_owned).collect();
    if extensions.iter().any(String::is_empty) {
        return Err(body("empty extension line"));
    }
    Ok(Checkpoint {
        text: text.to_owned(),
        origin: origin.to_owned(),
        tree_size,
        root_hash,
        extensions,
        signatures,
    })
}

/// The note key hint of a log's key for a checkpoint with this origin (see module doc).
pub fn log_key_hint(log: &TransparencyLog, origin: &str) -> Result<[u8; 4], CheckpointError> {
    let key =
        PublicKey::from_spki_der(&log.public_key).map_err(|e| CheckpointError::UnusableKey {
            reason: e.to_string(),
        })?;
    let digest: [u8; 32] = match key.algorithm() {
        Algorithm::EcdsaP256 => Sha256::digest(&log.public_key).into(),
        Algorithm::Ed25519 => {
            let raw = ed25519_raw(&log.public_key)?;
            let mut h = Sha256::new();
            h.update(origin.as_bytes());
            h.update(b"\n\x01");
            h.update(raw);
            h.finalize().into()
        }
    };
    Ok([digest[0], digest[1], digest[2], digest[3]])
}

/// The 32-byte key of an Ed25519 SubjectPublicKeyInfo (fixed 12-byte DER prefix).
fn ed25519_raw(spki: &[u8]) -> Result<&[u8], CheckpointError> {
    const PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    match spki.split_at_checked(PREFIX.len()) {
        Some((prefix, raw)) if prefix == PREFIX && raw.len() == 32 => Ok(raw),
        _ => Err(CheckpointError::UnusableKey {
            reason: "Ed25519 key is not a 44-byte SubjectPublicKeyInfo".into(),
        }),
    }
}

/// Verifies that at least one signature line is a valid signature by the log's key over the
/// checkpoint text. Lines by other keys are ignored; a line with the log key's hint that does
/// not verify is an error only if no other such line verifies.
pub fn verify_signature(cp: &Checkpoint, log: &TransparencyLog) -> Result<(), CheckpointError> {
    let key =
        PublicKey::from_spki_der(&log.public_key).map_err(|e| CheckpointError::UnusableKey {
            reason: e.to_string(),
        })?;
    let hint = log_key_hint(log, &cp.origin)?;
    let ed25519 = key.algorithm() == Algorithm::Ed25519;
    let mut candidate: Option<&str> = None;
    for s in &cp.signatures {
        if s.key_hint != hint || (ed25519 && s.name != cp.origin) {
            continue;
        }
        if key.verify(cp.text.as_bytes(), &s.signature) {
            return Ok(());
        }
        candidate.get_or_insert(&s.name);
    }
    match candidate {
        Some(name) => Err(CheckpointError::InvalidSignature {
            name: name.to_owned(),
        }),
        None => Err(CheckpointError::NoLogSignature {
            hint: hex::encode(hint),
            names: cp.signatures.iter().map(|s| s.name.clone()).collect(),
        }),
    }
}

/// Checks the checkpoint is for the proof's tree: same size, same root hash.
pub fn matches_proof(cp: &Checkpoint, proof: &InclusionProof) -> Result<(), CheckpointError> {
    if cp.root_hash != proof.root_hash {
        return Err(CheckpointError::ProofMismatch {
            field: "root hash",
            checkpoint: hex::encode(&cp.root_hash),
            proof: hex::encode(&proof.root_hash),
        });
    }
    if cp.tree_size != proof.tree_size {
        return Err(CheckpointError::ProofMismatch {
            field: "tree size",
            checkpoint: cp.tree_size.to_string(),
            proof: proof.tree_size.to_string(),
        });
    }
    Ok(())
}

/// Parses `envelope`, verifies the log's signature, and checks it against `proof`.
pub fn verify(
    envelope: &str,
    log: &TransparencyLog,
    proof: &InclusionProof,
) -> Result<Checkpoint, CheckpointError> {
    let cp = parse(envelope)?;
    verify_signature(&cp, log)?;
    matches_proof(&cp, proof)?;
    Ok(cp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const CP: &str = "example.com/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u{2014} example.com/log AAAAAAAA\n";

    #[test]
    fn parses_a_minimal_note() {
        let cp = parse(CP).unwrap();
        assert_eq!(cp.origin, "example.com/log");
        assert_eq!(cp.tree_size, 5);
        assert_eq!(cp.root_hash, vec![0; 32]);
        assert_eq!(
            cp.text,
            "example.com/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
        );
        assert_eq!(cp.signatures.len(), 1);
        assert_eq!(cp.signatures[0].key_hint, [0; 4]);
    }

    #[test]
    fn malformed_notes_are_errors() {
        let root = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        for bad in [
            String::new(),
            "\n\n".to_owned(),
            format!("o\n5\n{root}\n\n"),
            format!("o\n5\n{root}\n\n\u{2014} o AAAAAAAA"),
            format!("o\n5\n{root}\n\n- o AAAAAAAA\n"),
            format!("o\n5\n{root}\n\n\u{2014} o AAAA\n"),
            format!("o\n5\n{root}\n\n\u{2014} o !!!!\n"),
            format!("o\n05\n{root}\n\n\u{2014} o AAAAAAAA\n"),
            format!("o\n-5\n{root}\n\n\u{2014} o AAAAAAAA\n"),
            format!("o\n99999999999999999999\n{root}\n\n\u{2014} o AAAAAAAA\n"),
            "o\n5\nAAAA\n\n\u{2014} o AAAAAAAA\n".to_owned(),
            format!("\n5\n{root}\n\n\u{2014} o AAAAAAAA\n"),
            "o\n5\n\n\u{2014} o AAAAAAAA\n".to_owned(),
            format!("o\n5\n{root}\x07\n\n\u{2014} o AAAAAAAA\n"),
            format!(
                "{}\n5\n{root}\n\n\u{2014} o AAAAAAAA\n",
                "o".repeat(MAX_CHECKPOINT_SIZE)
            ),
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }
}
