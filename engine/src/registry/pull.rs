//! Pulling: manifest (an index resolved to the build platform), config and layers into the
//! content store.
//!
//! Every document and blob is hashed while it streams and must match the digest it is named
//! by (the reference's digest, the registry's `Docker-Content-Digest`, or the parent
//! descriptor); a mismatch stores nothing. Blobs are written layers first, then config, then
//! manifest, so the store never holds a manifest whose blobs are missing. An interrupted blob
//! download is resumed with a `Range` request (up to [`ATTEMPTS`] tries).

use std::io::Read;

use ureq::SendBody;
use ureq::http::Method;

use super::client::status_error;
use super::{Client, MANIFEST_ACCEPT, MAX_MANIFEST_SIZE, Reference, RegistryError};
use crate::Digest;
use crate::frontend::convert::ResolvedImage;
use crate::oci::import::MAX_JSON_SIZE;
use crate::oci::media;
use crate::oci::types::{Descriptor, ImageConfig, Index, Manifest, Platform};
use crate::store::Store;

/// Tries per blob download.
pub const ATTEMPTS: usize = 3;

/// A manifest (or index) as fetched: bytes verified against `digest`.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
    /// The media type the registry gave (or the document's own).
    pub media_type: String,
}

/// Fetches the manifest `r` names (by digest or tag), verified.
pub fn fetch_manifest(client: &Client, r: &Reference) -> Result<FetchedManifest, RegistryError> {
    let what = format!("manifest {r}");
    let mut resp = client.request(
        r,
        "pull",
        &[],
        Method::GET,
        &format!("manifests/{}", r.manifest_ref()),
        &[("Accept", MANIFEST_ACCEPT)],
        SendBody::none(),
    )?;
    if resp.status() != 200 {
        return Err(status_error(r, format!("GET {what}"), resp));
    }
    let header_digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(MAX_MANIFEST_SIZE)
        .read_to_vec()
        .map_err(|e| RegistryError::Invalid {
            host: r.registry.clone(),
            what: what.clone(),
            reason: format!("{e} (limit {MAX_MANIFEST_SIZE} bytes)"),
        })?;
    let actual = Digest::of(&bytes);
    let expected = match (&r.digest, header_digest) {
        (Some(d), _) => Some(*d),
        (None, Some(h)) => Some(h.parse::<Digest>().map_err(|e| RegistryError::Invalid {
            host: r.registry.clone(),
            what: "Docker-Content-Digest header".into(),
            reason: e.to_string(),
        })?),
        (None, None) => None,
    };
    if let Some(exp) = expected
        && exp != actual
    {
        return Err(RegistryError::Digest {
            host: r.registry.clone(),
            what,
            expected: exp,
            actual,
        });
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default, rename = "mediaType")]
        media_type: Option<String>,
    }
    let own = serde_json::from_slice::<Probe>(&bytes)
        .ok()
        .and_then(|p| p.media_type);
    let media_type = own
        .or(content_type)
        .unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
    Ok(FetchedManifest {
        bytes,
        digest: actual,
        media_type,
    })
}

/// Streams blob `desc` of `r`'s repository into the content store (verified; skipped when
/// the store has it). Returns the bytes fetched.
pub fn fetch_blob(
    client: &Client,
    store: &Store,
    r: &Reference,
    desc: &Descriptor,
) -> Result<u64, RegistryError> {
    if store.content.contains(&desc.digest) {
        return Ok(0);
    }
    let what = format!("blob {}", desc.digest);
    let mut writer = store.content.writer()?;
    let mut last_err = None;
    for _ in 0..ATTEMPTS {
        let have = writer.len();
        let range = format!("bytes={have}-");
        let mut headers = vec![];
        if have > 0 {
            headers.push(("Range", range.as_str()));
        }
        let resp = match client.request(
            r,
            "pull",
            &[],
            Method::GET,
            &format!("blobs/{}", desc.digest),
            &headers,
            SendBody::none(),
        ) {
            Ok(x) => x,
            Err(e @ RegistryError::Transport { .. }) => {
                last_err = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        match resp.status().as_u16() {
            206 if have > 0 => {}
            200 => {
                if have > 0 {
                    // The registry ignored the range: start over.
                    writer = store.content.writer()?;
                }
            }
            _ => return Err(status_error(r, format!("GET {what}"), resp)),
        }
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 256 * 1024];
        let mut failed = None;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            };
            if writer.len() + n as u64 > desc.size {
                return Err(RegistryError::Invalid {
                    host: r.registry.clone(),
                    what,
                    reason: format!("longer than its descriptor's {} bytes", desc.size),
                });
            }
            let chunk = buf.get(..n).unwrap_or_default();
            std::io::Write::write_all(&mut writer, chunk).map_err(|e| {
                crate::store::StoreError::Io {
                    op: "ingest",
                    path: store.content.path(&desc.digest),
                    source: e,
                }
            })?;
        }
        if let Some(m) = failed {
            last_err = Some(RegistryError::Transport {
                host: r.registry.clone(),
                message: format!("reading {what}: {m}"),
            });
            continue;
        }
        let n = writer.len();
        return match writer.commit(Some(desc.digest)) {
            Ok(_) => Ok(n),
            Err(crate::store::StoreError::DigestMismatch {
                expected, actual, ..
            }) => Err(RegistryError::Digest {
                host: r.registry.clone(),
                what,
                expected,
                actual,
            }),
            Err(e) => Err(e.into()),
        };
    }
    Err(last_err.unwrap_or_else(|| RegistryError::Transport {
        host: r.registry.clone(),
        message: format!("{what}: no attempt left"),
    }))
}

/// Reads a small blob (config) through the content store, with the JSON size limit.
pub fn fetch_json_blob(
    client: &Client,
    store: &Store,
    r: &Reference,
    desc: &Descriptor,
) -> Result<Vec<u8>, RegistryError> {
    if desc.size > MAX_JSON_SIZE {
        return Err(RegistryError::Invalid {
            host: r.registry.clone(),
            what: format!("blob {}", desc.digest),
            reason: format!("{} bytes is over the {MAX_JSON_SIZE}-byte limit", desc.size),
        });
    }
    fetch_blob(client, store, r, desc)?;
    Ok(store.content.read_blob(&desc.digest)?)
}

/// What a pull produced.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image, for the frontend.
    pub image: ResolvedImage,
    /// The config's digest.
    pub config_digest: Digest,
    /// Bytes downloaded (0 when everything was in the store).
    pub bytes: u64,
}

/// Pulls `r` for `platform` (`os/arch[/variant]`) into the content store.
pub fn pull(
    client: &Client,
    store: &Store,
    r: &Reference,
    platform: &str,
) -> Result<Pulled, RegistryError> {
    let invalid = |what: String, reason: String| RegistryError::Invalid {
        host: r.registry.clone(),
        what,
        reason,
    };
    let mut fetched = fetch_manifest(client, r)?;
    let mut bytes = fetched.bytes.len() as u64;
    if fetched.media_type == media::OCI_INDEX || fetched.media_type == media::DOCKER_MANIFEST_LIST {
        let index = Index::from_slice(&fetched.bytes)
            .map_err(|e| invalid(format!("index {r}"), e.to_string()))?;
        let want = parse_platform(platform);
        let pick = index
            .manifests
            .iter()
            .find(|d| platform_matches(d.platform.as_ref(), &want))
            .ok_or_else(|| invalid(format!("index {r}"), format!("no manifest for {platform}")))?;
        let child = r.with_digest(pick.digest);
        fetched = fetch_manifest(client, &child)?;
        bytes += fetched.bytes.len() as u64;
    }
    if fetched.media_type != media::OCI_MANIFEST && fetched.media_type != media::DOCKER_MANIFEST {
        return Err(invalid(
            format!("manifest {r}"),
            format!("unsupported media type {:?}", fetched.media_type),
        ));
    }
    let manifest = Manifest::from_slice(&fetched.bytes)
        .map_err(|e| invalid(format!("manifest {r}"), e.to_string()))?;
    for l in &manifest.layers {
        if !matches!(
            l.media_type.as_str(),
            media::OCI_LAYER_TAR
                | media::OCI_LAYER_TAR_GZIP
                | media::OCI_LAYER_TAR_ZSTD
                | media::DOCKER_LAYER_TAR
                | media::DOCKER_LAYER_TAR_GZIP
        ) {
            return Err(invalid(
                format!("layer {}", l.digest),
                format!("unsupported media type {:?}", l.media_type),
            ));
        }
    }
    let cbytes = fetch_json_blob(client, store, r, &manifest.config)?;
    bytes += cbytes.len() as u64;
    let config = ImageConfig::from_slice(&cbytes)
        .map_err(|e| invalid(format!("config {}", manifest.config.digest), e.to_string()))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(invalid(
            format!("config {}", manifest.config.digest),
            format!(
                "{} diff_ids for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        ));
    }
    for l in &manifest.layers {
        bytes += fetch_blob(client, store, r, l)?;
    }
    let stored = store.content.write_bytes(&fetched.bytes)?;
    if stored != fetched.digest {
        return Err(RegistryError::Digest {
            host: r.registry.clone(),
            what: format!("manifest {r}"),
            expected: fetched.digest,
            actual: stored,
        });
    }
    Ok(Pulled {
        image: ResolvedImage {
            manifest: fetched.digest,
            layers: manifest.layers.clone(),
            config,
        },
        config_digest: manifest.config.digest,
        bytes,
    })
}

fn parse_platform(p: &str) -> Platform {
    let mut it = p.split('/');
    let mut host = Platform::host();
    if let Some(os) = it.next().filter(|s| !s.is_empty()) {
        host.os = os.to_owned();
    }
    if let Some(a) = it.next() {
        host.architecture = a.to_owned();
    }
    host.variant = it.next().map(str::to_owned);
    host
}

fn platform_matches(p: Option<&Platform>, want: &Platform) -> bool {
    let Some(p) = p else { return false };
    p.os == want.os
        && p.architecture == want.architecture
        && (want.variant.is_none() || p.variant == want.variant)
}
