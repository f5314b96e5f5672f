//! Typed OCI documents: descriptor, manifest, index, platform, image config.
//!
//! kiln writes its own serde types instead of using `oci-spec`, whose `annotations` is a
//! `HashMap` (the same manifest serialized three times gave three digests). Every map here is a
//! `BTreeMap`, and every document whose digest matters is serialized with [`canonical_json`]:
//! object keys sorted bytewise at every depth, compact (no insignificant whitespace), serde_json's
//! string escaping (it does not escape `<`, `>`, `&` as Go does, so bytes differ from BuildKit's
//! for such strings; the digest is stable across kiln builds, which is what reproducibility needs).
//! Empty and absent fields are omitted, as Docker and BuildKit omit them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::media;
use crate::digest::Digest;

/// Errors serializing or parsing OCI JSON documents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TypesError {
    /// A document could not be serialized.
    #[error("cannot serialize {what} as JSON")]
    Serialize {
        /// Which document.
        what: &'static str,
        /// The serde error.
        source: serde_json::Error,
    },
    /// A document could not be parsed.
    #[error("malformed {what} JSON")]
    Parse {
        /// Which document.
        what: &'static str,
        /// The serde error.
        source: serde_json::Error,
    },
    /// A manifest or index has a schema version other than 2.
    #[error("{what} has schemaVersion {found}, expected 2")]
    SchemaVersion {
        /// Which document.
        what: &'static str,
        /// The version found.
        found: u32,
    },
    /// A document declares a media type that does not fit where it was found.
    #[error("{what} has unexpected mediaType {found:?}")]
    MediaType {
        /// Which document.
        what: &'static str,
        /// The media type found.
        found: String,
    },
}

/// Serializes `value` as canonical JSON (sorted keys at every depth, compact).
///
/// Use this for every document whose digest is computed.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, TypesError> {
    let v = serde_json::to_value(value).map_err(|source| TypesError::Serialize {
        what: std::any::type_name::<T>(),
        source,
    })?;
    // Sort explicitly, so the result does not depend on serde_json's `preserve_order` feature
    // being off somewhere in the dependency graph.
    serde_json::to_vec(&sorted(v)).map_err(|source| TypesError::Serialize {
        what: std::any::type_name::<T>(),
        source,
    })
}

fn sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Optional download URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations (sorted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform of a manifest referenced from an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Artifact type (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// A descriptor with no annotations, platform or artifact type.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
        }
    }

    /// The descriptor of `bytes` with `media_type`.
    pub fn of_bytes(media_type: impl Into<String>, bytes: &[u8]) -> Self {
        Self::new(media_type, Digest::of(bytes), bytes.len() as u64)
    }
}

/// A platform (`os`/`architecture`/`variant`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// OS version (Windows).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// CPU variant (`v8`, `v7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/amd64`, the platform chosen by default when importing.
    pub fn host() -> Self {
        Self {
            architecture: media::HOST_ARCHITECTURE.to_owned(),
            os: media::HOST_OS.to_owned(),
            os_version: None,
            os_features: Vec::new(),
            variant: None,
        }
    }
}

/// An OCI image manifest (schema version 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`media::OCI_MANIFEST`] for manifests kiln writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (OCI 1.1 referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// An OCI image manifest for `config` and `layers`.
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_owned()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Parses an OCI or Docker schema 2 manifest.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, TypesError> {
        let m: Self = serde_json::from_slice(bytes).map_err(|source| TypesError::Parse {
            what: "manifest",
            source,
        })?;
        check_schema("manifest", m.schema_version)?;
        match m.media_type.as_deref() {
            None | Some(media::OCI_MANIFEST) | Some(media::DOCKER_MANIFEST) => Ok(m),
            Some(other) => Err(TypesError::MediaType {
                what: "manifest",
                found: other.to_owned(),
            }),
        }
    }
}

/// An OCI image index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// [`media::OCI_INDEX`] for indexes kiln writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Manifests (or nested indexes).
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// An OCI index listing `manifests`.
    pub fn new(manifests: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_owned()),
            artifact_type: None,
            manifests,
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Parses an OCI index or Docker manifest list.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, TypesError> {
        let i: Self = serde_json::from_slice(bytes).map_err(|source| TypesError::Parse {
            what: "index",
            source,
        })?;
        check_schema("index", i.schema_version)?;
        match i.media_type.as_deref() {
            None | Some(media::OCI_INDEX) | Some(media::DOCKER_MANIFEST_LIST) => Ok(i),
            Some(other) => Err(TypesError::MediaType {
                what: "index",
                found: other.to_owned(),
            }),
        }
    }
}

fn check_schema(what: &'static str, found: u32) -> Result<(), TypesError> {
    if found == 2 {
        Ok(())
    } else {
        Err(TypesError::SchemaVersion { what, found })
    }
}

/// The `{}` value used for `ExposedPorts` and `Volumes` entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// An OCI image config (Docker-compatible field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time, RFC 3339 (from `SOURCE_DATE_EPOCH` for reproducible builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// OS version.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Runtime defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// Layer diff ids.
    pub rootfs: RootFs,
    /// Build history, one entry per step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

impl ImageConfig {
    /// Parses an image config.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, TypesError> {
        serde_json::from_slice(bytes).map_err(|source| TypesError::Parse {
            what: "image config",
            source,
        })
    }
}

/// The `config` object of an image config (PascalCase as Docker writes it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `EXPOSE` (`"80/tcp": {}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, Empty>,
    /// `ENV` as `KEY=value`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME` (`"/data": {}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Empty>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `LABEL`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `HEALTHCHECK` (Docker extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `ONBUILD` triggers (Docker extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
    /// `SHELL` (Docker extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shell: Vec<String>,
    /// Docker's `ArgsEscaped` (Windows); omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub args_escaped: bool,
}

/// Docker's health check configuration (durations in nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", cmd]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// Interval between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    /// Timeout of one check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Start period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    /// Interval during the start period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    /// Consecutive failures before unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests, base first.
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".to_owned(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `history` entry of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// When the step ran (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step produced no layer.
    #[serde(default, skip_serializing_if = "is_false")]
    pub empty_layer: bool,
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339_from_epoch(secs: u64) -> String {
    // One implementation in the workspace: the attestation crate's (SBOM timestamps).
    kiln_attest::sbom::rfc3339(secs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_omits_empty_fields() {
        let mut d = Descriptor::of_bytes(media::OCI_CONFIG, b"{}");
        d.annotations.insert("z".into(), "1".into());
        d.annotations.insert("a".into(), "2".into());
        let s = String::from_utf8(canonical_json(&d).unwrap()).unwrap();
        assert_eq!(
            s,
            "{\"annotations\":{\"a\":\"2\",\"z\":\"1\"},\"digest\":\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\",\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"size\":2}"
        );
    }

    #[test]
    fn container_config_uses_docker_field_names() {
        let mut c = ContainerConfig::default();
        c.exposed_ports.insert("80/tcp".into(), Empty {});
        c.working_dir = Some("/app".into());
        let s = String::from_utf8(canonical_json(&c).unwrap()).unwrap();
        assert_eq!(s, r#"{"ExposedPorts":{"80/tcp":{}},"WorkingDir":"/app"}"#);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_from_epoch(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_from_epoch(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_from_epoch(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn manifest_with_wrong_media_type_is_rejected() {
        let bad = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","config":{"mediaType":"x","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
        assert!(matches!(
            Manifest::from_slice(bad),
            Err(TypesError::MediaType { .. })
        ));
    }
}
