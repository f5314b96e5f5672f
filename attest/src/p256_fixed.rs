//! ECDSA P-256 signing whose `k·G` uses a precomputed table of the generator's multiples.
//!
//! RustCrypto's `p256` 0.13 computes `k·G` as it computes any `k·P` (its own TODO:
//! "precomputed basepoint tables"): 252 doublings and 64 additions. Every signature needs one,
//! and so does a key's public point. With the table below it is 65 additions of table
//! entries, about three times fewer field multiplications: a kiln build signs three statements
//! (about 0.2 ms each on generic arithmetic) after its image exists, on the build's
//! critical path.
//!
//! Everything else is `p256`'s and `rfc6979`'s, used exactly as `ecdsa` 0.16 uses them
//! (`hazmat::sign_prehashed` after `SignPrimitive::try_sign_prehashed_rfc6979`, no low-s
//! normalization): the signature is byte-for-byte the one `p256::ecdsa::SigningKey` makes,
//! which the tests check on random keys and messages, and the DSSE vector
//! (`vectors/dsse/p256-hello-world.json`) reproduces.
//!
//! Constant time in the secret scalars, as `p256`'s own multiplication is: the digits of `k`
//! are recoded without branches, each table row is read whole with `subtle`'s conditional
//! assignment (never indexed by a digit), negation is a conditional select, and the addition
//! is `primeorder`'s complete addition (correct for the identity too, without a branch).

use std::sync::OnceLock;

use p256::ecdsa::Signature;
use p256::elliptic_curve::Field as _;
use p256::elliptic_curve::ff::PrimeField as _;
use p256::elliptic_curve::group::Group as _;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::AffineCoordinates as _;
use p256::elliptic_curve::subtle::{ConditionallySelectable as _, ConstantTimeEq as _};
use p256::{FieldBytes, NonZeroScalar, ProjectivePoint, Scalar, U256};
use sha2::{Digest as _, Sha256};

/// Signed 4-bit digits: a scalar below the order has 64 nibbles, and recoding them into
/// `-8..=8` carries into a 65th digit (0 or 1).
const WINDOWS: usize = 65;
/// Row `i` holds `j·16^i·G` for `j` in `1..=8`.
const ENTRIES: usize = 8;

/// The group order n, big-endian (FIPS 186-4 D.1.2.3), as `rfc6979` takes it.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The table: 65 rows of 8 points (50 KiB), made on first use (about two generic
/// multiplications' worth of additions; `SigningKey::check` makes it on its warm-up thread).
/// The points stay projective: `p256` 0.13 offers no batch inversion for its field, and one
/// inversion per point would cost more than the table saves. Adding a projective point costs
/// a few multiplications more than adding an affine one.
fn table() -> &'static [[ProjectivePoint; ENTRIES]] {
    static TABLE: OnceLock<Vec<[ProjectivePoint; ENTRIES]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rows = Vec::with_capacity(WINDOWS);
        let mut base = ProjectivePoint::GENERATOR;
        for _ in 0..WINDOWS {
            let mut row = [base; ENTRIES];
            for j in 1..ENTRIES {
                row[j] = row[j - 1] + base;
            }
            // 8·base doubled: the next row's base, 16 times this one's.
            base = row[ENTRIES - 1].double();
            rows.push(row);
        }
        rows
    })
}

/// `d·(row's base)` for a digit `d` in `-8..=8`, read from `row` in constant time.
fn select(row: &[ProjectivePoint; ENTRIES], d: i8) -> ProjectivePoint {
    // -1 for a negative digit, else 0 (arithmetic shift).
    let sign = d >> 7;
    let magnitude = ((d ^ sign) - sign) as u8;
    let mut p = ProjectivePoint::IDENTITY;
    for (j, entry) in (1u8..).zip(row) {
        p.conditional_assign(entry, magnitude.ct_eq(&j));
    }
    let negated = -p;
    p.conditional_assign(&negated, (sign as u8 & 1).into());
    p
}

/// `k·G`.
pub(crate) fn mul_generator(k: &Scalar) -> ProjectivePoint {
    let table = table();
    // Big-endian: nibble i (least significant first) is in byte 31 - i/2.
    let bytes = k.to_repr();
    let mut acc = ProjectivePoint::IDENTITY;
    let mut carry = 0u8;
    for (i, row) in table.iter().take(WINDOWS - 1).enumerate() {
        let byte = bytes[31 - i / 2];
        let nibble = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
        // v in 0..=16; digits above 8 become v - 16 and carry one into the next window.
        let v = nibble + carry;
        carry = (v + 7) >> 4;
        let digit = v as i8 - 16 * carry as i8;
        acc += select(row, digit);
    }
    acc += select(&table[WINDOWS - 1], carry as i8);
    acc
}

/// The public point of the secret `d`.
pub(crate) fn public_key(d: &NonZeroScalar) -> p256::PublicKey {
    let point = mul_generator(d).to_affine();
    // d is not zero and G has prime order, so d·G is not the identity.
    p256::PublicKey::from_affine(point)
        .unwrap_or_else(|_| unreachable!("d·G is never the identity"))
}

/// The ECDSA P-256 / SHA-256 signature of `message` by `d` with an RFC 6979 nonce: the
/// signature `p256::ecdsa::SigningKey::sign` makes. `None` only where that one fails too
/// (r or s zero, probability about 2^-256).
pub(crate) fn sign(d: &NonZeroScalar, message: &[u8]) -> Option<Signature> {
    let z: FieldBytes = Sha256::digest(message);
    let k_bytes = rfc6979::generate_k::<Sha256, _>(&d.to_repr(), &FieldBytes::from(ORDER), &z, &[]);
    // generate_k returns 0 < k < n.
    let k = Option::<Scalar>::from(Scalar::from_repr(k_bytes))?;
    let k_inv = Option::<Scalar>::from(k.invert())?;
    let z = <Scalar as Reduce<U256>>::reduce_bytes(&z);
    let big_r = mul_generator(&k).to_affine();
    let r = <Scalar as Reduce<U256>>::reduce_bytes(&big_r.x());
    let s = k_inv * (z + r * d.as_ref());
    if bool::from(r.is_zero() | s.is_zero()) {
        return None;
    }
    Signature::from_scalars(r, s).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use p256::ecdsa::signature::Signer as _;
    use p256::elliptic_curve::Curve as _;
    use p256::elliptic_curve::FieldBytesEncoding as _;
    use rand_core::{OsRng, RngCore as _};

    use super::*;

    #[test]
    fn the_order_is_p256s() {
        let n: FieldBytes = p256::NistP256::ORDER.encode_field_bytes();
        assert_eq!(n.as_slice(), ORDER);
    }

    /// Scalars whose recoding walks every path: zero digits, 8 and 9 (the carry's edge),
    /// 15 (carry into a 16), long carry chains, and the order's neighbourhood.
    fn edge_scalars() -> Vec<Scalar> {
        let mut out = vec![Scalar::ZERO, Scalar::ONE, -Scalar::ONE, -Scalar::from(2u64)];
        for small in [
            2u64,
            7,
            8,
            9,
            15,
            16,
            17,
            0x88,
            0x99,
            0xff,
            0x8888_8888,
            u64::MAX,
        ] {
            out.push(Scalar::from(small));
            out.push(-Scalar::from(small));
        }
        for fill in [0x88u8, 0x99, 0xff, 0x0f, 0xf0, 0x80, 0x08, 0x7f] {
            let mut bytes = [fill; 32];
            // Below the order: the top byte 0x7f keeps it so whatever the fill.
            bytes[0] = 0x7f;
            out.push(Option::from(Scalar::from_repr(bytes.into())).unwrap());
        }
        out
    }

    #[test]
    fn table_multiplication_is_generic_multiplication() {
        let mut scalars = edge_scalars();
        for _ in 0..200 {
            scalars.push(Scalar::random(&mut OsRng));
        }
        for k in scalars {
            assert_eq!(
                mul_generator(&k).to_affine(),
                (ProjectivePoint::GENERATOR * k).to_affine(),
                "k = {:x?}",
                k.to_repr()
            );
        }
    }

    #[test]
    fn signatures_and_public_keys_are_p256s_byte_for_byte() {
        let mut messages: Vec<Vec<u8>> = vec![Vec::new(), b"sample".to_vec(), vec![0xab; 4096]];
        for _ in 0..3 {
            let mut m = vec![0u8; (OsRng.next_u32() % 300) as usize];
            OsRng.fill_bytes(&mut m);
            messages.push(m);
        }
        for round in 0..150 {
            let secret = if round == 0 {
                // The smallest secret.
                NonZeroScalar::new(Scalar::ONE).unwrap()
            } else if round == 1 {
                NonZeroScalar::new(-Scalar::ONE).unwrap()
            } else {
                NonZeroScalar::random(&mut OsRng)
            };
            let theirs = p256::ecdsa::SigningKey::from(secret);
            assert_eq!(
                public_key(&secret),
                p256::PublicKey::from(theirs.verifying_key())
            );
            for m in &messages {
                let expected: Signature = theirs.sign(m);
                assert_eq!(sign(&secret, m).unwrap(), expected);
            }
        }
    }
}
