//! Attestation commands and flags: `kiln build --attest/--sbom/--sign-key/--attest-dest`,
//! `kiln key generate`, `kiln verify`, `kiln inspect`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use kiln_attest::keys::{Algorithm, PublicKey, SigningKey};
use kiln_attest::media as amedia;
use kiln_attest::verify::{Claims, Policy, Reason};
use kiln_engine::attest::locate::{self, ImageLocation, Located};
use kiln_engine::attest::{AttestOptions, ProvenanceMode};
use kiln_engine::store::Store;

use crate::commands::{Failure, usage};

/// Build flags about attestations.
#[derive(Debug, Args)]
pub struct AttestArgs {
    /// What to attest (repeatable), as buildx: `provenance=mode=min|max` (or
    /// `type=provenance,mode=max`), `provenance=false`, `sbom=false`, or `none` for nothing.
    /// Default: provenance in min mode (build-arg values and the step list left out) and both
    /// SBOMs.
    #[arg(long = "attest", value_name = "SPEC")]
    attest: Vec<String>,
    /// SBOM formats: `spdx`, `cyclonedx`, both (`spdx,cyclonedx`, the default) or `none`.
    #[arg(long, value_name = "FORMATS", default_value = "spdx,cyclonedx")]
    sbom: String,
    /// Sign the attestations with this private key (PKCS#8 PEM from `kiln key generate`).
    /// kiln reads it before the build; no build step can reach it. Without a key the
    /// attestations are made and attached unsigned, and the build says so. An encrypted key's
    /// passphrase is read from `KILN_SIGN_KEY_PASSPHRASE`.
    #[arg(long, value_name = "PATH", env = "KILN_SIGN_KEY")]
    sign_key: Option<PathBuf>,
    /// The builder id recorded in the provenance (`runDetails.builder.id`), which `kiln verify
    /// --builder-id` checks.
    #[arg(long, value_name = "URI", env = "KILN_BUILDER_ID")]
    builder_id: Option<String>,
    /// Also write the attestations as files into DIR: `*.statement.json`, and with a key
    /// `*.sigstore.json` (sigstore bundle v0.3) and `*.intoto.jsonl`.
    #[arg(long, value_name = "DIR")]
    attest_dest: Option<PathBuf>,
}

impl AttestArgs {
    /// The flags given that a build through kilnd cannot honour: kilnd attests with its own
    /// defaults and signs with its own key.
    pub fn remote_unsupported(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.attest.is_empty() || self.sbom != "spdx,cyclonedx" {
            out.push("--attest/--sbom");
        }
        if self.sign_key.is_some() {
            out.push("--sign-key (kilnd signs with its own key)");
        }
        if self.builder_id.is_some() {
            out.push("--builder-id (kilnd's config sets it)");
        }
        if self.attest_dest.is_some() {
            out.push("--attest-dest");
        }
        out
    }
}

fn passphrase(var: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    std::env::var_os(var).map(|v| zeroize::Zeroizing::new(v.into_encoded_bytes()))
}

/// The build's attestation options from its flags.
pub fn options(a: &AttestArgs) -> Result<AttestOptions, Failure> {
    let mut opts = AttestOptions::default();
    // `--sbom` picks the formats first; an `--attest sbom=false` then turns them all off
    // (the other way round, `--sbom`'s default list would turn them back on).
    match a.sbom.as_str() {
        "none" | "false" => {
            opts.spdx = false;
            opts.cyclonedx = false;
        }
        list => {
            opts.spdx = false;
            opts.cyclonedx = false;
            for f in list.split(',') {
                match f.trim() {
                    "spdx" => opts.spdx = true,
                    "cyclonedx" | "cdx" => opts.cyclonedx = true,
                    other => {
                        return Err(usage(format!(
                            "--sbom: unknown format {other:?} (spdx, cyclonedx or none)"
                        )));
                    }
                }
            }
        }
    }
    for spec in &a.attest {
        apply_attest(&mut opts, spec).map_err(usage)?;
    }
    if a.attest.iter().any(|s| s == "none") {
        opts.spdx = false;
        opts.cyclonedx = false;
        opts.provenance = None;
    }
    if let Some(id) = &a.builder_id {
        opts.builder_id = id.clone();
    }
    opts.dest = a.attest_dest.clone();
    if let Some(path) = &a.sign_key {
        let key = Arc::new(load_signing_key(path)?);
        // Parsed now. What is left (P-256: the scalar multiplication that makes the public
        // point, and the check of the file's copy of it against it) runs on another thread
        // while the build does; a key that fails that check fails the build when it signs.
        let warm = Arc::clone(&key);
        std::thread::spawn(move || warm.check());
        opts.signer = Some(key);
    }
    Ok(opts)
}

fn apply_attest(opts: &mut AttestOptions, spec: &str) -> Result<(), String> {
    if spec == "none" {
        return Ok(());
    }
    // `provenance=mode=max` (kiln) or `type=provenance,mode=max` (buildx).
    let (kind, rest) = match spec.strip_prefix("type=") {
        Some(r) => match r.split_once(',') {
            Some((k, rest)) => (k, rest.to_owned()),
            None => (r, String::new()),
        },
        None => match spec.split_once('=') {
            Some((k, rest)) => (k, rest.to_owned()),
            None => (spec, String::new()),
        },
    };
    let bad = |why: &str| format!("--attest {spec:?}: {why}");
    match kind {
        "provenance" => {
            let mut mode = ProvenanceMode::Min;
            for kv in rest.split(',').filter(|s| !s.is_empty()) {
                match kv {
                    "mode=min" => mode = ProvenanceMode::Min,
                    "mode=max" => mode = ProvenanceMode::Max,
                    "false" | "disabled=true" => {
                        opts.provenance = None;
                        return Ok(());
                    }
                    "true" => {}
                    other => return Err(bad(&format!("unknown option {other:?} (mode=min|max)"))),
                }
            }
            opts.provenance = Some(mode);
        }
        "sbom" => match rest.as_str() {
            "false" | "disabled=true" => {
                opts.spdx = false;
                opts.cyclonedx = false;
            }
            "" | "true" => {}
            other => return Err(bad(&format!("unknown option {other:?}"))),
        },
        _ => return Err(bad("expected provenance=…, sbom=… or none")),
    }
    Ok(())
}

fn load_signing_key(path: &Path) -> Result<SigningKey, Failure> {
    load_key_file(path, "--sign-key", "KILN_SIGN_KEY_PASSPHRASE")
}

fn load_key_file(path: &Path, flag: &str, passphrase_var: &str) -> Result<SigningKey, Failure> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("{flag} {}: {e}", path.display())))?;
    let pass = passphrase(passphrase_var);
    SigningKey::from_pkcs8_pem(&pem, pass.as_deref().map(|p| p.as_slice()))
        .map_err(|e| usage(format!("{flag} {}: {e}", path.display())))
}

/// `kiln key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a signing key pair: PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub.
    ///
    /// The private key is encrypted when KILN_KEY_PASSPHRASE is set (PBES2: scrypt and
    /// AES-256-CBC); give the same passphrase to `kiln build` as KILN_SIGN_KEY_PASSPHRASE.
    ///
    /// Examples:
    ///   kiln key generate --out /etc/kiln/builder
    ///   KILN_KEY_PASSPHRASE=… kiln key generate --algorithm ed25519 --out release
    #[command(verbatim_doc_comment)]
    Generate {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
        /// Key algorithm.
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        algorithm: AlgorithmArg,
    },
}

/// Signing algorithms.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AlgorithmArg {
    /// ECDSA on NIST P-256 with SHA-256 (cosign's default).
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

/// Runs `kiln key …`.
pub fn key(cmd: KeyCommand) -> Result<(), Failure> {
    match cmd {
        KeyCommand::Generate { out, algorithm } => {
            let alg = match algorithm {
                AlgorithmArg::EcdsaP256 => Algorithm::EcdsaP256,
                AlgorithmArg::Ed25519 => Algorithm::Ed25519,
            };
            let pass = passphrase("KILN_KEY_PASSPHRASE");
            let (private, public) =
                kiln_attest::keys::write_keypair(&out, alg, pass.as_deref().map(|p| p.as_slice()))
                    .map_err(|e| anyhow::anyhow!("kiln key generate: {e}"))?;
            eprintln!(
                "wrote {} (mode 0600, {}) and {}",
                private.display(),
                if pass.is_some() {
                    "encrypted"
                } else {
                    "NOT encrypted: set KILN_KEY_PASSPHRASE to encrypt it"
                },
                public.display()
            );
            println!("{}", public.display());
            Ok(())
        }
    }
}

/// `kiln verify` flags.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The image: `oci-archive:PATH.tar[:REF]`, `oci:DIR[:REF]`, `docker://REF`, or a name in
    /// kiln's local image store. Or any artifact, `file:PATH` or `sha256:<64 hex>`, whose
    /// bundles are given with --bundle (the subject is its SHA-256).
    image: String,
    /// The builder's public key (PEM, from `kiln key generate`; with sigstore trust flags any
    /// PEM SubjectPublicKeyInfo sigstore signs with). Or use --certificate-identity.
    #[arg(long, value_name = "PUB.pem", required_unless_present_any = ["certificate_identity", "certificate_identity_regexp"], conflicts_with_all = ["certificate_identity", "certificate_identity_regexp"])]
    key: Option<PathBuf>,
    /// Sigstore verification (keyless Fulcio certificates, transparency logs, timestamps):
    /// with any of these flags every bundle is checked as a sigstore bundle against the
    /// trusted root, and must carry a verified log entry or timestamp.
    #[command(flatten)]
    trust: crate::sigstore::TrustArgs,
    /// Require this builder id in the provenance.
    #[arg(long, value_name = "ID")]
    builder_id: Option<String>,
    /// Require the provenance to name this source (a resolved dependency's URI, or the
    /// Dockerfile's).
    #[arg(long, value_name = "URI")]
    source_uri: Option<String>,
    /// Require a signed attestation of this predicate type (e.g.
    /// https://slsa.dev/provenance/v1); only those are checked.
    #[arg(long, value_name = "TYPE")]
    predicate_type: Option<String>,
    /// Check these detached sigstore bundles (e.g. a VSA written by `--vsa`) instead of the
    /// attestations attached to the image (repeatable).
    #[arg(long = "bundle", value_name = "FILE")]
    bundles: Vec<PathBuf>,
    /// After the signature checks pass, ask this Rego policy's kiln.verify gate (a .rego file,
    /// or a directory with data.json); a deny fails the verification with its messages.
    /// `kiln policy schema verify` prints the input it gets.
    #[arg(long, value_name = "PATH", env = "KILN_VERIFY_POLICY")]
    policy: Option<PathBuf>,
    /// Write a signed SLSA Verification Summary Attestation (a sigstore bundle) to this file:
    /// the verdict, the policy's digest and the verified level. Needs --policy and --vsa-key.
    #[arg(long, value_name = "OUT", requires_all = ["policy", "vsa_key"])]
    vsa: Option<PathBuf>,
    /// The verifier's signing key for --vsa (PKCS#8 PEM; passphrase in
    /// KILN_VSA_KEY_PASSPHRASE).
    #[arg(long, value_name = "KEY.pem", env = "KILN_VSA_KEY")]
    vsa_key: Option<PathBuf>,
    /// The VSA's verifier.id.
    #[arg(
        long,
        value_name = "URI",
        env = "KILN_VERIFIER_ID",
        default_value = "https://example.invalid/kiln/verifier"
    )]
    verifier_id: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    #[command(flatten)]
    registry: RegistryAccess,
}

/// How `docker://` images are reached (as for `kiln build`).
#[derive(Debug, Args)]
pub struct RegistryAccess {
    /// DANGEROUS: reach this registry over plain HTTP (loopback registries only).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// Also trust the CA certificates in this PEM file for registries.
    #[arg(long = "registry-ca", value_name = "FILE", env = "KILN_REGISTRY_CA")]
    registry_ca: Option<PathBuf>,
}

impl RegistryAccess {
    fn options(&self) -> kiln_engine::registry::RegistryOptions {
        kiln_engine::registry::RegistryOptions {
            insecure: self.insecure_registry.clone(),
            ca_file: self.registry_ca.clone(),
            docker_config: None,
        }
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable lines.
    Text,
    /// One JSON document.
    Json,
}

fn find(root: &Path, image: &str, registry: &RegistryAccess) -> Result<Located, Failure> {
    if let Some(artifact) = artifact_subject(image)? {
        return Ok(artifact);
    }
    let loc = ImageLocation::parse(image);
    let store = match &loc {
        ImageLocation::Local(_) => Some(Store::open(root)?),
        _ => None,
    };
    Ok(
        locate::locate_with(&loc, store.as_ref(), &registry.options())
            .map_err(|e| anyhow::anyhow!("{image}: {e}"))?,
    )
}

/// A `file:PATH` or `sha256:<64 hex>` subject: an artifact with nothing attached (its bundles
/// come from --bundle) and no image config.
fn is_artifact_subject(subject: &str) -> bool {
    subject.starts_with("file:") || (subject.starts_with("sha256:") && !Path::new(subject).exists())
}

fn artifact_subject(subject: &str) -> Result<Option<Located>, Failure> {
    if !is_artifact_subject(subject) {
        return Ok(None);
    }
    let (digest, size) = if let Some(path) = subject.strip_prefix("file:") {
        let file = std::fs::File::open(path).map_err(|e| usage(format!("{subject}: {e}")))?;
        let size = file
            .metadata()
            .map_err(|e| usage(format!("{subject}: {e}")))?
            .len();
        let digest = kiln_engine::Digest::of_reader(std::io::BufReader::new(file))
            .map_err(|e| usage(format!("{subject}: {e}")))?;
        (digest, size)
    } else {
        let digest = subject
            .parse::<kiln_engine::Digest>()
            .map_err(|e| usage(format!("{subject}: {e}")))?;
        (digest, 0)
    };
    let mut image = kiln_engine::oci::types::Descriptor::of_bytes("application/octet-stream", b"");
    image.digest = digest;
    image.size = size;
    Ok(Some(Located {
        image,
        bundles: Vec::new(),
        statements: Vec::new(),
        config: None,
    }))
}

/// Runs `kiln verify`: exit 0 when every check holds, 1 with every reason otherwise.
pub fn verify(root: &Path, a: VerifyArgs) -> Result<(), Failure> {
    if a.bundles.is_empty() && is_artifact_subject(&a.image) {
        return Err(usage(format!(
            "{}: an artifact has nothing attached; pass its bundles with --bundle",
            a.image
        )));
    }
    let signer = Signer::from_args(&a)?;
    let gate = a.policy.as_deref().map(crate::policy::load).transpose()?;
    let vsa_key = match &a.vsa_key {
        Some(p) if a.vsa.is_some() => {
            Some(load_key_file(p, "--vsa-key", "KILN_VSA_KEY_PASSPHRASE")?)
        }
        _ => None,
    };
    let mut located = find(root, &a.image, &a.registry)?;
    if !a.bundles.is_empty() {
        located.bundles.clear();
        for path in &a.bundles {
            // Bounded before reading: a bundle larger than the verifier parses is refused.
            let size = std::fs::metadata(path)
                .map_err(|e| usage(format!("--bundle {}: {e}", path.display())))?
                .len();
            if size > kiln_attest::bundle::MAX_DOCUMENT_SIZE as u64 {
                return Err(usage(format!(
                    "--bundle {}: {size} bytes, over the {}-byte limit",
                    path.display(),
                    kiln_attest::bundle::MAX_DOCUMENT_SIZE
                )));
            }
            let bytes = std::fs::read(path)
                .map_err(|e| usage(format!("--bundle {}: {e}", path.display())))?;
            located.bundles.push((None, bytes));
        }
    }
    let subject_digest = located.image.digest.to_string();
    let claims = Claims {
        subject_digest: &subject_digest,
        predicate_type: a.predicate_type.as_deref(),
        builder_id: a.builder_id.as_deref(),
        source_uri: a.source_uri.as_deref(),
    };
    let mut verified = Vec::new();
    // Sigstore message signatures over the image digest: (key id, identity).
    let mut image_signatures: Vec<Checked> = Vec::new();
    let mut identities = Vec::new();
    let mut failures: Vec<(Option<String>, Vec<Reason>)> = Vec::new();
    for (annotated, bytes) in &located.bundles {
        // The annotation is unsigned: it only selects what to check; the signed statement's
        // own predicate type is what the policy compares.
        if let (Some(want), Some(have)) = (&a.predicate_type, annotated)
            && want != have
        {
            continue;
        }
        match check_bundle(&claims, |c| signer.check(bytes, c)) {
            Ok(checked) => {
                if let Some(id) = &checked.identity
                    && !identities.contains(id)
                {
                    identities.push(id.clone());
                }
                match checked.statement {
                    Some(v) => verified.push(v),
                    None => image_signatures.push(checked),
                }
            }
            Err(reasons) => failures.push((annotated.clone(), reasons)),
        }
    }
    let mut problems: Vec<String> = failures
        .iter()
        .flat_map(|(pt, reasons)| {
            let pt = pt.clone().unwrap_or_else(|| "attestation".into());
            reasons.iter().map(move |r| format!("{pt}: {r}"))
        })
        .collect();
    if verified.is_empty() && image_signatures.is_empty() && failures.is_empty() {
        problems.push(match &a.predicate_type {
            Some(t) => format!("no signed attestation of type {t} is attached to the image"),
            None if located.statements.is_empty() => {
                "no attestations are attached to the image".into()
            }
            None => "the image's attestations are not signed (build with --sign-key)".into(),
        });
    }
    if a.builder_id.is_some()
        && !verified
            .iter()
            .any(|v| v.statement.predicate_type == amedia::SLSA_PROVENANCE_V1)
        && problems.is_empty()
    {
        problems.push("--builder-id: no signed provenance to check it against".into());
    }
    // The verify gate: only once the signatures hold, so the policy judges signed facts.
    let mut decision = None;
    if let Some(g) = &gate
        && problems.is_empty()
    {
        let input = verify_input(
            &a.image,
            &located,
            &verified,
            &image_signatures,
            &identities,
        );
        let d = g.evaluate(kiln_policy::Gate::Verify, &input);
        problems.extend(
            d.messages
                .iter()
                .map(|m| format!("policy kiln.verify: {m}")),
        );
        decision = Some(d);
    }
    let ok = problems.is_empty();
    let mut vsa_written = None;
    if let (Some(out), Some(key), Some(g)) = (&a.vsa, &vsa_key, &gate) {
        let summary = kiln_attest::vsa::Summary {
            verifier_id: a.verifier_id.clone(),
            time_verified: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            resource_uri: a.image.clone(),
            subject_digest: located.image.digest.to_string(),
            policy_uri: policy_uri(a.policy.as_deref().unwrap_or(Path::new(""))),
            policy_sha256: g.digest().trim_start_matches("sha256:").to_owned(),
            inputs: located
                .bundles
                .iter()
                .enumerate()
                .map(|(i, (pt, b))| {
                    (
                        match a.bundles.get(i) {
                            Some(file) => policy_uri(file),
                            None => {
                                format!("{}#{}", a.image, pt.as_deref().unwrap_or("attestation"))
                            }
                        },
                        kiln_engine::Digest::of(b)
                            .to_string()
                            .trim_start_matches("sha256:")
                            .to_owned(),
                    )
                })
                .collect(),
            passed: ok,
            levels: verified_levels(&verified),
        };
        let statement = kiln_attest::vsa::statement(&summary);
        let envelope = kiln_attest::dsse::sign_statement(&statement, key)
            .map_err(|e| anyhow::anyhow!("--vsa-key: {e}"))?;
        let bundle = kiln_attest::bundle::Bundle::new(envelope).to_json();
        std::fs::write(out, &bundle)
            .map_err(|e| anyhow::anyhow!("--vsa {}: {e}", out.display()))?;
        vsa_written = Some(out.clone());
    }
    match a.output {
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "image": located.image.digest.to_string(),
                "verified": ok,
                "attestations": verified.iter().map(|v| serde_json::json!({
                    "predicateType": v.statement.predicate_type,
                    "keyId": v.key_id,
                })).collect::<Vec<_>>(),
                "signatures": image_signatures.iter().map(|c| serde_json::json!({
                    "keyId": c.key_id,
                    "identity": c.identity,
                })).collect::<Vec<_>>(),
                "identities": identities,
                "rejected": failures.iter().map(|(pt, reasons)| serde_json::json!({
                    "predicateType": pt,
                    "reasons": reasons.iter().map(|r| serde_json::json!({
                        "kind": r.kind(),
                        "message": r.to_string(),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "errors": problems,
                "policy": decision.as_ref().map(kiln_policy::Decision::to_json),
                "vsa": vsa_written.as_ref().map(|p| p.display().to_string()),
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Text => {
            for v in &verified {
                println!(
                    "verified {} signed by {} for {}",
                    v.statement.predicate_type, v.key_id, located.image.digest
                );
            }
            for c in &image_signatures {
                println!(
                    "verified signature over {} by {}",
                    located.image.digest,
                    c.signer_text()
                );
            }
            for id in &identities {
                println!(
                    "signer identity {} (issuer {})",
                    id["san"].as_str().unwrap_or("?"),
                    id["issuer"].as_str().unwrap_or("?")
                );
            }
            if let Some(d) = &decision {
                println!(
                    "policy {}: kiln.verify {}",
                    d.policy_digest,
                    if d.allow { "allows" } else { "denies" }
                );
            }
            if let Some(p) = &vsa_written {
                eprintln!(
                    "wrote {} (signed VSA: {})",
                    p.display(),
                    if ok { "PASSED" } else { "FAILED" }
                );
            }
            for p in &problems {
                eprintln!("error: {p}");
            }
            if ok {
                eprintln!(
                    "{}: {} attestation(s){} verified",
                    a.image,
                    verified.len(),
                    if image_signatures.is_empty() {
                        String::new()
                    } else {
                        format!(" and {} signature(s)", image_signatures.len())
                    }
                );
            }
        }
    }
    if ok { Ok(()) } else { Err(Failure::silent(1)) }
}

/// A local path as a `file://` URI (a VSA's `policy.uri`, a detached bundle's URI).
fn policy_uri(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", abs.display())
}

/// The SLSA build level a passing verification vouches for: signed provenance from a key the
/// verifier trusts is Build L2 (the key stands for the build platform the verifier trusts);
/// signed attestations without provenance vouch for no build level.
fn verified_levels(verified: &[kiln_attest::verify::Verified]) -> Vec<String> {
    if verified
        .iter()
        .any(|v| v.statement.predicate_type == amedia::SLSA_PROVENANCE_V1)
    {
        vec!["SLSA_BUILD_LEVEL_2".to_owned()]
    } else {
        Vec::new()
    }
}

/// The `kiln.verify` input (`policy/schema/verify.json`): only verified statements are facts.
fn verify_input(
    reference: &str,
    located: &Located,
    verified: &[kiln_attest::verify::Verified],
    image_signatures: &[Checked],
    identities: &[serde_json::Value],
) -> serde_json::Value {
    let config = located
        .config
        .as_deref()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .map(|c| {
            let cfg = &c["config"];
            let strings = |v: &serde_json::Value| -> Vec<String> {
                v.as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default()
            };
            let mut ports: Vec<String> = cfg["ExposedPorts"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            ports.sort();
            serde_json::json!({
                "user": cfg["User"].as_str().unwrap_or_default(),
                "exposed_ports": ports,
                "env_names": strings(&cfg["Env"]).iter().map(|kv| kv.split('=').next().unwrap_or_default().to_owned()).collect::<Vec<_>>(),
                "entrypoint": strings(&cfg["Entrypoint"]),
                "cmd": strings(&cfg["Cmd"]),
                "workdir": cfg["WorkingDir"].as_str().unwrap_or_default(),
                "labels": cfg["Labels"].as_object().cloned().unwrap_or_default(),
            })
        });
    let find = |pt: &str| verified.iter().find(|v| v.statement.predicate_type == pt);
    let sbom = find(amedia::SPDX_DOCUMENT)
        .map(|v| kiln_attest::sbom::Summary::from_spdx(&v.statement.predicate))
        .or_else(|| {
            find(amedia::CYCLONEDX_BOM)
                .map(|v| kiln_attest::sbom::Summary::from_cyclonedx(&v.statement.predicate))
        });
    let mut key_ids: Vec<&str> = verified
        .iter()
        .map(|v| v.key_id.as_str())
        .chain(image_signatures.iter().map(|c| c.key_id.as_str()))
        .collect();
    key_ids.sort_unstable();
    key_ids.dedup();
    serde_json::json!({
        "image": {
            "reference": reference,
            "manifest_digest": located.image.digest.to_string(),
            "config": config,
        },
        "signature": {
            "verified": !verified.is_empty() || !image_signatures.is_empty(),
            "key_ids": key_ids,
            "identities": identities,
        },
        "provenance": find(amedia::SLSA_PROVENANCE_V1).map(|v| v.statement.predicate.clone()),
        "sbom": sbom,
        "attestations": verified.iter().map(|v| serde_json::json!({
            "predicate_type": v.statement.predicate_type,
            "signed": true,
        })).collect::<Vec<_>>(),
    })
}

/// What one bundle established.
#[derive(Debug, Clone)]
struct Checked {
    /// The signed statement (`None`: a sigstore message signature over the image digest).
    statement: Option<kiln_attest::verify::Verified>,
    /// sha256 of the signer's SubjectPublicKeyInfo.
    key_id: String,
    /// The certificate identity, for keyless (Fulcio) signers.
    identity: Option<serde_json::Value>,
}

impl Checked {
    fn signer_text(&self) -> String {
        match &self.identity {
            Some(id) => format!(
                "{} (issuer {})",
                id["san"].as_str().unwrap_or("?"),
                id["issuer"].as_str().unwrap_or("?")
            ),
            None => format!("key {}", self.key_id),
        }
    }
}

/// Who must have signed, and how bundles are checked.
enum Signer {
    /// kiln's own offline bundles: a DSSE envelope signed by this key.
    Key(PublicKey),
    /// Sigstore bundles against a trusted root: a key (DER SubjectPublicKeyInfo) or a
    /// certificate identity.
    Sigstore {
        root: Box<kiln_attest::sigstore::trust::TrustedRoot>,
        key: Option<Vec<u8>>,
        matchers: Option<(
            kiln_attest::sigstore::Matcher,
            kiln_attest::sigstore::Matcher,
        )>,
    },
}

impl Signer {
    fn from_args(a: &VerifyArgs) -> Result<Signer, Failure> {
        if a.trust.wants_certificate() || a.trust.trusted_root.is_some() {
            return Ok(Signer::Sigstore {
                root: Box::new(a.trust.root(false)?),
                key: a
                    .key
                    .as_deref()
                    .map(crate::sigstore::read_public_key)
                    .transpose()?,
                matchers: a.trust.matchers()?,
            });
        }
        let path = a
            .key
            .as_deref()
            .ok_or_else(|| usage("--key or --certificate-identity is required".into()))?;
        let pem = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("--key {}: {e}", path.display())))?;
        PublicKey::from_pem(&pem)
            .map(Signer::Key)
            .map_err(|e| usage(format!("--key {}: {e}", path.display())))
    }

    fn check(&self, bytes: &[u8], claims: &Claims<'_>) -> Result<Checked, Vec<Reason>> {
        match self {
            // A sigstore bundle with log entries or timestamps (cosign's, say): those are
            // verified too, against the shipped public-good root (pass --trusted-root for
            // another instance), not ignored.
            Signer::Key(key) if has_log_evidence(bytes) => {
                let root = kiln_attest::sigstore::trust::parse(
                    kiln_attest::sigstore::PUBLIC_GOOD_TRUSTED_ROOT,
                )
                .map_err(|e| {
                    vec![Reason::InvalidPolicy {
                        what: format!("shipped trusted root: {e}"),
                    }]
                })?;
                let spki = key.to_spki_der();
                Signer::Sigstore {
                    root: Box::new(root),
                    key: Some(spki),
                    matchers: None,
                }
                .check(bytes, claims)
            }
            Signer::Key(key) => {
                let policy = Policy {
                    key: key.clone(),
                    subject_digest: claims.subject_digest.to_owned(),
                    predicate_type: claims.predicate_type.map(str::to_owned),
                    builder_id: claims.builder_id.map(str::to_owned),
                    source_uri: claims.source_uri.map(str::to_owned),
                };
                kiln_attest::verify::verify_bundle(bytes, &policy).map(|v| Checked {
                    key_id: v.key_id.clone(),
                    statement: Some(v),
                    identity: None,
                })
            }
            Signer::Sigstore {
                root,
                key,
                matchers,
            } => {
                use kiln_attest::sigstore::Identity;
                let identity = match (key, matchers) {
                    (Some(spki), _) => Identity::KeyPub(spki),
                    (None, Some((identity, issuer))) => Identity::CertMatching { identity, issuer },
                    (None, None) => {
                        return Err(vec![Reason::InvalidPolicy {
                            what: "no key and no certificate identity".into(),
                        }]);
                    }
                };
                let v = kiln_attest::verify::verify_sigstore_bundle(bytes, claims, root, identity)?;
                Ok(Checked {
                    statement: v.statement.map(|statement| kiln_attest::verify::Verified {
                        statement,
                        key_id: v.key_id.clone(),
                    }),
                    key_id: v.key_id,
                    identity: v.identity,
                })
            }
        }
    }
}

/// Whether `bytes` parse as a sigstore bundle that carries transparency-log entries or RFC
/// 3161 timestamps (kiln's own offline bundles carry neither).
fn has_log_evidence(bytes: &[u8]) -> bool {
    kiln_attest::sigstore::bundle::parse(bytes).is_ok_and(|b| {
        !b.verification_material.tlog_entries.is_empty()
            || !b.verification_material.rfc3161_timestamps.is_empty()
    })
}

/// Verifies one bundle with `check`. `--builder-id` and `--source-uri` are claims of the
/// provenance: an SBOM is checked for signature, subject and (if asked) predicate type only,
/// and a bundle that turns out to hold provenance is checked again against every claim.
fn check_bundle(
    claims: &Claims<'_>,
    check: impl Fn(&Claims<'_>) -> Result<Checked, Vec<Reason>>,
) -> Result<Checked, Vec<Reason>> {
    let provenance_claims = claims.builder_id.is_some() || claims.source_uri.is_some();
    if claims.predicate_type.is_some() || !provenance_claims {
        return check(claims);
    }
    let relaxed = Claims {
        predicate_type: None,
        builder_id: None,
        source_uri: None,
        ..*claims
    };
    let v = check(&relaxed)?;
    let is_provenance = v
        .statement
        .as_ref()
        .is_some_and(|s| s.statement.predicate_type == amedia::SLSA_PROVENANCE_V1);
    if is_provenance { check(claims) } else { Ok(v) }
}

/// `kiln inspect` flags.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image, named as for `kiln verify`.
    image: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: OutputFormat,
    #[command(flatten)]
    registry: RegistryAccess,
}

/// Summaries of the image's attestations (signed or not; `kiln verify` checks signatures).
pub fn inspect(root: &Path, a: InspectArgs) -> Result<(), Failure> {
    let located = find(root, &a.image, &a.registry)?;
    let mut docs: Vec<(String, serde_json::Value, bool)> = Vec::new();
    for (_, bytes) in &located.statements {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
            let pt = v["predicateType"].as_str().unwrap_or_default().to_owned();
            docs.push((pt, v, false));
        }
    }
    for (_, bytes) in &located.bundles {
        if let Ok(b) = kiln_attest::bundle::Bundle::from_json(bytes)
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b.envelope.payload)
        {
            let pt = v["predicateType"].as_str().unwrap_or_default().to_owned();
            if let Some(d) = docs.iter_mut().find(|d| d.0 == pt) {
                d.2 = true;
            } else {
                docs.push((pt, v, true));
            }
        }
    }
    let summaries: Vec<serde_json::Value> = docs
        .iter()
        .map(|(pt, v, signed)| summary(pt, &v["predicate"], *signed))
        .collect();
    match a.format {
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "image": located.image.digest.to_string(),
                "attestations": summaries,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Text => {
            println!("image {}", located.image.digest);
            if summaries.is_empty() {
                println!("  no attestations");
            }
            for s in &summaries {
                println!(
                    "  {} ({})",
                    s["predicateType"].as_str().unwrap_or_default(),
                    if s["signed"] == true {
                        "signed"
                    } else {
                        "unsigned"
                    }
                );
                if let Some(obj) = s["summary"].as_object() {
                    for (k, v) in obj {
                        let shown = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        println!("    {k}: {shown}");
                    }
                }
            }
        }
    }
    Ok(())
}

fn summary(pt: &str, p: &serde_json::Value, signed: bool) -> serde_json::Value {
    let s = match pt {
        amedia::SLSA_PROVENANCE_V1 => {
            let bd = &p["buildDefinition"];
            let deps: Vec<String> = bd["resolvedDependencies"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| {
                            format!(
                                "{}@sha256:{}",
                                d["uri"].as_str().unwrap_or_default(),
                                d["digest"]["sha256"].as_str().unwrap_or_default()
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "builder": p["runDetails"]["builder"]["id"],
                "buildType": bd["buildType"],
                "invocationId": p["runDetails"]["metadata"]["invocationId"],
                "startedOn": p["runDetails"]["metadata"]["startedOn"],
                "finishedOn": p["runDetails"]["metadata"]["finishedOn"],
                "dependencies": deps,
            })
        }
        amedia::SPDX_DOCUMENT => serde_json::json!({
            "spdxVersion": p["spdxVersion"],
            "packages": p["packages"].as_array().map_or(0, Vec::len),
            "files": p["files"].as_array().map_or(0, Vec::len),
        }),
        amedia::CYCLONEDX_BOM => {
            let comps = p["components"].as_array();
            let files = comps.map_or(0, |c| c.iter().filter(|c| c["type"] == "file").count());
            serde_json::json!({
                "specVersion": p["specVersion"],
                "components": comps.map_or(0, Vec::len) - files,
                "files": files,
            })
        }
        _ => serde_json::json!({}),
    };
    serde_json::json!({"predicateType": pt, "signed": signed, "summary": s})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        attest: AttestArgs,
    }

    /// (provenance on, spdx, cyclonedx) for these flags.
    fn made(flags: &[&str]) -> (bool, bool, bool) {
        let f =
            Flags::try_parse_from(std::iter::once("kiln").chain(flags.iter().copied())).unwrap();
        let o = options(&f.attest).unwrap();
        (o.provenance.is_some(), o.spdx, o.cyclonedx)
    }

    #[test]
    fn attest_and_sbom_flags_combine_as_buildx_does() {
        assert_eq!(made(&[]), (true, true, true));
        assert_eq!(made(&["--attest", "sbom=false"]), (true, false, false));
        assert_eq!(
            made(&["--attest", "type=sbom,disabled=true"]),
            (true, false, false)
        );
        assert_eq!(made(&["--attest", "provenance=false"]), (false, true, true));
        assert_eq!(made(&["--attest", "none"]), (false, false, false));
        assert_eq!(made(&["--sbom", "spdx"]), (true, true, false));
        assert_eq!(made(&["--sbom", "none"]), (true, false, false));
        assert_eq!(
            made(&["--sbom", "cyclonedx", "--attest", "sbom=false"]),
            (true, false, false)
        );
        assert_eq!(
            made(&["--sbom", "none", "--attest", "sbom=true"]),
            (true, false, false)
        );
        assert_eq!(
            made(&["--attest", "provenance=mode=max", "--attest", "sbom=false"]),
            (true, false, false)
        );
    }
}
