//! Attestations of a build: SLSA provenance and SBOMs about the exported image, signed when
//! the build has a key, attached to the image and optionally written as files.
//!
//! The statements themselves are made by `kiln-attest` from plain data; this module gathers
//! that data from the build (graph, request, sandbox records), reads the final file system
//! for the SBOM catalogers ([`tree::LayerTree`]), signs, and attaches ([`attach`]).

pub mod attach;
pub mod listing;
pub mod locate;
pub mod provenance;
pub mod tree;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_attest::keys::SigningKey;
use kiln_attest::sbom::{self, DocumentInfo};
use kiln_attest::slsa::{self, ProvenanceInput};
use kiln_attest::statement::{Statement, Subject};
use kiln_attest::{bundle, dsse, media as amedia};

pub use attach::{Attached, Attestation};

use crate::Digest;

/// `--attest provenance=mode=…`: how much of the build the provenance tells.
pub use kiln_attest::slsa::Mode as ProvenanceMode;

/// What a build attests, and with which key.
#[derive(Clone)]
pub struct AttestOptions {
    /// SLSA provenance, and in which mode (`None`: no provenance).
    pub provenance: Option<ProvenanceMode>,
    /// An SPDX 2.3 SBOM.
    pub spdx: bool,
    /// A CycloneDX 1.6 SBOM.
    pub cyclonedx: bool,
    /// The builder's signing key. Held by kiln only: no step ever sees it.
    pub signer: Option<Arc<SigningKey>>,
    /// `runDetails.builder.id`.
    pub builder_id: String,
    /// `--attest-dest`: also write the statements (and bundles) as files here.
    pub dest: Option<PathBuf>,
}

impl fmt::Debug for AttestOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestOptions")
            .field("provenance", &self.provenance)
            .field("spdx", &self.spdx)
            .field("cyclonedx", &self.cyclonedx)
            .field("signed", &self.signer.is_some())
            .field("builder_id", &self.builder_id)
            .field("dest", &self.dest)
            .finish()
    }
}

/// The builder id recorded when none is configured.
pub const DEFAULT_BUILDER_ID: &str = "https://example.invalid/kiln/builders/embedded";

impl Default for AttestOptions {
    /// As BuildKit: provenance in `min` mode; and (unlike BuildKit) both SBOMs, unsigned.
    fn default() -> Self {
        Self {
            provenance: Some(ProvenanceMode::Min),
            spdx: true,
            cyclonedx: true,
            signer: None,
            builder_id: DEFAULT_BUILDER_ID.into(),
            dest: None,
        }
    }
}

impl AttestOptions {
    /// Nothing attested (`--attest none`).
    pub fn none() -> Self {
        Self {
            provenance: None,
            spdx: false,
            cyclonedx: false,
            ..Self::default()
        }
    }

    /// Whether anything is attested.
    pub fn any(&self) -> bool {
        self.provenance.is_some() || self.spdx || self.cyclonedx
    }
}

/// Errors making attestations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// Reading the final file system for the SBOM failed.
    #[error("SBOM: {0}")]
    Sbom(#[from] sbom::SbomError),
    /// Writing `--attest-dest` failed.
    #[error("writing attestation {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A statement asked for was not made (its worker failed).
    #[error("the {0} attestation could not be made")]
    NotMade(&'static str),
    /// The signing key refused to sign (see [`kiln_attest::keys::SigningKey::check`]).
    #[error("signing the {kind} statement: {source}")]
    Sign {
        /// The statement's predicate type.
        kind: &'static str,
        /// The key's error.
        source: kiln_attest::keys::KeyError,
    },
    /// An OCI document could not be serialised.
    #[error(transparent)]
    Encode(#[from] crate::oci::types::TypesError),
}

/// What the attestations are about, and what they say.
pub struct Inputs<'a> {
    /// The image manifest's digest (the statements' subject).
    pub manifest: Digest,
    /// The subject's name (the first `-t` name, else the digest).
    pub name: String,
    /// The final file system, catalogued (see [`catalog`]); `None` when no SBOM is asked for.
    pub sbom: Option<&'a sbom::Sbom>,
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
    /// The provenance's data.
    pub provenance: ProvenanceInput,
}

impl fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inputs")
            .field("manifest", &self.manifest)
            .field("name", &self.name)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// The version string tools put in documents (`kiln-0.1.0`).
pub fn tool_name() -> String {
    format!("kiln-{}", env!("CARGO_PKG_VERSION"))
}

/// An SBOM of at least this many files and packages has its statements made on threads of
/// their own ([`produce`]).
const THREADED_SBOM_ENTRIES: usize = 500;

/// Makes the statements `opts` asks for and signs them with `opts.signer`.
pub fn produce(opts: &AttestOptions, inputs: &Inputs<'_>) -> Result<Vec<Attestation>, AttestError> {
    let subject = vec![Subject {
        name: inputs.name.clone(),
        digest: [("sha256".to_owned(), inputs.manifest.hex().to_owned())].into(),
    }];
    let info = DocumentInfo {
        name: inputs.name.clone(),
        subject_digest: inputs.manifest.to_string(),
        created_epoch: inputs.epoch,
        tool: tool_name(),
    };
    let sbom = inputs.sbom;
    // What to make, in the order the attestations are listed.
    let mut kinds: Vec<&'static str> = Vec::new();
    if opts.provenance.is_some() {
        kinds.push(amedia::SLSA_PROVENANCE_V1);
    }
    if sbom.is_some() && opts.spdx {
        kinds.push(amedia::SPDX_DOCUMENT);
    }
    if sbom.is_some() && opts.cyclonedx {
        kinds.push(amedia::CYCLONEDX_BOM);
    }
    // Render, serialise and sign each statement: on a thread of its own when the SBOM is
    // large (its documents are megabytes of JSON), else one after the other on this thread.
    // A small image's statements take about 0.2 ms each, nearly all of it the signature;
    // three threads more than the cores then wait on the scheduler for longer than that
    // (measured on 2 cores: the example app's attestations 0.65 ms in sequence, 1.1 to 1.5
    // ms on threads, while its OCI archive is written beside them).
    let threaded = sbom.is_some_and(|s| s.files.len() + s.packages.len() >= THREADED_SBOM_ENTRIES);
    let make = |kind: &'static str| -> Result<Attestation, AttestError> {
        let not_made = || AttestError::NotMade(kind);
        // The SBOM documents come as canonical bytes, written without a `Value` tree (for an
        // image of many files, building and dropping that tree was most of their cost).
        let statement = match kind {
            amedia::SLSA_PROVENANCE_V1 => Statement::new(
                subject.clone(),
                kind,
                slsa::predicate(&inputs.provenance, opts.provenance.ok_or_else(not_made)?),
            )
            .to_json(),
            amedia::SPDX_DOCUMENT => Statement::to_json_with_predicate(
                &subject,
                kind,
                &sbom::spdx_json(sbom.ok_or_else(not_made)?, &info),
            ),
            _ => Statement::to_json_with_predicate(
                &subject,
                kind,
                &sbom::cyclonedx_json(sbom.ok_or_else(not_made)?, &info),
            ),
        };
        let bundle = match opts.signer.as_ref() {
            Some(key) => {
                let envelope = dsse::sign(amedia::DSSE_PAYLOAD_TYPE, &statement, key)
                    .map_err(|source| AttestError::Sign { kind, source })?;
                Some(
                    bundle::Bundle {
                        public_key_hint: Some(key.public_key().key_id()),
                        envelope,
                    }
                    .to_json(),
                )
            }
            None => None,
        };
        // Hashed here, on this statement's thread.
        Ok(Attestation::new(kind.to_owned(), statement, bundle))
    };
    let made: Vec<Result<Attestation, AttestError>> = if threaded {
        std::thread::scope(|scope| {
            let handles: Vec<_> = kinds
                .iter()
                .map(|kind| (kind, scope.spawn(move || make(kind))))
                .collect();
            handles
                .into_iter()
                .map(|(kind, h)| h.join().unwrap_or(Err(AttestError::NotMade(kind))))
                .collect()
        })
    } else {
        kinds.iter().map(|kind| make(kind)).collect()
    };
    // Fail closed: an attestation asked for and not made fails the build.
    made.into_iter().collect()
}

/// A record for the store's SBOM cache: (key, bytes).
pub type CacheRecord = (String, Vec<u8>);

/// A signed SBOM statement as the store caches it: the content store blobs of the statement
/// and of its bundle (the attestation manifest's layers), which are read back from there. A
/// blob GC removed makes the record a miss.
#[derive(serde::Serialize, serde::Deserialize)]
struct CachedStatement {
    statement: Digest,
    bundle: Option<Digest>,
}

impl CachedStatement {
    /// The attestation, if the content store still holds its blobs.
    fn load(&self, store: &crate::store::Store, kind: &str) -> Option<Attestation> {
        let statement = store.content.read_blob(&self.statement).ok()?;
        let bundle = match &self.bundle {
            Some(d) => Some(store.content.read_blob(d).ok()?),
            None => None,
        };
        Some(Attestation::stored(
            kind.to_owned(),
            statement,
            bundle,
            (self.statement, self.bundle),
        ))
    }
}

/// The store key of a cached SBOM statement of `kind` (see [`produce_cached`]).
fn statement_key(
    opts: &AttestOptions,
    manifest: &Digest,
    name: &str,
    epoch: u64,
    catalog_key: Option<&str>,
    kind: &str,
) -> Option<String> {
    let signer = opts
        .signer
        .as_ref()
        .map_or_else(|| "unsigned".to_owned(), |k| k.public_key().key_id());
    catalog_key.map(|ck| {
        let text = format!(
            "kiln-sbom-statement v2 {}\n{kind}\n{ck}\n{manifest}\n{name}\n{epoch}\n{signer}\n",
            env!("CARGO_PKG_VERSION"),
        );
        Digest::of(text.as_bytes()).hex()
    })
}

/// The SBOM kinds `opts` asks for.
fn sbom_kinds(opts: &AttestOptions) -> impl Iterator<Item = &'static str> {
    [
        (opts.spdx, amedia::SPDX_DOCUMENT),
        (opts.cyclonedx, amedia::CYCLONEDX_BOM),
    ]
    .into_iter()
    .filter_map(|(on, kind)| on.then_some(kind))
}

/// True when every SBOM statement `opts` asks for is cached for these inputs (and its blobs
/// are in the content store): [`produce_cached`] will not need the catalog.
pub fn sbom_statements_cached(
    store: &crate::store::Store,
    opts: &AttestOptions,
    manifest: &Digest,
    name: &str,
    epoch: u64,
    catalog_key: Option<&str>,
) -> bool {
    sbom_kinds(opts).all(|kind| {
        statement_key(opts, manifest, name, epoch, catalog_key, kind)
            .and_then(|key| store.meta.sbom(&key).ok().flatten())
            .and_then(|bytes| serde_json::from_slice::<CachedStatement>(&bytes).ok())
            .is_some_and(|c| {
                store.content.contains(&c.statement)
                    && c.bundle.is_none_or(|b| store.content.contains(&b))
            })
    })
}

/// Like [`produce`], but SBOM statements (deterministic: the same catalog, image, name, epoch
/// and key give the same bytes, RFC 6979 / Ed25519 signatures included) come from the store
/// when a build with the same inputs made them before. `catalog_key` is the chain's
/// [`catalog_key`]. `inputs.sbom` may be `None` only when [`sbom_statements_cached`] said
/// every SBOM statement is cached; an SBOM statement that can be neither loaded nor made fails.
/// Returns the attestations and the fresh (key, record) pairs to stage.
pub fn produce_cached(
    store: &crate::store::Store,
    opts: &AttestOptions,
    inputs: &Inputs<'_>,
    catalog_key: Option<&str>,
) -> Result<(Vec<Attestation>, Vec<CacheRecord>), AttestError> {
    let key_of = |kind: &str| {
        statement_key(
            opts,
            &inputs.manifest,
            &inputs.name,
            inputs.epoch,
            catalog_key,
            kind,
        )
    };
    let mut rest = opts.clone();
    let mut cached = Vec::new();
    for kind in sbom_kinds(opts) {
        let wanted = if kind == amedia::SPDX_DOCUMENT {
            &mut rest.spdx
        } else {
            &mut rest.cyclonedx
        };
        let Some(key) = key_of(kind) else { continue };
        if let Some(bytes) = store.meta.sbom(&key)?
            && let Ok(c) = serde_json::from_slice::<CachedStatement>(&bytes)
            && let Some(a) = c.load(store, kind)
        {
            cached.push(a);
            *wanted = false;
        }
    }
    // Fail closed: an SBOM asked for, not cached, and no catalog to make it from.
    if inputs.sbom.is_none()
        && let Some(kind) = sbom_kinds(&rest).next()
    {
        return Err(AttestError::NotMade(kind));
    }
    let mut made = produce(&rest, inputs)?;
    let mut fresh = Vec::new();
    for a in &made {
        if a.predicate_type == amedia::SLSA_PROVENANCE_V1 {
            continue;
        }
        let Some(key) = key_of(&a.predicate_type) else {
            continue;
        };
        // The blobs themselves are written by `attach`, before these records are committed.
        let (statement, bundle) = a.digests();
        if let Ok(bytes) = serde_json::to_vec(&CachedStatement { statement, bundle }) {
            fresh.push((key, bytes));
        }
    }
    made.extend(cached);
    let rank = |t: &str| match t {
        amedia::SLSA_PROVENANCE_V1 => 0,
        amedia::SPDX_DOCUMENT => 1,
        _ => 2,
    };
    made.sort_by_key(|a| rank(&a.predicate_type));
    Ok((made, fresh))
}

/// The key of a layer chain's SBOM catalog in the store: the chain (layer directories are
/// immutable, so the same chain is the same file system) and the catalogers' version.
pub fn catalog_key(chain: &[crate::store::SnapshotId]) -> String {
    let mut text = format!("kiln-sbom-catalog {}\n", env!("CARGO_PKG_VERSION"));
    for id in chain {
        text.push_str(id.as_str());
        text.push('\n');
    }
    Digest::of(text.as_bytes()).hex()
}

/// Records a catalog made now, to stage with the build's records: (key, JSON) for the SBOM
/// table (the chain's catalog, and the per-layer facts it learned).
pub type FreshCatalog = Vec<(String, Vec<u8>)>;

/// The layers a build made, for its catalog.
#[derive(Debug, Clone, Default)]
pub struct MadeNow {
    /// Their ids (directory names). Their listings and file facts are not kept: they are
    /// likely never seen again (a `--no-cache` build, a step whose input changed).
    pub ids: std::collections::BTreeSet<String>,
    /// By layer id, the files a COPY step wrote from a client context with their known
    /// (sha256, size) ([`crate::ops::OpContext::copied_digests`]): with the SHA-1 the store
    /// knows for that content, the catalog does not read them.
    pub copied: std::collections::BTreeMap<String, crate::ops::CopiedDigests>,
}

impl From<std::collections::BTreeSet<String>> for MadeNow {
    fn from(ids: std::collections::BTreeSet<String>) -> Self {
        Self {
            ids,
            copied: Default::default(),
        }
    }
}

/// The catalog of `layers` from the store's cache (by `key`), else made now, reusing what is
/// known about each layer's files; a fresh one comes back with the records to stage. Facts
/// about the files of `made_now` layers (this build's) are not kept.
pub fn catalog_cached(
    store: &crate::store::Store,
    key: &str,
    layers: Vec<PathBuf>,
    made_now: MadeNow,
) -> Result<(sbom::Sbom, FreshCatalog), AttestError> {
    if let Some(json) = store.meta.sbom(key)?
        && let Ok(sbom) = serde_json::from_slice::<sbom::Sbom>(&json)
    {
        return Ok((sbom, Vec::new()));
    }
    let (sbom, mut fresh) = catalog_with_facts(Some(store), layers, made_now)?;
    if let Ok(json) = serde_json::to_vec(&sbom) {
        fresh.push((key.to_owned(), json));
    }
    Ok((sbom, fresh))
}

/// Catalogs the final file system (the layer directories `layers`, bottom first) for the SBOM.
/// It needs no image digest, so the builder runs it while the layers are being compressed.
pub fn catalog(layers: Vec<PathBuf>) -> Result<sbom::Sbom, AttestError> {
    Ok(catalog_with_facts(None, layers, MadeNow::default())?.0)
}

/// [`catalog`], with the per-layer file facts of `store` (a layer directory's name is its id):
/// files of layers catalogued before are neither read nor hashed again.
fn catalog_with_facts(
    store: Option<&crate::store::Store>,
    layers: Vec<PathBuf>,
    made_now: MadeNow,
) -> Result<(sbom::Sbom, FreshCatalog), AttestError> {
    let MadeNow {
        ids: made_now,
        copied,
    } = made_now;
    let ids: Vec<String> = layers
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    // Each layer's own listing: kept in the store for layers the store keeps, made now for
    // the others (and for this build's layers, which are likely never seen again).
    let mut listings = Vec::with_capacity(layers.len());
    let mut fresh_listings = Vec::new();
    for (path, id) in layers.iter().zip(&ids) {
        let transient = made_now.contains(id);
        let kept = store
            .filter(|_| !transient)
            .and_then(|s| s.meta.sbom(&listing::listing_key(id)).ok().flatten())
            .and_then(|json| serde_json::from_slice::<listing::Listing>(&json).ok());
        let l = match kept {
            Some(l) => l,
            None => {
                let l = listing::list(path).map_err(|e| sbom::SbomError::Entries {
                    source: std::io::Error::other(e),
                })?;
                if store.is_some()
                    && !transient
                    && let Ok(json) = serde_json::to_vec(&l)
                {
                    fresh_listings.push((listing::listing_key(id), json));
                }
                l
            }
        };
        listings.push(l);
    }
    let refs: Vec<&listing::Listing> = listings.iter().collect();
    let tree = tree::LayerTree::from_listings(crate::fsview::LayerView::new(layers), &refs);
    drop(refs);
    drop(listings);
    let mut facts = tree::LayerFacts::new(&tree, ids, made_now, |id| {
        store.and_then(|s| s.meta.sbom(&tree::facts_key(id)).ok().flatten())
    });
    for (id, files) in &copied {
        facts.seed(id, copied_facts(files));
    }
    let sbom = sbom::catalog_with(&tree, &mut facts)?;
    let mut fresh = facts.fresh();
    fresh.extend(fresh_listings);
    Ok((sbom, fresh))
}

/// The catalog facts of the files a COPY wrote with their content known (the file-hash cache
/// hashed them with SHA-256 and SHA-1 as the cache key's walk read them): not read again.
fn copied_facts(files: &crate::ops::CopiedDigests) -> Vec<(String, sbom::FileFacts)> {
    files
        .iter()
        .map(|(path, c)| {
            (
                path.clone(),
                sbom::FileFacts {
                    sha256: c.sha256.hex(),
                    sha1: hex::encode(c.sha1),
                    size: c.size,
                    scan: None,
                },
            )
        })
        .collect()
}

/// The file name stem of an attestation in `--attest-dest`.
pub fn file_stem(predicate_type: &str) -> &'static str {
    match predicate_type {
        amedia::SLSA_PROVENANCE_V1 => "provenance",
        amedia::SPDX_DOCUMENT => "sbom.spdx",
        amedia::CYCLONEDX_BOM => "sbom.cdx",
        _ => "attestation",
    }
}

/// Writes each statement as `<stem>.statement.json` and, when signed, its bundle as
/// `<stem>.sigstore.json` and its envelope as `<stem>.intoto.jsonl`, into `dir`.
pub fn write_dest(dir: &Path, attestations: &[Attestation]) -> Result<Vec<PathBuf>, AttestError> {
    let werr = |path: &Path| {
        let path = path.to_owned();
        move |source| AttestError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(werr(dir))?;
    let mut written = Vec::new();
    for a in attestations {
        let stem = file_stem(&a.predicate_type);
        let p = dir.join(format!("{stem}.statement.json"));
        std::fs::write(&p, &a.statement).map_err(werr(&p))?;
        written.push(p);
        if let Some(b) = &a.bundle {
            let p = dir.join(format!("{stem}.sigstore.json"));
            std::fs::write(&p, b).map_err(werr(&p))?;
            written.push(p);
            if let Ok(parsed) = bundle::Bundle::from_json(b) {
                let p = dir.join(format!("{stem}.intoto.jsonl"));
                std::fs::write(&p, bundle::to_intoto_jsonl(&[parsed.envelope]))
                    .map_err(werr(&p))?;
                written.push(p);
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cached_sbom_statements_need_no_catalog_and_a_missing_blob_is_a_miss() {
        let root = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&root.path().join("store")).unwrap();
        let layer = root.path().join("layer");
        std::fs::create_dir_all(&layer).unwrap();
        std::fs::write(layer.join("app"), b"hello").unwrap();
        let (sbom, _) =
            catalog_cached(&store, &"c".repeat(64), vec![layer], Default::default()).unwrap();
        let key = SigningKey::generate(kiln_attest::keys::Algorithm::EcdsaP256);
        let opts = AttestOptions {
            provenance: None,
            signer: Some(Arc::new(key)),
            ..AttestOptions::default()
        };
        fn inputs(sbom: Option<&sbom::Sbom>) -> Inputs<'_> {
            Inputs {
                manifest: Digest::of(b"manifest"),
                name: "app:1".into(),
                sbom,
                epoch: 0,
                provenance: ProvenanceInput::default(),
            }
        }
        let ck = Some("chain");
        let cached = |store: &crate::store::Store| {
            sbom_statements_cached(store, &opts, &Digest::of(b"manifest"), "app:1", 0, ck)
        };
        assert!(!cached(&store));
        let (made, fresh) = produce_cached(&store, &opts, &inputs(Some(&sbom)), ck).unwrap();
        assert_eq!(made.len(), 2);
        assert_eq!(fresh.len(), 2, "both SBOM statements to cache");
        // What `attach` does before the records are committed: the blobs are stored.
        attach::attach(
            &store,
            &crate::oci::types::Descriptor::of_bytes(crate::oci::media::OCI_MANIFEST, b"m"),
            &made,
        )
        .unwrap();
        let mut staged = crate::store::StagedRecords::default();
        staged.sboms.extend(fresh);
        store.meta.commit(&staged).unwrap();
        assert!(cached(&store));

        // Without a catalog, from the cache: the same bytes, signatures included.
        let (again, fresh) = produce_cached(&store, &opts, &inputs(None), ck).unwrap();
        assert!(fresh.is_empty());
        for (a, b) in made.iter().zip(&again) {
            assert_eq!(a.predicate_type, b.predicate_type);
            assert_eq!(a.statement, b.statement);
            assert_eq!(a.bundle, b.bundle);
            assert_eq!(a.digests(), b.digests());
            assert_eq!(a.digests().0, Digest::of(&b.statement));
        }

        // A statement blob GC removed: not cached any more, and without a catalog the SBOM
        // fails rather than going missing.
        let gone = made[0].digests().0;
        std::fs::remove_file(store.content.path(&gone)).unwrap();
        assert!(!cached(&store));
        assert!(matches!(
            produce_cached(&store, &opts, &inputs(None), ck),
            Err(AttestError::NotMade(_))
        ));
        let (remade, _) = produce_cached(&store, &opts, &inputs(Some(&sbom)), ck).unwrap();
        assert_eq!(remade[0].statement, made[0].statement);
    }

    #[test]
    fn a_cached_catalog_is_the_catalog() {
        let root = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&root.path().join("store")).unwrap();
        let layer = root.path().join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(
            layer.join("etc/os-release"),
            "ID=debian\nVERSION_ID=\"12\"\n",
        )
        .unwrap();
        std::fs::write(layer.join("app"), b"hello").unwrap();
        let key = "k".repeat(64);
        let (first, fresh) =
            catalog_cached(&store, &key, vec![layer.clone()], Default::default()).unwrap();
        assert!(
            fresh.iter().any(|(k, _)| *k == key),
            "a fresh catalog to stage"
        );
        let mut staged = crate::store::StagedRecords::default();
        staged.sboms.extend(fresh);
        store.meta.commit(&staged).unwrap();
        // The directory changes; the cached catalog (same chain key) is what comes back.
        std::fs::write(layer.join("app"), b"changed").unwrap();
        let (second, fresh) =
            catalog_cached(&store, &key, vec![layer], Default::default()).unwrap();
        assert!(fresh.is_empty(), "served from the cache");
        assert_eq!(first, second);
        assert_eq!(first.distro.as_ref().map(|d| d.id.as_str()), Some("debian"));
        assert_eq!(first.files.len(), 2);
    }

    #[test]
    fn files_of_a_known_layer_are_not_read_again_and_the_catalog_is_the_same() {
        let root = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&root.path().join("store")).unwrap();
        let base = root.path().join("0123abcd");
        let app = root.path().join("4567ef01");
        std::fs::create_dir_all(base.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", base.join("bin/busybox"))
            .or_else(|_| {
                std::fs::write(base.join("bin/busybox"), b"\x7fELF not really").map(|()| 0)
            })
            .unwrap();
        std::fs::set_permissions(
            base.join("bin/busybox"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(base.join("base.txt"), b"base").unwrap();
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("app.txt"), b"app").unwrap();
        let layers = vec![base.clone(), app.clone()];

        let plain = catalog(layers.clone()).unwrap();
        // The app layer is this build's own: its facts are not kept.
        let made_now: std::collections::BTreeSet<String> = ["4567ef01".to_owned()].into();
        let (learned, fresh) =
            catalog_with_facts(Some(&store), layers.clone(), made_now.clone().into()).unwrap();
        assert_eq!(plain, learned, "facts change nothing in the result");
        let keys: Vec<&str> = fresh.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["facts:0123abcd", "listing:0123abcd"]);
        assert_eq!(plain.files.len(), 3);
        let mut staged = crate::store::StagedRecords::default();
        staged.sboms.extend(fresh);
        store.meta.commit(&staged).unwrap();

        // Rewrite a file of the known base layer behind the cache's back: the catalog with
        // facts still reports what the layer held (it did not read the file again), which is
        // how a layer that really never changes is served.
        std::fs::write(base.join("base.txt"), b"tampered").unwrap();
        // The same for its listing: a file added behind the cache's back is not walked.
        std::fs::write(base.join("added.txt"), b"added").unwrap();
        let (reused, fresh) =
            catalog_with_facts(Some(&store), layers.clone(), made_now.into()).unwrap();
        assert_eq!(reused, plain);
        assert!(fresh.is_empty(), "nothing new was learned");
        assert_ne!(
            catalog(layers).unwrap(),
            plain,
            "without facts, the file is read"
        );
    }

    #[test]
    fn files_a_copy_wrote_with_known_digests_are_not_read_and_the_catalog_is_the_same() {
        use sha1::Digest as _;
        let root = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&root.path().join("store")).unwrap();
        let known = |bytes: &[u8]| crate::fileop::KnownContent {
            source: crate::fileop::FileKey([0; 7]),
            sha256: Digest::of(bytes),
            sha1: sha1::Sha1::digest(bytes).into(),
            size: bytes.len() as u64,
        };
        // The COPY knew a, b and d (the file-hash cache hashed them); c is not from it.
        let copied: std::collections::BTreeMap<String, crate::fileop::KnownContent> = [
            ("/ctx/a.txt".to_owned(), known(b"alpha")),
            ("/ctx/b.txt".to_owned(), known(b"bravo")),
            ("/ctx/d.txt".to_owned(), known(b"delta")),
        ]
        .into();
        let layer = root.path().join("fedcba98");
        std::fs::create_dir_all(layer.join("ctx")).unwrap();
        for (name, bytes) in [
            ("a.txt", &b"alpha"[..]),
            ("b.txt", b"bravo"),
            ("c.txt", b"charlie"),
            ("d.txt", b"delta"),
        ] {
            std::fs::write(layer.join("ctx").join(name), bytes).unwrap();
        }
        let layers = vec![layer.clone()];
        let plain = catalog(layers.clone()).unwrap();
        let made_now = MadeNow {
            ids: ["fedcba98".to_owned()].into(),
            copied: [("fedcba98".to_owned(), std::sync::Arc::new(copied))].into(),
        };
        let (seeded, fresh) =
            catalog_with_facts(Some(&store), layers.clone(), made_now.clone()).unwrap();
        assert_eq!(seeded, plain, "known digests change nothing in the result");
        assert!(
            fresh.is_empty(),
            "a transient layer's facts are not kept: {fresh:?}"
        );

        // Proof that the copied files were not read: rewritten behind the catalog's back
        // (same size), the catalog still reports the digests the copy knew, while c (read)
        // shows the change.
        std::fs::write(layer.join("ctx/a.txt"), b"ALPHA").unwrap();
        std::fs::write(layer.join("ctx/c.txt"), b"CHARLIE").unwrap();
        let (seeded, _) = catalog_with_facts(Some(&store), layers.clone(), made_now).unwrap();
        let file = |sbom: &sbom::Sbom, path: &str| {
            let f = sbom.files.iter().find(|f| f.path == path).unwrap();
            (f.sha256.clone(), f.sha1.clone())
        };
        let a = known(b"alpha");
        assert_eq!(
            file(&seeded, "/ctx/a.txt"),
            (a.sha256.hex(), hex::encode(a.sha1))
        );
        assert_eq!(file(&seeded, "/ctx/a.txt"), file(&plain, "/ctx/a.txt"));
        assert_eq!(file(&seeded, "/ctx/c.txt").0, Digest::of(b"CHARLIE").hex());
        // Without the copy's digests, every file is read.
        let plain_after = catalog(layers).unwrap();
        assert_eq!(
            file(&plain_after, "/ctx/a.txt").0,
            Digest::of(b"ALPHA").hex()
        );
        assert_eq!(plain.files.len(), 4);
    }
}
