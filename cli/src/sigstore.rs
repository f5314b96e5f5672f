//! `kiln sigstore verify-bundle` (sigstore-conformance's CLI protocol) and the sigstore trust
//! flags `kiln verify` shares with it: a trusted root, and who must have signed (a key, or a
//! certificate identity and OIDC issuer, exact or by anchored regular expression).

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use kiln_attest::sigstore::{self, Artifact, Identity, Matcher, trust::TrustedRoot};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::attest::OutputFormat;
use crate::commands::{Failure, usage};

/// Sigstore subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SigstoreCommand {
    /// Verify a sigstore bundle (v0.1, v0.2, v0.3) offline against an artifact file or digest.
    ///
    /// Checks the signature (message signature or DSSE envelope; for DSSE the artifact must be
    /// an in-toto subject), the certificate chain to the trusted root's Fulcio CA at the
    /// signing time, the embedded SCTs, the certificate identity and OIDC issuer, every
    /// transparency-log entry (body, inclusion proof, signed checkpoint or signed entry
    /// timestamp) and RFC 3161 timestamps. Exit 0 when verified, 1 with every failed check.
    ///
    /// Speaks sigstore-conformance's CLI protocol, so that suite's runner can drive kiln.
    ///
    /// Examples:
    ///   kiln sigstore verify-bundle --bundle a.txt.sigstore.json \
    ///       --certificate-identity https://github.com/org/repo/.github/workflows/release.yml@refs/tags/v1 \
    ///       --certificate-oidc-issuer https://token.actions.githubusercontent.com a.txt
    ///   kiln sigstore verify-bundle --bundle b.json --key cosign.pub --trusted-root root.json \
    ///       sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    #[command(verbatim_doc_comment)]
    VerifyBundle(VerifyBundleArgs),
}

/// Who must have signed a sigstore bundle, and the trust material.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The certificate's identity: its SAN (URI or email) must equal this.
    #[arg(
        long,
        value_name = "ID",
        conflicts_with = "certificate_identity_regexp"
    )]
    pub certificate_identity: Option<String>,
    /// The certificate's identity as a regular expression (Rust regex syntax) that must match
    /// the whole SAN: kiln anchors it, unlike cosign; write `.*` for a prefix.
    #[arg(long, value_name = "REGEX")]
    pub certificate_identity_regexp: Option<String>,
    /// The OIDC issuer the certificate must name (Fulcio extension 1.3.6.1.4.1.57264.1.8).
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "certificate_oidc_issuer_regexp"
    )]
    pub certificate_oidc_issuer: Option<String>,
    /// The OIDC issuer as a regular expression that must match the whole value.
    #[arg(long, value_name = "REGEX")]
    pub certificate_oidc_issuer_regexp: Option<String>,
    /// Sigstore trust material (`trusted_root.json`: Fulcio CAs, transparency logs, CT logs,
    /// timestamp authorities). Default: the public-good instance's root shipped with kiln.
    #[arg(long, value_name = "FILE", env = "KILN_TRUSTED_ROOT")]
    pub trusted_root: Option<PathBuf>,
}

impl TrustArgs {
    /// Whether any certificate-identity flag is given.
    pub fn wants_certificate(&self) -> bool {
        self.certificate_identity.is_some()
            || self.certificate_identity_regexp.is_some()
            || self.certificate_oidc_issuer.is_some()
            || self.certificate_oidc_issuer_regexp.is_some()
    }

    /// The identity and issuer matchers, when certificate flags are given; both are needed.
    pub fn matchers(&self) -> Result<Option<(Matcher, Matcher)>, Failure> {
        if !self.wants_certificate() {
            return Ok(None);
        }
        let identity = match (
            &self.certificate_identity,
            &self.certificate_identity_regexp,
        ) {
            (Some(s), _) => Matcher::Exact(s.clone()),
            (None, Some(r)) => Matcher::regex(r)
                .map_err(|e| usage(format!("--certificate-identity-regexp: {e}")))?,
            (None, None) => {
                return Err(usage(
                    "a certificate's issuer alone is not an identity: also pass \
                     --certificate-identity or --certificate-identity-regexp"
                        .into(),
                ));
            }
        };
        let issuer = match (
            &self.certificate_oidc_issuer,
            &self.certificate_oidc_issuer_regexp,
        ) {
            (Some(s), _) => Matcher::Exact(s.clone()),
            (None, Some(r)) => Matcher::regex(r)
                .map_err(|e| usage(format!("--certificate-oidc-issuer-regexp: {e}")))?,
            (None, None) => {
                return Err(usage(
                    "--certificate-identity needs --certificate-oidc-issuer (or \
                     --certificate-oidc-issuer-regexp): a SAN means nothing without the \
                     issuer that vouched for it"
                        .into(),
                ));
            }
        };
        Ok(Some((identity, issuer)))
    }

    /// The trusted root: `--trusted-root`, else the shipped public-good one (`staging` has
    /// none shipped).
    pub fn root(&self, staging: bool) -> Result<TrustedRoot, Failure> {
        let (what, bytes) = match &self.trusted_root {
            Some(path) => (
                format!("--trusted-root {}", path.display()),
                read_bounded(path, sigstore::trust::MAX_TRUSTED_ROOT_SIZE)
                    .map_err(|e| usage(format!("--trusted-root {}: {e}", path.display())))?,
            ),
            None if staging => {
                return Err(usage(
                    "--staging: kiln ships no staging trusted root; pass the staging \
                     instance's trusted_root.json with --trusted-root"
                        .into(),
                ));
            }
            None => (
                "the shipped public-good trusted root".to_owned(),
                sigstore::PUBLIC_GOOD_TRUSTED_ROOT.to_vec(),
            ),
        };
        sigstore::trust::parse(&bytes).map_err(|e| usage(format!("{what}: {e}")))
    }
}

/// `kiln sigstore verify-bundle` flags.
#[derive(Debug, Args)]
pub struct VerifyBundleArgs {
    /// Use the sigstore staging instance's trust root (needs --trusted-root: none is shipped).
    #[arg(long)]
    staging: bool,
    /// The bundle (`.sigstore.json`).
    #[arg(long, value_name = "FILE")]
    bundle: PathBuf,
    /// Verify with this public key (PEM SubjectPublicKeyInfo: ECDSA P-256/P-384, Ed25519,
    /// RSA) instead of a certificate identity; the bundle must name a key, not carry a
    /// certificate.
    #[arg(long, value_name = "PUB.pem", conflicts_with_all = ["certificate_identity", "certificate_identity_regexp"])]
    key: Option<PathBuf>,
    #[command(flatten)]
    trust: TrustArgs,
    /// Output format (json: the verdict, every failed check, the signer and what was
    /// verified).
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    /// The artifact: a file, or `sha256:<64 hex>` (when no such file exists). For a DSSE
    /// bundle it must be a subject of the in-toto statement.
    #[arg(value_name = "FILE_OR_DIGEST")]
    artifact: String,
}

/// Artifacts up to this size are verified from their bytes; larger ones by their SHA-256
/// (ECDSA and RSA signatures verify prehashed; an Ed25519 message signature needs the bytes).
const MAX_ARTIFACT_IN_MEMORY: u64 = 64 * 1024 * 1024;

/// Runs a sigstore subcommand.
pub fn run(cmd: SigstoreCommand) -> Result<(), Failure> {
    match cmd {
        SigstoreCommand::VerifyBundle(a) => verify_bundle(a),
    }
}

/// Reads a file of at most `limit` bytes (checked before reading).
pub fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() > limit {
        return Err(format!("over the {limit}-byte limit"));
    }
    Ok(out)
}

/// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo) as DER, checked to be a key kiln can verify with.
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, Failure> {
    let fail = |e: String| usage(format!("--key {}: {e}", path.display()));
    let text = read_bounded(path, 64 * 1024).map_err(fail)?;
    let text = String::from_utf8(text).map_err(|_| fail("not PEM text".into()))?;
    let body = text
        .split_once("-----BEGIN PUBLIC KEY-----")
        .and_then(|(_, rest)| rest.split_once("-----END PUBLIC KEY-----"))
        .map(|(body, _)| body)
        .ok_or_else(|| fail("no PEM PUBLIC KEY block".into()))?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| fail(format!("PEM body is not base64: {e}")))?;
    sigstore::cert::PublicKey::from_spki(&der).map_err(|e| fail(e.to_string()))?;
    Ok(der)
}

/// The artifact argument: its SHA-256, and its bytes when small enough to hold.
fn read_artifact(arg: &str) -> Result<([u8; 32], Option<Vec<u8>>), Failure> {
    let path = Path::new(arg);
    if !path.exists()
        && let Some(hex) = arg.strip_prefix("sha256:")
    {
        let digest = hex::decode(hex)
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .filter(|_| {
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .ok_or_else(|| usage(format!("{arg}: not sha256:<64 lowercase hex>")))?;
        return Ok((digest, None));
    }
    let mut file = std::fs::File::open(path).map_err(|e| usage(format!("{arg}: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| usage(format!("{arg}: {e}")))?
        .len();
    let mut hasher = Sha256::new();
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| usage(format!("{arg}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if size <= MAX_ARTIFACT_IN_MEMORY && kept.len() as u64 <= MAX_ARTIFACT_IN_MEMORY {
            kept.extend_from_slice(&buf[..n]);
        }
    }
    let keep = size <= MAX_ARTIFACT_IN_MEMORY && kept.len() as u64 <= MAX_ARTIFACT_IN_MEMORY;
    Ok((hasher.finalize().into(), keep.then_some(kept)))
}

fn verify_bundle(a: VerifyBundleArgs) -> Result<(), Failure> {
    if a.key.is_none() && !a.trust.wants_certificate() {
        return Err(usage(
            "say who must have signed: --key PUB.pem, or --certificate-identity ID \
             --certificate-oidc-issuer URL"
                .into(),
        ));
    }
    let root = a.trust.root(a.staging)?;
    let matchers = a.trust.matchers()?;
    let key = a.key.as_deref().map(read_public_key).transpose()?;
    let bundle = read_bounded(&a.bundle, sigstore::bundle::MAX_BUNDLE_SIZE)
        .map_err(|e| usage(format!("--bundle {}: {e}", a.bundle.display())))?;
    let (digest, bytes) = read_artifact(&a.artifact)?;
    let identity = match (&key, &matchers) {
        (Some(spki), _) => Identity::KeyPub(spki),
        (None, Some((identity, issuer))) => Identity::CertMatching { identity, issuer },
        (None, None) => return Err(usage("no signer identity".into())),
    };
    let artifact = match &bytes {
        Some(b) => Artifact::Bytes(b),
        None => Artifact::Sha256(&digest),
    };
    let result = sigstore::verify_bundle(&bundle, artifact, &root, identity);
    let artifact_digest = format!("sha256:{}", hex::encode(digest));
    match a.output {
        OutputFormat::Json => {
            let doc = match &result {
                Ok(v) => json!({
                    "verified": true,
                    "bundle": a.bundle.display().to_string(),
                    "artifact": artifact_digest,
                    "summary": summary(v),
                    "failures": [],
                }),
                Err(failures) => json!({
                    "verified": false,
                    "bundle": a.bundle.display().to_string(),
                    "artifact": artifact_digest,
                    "failures": failures_json(failures),
                }),
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Text => match &result {
            Ok(v) => {
                let s = summary(v);
                let signer = match &s["identity"] {
                    Value::Null => format!("key {}", s["key_id"].as_str().unwrap_or_default()),
                    id => format!(
                        "{} (issuer {})",
                        id["san"].as_str().unwrap_or("?"),
                        id["issuer"].as_str().unwrap_or("?")
                    ),
                };
                println!(
                    "verified {} for {artifact_digest}: signed by {signer} at {}; {} log \
                     entr{}, {} timestamp(s)",
                    a.bundle.display(),
                    s["signing_times"]
                        .as_array()
                        .map(|t| t
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default(),
                    v.tlog.len(),
                    if v.tlog.len() == 1 { "y" } else { "ies" },
                    v.bundle.verification_material.rfc3161_timestamps.len(),
                );
            }
            Err(failures) => {
                for f in failures {
                    eprintln!("error: {}: {}", f.check.name(), f.detail);
                }
                eprintln!(
                    "{}: not verified for {artifact_digest} ({} failed check{})",
                    a.bundle.display(),
                    failures.len(),
                    if failures.len() == 1 { "" } else { "s" }
                );
            }
        },
    }
    match result {
        Ok(_) => Ok(()),
        Err(_) => Err(Failure::silent(1)),
    }
}

/// Failures as JSON: `[{check, detail}]`.
pub fn failures_json(failures: &[sigstore::Failure]) -> Value {
    failures
        .iter()
        .map(|f| json!({"check": f.check.name(), "detail": f.detail}))
        .collect()
}

/// What a verification established, as JSON: the signer (identity or key id), the signing
/// times, the log entries.
pub fn summary(v: &sigstore::Verified) -> Value {
    let key_id = v
        .certificate
        .as_ref()
        .map(|c| hex::encode(Sha256::digest(&c.spki)));
    json!({
        "bundle_version": format!("{:?}", v.bundle.version),
        "content": match &v.bundle.content {
            sigstore::bundle::Content::MessageSignature { .. } => "messageSignature",
            sigstore::bundle::Content::DsseEnvelope(_) => "dsseEnvelope",
        },
        "identity": v.certificate.as_ref().map(sigstore::identity::summary),
        "key_id": key_id,
        "signing_times": v
            .signing_times
            .iter()
            .map(|&t| kiln_attest::sbom::rfc3339(u64::try_from(t).unwrap_or(0)))
            .collect::<Vec<_>>(),
        "tlog_entries": v.tlog.iter().zip(&v.bundle.verification_material.tlog_entries).map(|(t, e)| json!({
            "log_index": e.log_index,
            "log_id": hex::encode(&e.log_id),
            "kind": format!("{}/{}", e.kind, e.version),
            "integrated_time": t.integrated_time,
            "checkpoint": t.checkpoint.as_ref().map(|c| json!({"origin": c.origin, "tree_size": c.tree_size})),
            "signed_entry_timestamp": t.set_verified,
        })).collect::<Vec<_>>(),
    })
}
