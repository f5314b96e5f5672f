//! Base images: unpacking layer blobs into layer directories (once per blob).

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn unpack_image(
    ctx: &OpContext,
    name: &str,
    manifest: &Digest,
) -> Result<Output, OpError> {
    let img = crate::image::load(&ctx.store, manifest).map_err(|e| OpError::Image {
        name: name.to_owned(),
        message: e.to_string(),
    })?;
    let mut chain = Vec::new();
    for (i, layer) in img.manifest.layers.iter().enumerate() {
        ctx.check_cancelled()?;
        // The guard is dropped before the fallback (a match scrutinee's guard would live
        // through the arms).
        let staged = ctx.staged()?.unpacked.get(&layer.digest).cloned();
        let known = match staged {
            Some(id) => Some(id),
            None => ctx.store.meta.unpacked(&layer.digest)?,
        };
        if let Some(id) = known
            && ctx.store.snapshots.path(&id).is_dir()
        {
            chain.push(id);
            continue;
        }
        let pending = ctx.store.snapshots.create()?;
        let blob = ctx.store.content.open_blob(&layer.digest)?;
        let reader =
            crate::oci::compress::decompress(std::io::BufReader::new(blob)).map_err(|e| {
                OpError::Unpack {
                    digest: layer.digest,
                    message: e.to_string(),
                }
            })?;
        crate::oci::apply::apply_layer(reader, &pending.dir, crate::oci::apply::ApplyMode::Overlay)
            .map_err(|e| OpError::Unpack {
                digest: layer.digest,
                message: e.to_string(),
            })?;
        let empty = is_empty_dir(&pending.dir);
        let id = ctx.store.snapshots.commit(pending)?;
        let mut staged = ctx.staged()?;
        staged.unpacked.insert(layer.digest, id.clone());
        staged.layers.insert(
            id.clone(),
            LayerRecord {
                diff_id: img.config.rootfs.diff_ids.get(i).copied(),
                empty,
                blobs: vec![crate::store::LayerBlob {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest,
                    size: layer.size,
                    epoch: None,
                }],
            },
        );
        chain.push(id);
    }
    Ok(Output::Layers(Arc::new(chain)))
}
