//! A stage's image state while its instructions are dispatched.

use std::collections::BTreeMap;

use crate::frontend::shell::Env;

/// The metadata of the image being built (what ends up in the image config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageState {
    /// `ENV`, in order, `K=V` (what the image config gets).
    pub env: Vec<(String, String)>,
    /// The build-time environment, as BuildKit keeps it in the LLB state: `ENV` and `ARG`
    /// (with a value) set it in instruction order, later wins; it expands words and is the
    /// environment of `RUN`; a stage built `FROM` another inherits it.
    pub run_env: Vec<(String, String)>,
    /// `USER`.
    pub user: String,
    /// `WORKDIR` (absolute; empty means `/` and is omitted from the config).
    pub workdir: String,
    /// `ENTRYPOINT`.
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    pub cmd: Option<Vec<String>>,
    /// Whether `CMD` came from the base image (an `ENTRYPOINT` resets it then, like Docker).
    pub cmd_inherited: bool,
    /// `SHELL`.
    pub shell: Option<Vec<String>>,
    /// `LABEL`.
    pub labels: BTreeMap<String, String>,
    /// `EXPOSE`, normalised `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// `VOLUME`.
    pub volumes: Vec<String>,
    /// `STOPSIGNAL`.
    pub stop_signal: Option<String>,
    /// `HEALTHCHECK`.
    pub healthcheck: Option<crate::oci::types::Healthcheck>,
    /// `ONBUILD` triggers.
    pub onbuild: Vec<String>,
    /// `MAINTAINER`.
    pub author: Option<String>,
    /// History entries, oldest first (base image's included).
    pub history: Vec<HistoryItem>,
    /// Number of layers the base image has (history entries with `empty_layer == false` among
    /// the inherited ones map to them).
    pub base_layers: usize,
    /// The base image's layer descriptors, reused unchanged in the built image.
    pub base_blobs: Vec<crate::oci::types::Descriptor>,
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// `created_by`.
    pub created_by: String,
    /// `comment`.
    pub comment: Option<String>,
    /// True for instructions that change only metadata.
    pub empty_layer: bool,
    /// RFC 3339 creation time when inherited from a base image (ours use the epoch).
    pub created: Option<String>,
}

/// The history comment BuildKit-compatible tools see on kiln's entries.
pub const HISTORY_COMMENT: &str = "kiln.dockerfile.v0";

impl ImageState {
    /// The default shell.
    pub fn shell(&self) -> Vec<String> {
        self.shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// `ENV`: sets an image env var (keeping first-set order) and the build-time env.
    pub fn set_env(&mut self, k: &str, v: String) {
        set(&mut self.env, k, v.clone());
        set(&mut self.run_env, k, v);
    }

    /// `ARG` with a value: sets only the build-time env.
    pub fn set_arg(&mut self, k: &str, v: String) {
        set(&mut self.run_env, k, v);
    }

    /// The build-time env as `K=V` strings.
    pub fn run_env_strings(&self) -> Vec<String> {
        self.run_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// `K=V` strings.
    pub fn env_strings(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Adds a metadata-only history entry.
    pub fn note(&mut self, created_by: String) {
        self.history.push(HistoryItem {
            created_by,
            comment: Some(HISTORY_COMMENT.into()),
            empty_layer: true,
            created: None,
        });
    }

    /// Adds a layer history entry.
    pub fn layer(&mut self, created_by: String) {
        self.history.push(HistoryItem {
            created_by,
            comment: Some(HISTORY_COMMENT.into()),
            empty_layer: false,
            created: None,
        });
    }
}

fn set(list: &mut Vec<(String, String)>, k: &str, v: String) {
    if let Some(e) = list.iter_mut().find(|(n, _)| n == k) {
        e.1 = v;
    } else {
        list.push((k.to_owned(), v));
    }
}

/// An expansion scope: name → value (`None`: declared without a value, expands to empty).
pub(crate) struct Scope<'a>(pub &'a [(String, Option<String>)]);

impl Env for Scope<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.clone())
    }
}

/// Build args Docker predefines: usable without an `ARG`, and never reported as unused.
pub fn is_predefined_arg(name: &str) -> bool {
    matches!(
        name.to_ascii_uppercase().as_str(),
        "HTTP_PROXY" | "HTTPS_PROXY" | "FTP_PROXY" | "NO_PROXY" | "ALL_PROXY"
    ) || name.starts_with("BUILDKIT_")
}

/// The automatic platform ARGs of the global scope.
pub fn platform_args(platform: &str) -> Vec<(String, String)> {
    let mut parts = platform.split('/');
    let os = parts.next().unwrap_or("linux").to_owned();
    let arch = parts.next().unwrap_or("amd64").to_owned();
    let variant = parts.next().unwrap_or("").to_owned();
    let host = host_platform();
    let mut hp = host.split('/');
    let hos = hp.next().unwrap_or("linux").to_owned();
    let harch = hp.next().unwrap_or("amd64").to_owned();
    vec![
        ("BUILDPLATFORM".into(), host.clone()),
        ("BUILDOS".into(), hos),
        ("BUILDARCH".into(), harch),
        ("BUILDVARIANT".into(), String::new()),
        ("TARGETPLATFORM".into(), platform.to_owned()),
        ("TARGETOS".into(), os),
        ("TARGETARCH".into(), arch),
        ("TARGETVARIANT".into(), variant),
    ]
}

/// The platform kiln runs on, in OCI terms.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    format!("linux/{arch}")
}
