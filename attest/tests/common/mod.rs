//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

/// The repository's own attestation vectors (`vectors/attest/` at the workspace root).
pub fn attest_vectors() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/attest"))
}

/// The shared, third-party vectors folder: `$KILN_SHARED_VECTORS`, or `/work/shared/vectors`
/// next to the checkout. `None` when absent.
pub fn shared_vectors() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_SHARED_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors"))
        });
    dir.is_dir().then_some(dir)
}

/// A big-endian 32-byte integer from its decimal digits.
pub fn decimal_to_be32(decimal: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for c in decimal.bytes() {
        assert!(c.is_ascii_digit(), "not a decimal digit: {c}");
        let mut carry = u32::from(c - b'0');
        for byte in out.iter_mut().rev() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0, "{decimal} does not fit in 32 bytes");
    }
    out
}
