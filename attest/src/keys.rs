//! Signing keys (ECDSA P-256, Ed25519): generation, PKCS#8 PEM (optionally passphrase-encrypted
//! with PBES2), SPKI public-key PEM and key ids.
//!
//! A key id is the lowercase hex SHA-256 of the public key's DER-encoded SubjectPublicKeyInfo
//! (the bytes inside the `PUBLIC KEY` PEM): `openssl pkey -pubin -outform DER | sha256sum`
//! computes the same value.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::Signer as _;
use ed25519_dalek::Verifier as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use pkcs8::der::Decode as _;
use pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
    LineEnding, ObjectIdentifier,
};
use rand_core::{OsRng, RngCore as _};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// id-ecPublicKey (RFC 5480).
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 / prime256v1 (RFC 5480).
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// id-Ed25519 (RFC 8410).
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// PBKDF2-HMAC-SHA256 iterations for encrypted keys (OWASP 2023 guidance).
const PBKDF2_ITERATIONS: u32 = 600_000;
const LABEL_PRIVATE: &str = "PRIVATE KEY";
const LABEL_ENCRYPTED: &str = "ENCRYPTED PRIVATE KEY";
const LABEL_PUBLIC: &str = "PUBLIC KEY";

/// Why a key could not be read, written or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Unknown algorithm name.
    #[error("unknown key algorithm {name:?} (expected ecdsa-p256, p256 or ed25519)")]
    UnknownAlgorithm {
        /// The name given.
        name: String,
    },
    /// Not PEM.
    #[error("not a PEM document: {reason}")]
    NotPem {
        /// What the PEM decoder said.
        reason: String,
    },
    /// PEM with an unexpected label.
    #[error("PEM label is {found:?}, expected {expected}")]
    WrongLabel {
        /// Label found.
        found: String,
        /// Label(s) expected.
        expected: &'static str,
    },
    /// The key is encrypted and no passphrase was given.
    #[error("key is encrypted: a passphrase is needed")]
    PassphraseNeeded,
    /// The passphrase does not decrypt the key.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The encrypted key uses a scheme kiln cannot decrypt.
    #[error("cannot decrypt the key: {reason}")]
    Decrypt {
        /// Details.
        reason: String,
    },
    /// Encryption failed.
    #[error("cannot encrypt the key: {reason}")]
    Encrypt {
        /// Details.
        reason: String,
    },
    /// The key's algorithm (OID) is neither P-256 ECDSA nor Ed25519.
    #[error("unsupported key algorithm {oid} (kiln supports ECDSA P-256 and Ed25519)")]
    UnsupportedAlgorithm {
        /// Algorithm OID (with the curve OID for EC keys).
        oid: String,
    },
    /// The DER inside the PEM is not a valid key.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// `private key` or `public key`.
        what: &'static str,
        /// Details.
        reason: String,
    },
    /// Refusing to overwrite an existing file.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// File-system error.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A signature algorithm kiln signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA over NIST P-256 with SHA-256, deterministic nonces (RFC 6979), DER signatures.
    EcdsaP256,
    /// Ed25519 (RFC 8032).
    Ed25519,
}

impl Algorithm {
    /// Canonical name (`ecdsa-p256`, `ed25519`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256 => "ecdsa-p256",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = KeyError;
    /// `ecdsa-p256` or `p256`; `ed25519` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s.to_ascii_lowercase().as_str() {
            "ecdsa-p256" | "p256" => Ok(Algorithm::EcdsaP256),
            "ed25519" => Ok(Algorithm::Ed25519),
            _ => Err(KeyError::UnknownAlgorithm { name: s.to_owned() }),
        }
    }
}

enum SecretInner {
    P256(LazyP256),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A P-256 secret whose public point (one scalar multiplication) is made on first use:
/// reading a key file parses it at once, and the caller may make the rest on another thread
/// ([`SigningKey::check`]) while it does other work. The public key a key file carries beside
/// its secret is checked then, against the point made anyway (checking it while reading
/// would cost the same multiplication twice, once on the caller's path). Signing and the
/// public point use [`crate::p256_fixed`]'s table of the generator's multiples. The secret
/// is wiped on drop.
struct LazyP256 {
    secret: p256::SecretKey,
    /// The public key the key file carries (SEC1's optional `publicKey`).
    embedded: Option<p256::EncodedPoint>,
    /// The secret's public key, and whether `embedded` (when there is one) is it.
    made: std::sync::OnceLock<(p256::ecdsa::VerifyingKey, bool)>,
}

impl LazyP256 {
    fn new(secret: p256::SecretKey, embedded: Option<p256::EncodedPoint>) -> Self {
        Self {
            secret,
            embedded,
            made: std::sync::OnceLock::new(),
        }
    }

    fn made(&self) -> &(p256::ecdsa::VerifyingKey, bool) {
        self.made.get_or_init(|| {
            let public = crate::p256_fixed::public_key(&self.secret.to_nonzero_scalar());
            let matches = self
                .embedded
                .as_ref()
                .is_none_or(|e| *e == public.to_encoded_point(e.is_compressed()));
            (public.into(), matches)
        })
    }

    /// The secret's public key, whatever the file's copy of it says.
    fn verifying_key(&self) -> &p256::ecdsa::VerifyingKey {
        &self.made().0
    }

    /// Fails when the file's public key (when it carries one) is not the secret's.
    fn check(&self) -> Result<(), KeyError> {
        if self.made().1 {
            Ok(())
        } else {
            Err(KeyError::Malformed {
                what: "private key",
                reason: "the public key it carries is not its secret's (the file is damaged, \
                         or was put together from two keys)"
                    .to_owned(),
            })
        }
    }

    fn sign(&self, message: &[u8]) -> Result<p256::ecdsa::Signature, KeyError> {
        self.check()?;
        let mut secret = self.secret.to_nonzero_scalar();
        let sig = crate::p256_fixed::sign(&secret, message);
        zeroize::Zeroize::zeroize(&mut secret);
        sig.ok_or_else(|| KeyError::Malformed {
            what: "signature",
            reason: "r or s is zero (about 1 in 2^256); sign again".to_owned(),
        })
    }
}

/// A private signing key. Its secret is zeroized on drop, and `Debug` prints only the algorithm
/// and key id.
pub struct SigningKey {
    inner: SecretInner,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm())
            .field("key_id", &self.public_key().key_id())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(algorithm: Algorithm) -> SigningKey {
        let inner = match algorithm {
            Algorithm::EcdsaP256 => {
                SecretInner::P256(LazyP256::new(p256::SecretKey::random(&mut OsRng), None))
            }
            Algorithm::Ed25519 => {
                SecretInner::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng))
            }
        };
        SigningKey { inner }
    }

    /// Reads a PKCS#8 PEM key: `PRIVATE KEY`, or `ENCRYPTED PRIVATE KEY` (PBES2) with
    /// `passphrase`. An encrypted key without a passphrase is [`KeyError::PassphraseNeeded`]; a
    /// passphrase that does not decrypt it is [`KeyError::WrongPassphrase`]. A passphrase given
    /// for an unencrypted key is ignored.
    pub fn from_pkcs8_pem(pem: &str, passphrase: Option<&[u8]>) -> Result<SigningKey, KeyError> {
        let (label, doc) = pkcs8::SecretDocument::from_pem(pem).map_err(|e| KeyError::NotPem {
            reason: e.to_string(),
        })?;
        match label {
            LABEL_PRIVATE => Self::from_pkcs8_der(doc.as_bytes()),
            LABEL_ENCRYPTED => {
                let passphrase = passphrase.ok_or(KeyError::PassphraseNeeded)?;
                let encrypted = pkcs8::EncryptedPrivateKeyInfo::from_der(doc.as_bytes())
                    .map_err(|e| malformed_private(&e))?;
                // pkcs5 0.7.1 reports bad CBC padding (the usual symptom of a wrong
                // passphrase) as `EncryptFailed`; both mean the passphrase did not decrypt.
                // `decrypt` also parses the plaintext: when the padding checks out by chance
                // under a wrong passphrase, that parse fails (an ASN.1 error).
                let plain = encrypted.decrypt(passphrase).map_err(|e| match e {
                    pkcs8::Error::EncryptedPrivateKey(
                        pkcs8::pkcs5::Error::DecryptFailed | pkcs8::pkcs5::Error::EncryptFailed,
                    )
                    | pkcs8::Error::Asn1(_) => KeyError::WrongPassphrase,
                    other => KeyError::Decrypt {
                        reason: other.to_string(),
                    },
                })?;
                // CBC padding can check out by chance under a wrong passphrase (about 1 in
                // 256); the DER inside then fails to parse: still a wrong passphrase.
                Self::from_pkcs8_der(plain.as_bytes()).map_err(|e| match e {
                    KeyError::Malformed { .. } => KeyError::WrongPassphrase,
                    other => other,
                })
            }
            other => Err(KeyError::WrongLabel {
                found: other.to_owned(),
                expected: "PRIVATE KEY or ENCRYPTED PRIVATE KEY",
            }),
        }
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
        let info = pkcs8::PrivateKeyInfo::from_der(der).map_err(|e| malformed_private(&e))?;
        let alg = info.algorithm;
        if alg.oid == OID_EC_PUBLIC_KEY {
            let curve = alg.parameters_oid().ok();
            if curve != Some(OID_P256) {
                return Err(KeyError::UnsupportedAlgorithm {
                    oid: format!(
                        "{} ({})",
                        alg.oid,
                        curve.map(|c| c.to_string()).unwrap_or_default()
                    ),
                });
            }
            // RFC 5915 inside RFC 5208. Parsed here, as `p256::SecretKey::from_pkcs8_der`
            // does, except that the public key beside the secret is checked when the signing
            // key is made ([`LazyP256`]), not now.
            let ec = sec1::EcPrivateKey::from_der(info.private_key)
                .map_err(|e| malformed_private(&e))?;
            if let Some(curve) = ec.parameters.and_then(|p| p.named_curve())
                && curve != OID_P256
            {
                return Err(KeyError::UnsupportedAlgorithm {
                    oid: format!("{} ({curve})", alg.oid),
                });
            }
            let secret = p256::SecretKey::from_slice(ec.private_key)
                .map_err(|_| malformed_private(&"the secret is not a P-256 scalar"))?;
            let embedded = ec
                .public_key
                .map(p256::EncodedPoint::from_bytes)
                .transpose()
                .map_err(|e| malformed_private(&format!("its public key: {e}")))?;
            Ok(SigningKey {
                inner: SecretInner::P256(LazyP256::new(secret, embedded)),
            })
        } else if alg.oid == OID_ED25519 {
            let key = ed25519_dalek::SigningKey::from_pkcs8_der(der)
                .map_err(|e| malformed_private(&e))?;
            Ok(SigningKey {
                inner: SecretInner::Ed25519(key),
            })
        } else {
            Err(KeyError::UnsupportedAlgorithm {
                oid: alg.oid.to_string(),
            })
        }
    }

    /// Writes the key as PKCS#8 PEM: `PRIVATE KEY` without a passphrase, `ENCRYPTED PRIVATE
    /// KEY` (PBES2: PBKDF2-HMAC-SHA256, 600 000 iterations, random salt; AES-256-CBC) with one.
    pub fn to_pkcs8_pem(&self, passphrase: Option<&[u8]>) -> Result<Zeroizing<String>, KeyError> {
        let der = match &self.inner {
            SecretInner::P256(k) => k.secret.to_pkcs8_der(),
            SecretInner::Ed25519(k) => {
                // PKCS#8 v1 (RFC 8410 without the optional public key), as OpenSSL writes it:
                // Python's `cryptography` rejects the v2 form ed25519-dalek writes by default.
                // `KeypairBytes` wipes its secret on drop (the `ed25519/zeroize` feature).
                let mut pair = ed25519_dalek::pkcs8::KeypairBytes::from(k);
                pair.public_key = None;
                pair.to_pkcs8_der()
            }
        }
        .map_err(|e| KeyError::Encrypt {
            reason: e.to_string(),
        })?;
        let Some(passphrase) = passphrase else {
            return der
                .to_pem(LABEL_PRIVATE, LineEnding::LF)
                .map_err(|e| KeyError::Encrypt {
                    reason: e.to_string(),
                });
        };
        let mut salt = [0u8; 16];
        let mut iv = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        OsRng.fill_bytes(&mut iv);
        let params =
            pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
                .map_err(|e| KeyError::Encrypt {
                    reason: e.to_string(),
                })?;
        let info =
            pkcs8::PrivateKeyInfo::from_der(der.as_bytes()).map_err(|e| KeyError::Encrypt {
                reason: e.to_string(),
            })?;
        let encrypted =
            info.encrypt_with_params(params, passphrase)
                .map_err(|e| KeyError::Encrypt {
                    reason: e.to_string(),
                })?;
        encrypted
            .to_pem(LABEL_ENCRYPTED, LineEnding::LF)
            .map_err(|e| KeyError::Encrypt {
                reason: e.to_string(),
            })
    }

    /// The secret's public key. For P-256 the first call computes it (one scalar
    /// multiplication). A key file's own copy of it is not consulted here: [`SigningKey::check`]
    /// compares the two, and [`SigningKey::sign`] refuses to sign when they differ.
    pub fn public_key(&self) -> PublicKey {
        let inner = match &self.inner {
            SecretInner::P256(k) => PublicInner::P256(*k.verifying_key()),
            SecretInner::Ed25519(k) => PublicInner::Ed25519(k.verifying_key()),
        };
        PublicKey { inner }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.inner {
            SecretInner::P256(_) => Algorithm::EcdsaP256,
            SecretInner::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// Checks what reading the key left for later: that the public key a P-256 key file
    /// carries beside its secret is the secret's. Makes the signing key on the way (one scalar
    /// multiplication), so a caller may call it on another thread right after loading the key,
    /// and signing later does not wait for it. Ed25519 keys have nothing left to check.
    ///
    /// # Errors
    /// [`KeyError::Malformed`] when the two differ.
    pub fn check(&self) -> Result<(), KeyError> {
        match &self.inner {
            SecretInner::P256(k) => k.check(),
            SecretInner::Ed25519(_) => Ok(()),
        }
    }

    /// Signs `message`: P-256 hashes with SHA-256, uses an RFC 6979 nonce and returns the ASN.1
    /// DER signature (as cosign and securesystemslib do); Ed25519 returns the 64-byte signature.
    ///
    /// # Errors
    /// What [`SigningKey::check`] finds: a key that fails it never signs.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        Ok(match &self.inner {
            SecretInner::P256(k) => {
                let sig = k.sign(message)?;
                sig.to_der().as_bytes().to_vec()
            }
            SecretInner::Ed25519(k) => {
                let sig: ed25519_dalek::Signature = k.sign(message);
                sig.to_bytes().to_vec()
            }
        })
    }
}

fn malformed_private(e: &dyn fmt::Display) -> KeyError {
    KeyError::Malformed {
        what: "private key",
        reason: e.to_string(),
    }
}

fn malformed_public(e: &dyn fmt::Display) -> KeyError {
    KeyError::Malformed {
        what: "public key",
        reason: e.to_string(),
    }
}

#[derive(Clone, PartialEq, Eq)]
enum PublicInner {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A public key that verifies signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    inner: PublicInner,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm())
            .field("key_id", &self.key_id())
            .finish()
    }
}

impl PublicKey {
    /// Reads an SPKI `PUBLIC KEY` PEM (ECDSA P-256 or Ed25519).
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        let (label, doc) = pkcs8::Document::from_pem(pem).map_err(|e| KeyError::NotPem {
            reason: e.to_string(),
        })?;
        if label != LABEL_PUBLIC {
            return Err(KeyError::WrongLabel {
                found: label.to_owned(),
                expected: LABEL_PUBLIC,
            });
        }
        Self::from_spki_der(doc.as_bytes())
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        let spki =
            pkcs8::SubjectPublicKeyInfoRef::from_der(der).map_err(|e| malformed_public(&e))?;
        let alg = spki.algorithm;
        let inner = if alg.oid == OID_EC_PUBLIC_KEY {
            let curve = alg.parameters_oid().ok();
            if curve != Some(OID_P256) {
                return Err(KeyError::UnsupportedAlgorithm {
                    oid: format!(
                        "{} ({})",
                        alg.oid,
                        curve.map(|c| c.to_string()).unwrap_or_default()
                    ),
                });
            }
            PublicInner::P256(
                p256::ecdsa::VerifyingKey::from_public_key_der(der)
                    .map_err(|e| malformed_public(&e))?,
            )
        } else if alg.oid == OID_ED25519 {
            PublicInner::Ed25519(
                ed25519_dalek::VerifyingKey::from_public_key_der(der)
                    .map_err(|e| malformed_public(&e))?,
            )
        } else {
            return Err(KeyError::UnsupportedAlgorithm {
                oid: alg.oid.to_string(),
            });
        };
        Ok(PublicKey { inner })
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let doc = match &self.inner {
            PublicInner::P256(k) => k.to_public_key_der(),
            PublicInner::Ed25519(k) => k.to_public_key_der(),
        };
        // Encoding a valid in-memory key into DER does not fail; an empty result would give a
        // key id no signature ever names, so the failure stays visible without a panic.
        doc.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    /// SPKI `PUBLIC KEY` PEM, LF line endings.
    pub fn to_pem(&self) -> String {
        let der = self.to_spki_der();
        pkcs8::der::pem::encode_string(LABEL_PUBLIC, LineEnding::LF, &der).unwrap_or_default()
    }

    /// Key id: lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.
    pub fn key_id(&self) -> String {
        hex::encode(Sha256::digest(self.to_spki_der()))
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.inner {
            PublicInner::P256(_) => Algorithm::EcdsaP256,
            PublicInner::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// Whether `signature` is valid for `message`. P-256 accepts an ASN.1 DER signature or a
    /// raw 64-byte `r‖s` (both over SHA-256 of `message`); Ed25519 takes the 64-byte signature
    /// and verifies strictly (no small-order keys, canonical `s`).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.inner {
            PublicInner::P256(k) => {
                let der = p256::ecdsa::Signature::from_der(signature)
                    .is_ok_and(|sig| k.verify(message, &sig).is_ok());
                der || (signature.len() == 64
                    && p256::ecdsa::Signature::from_slice(signature)
                        .is_ok_and(|sig| k.verify(message, &sig).is_ok()))
            }
            PublicInner::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| k.verify_strict(message, &sig).is_ok()),
        }
    }
}

/// Writes a fresh key pair: `PREFIX.key` (PKCS#8 PEM, encrypted when `passphrase` is given),
/// created with mode 0600 and `O_CREAT|O_EXCL`, and `PREFIX.pub` (SPKI PEM, mode 0644). Refuses
/// to overwrite either file; if writing `PREFIX.pub` fails, `PREFIX.key` is removed again.
pub fn write_keypair(
    prefix: &Path,
    algorithm: Algorithm,
    passphrase: Option<&[u8]>,
) -> Result<(PathBuf, PathBuf), KeyError> {
    let key_path = with_suffix(prefix, ".key");
    let pub_path = with_suffix(prefix, ".pub");
    if pub_path.exists() {
        return Err(KeyError::Exists { path: pub_path });
    }
    let key = SigningKey::generate(algorithm);
    let pem = key.to_pkcs8_pem(passphrase)?;
    create_new(&key_path, 0o600, pem.as_bytes())?;
    if let Err(e) = create_new(&pub_path, 0o644, key.public_key().to_pem().as_bytes()) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok((key_path, pub_path))
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn create_new(path: &Path, mode: u32, contents: &[u8]) -> Result<(), KeyError> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_owned(),
            }
        } else {
            KeyError::Io {
                path: path.to_owned(),
                source,
            }
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_parse() {
        assert_eq!(
            "ecdsa-p256".parse::<Algorithm>().unwrap(),
            Algorithm::EcdsaP256
        );
        assert_eq!("p256".parse::<Algorithm>().unwrap(), Algorithm::EcdsaP256);
        assert_eq!("ed25519".parse::<Algorithm>().unwrap(), Algorithm::Ed25519);
        assert!(matches!(
            "rsa".parse::<Algorithm>(),
            Err(KeyError::UnknownAlgorithm { .. })
        ));
    }

    #[test]
    fn debug_never_prints_key_material() {
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = SigningKey::generate(alg);
            let pem = key.to_pkcs8_pem(None).unwrap();
            let body: String = pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<Vec<_>>()
                .concat();
            let debug = format!("{key:?}");
            assert!(debug.contains(&key.public_key().key_id()), "{debug}");
            // No 8-character window of the base64 body shows up in Debug output.
            for i in 0..body.len().saturating_sub(8) {
                assert!(!debug.contains(&body[i..i + 8]), "{debug}");
            }
        }
    }

    #[test]
    fn key_id_is_sha256_of_spki_der() {
        let key = SigningKey::generate(Algorithm::Ed25519).public_key();
        assert_eq!(key.key_id(), hex::encode(Sha256::digest(key.to_spki_der())));
        assert_eq!(key.key_id().len(), 64);
        // Ed25519 SPKI DER is a fixed 12-byte prefix plus the 32-byte key.
        assert_eq!(key.to_spki_der().len(), 44);
    }

    #[test]
    fn sign_verify_both_algorithms_and_reject_other_messages() {
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = SigningKey::generate(alg);
            let sig = key.sign(b"message").unwrap();
            assert!(key.public_key().verify(b"message", &sig));
            assert!(!key.public_key().verify(b"messagf", &sig));
            assert!(
                !SigningKey::generate(alg)
                    .public_key()
                    .verify(b"message", &sig)
            );
        }
    }

    /// A P-256 PKCS#8 PEM holding `secret`'s scalar, `public` as its public key and
    /// `curve` as the SEC1 curve parameter.
    fn p256_pem(secret: &SigningKey, public: &SigningKey, curve: ObjectIdentifier) -> String {
        use pkcs8::der::Encode as _;
        let SecretInner::P256(s) = &secret.inner else {
            panic!("P-256 only")
        };
        let scalar = s.secret.to_bytes();
        let point = public.public_key().to_spki_der();
        let spki = pkcs8::SubjectPublicKeyInfoRef::from_der(&point).unwrap();
        let ec = sec1::EcPrivateKey {
            private_key: &scalar,
            parameters: Some(sec1::EcParameters::NamedCurve(curve)),
            public_key: Some(spki.subject_public_key.raw_bytes()),
        };
        let ec_der = ec.to_der().unwrap();
        let info = pkcs8::PrivateKeyInfo::new(
            pkcs8::AlgorithmIdentifierRef {
                oid: OID_EC_PUBLIC_KEY,
                parameters: Some((&OID_P256).into()),
            },
            &ec_der,
        );
        let doc = pkcs8::der::SecretDocument::encode_msg(&info).unwrap();
        doc.to_pem(LABEL_PRIVATE, LineEnding::LF)
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_p256_key_whose_public_key_is_not_its_secrets_is_read_but_never_signs() {
        let a = SigningKey::generate(Algorithm::EcdsaP256);
        let b = SigningKey::generate(Algorithm::EcdsaP256);

        // Put together as OpenSSL writes them (the curve named in SEC1 too, which
        // `to_pkcs8_pem` leaves out).
        let good = p256_pem(&a, &a, OID_P256);
        let read = SigningKey::from_pkcs8_pem(&good, None).unwrap();
        read.check().unwrap();
        let sig = read.sign(b"m").unwrap();
        assert!(a.public_key().verify(b"m", &sig));
        assert_eq!(read.public_key().key_id(), a.public_key().key_id());
        // The RustCrypto reader (which checks at once) reads it the same.
        let theirs = p256::SecretKey::from_pkcs8_pem(&good).unwrap();
        let SecretInner::P256(ours) = &read.inner else {
            panic!("P-256")
        };
        assert_eq!(theirs.to_bytes(), ours.secret.to_bytes());

        // A's secret with B's public key: reading it succeeds (the check is deferred), the
        // check fails, and so does every signature, whichever thread made the key first.
        let damaged = p256_pem(&a, &b, OID_P256);
        assert!(p256::SecretKey::from_pkcs8_pem(&damaged).is_err());
        for check_first in [true, false] {
            let read = SigningKey::from_pkcs8_pem(&damaged, None).unwrap();
            if check_first {
                let e = read.check().unwrap_err();
                assert!(
                    matches!(&e, KeyError::Malformed { reason, .. } if reason.contains("not its secret's")),
                    "{e}"
                );
            }
            assert!(matches!(read.sign(b"m"), Err(KeyError::Malformed { .. })));
            assert!(read.check().is_err());
        }

        // A SEC1 curve parameter other than P-256 is refused while reading.
        let secp384r1 = ObjectIdentifier::new_unwrap("1.3.132.0.34");
        assert!(matches!(
            SigningKey::from_pkcs8_pem(&p256_pem(&a, &a, secp384r1), None),
            Err(KeyError::UnsupportedAlgorithm { .. })
        ));
    }
}
