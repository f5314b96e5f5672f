//! OCI image formats: deterministic layer tars, image config/manifest/index, exporters, import.
//!
//! - [`media`]: media types, annotation keys, file names (the only place they are spelled).
//! - [`types`]: descriptor, manifest, index, image config; [`types::canonical_json`].
//! - [`layer`]: overlay upper dir → deterministic tar ([`layer::write_layer`]).
//! - [`compress`]: one-pass compress + hash ([`compress::BlobWriter`]), [`compress::decompress`].
//! - `deflate`: raw deflate with literals and runs only, for blocks string matching can't shrink.
//! - [`apply`]: tar → snapshot (overlay format) or flattened tree, never escaping the root.
//! - [`blob`]: the [`blob::BlobSource`] seam, verified reads, atomic files.
//! - [`export`]: OCI tar / OCI dir / docker-archive from a [`blob::BlobSource`].
//! - [`import`]: OCI layout (dir or tar) and `docker save` archives, every blob verified.

pub mod apply;
pub mod blob;
pub mod compress;
mod deflate;
pub mod export;
pub mod import;
pub mod layer;
pub mod media;
pub mod types;
