//! RFC 6962 / RFC 9162 Merkle tree inclusion proofs (SHA-256).

use sha2::{Digest, Sha256};

use super::bundle::MAX_PROOF_HASHES;

/// Why an inclusion proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MerkleError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is not below tree size {tree_size}")]
    IndexOutOfRange {
        /// Leaf index.
        index: u64,
        /// Tree size.
        tree_size: u64,
    },
    /// A hash that is not 32 bytes.
    #[error("{what} is {len} bytes, expected 32")]
    BadHashLength {
        /// Which hash.
        what: String,
        /// Its length.
        len: usize,
    },
    /// Too many or too few proof hashes for the index and tree size.
    #[error("proof has {got} hashes, wrong for leaf {index} of a tree of {tree_size}")]
    WrongProofLength {
        /// Hashes given.
        got: usize,
        /// Leaf index.
        index: u64,
        /// Tree size.
        tree_size: u64,
    },
    /// The recomputed root is not the expected root.
    #[error("inclusion proof recomputes root {computed}, expected {expected}")]
    RootMismatch {
        /// Recomputed root, hex.
        computed: String,
        /// Expected root, hex.
        expected: String,
    },
}

/// RFC 6962 leaf hash: SHA-256(0x00 || leaf).
pub fn leaf_hash(leaf: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// RFC 6962 interior node hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn hash32(what: impl FnOnce() -> String, bytes: &[u8]) -> Result<[u8; 32], MerkleError> {
    bytes.try_into().map_err(|_| MerkleError::BadHashLength {
        what: what(),
        len: bytes.len(),
    })
}

/// Recomputes the root from a leaf hash and its audit path (RFC 9162 §2.1.3.2).
pub fn root_from_proof(
    index: u64,
    tree_size: u64,
    leaf_hash: &[u8; 32],
    proof: &[Vec<u8>],
) -> Result<[u8; 32], MerkleError> {
    if index >= tree_size {
        return Err(MerkleError::IndexOutOfRange { index, tree_size });
    }
    let wrong_length = || MerkleError::WrongProofLength {
        got: proof.len(),
        index,
        tree_size,
    };
    if proof.len() > MAX_PROOF_HASHES {
        return Err(wrong_length());
    }
    let mut fn_ = index;
    let mut sn = tree_size - 1;
    let mut r = *leaf_hash;
    for (i, p) in proof.iter().enumerate() {
        let p = hash32(|| format!("proof hash {i}"), p)?;
        if sn == 0 {
            return Err(wrong_length());
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(&p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, &p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(wrong_length());
    }
    Ok(r)
}

/// Verifies that `leaf` (the entry's canonicalized body) is leaf `index` of the tree of
/// `tree_size` leaves whose root is `root`.
pub fn verify_inclusion(
    index: u64,
    tree_size: u64,
    leaf: &[u8],
    proof: &[Vec<u8>],
    root: &[u8],
) -> Result<(), MerkleError> {
    let expected = hash32(|| "root hash".to_owned(), root)?;
    let computed = root_from_proof(index, tree_size, &leaf_hash(leaf), proof)?;
    if computed != expected {
        return Err(MerkleError::RootMismatch {
            computed: hex::encode(computed),
            expected: hex::encode(expected),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Largest power of two below `n` (RFC 6962's split point), `n >= 2`.
    fn split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// RFC 6962 MTH over leaf hashes, for building proofs.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => leaves[0],
            n => {
                let k = split(n);
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// RFC 6962 PATH(m, D[n]).
    fn path(m: usize, leaves: &[[u8; 32]]) -> Vec<Vec<u8>> {
        let n = leaves.len();
        if n <= 1 {
            return vec![];
        }
        let k = split(n);
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]).to_vec());
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]).to_vec());
            p
        }
    }

    #[test]
    fn every_leaf_of_small_trees_verifies_and_tampering_fails() {
        for n in 1..=20usize {
            let data: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf {i}").into_bytes()).collect();
            let leaves: Vec<[u8; 32]> = data.iter().map(|d| leaf_hash(d)).collect();
            let root = mth(&leaves);
            for (m, leaf) in data.iter().enumerate() {
                let p = path(m, &leaves);
                verify_inclusion(m as u64, n as u64, leaf, &p, &root).unwrap();
                // Wrong leaf, wrong index, flipped proof bit, extra hash, much larger tree: all fail.
                assert!(verify_inclusion(m as u64, n as u64, b"other", &p, &root).is_err());
                if n > 1 {
                    let other = (m + 1) % n;
                    assert!(verify_inclusion(other as u64, n as u64, leaf, &p, &root).is_err());
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(verify_inclusion(m as u64, n as u64, leaf, &bad, &root).is_err());
                }
                // (A different tree size can give the same root for the same path, e.g. leaf 0
                // of 3 and of 4: the root binds the size only through the signed checkpoint.)
                assert!(verify_inclusion(m as u64, 2 * n as u64 + 2, leaf, &p, &root).is_err());
                let mut long = p.clone();
                long.push(vec![0; 32]);
                assert!(verify_inclusion(m as u64, n as u64, leaf, &long, &root).is_err());
            }
        }
    }

    #[test]
    fn hostile_inputs_are_errors() {
        let leaf = leaf_hash(b"x");
        assert!(root_from_proof(0, 0, &leaf, &[]).is_err());
        assert!(root_from_proof(5, 5, &leaf, &[]).is_err());
        assert!(root_from_proof(u64::MAX - 1, u64::MAX, &leaf, &[vec![0; 31]]).is_err());
        assert!(root_from_proof(0, u64::MAX, &leaf, &vec![vec![0; 32]; 65]).is_err());
        // A full-depth proof is accepted structurally (then fails on the root).
        assert!(root_from_proof(0, u64::MAX, &leaf, &vec![vec![0; 32]; 64]).is_ok());
        assert!(verify_inclusion(0, 1, b"x", &[], &[0; 31]).is_err());
        assert_eq!(root_from_proof(0, 1, &leaf, &[]), Ok(leaf));
    }
}
