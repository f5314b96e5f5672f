//! Media types, annotation keys and fixed file names of the OCI image spec and Docker formats.
//!
//! Every string the OCI module writes into a manifest, index or layout lives here, once.

/// OCI image manifest (`application/vnd.oci.image.manifest.v1+json`).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip-compressed layer.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd-compressed layer.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI 1.1 empty JSON descriptor media type (`{}`).
pub const OCI_EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";

/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker uncompressed layer.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker gzip layer.
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Annotation: the reference name (tag part) of a manifest in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation: the full image name, as containerd and BuildKit write it.
pub const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// Annotation: creation time (RFC 3339).
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// `oci-layout` file name.
pub const OCI_LAYOUT_FILE: &str = "oci-layout";
/// `index.json` file name.
pub const INDEX_FILE: &str = "index.json";
/// Docker archive `manifest.json` file name.
pub const DOCKER_MANIFEST_FILE: &str = "manifest.json";
/// Directory of sha256 blobs in an OCI layout.
pub const BLOBS_SHA256_DIR: &str = "blobs/sha256";
/// The only image layout version kiln writes and reads.
pub const IMAGE_LAYOUT_VERSION: &str = "1.0.0";

/// OCI whiteout file prefix.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// OCI opaque-directory marker file name.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// Prefix of AUFS-internal metadata names (`.wh..wh.plnk`, ...), skipped on apply.
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

/// Overlay xattr marking an opaque directory (kernel `trusted.` namespace).
pub const XATTR_OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";
/// Overlay xattr marking an opaque directory (`userxattr` mounts).
pub const XATTR_OVERLAY_OPAQUE_USER: &str = "user.overlay.opaque";
/// Overlay xattr marking a whiteout stored as a regular file.
pub const XATTR_OVERLAY_WHITEOUT: &str = "trusted.overlay.whiteout";
/// Overlay xattr marking a whiteout stored as a regular file (`userxattr` mounts).
pub const XATTR_OVERLAY_WHITEOUT_USER: &str = "user.overlay.whiteout";
/// Overlay redirect xattr (renamed directories, `redirect_dir=on`): unsupported in a diff.
pub const XATTR_OVERLAY_REDIRECT: &str = "trusted.overlay.redirect";
/// Overlay metacopy xattr (`metacopy=on`): unsupported in a diff.
pub const XATTR_OVERLAY_METACOPY: &str = "trusted.overlay.metacopy";
/// File capabilities: the only xattr kiln keeps in layers.
pub const XATTR_SECURITY_CAPABILITY: &str = "security.capability";
/// PAX record prefix for xattrs (as GNU tar, Go and BuildKit write them).
pub const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// The platform kiln selects when an index offers several and none is asked for.
pub const HOST_OS: &str = "linux";
/// See [`HOST_OS`].
pub const HOST_ARCHITECTURE: &str = "amd64";

/// kiln's build-cache config blob (the config of a cache manifest; `docs/cache-format.md`).
pub const KILN_CACHE_CONFIG: &str = "application/vnd.kiln.cache.config.v1+json";
/// BuildKit's cache config media type, named for comparison in the docs (not read).
pub const BUILDKIT_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
