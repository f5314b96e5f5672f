//! Pushing: every blob a manifest names, then the manifest.
//!
//! A blob the repository already has (`HEAD` 200) is skipped; otherwise a cross-repository
//! mount (`POST …/blobs/uploads/?mount=DIGEST&from=REPO`) is tried from each repository of the
//! same registry the build pulled from, and only then is it uploaded (one monolithic `PUT` of
//! the file from the content store). The manifest goes last, so the registry never names a
//! blob it does not have; its digest is checked against the registry's answer.

use ureq::SendBody;
use ureq::http::Method;

use super::client::status_error;
use super::{Client, Reference, RegistryError};
use crate::Digest;
use crate::oci::types::{Descriptor, Manifest};
use crate::store::Store;

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry had (skipped).
    pub skipped: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// Whether `r`'s repository has blob `digest`.
pub fn has_blob(client: &Client, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
    let resp = client.request(
        r,
        "pull,push",
        &[],
        Method::HEAD,
        &format!("blobs/{digest}"),
        &[],
        SendBody::none(),
    )?;
    match resp.status().as_u16() {
        200 => Ok(true),
        404 => Ok(false),
        _ => Err(status_error(r, format!("HEAD blob {digest}"), resp)),
    }
}

/// Uploads `desc` from the content store unless the repository has it; tries a mount from
/// `mount_from` (repositories on the same registry) first.
pub fn push_blob(
    client: &Client,
    store: &Store,
    r: &Reference,
    desc: &Descriptor,
    mount_from: &[String],
    stats: &mut PushStats,
) -> Result<(), RegistryError> {
    if has_blob(client, r, &desc.digest)? {
        stats.skipped += 1;
        return Ok(());
    }
    let mut location = None;
    for from in mount_from.iter().filter(|f| **f != r.repository) {
        let resp = client.request(
            r,
            "pull,push",
            std::slice::from_ref(from),
            Method::POST,
            &format!("blobs/uploads/?mount={}&from={from}", desc.digest),
            &[("Content-Length", "0")],
            SendBody::none(),
        )?;
        match resp.status().as_u16() {
            201 => {
                stats.mounted += 1;
                return Ok(());
            }
            202 => {
                location = upload_location(r, &resp);
                break;
            }
            _ => {}
        }
    }
    let location = match location {
        Some(l) => l,
        None => {
            let resp = client.request(
                r,
                "pull,push",
                &[],
                Method::POST,
                "blobs/uploads/",
                &[("Content-Length", "0")],
                SendBody::none(),
            )?;
            if resp.status() != 202 {
                return Err(status_error(
                    r,
                    format!("starting the upload of {}", desc.digest),
                    resp,
                ));
            }
            upload_location(r, &resp).ok_or_else(|| RegistryError::Invalid {
                host: r.registry.clone(),
                what: "upload".into(),
                reason: "no Location header".into(),
            })?
        }
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{sep}digest={}", desc.digest);
    let file = store.content.open_blob(&desc.digest)?;
    let len = desc.size.to_string();
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    let resp = client.request(
        r,
        "pull,push",
        &[],
        Method::PUT,
        &url,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", len.as_str()),
        ],
        SendBody::from_reader(&mut reader),
    )?;
    if resp.status() != 201 {
        return Err(status_error(
            r,
            format!("uploading blob {}", desc.digest),
            resp,
        ));
    }
    stats.uploaded += 1;
    stats.bytes += desc.size;
    Ok(())
}

/// `PUT`s manifest bytes under `r`'s tag (or digest); checks the registry's digest.
pub fn put_manifest(
    client: &Client,
    r: &Reference,
    media_type: &str,
    bytes: &[u8],
) -> Result<Digest, RegistryError> {
    let digest = Digest::of(bytes);
    let target = r.tag.clone().unwrap_or_else(|| digest.to_string());
    let len = bytes.len().to_string();
    let resp = client.request(
        r,
        "pull,push",
        &[],
        Method::PUT,
        &format!("manifests/{target}"),
        &[
            ("Content-Type", media_type),
            ("Content-Length", len.as_str()),
        ],
        SendBody::from_reader(&mut &bytes[..]),
    )?;
    if resp.status() != 201 {
        return Err(status_error(r, format!("PUT manifest {r}"), resp));
    }
    if let Some(h) = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        && let Ok(d) = h.parse::<Digest>()
        && d != digest
    {
        return Err(RegistryError::Digest {
            host: r.registry.clone(),
            what: format!("pushed manifest {r}"),
            expected: digest,
            actual: d,
        });
    }
    Ok(digest)
}

/// Pushes the image whose manifest is `manifest` (in the content store) to `r`. `mount_from`
/// names repositories of the same registry to mount blobs from.
pub fn push_image(
    client: &Client,
    store: &Store,
    manifest: &Descriptor,
    r: &Reference,
    mount_from: &[String],
) -> Result<(Digest, PushStats), RegistryError> {
    let bytes = store.content.read_blob(&manifest.digest)?;
    let m = Manifest::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
        host: r.registry.clone(),
        what: format!("manifest {}", manifest.digest),
        reason: e.to_string(),
    })?;
    let mut stats = PushStats::default();
    for l in &m.layers {
        push_blob(client, store, r, l, mount_from, &mut stats)?;
    }
    push_blob(client, store, r, &m.config, &[], &mut stats)?;
    let d = put_manifest(client, r, &manifest.media_type, &bytes)?;
    Ok((d, stats))
}

/// Pushes an image's attestations after its manifest: every blob their manifests name, each
/// manifest by digest, then the index over the image and them under `r`'s tag (what BuildKit
/// pushes: the tag names the index). Registries without the OCI 1.1 referrers API get the
/// referrers-tag fallback: the tag `sha256-<image hex>` names an index listing the referrers
/// (merged with what it listed before). Returns the index's digest.
pub fn push_attached(
    client: &Client,
    store: &Store,
    r: &Reference,
    image: &Digest,
    attached: &crate::attest::Attached,
    stats: &mut PushStats,
) -> Result<Digest, RegistryError> {
    let by_digest = Reference {
        tag: None,
        digest: None,
        ..r.clone()
    };
    for d in &attached.blobs {
        push_blob(client, store, r, d, &[], stats)?;
    }
    for m in &attached.manifests {
        let bytes = store.content.read_blob(&m.digest)?;
        put_manifest(client, &by_digest, &m.media_type, &bytes)?;
    }
    let index = put_manifest(
        client,
        r,
        crate::oci::media::OCI_INDEX,
        &attached.index_bytes,
    )?;
    let referrers: Vec<Descriptor> = attached
        .manifests
        .iter()
        .filter(|m| m.artifact_type.is_some())
        .cloned()
        .collect();
    if !referrers.is_empty() && !has_referrers_api(client, r, image)? {
        referrers_tag(client, r, image, referrers)?;
    }
    Ok(index)
}

/// Whether the registry serves `GET /v2/<name>/referrers/<digest>` (OCI distribution 1.1).
fn has_referrers_api(
    client: &Client,
    r: &Reference,
    image: &Digest,
) -> Result<bool, RegistryError> {
    let resp = client.request(
        r,
        "pull",
        &[],
        Method::GET,
        &format!("referrers/{image}"),
        &[("Accept", crate::oci::media::OCI_INDEX)],
        SendBody::none(),
    )?;
    Ok(resp.status() == 200)
}

/// The referrers-tag fallback: `sha256-<hex>` names an index of the image's referrers.
fn referrers_tag(
    client: &Client,
    r: &Reference,
    image: &Digest,
    ours: Vec<Descriptor>,
) -> Result<(), RegistryError> {
    let tagged = Reference {
        tag: Some(format!("sha256-{}", image.hex())),
        digest: None,
        ..r.clone()
    };
    let mut manifests = match super::pull::fetch_manifest(client, &tagged) {
        Ok(m) => crate::oci::types::Index::from_slice(&m.bytes)
            .map(|i| i.manifests)
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    for d in ours {
        if !manifests.iter().any(|m| m.digest == d.digest) {
            manifests.push(d);
        }
    }
    let bytes = crate::oci::types::canonical_json(&crate::oci::types::Index::new(manifests))
        .map_err(|e| RegistryError::Invalid {
            host: r.registry.clone(),
            what: "referrers index".into(),
            reason: e.to_string(),
        })?;
    put_manifest(client, &tagged, crate::oci::media::OCI_INDEX, &bytes)?;
    Ok(())
}

/// The builder's pusher for `-o type=registry`.
#[derive(Debug)]
pub struct Pusher {
    client: Option<std::sync::Arc<Client>>,
    opts: super::RegistryOptions,
    bases: Vec<Reference>,
    progress: crate::progress::Progress,
}

impl Pusher {
    /// A pusher; `bases` are the build's base images (mount sources).
    pub fn new(
        client: Option<std::sync::Arc<Client>>,
        opts: &super::RegistryOptions,
        bases: &[(String, Digest)],
        progress: crate::progress::Progress,
    ) -> Self {
        Self {
            client,
            opts: opts.clone(),
            bases: bases
                .iter()
                .filter_map(|(r, _)| Reference::parse(r).ok())
                .filter(|r| r.explicit_registry)
                .collect(),
            progress,
        }
    }

    /// Pushes the assembled image to `reference`; returns (reference, manifest digest).
    pub fn push(
        &self,
        store: &Store,
        img: &crate::image::Assembled,
        reference: &str,
        attached: Option<&crate::attest::Attached>,
    ) -> Result<(String, Digest), crate::builder::BuildError> {
        let err = |source| crate::builder::BuildError::Push {
            reference: reference.to_owned(),
            source: Box::new(source),
        };
        let r = Reference::parse(reference).map_err(err)?;
        let client = match &self.client {
            Some(c) => c.clone(),
            None => Client::new(self.opts.clone()).map_err(err)?,
        };
        let mount_from: Vec<String> = self
            .bases
            .iter()
            .filter(|b| b.registry == r.registry)
            .map(|b| b.repository.clone())
            .collect();
        let start = std::time::Instant::now();
        // With attestations the tag names the index over the image and them; the image
        // manifest goes by digest.
        let image_ref = match attached {
            Some(_) => Reference {
                tag: None,
                digest: None,
                ..r.clone()
            },
            None => r.clone(),
        };
        let (d, mut stats) = push_image(
            &client,
            store,
            &img.manifest_descriptor,
            &image_ref,
            &mount_from,
        )
        .map_err(err)?;
        if let Some(a) = attached {
            let index = push_attached(&client, store, &r, &d, a, &mut stats).map_err(err)?;
            self.progress.send(crate::progress::Event::Phase {
                name: format!("attestations pushed: {r} names index {index}"),
            });
        }
        self.progress.send(crate::progress::Event::Phase {
            name: format!(
                "pushed {r}@{d}: {} blobs uploaded ({} bytes), {} mounted, {} already there ({:.1}s)",
                stats.uploaded,
                stats.bytes,
                stats.mounted,
                stats.skipped,
                start.elapsed().as_secs_f64()
            ),
        });
        Ok((reference.to_owned(), d))
    }
}

fn upload_location(r: &Reference, resp: &ureq::http::Response<ureq::Body>) -> Option<String> {
    let _ = r;
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
