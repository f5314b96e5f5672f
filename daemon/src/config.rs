//! `kilnd.toml`: where kilnd listens, its TLS material, its state, and its tenants.
//!
//! ```toml
//! listen = "127.0.0.1:7443"
//! state_dir = "/var/lib/kilnd"
//! admin_socket = "/run/kilnd/admin.sock"   # optional; default state_dir/admin.sock
//! on_shutdown = "finish"          # or "cancel": what SIGTERM does to running builds
//! shutdown_grace_secs = 30        # "finish" waits this long, then cancels
//!
//! [gc]                            # the build cache, collected every interval
//! interval = "1h"
//! keep_duration = "7d"            # records unused for longer go
//! keep_bytes = "50g"              # all layers, least recently used go first
//! tenant_bytes = "10g"            # each tenant's records
//!
//! [history]                       # finished builds' records (kiln remote ls)
//! max_age = "7d"                  # default 7d
//! max_entries = 1000              # per tenant; default 1000
//!
//! [tls]
//! cert = "/etc/kilnd/server.pem"
//! key = "/etc/kilnd/server.key"
//! client_ca = ["/etc/kilnd/ca.pem"]
//!
//! [signing]                       # optional: attestations signed with a key only kilnd holds
//! key = "/etc/kilnd/builder.key"
//! builder_id = "https://kilnd.example/builders/prod"
//!
//! [[tenant]]
//! name = "alpha"                  # also the cache namespace, unless cache_namespace says
//! identities = ["spiffe://example.org/tenant/alpha", "cn:alpha-ci"]
//! policy = "/etc/kilnd/policies/alpha"
//! max_concurrent_builds = 2
//! entitlements = ["network.host"]
//! memory = "2g"
//! pids = 1024
//! cpus = 1.5
//! ```
//!
//! Unknown keys are errors; so are duplicate tenant names and an identity mapped to two
//! tenants. An identity is a SAN URI (exact), or `cn:NAME` for a subject common name.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kiln_engine::TenantId;
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TCP address for the gRPC service.
    pub listen: SocketAddr,
    /// The store and the daemon's state (context copies, build records).
    pub state_dir: PathBuf,
    /// TLS material.
    pub tls: TlsConfig,
    /// The signing key for attestations, if builds are signed.
    #[serde(default)]
    pub signing: Option<SigningConfig>,
    /// The local admin socket (`kiln admin`): unix-domain, mode 0600, only root and kilnd's
    /// own user may use it (peer credentials are checked). Default `state_dir/admin.sock`.
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
    /// Seconds a graceful shutdown waits for running builds before cancelling them.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// On SIGTERM/SIGINT, after new connections stop: `finish` lets running builds finish
    /// (up to `shutdown_grace_secs`, then cancels them), `cancel` cancels them at once.
    #[serde(default)]
    pub on_shutdown: OnShutdown,
    /// Garbage collection of the build cache.
    #[serde(default)]
    pub gc: GcConfig,
    /// How long finished builds' records are kept (`kiln remote ls`, `kiln admin builds`).
    #[serde(default)]
    pub history: HistoryConfig,
    /// Tenants.
    #[serde(rename = "tenant", default)]
    pub tenants: Vec<TenantConfig>,
}

/// `[gc]`: what the build cache keeps, and how often kilnd collects (also on demand:
/// `kiln admin gc`). Durations as `30s`, `10m`, `1h`, `7d`; sizes as `512m`, `50g`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// How often to collect; absent: only on demand.
    #[serde(default)]
    pub interval: Option<String>,
    /// Cache records unused for longer than this go.
    #[serde(default)]
    pub keep_duration: Option<String>,
    /// The whole cache's layers may take this much.
    #[serde(default)]
    pub keep_bytes: Option<String>,
    /// Each tenant's cache records may take this much.
    #[serde(default)]
    pub tenant_bytes: Option<String>,
}

impl GcConfig {
    /// The interval and the engine's policy, checked.
    pub fn policy(
        &self,
    ) -> Result<(Option<std::time::Duration>, kiln_engine::gc::GcPolicy), String> {
        let dur = |v: &Option<String>, what: &str| -> Result<Option<u64>, String> {
            v.as_deref()
                .map(|s| {
                    parse_duration(s).ok_or_else(|| {
                        format!("gc.{what}: {s:?} is not a duration (30s, 10m, 1h, 7d)")
                    })
                })
                .transpose()
        };
        let bytes = |v: &Option<String>, what: &str| -> Result<Option<u64>, String> {
            v.as_deref()
                .map(|s| {
                    parse_bytes(s)
                        .ok_or_else(|| format!("gc.{what}: {s:?} is not a size (512m, 50g)"))
                })
                .transpose()
        };
        let interval = dur(&self.interval, "interval")?;
        if interval == Some(0) {
            return Err("gc.interval: must be at least 1s".into());
        }
        Ok((
            interval.map(std::time::Duration::from_secs),
            kiln_engine::gc::GcPolicy {
                keep_duration: dur(&self.keep_duration, "keep_duration")?,
                keep_bytes: bytes(&self.keep_bytes, "keep_bytes")?,
                tenant_bytes: bytes(&self.tenant_bytes, "tenant_bytes")?,
            },
        ))
    }
}

/// `30s`, `10m`, `1h`, `7d`, or plain seconds.
fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1u64),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        'd' => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// `[history]`: the records of finished builds (as BuildKit's `[history]`): those older than
/// `max_age`, and those beyond each tenant's newest `max_entries`, are deleted when kilnd
/// starts and whenever a build finishes. A build in progress is never deleted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Finished builds older than this go; default `7d`.
    #[serde(default)]
    pub max_age: Option<String>,
    /// Each tenant keeps at most this many finished builds; default 1000.
    #[serde(default)]
    pub max_entries: Option<usize>,
}

impl HistoryConfig {
    /// The retention, checked.
    pub fn retention(&self) -> Result<crate::records::Retention, String> {
        let default = crate::records::Retention::default();
        let max_age_secs = match self.max_age.as_deref() {
            None => default.max_age_secs,
            Some(s) => parse_duration(s).ok_or_else(|| {
                format!("history.max_age: {s:?} is not a duration (30s, 10m, 1h, 7d)")
            })?,
        };
        let max_entries = self.max_entries.unwrap_or(default.max_entries);
        if max_entries == 0 {
            return Err("history.max_entries: must be at least 1".into());
        }
        Ok(crate::records::Retention {
            max_age_secs,
            max_entries,
        })
    }
}

/// What a graceful shutdown does with running builds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdown {
    /// Let them finish, up to the grace period.
    #[default]
    Finish,
    /// Cancel them.
    Cancel,
}

fn default_shutdown_grace() -> u64 {
    30
}

/// TLS material (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// CA certificates client certificates must chain to (at least one file).
    pub client_ca: Vec<PathBuf>,
}

/// The daemon's attestation signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// PKCS#8 PEM key (`kiln key generate`); passphrase in `KILND_SIGN_KEY_PASSPHRASE`.
    pub key: PathBuf,
    /// The provenance's `runDetails.builder.id`.
    pub builder_id: String,
}

/// One tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's name: its cache namespace and what its builds are recorded under.
    pub name: String,
    /// Client identities that are this tenant: SAN URIs, or `cn:NAME`.
    pub identities: Vec<String>,
    /// The cache namespace (cache keys and cache mounts); default: the tenant's own name.
    /// Tenants given the same namespace share their cached results and cache mounts — only
    /// for tenants that trust each other's builds.
    #[serde(default)]
    pub cache_namespace: Option<String>,
    /// A Rego policy (file or directory) gating this tenant's builds.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Builds of this tenant that run at once; more wait in a queue.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_builds: usize,
    /// Entitlements this tenant may request: `network.host`, `security.insecure`.
    #[serde(default)]
    pub entitlements: Vec<String>,
    /// Per-step memory limit (`512m`, `2g`), pids and CPUs.
    #[serde(default)]
    pub memory: Option<String>,
    /// Per-step process limit.
    #[serde(default)]
    pub pids: Option<u64>,
    /// Per-step CPU limit (cores).
    #[serde(default)]
    pub cpus: Option<f64>,
}

fn default_concurrency() -> usize {
    2
}

/// The entitlements a tenant can be given.
pub const ENTITLEMENTS: &[&str] = &["network.host", "security.insecure"];

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// Valid TOML, wrong content.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A tenant, ready to serve.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Name (cache namespace).
    pub id: TenantId,
    /// Its configuration.
    pub config: TenantConfig,
    /// Its policy, loaded and compiled at start.
    pub policy: Option<std::sync::Arc<kiln_policy::Policy>>,
    /// Per-step limits.
    pub limits: kiln_sandbox::Limits,
    /// Its cache namespace, when shared with others (`cache_namespace`).
    pub cache_namespace: Option<TenantId>,
}

impl Tenant {
    /// Whether the tenant may request `entitlement`.
    pub fn allows(&self, entitlement: &str) -> bool {
        self.config.entitlements.iter().any(|e| e == entitlement)
    }
}

/// Tenants by identity.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    by_identity: HashMap<String, usize>,
    tenants: Vec<Tenant>,
}

impl Tenants {
    /// The tenant of a client identity: its SAN URIs first, then its CN.
    pub fn find(&self, identity: &ClientIdentity) -> Option<&Tenant> {
        identity
            .san_uris
            .iter()
            .cloned()
            .chain(identity.cn.iter().map(|cn| format!("cn:{cn}")))
            .find_map(|id| self.by_identity.get(&id))
            .map(|&i| &self.tenants[i])
    }

    /// Every tenant.
    pub fn all(&self) -> &[Tenant] {
        &self.tenants
    }
}

/// What a client certificate says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// SAN URIs.
    pub san_uris: Vec<String>,
    /// Subject common name.
    pub cn: Option<String>,
}

impl std::fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.san_uris.first(), &self.cn) {
            (Some(uri), _) => f.write_str(uri),
            (None, Some(cn)) => write!(f, "cn:{cn}"),
            (None, None) => f.write_str("(no SAN URI, no CN)"),
        }
    }
}

impl Config {
    /// Where the admin socket is: `admin_socket`, or `state_dir/admin.sock`.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("admin.sock"))
    }

    /// Reads and checks `kilnd.toml` (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > 1 << 20 {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: format!("{} bytes, over the 1 MiB limit", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text, path)
    }

    /// Parses and checks a configuration's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        config.gc.policy().map_err(&invalid)?;
        config.history.retention().map_err(&invalid)?;
        if config.tls.client_ca.is_empty() {
            return Err(invalid(
                "tls.client_ca: at least one CA file: client certificates are required".into(),
            ));
        }
        let mut names = BTreeMap::new();
        let mut identities = BTreeMap::new();
        for t in &config.tenants {
            TenantId::new(&t.name).map_err(|e| invalid(format!("tenant {:?}: {e}", t.name)))?;
            if names.insert(t.name.clone(), ()).is_some() {
                return Err(invalid(format!("tenant {:?} is defined twice", t.name)));
            }
            if t.identities.is_empty() {
                return Err(invalid(format!("tenant {:?}: no identities", t.name)));
            }
            for id in &t.identities {
                if id.is_empty() || id == "cn:" {
                    return Err(invalid(format!("tenant {:?}: empty identity", t.name)));
                }
                if let Some(other) = identities.insert(id.clone(), t.name.clone()) {
                    return Err(invalid(format!(
                        "identity {id:?} maps to two tenants: {other:?} and {:?}",
                        t.name
                    )));
                }
            }
            for e in &t.entitlements {
                if !ENTITLEMENTS.contains(&e.as_str()) {
                    return Err(invalid(format!(
                        "tenant {:?}: unknown entitlement {e:?} (known: {})",
                        t.name,
                        ENTITLEMENTS.join(", ")
                    )));
                }
            }
            if t.max_concurrent_builds == 0 {
                return Err(invalid(format!(
                    "tenant {:?}: max_concurrent_builds must be at least 1",
                    t.name
                )));
            }
        }
        Ok(config)
    }

    /// The tenants, with their policies loaded and limits parsed.
    pub fn tenants(&self) -> Result<Tenants, String> {
        let mut out = Tenants::default();
        for (i, t) in self.tenants.iter().enumerate() {
            let id = TenantId::new(&t.name).map_err(|e| e.to_string())?;
            let policy = match &t.policy {
                Some(p) => Some(std::sync::Arc::new(kiln_policy::Policy::load(p).map_err(
                    |e| format!("tenant {}: policy {}: {e}", t.name, p.display()),
                )?)),
                None => None,
            };
            let mut limits = kiln_sandbox::Limits::defaults();
            if let Some(m) = &t.memory {
                limits.memory_bytes =
                    Some(parse_bytes(m).ok_or_else(|| format!("tenant {}: memory {m:?}", t.name))?);
            }
            if let Some(p) = t.pids {
                limits.pids = Some(p);
            }
            if let Some(c) = t.cpus {
                limits.cpu = Some(
                    kiln_sandbox::CpuLimit::from_cpus(c)
                        .map_err(|e| format!("tenant {}: cpus: {e}", t.name))?,
                );
            }
            limits
                .validate()
                .map_err(|e| format!("tenant {}: {e}", t.name))?;
            for identity in &t.identities {
                out.by_identity.insert(identity.clone(), i);
            }
            let cache_namespace = t
                .cache_namespace
                .as_deref()
                .map(TenantId::new)
                .transpose()
                .map_err(|e| format!("tenant {}: cache_namespace: {e}", t.name))?;
            out.tenants.push(Tenant {
                id,
                config: t.clone(),
                policy,
                limits,
                cache_namespace,
            });
        }
        Ok(out)
    }
}

/// `512m`, `2g`, `1048576`.
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (digits, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:7443"
state_dir = "/tmp/kilnd"
[tls]
cert = "s.pem"
key = "s.key"
client_ca = ["ca.pem"]
"#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("kilnd.toml"))
    }

    #[test]
    fn tenants_map_identities() {
        let c = parse(
            r#"
[[tenant]]
name = "alpha"
identities = ["spiffe://t/alpha", "cn:alpha-ci"]
entitlements = ["network.host"]
memory = "512m"
[[tenant]]
name = "beta"
identities = ["spiffe://t/beta"]
"#,
        )
        .unwrap();
        let t = c.tenants().unwrap();
        let id = |uris: &[&str], cn: Option<&str>| ClientIdentity {
            san_uris: uris.iter().map(ToString::to_string).collect(),
            cn: cn.map(str::to_owned),
        };
        assert_eq!(
            t.find(&id(&["spiffe://t/beta"], Some("alpha-ci")))
                .unwrap()
                .id
                .as_str(),
            "beta",
            "a SAN URI wins over the CN"
        );
        assert_eq!(
            t.find(&id(&[], Some("alpha-ci"))).unwrap().id.as_str(),
            "alpha"
        );
        assert!(t.find(&id(&["spiffe://t/gamma"], Some("x"))).is_none());
        let alpha = t.find(&id(&["spiffe://t/alpha"], None)).unwrap();
        assert!(alpha.allows("network.host"));
        assert!(!alpha.allows("security.insecure"));
        assert_eq!(alpha.limits.memory_bytes, Some(512 << 20));
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let e = |extra: &str| parse(extra).unwrap_err().to_string();
        assert!(e("bogus = 1").contains("unknown field"));
        assert!(
            e("[[tenant]]\nname = \"a\"\nidentities = [\"x\"]\n[[tenant]]\nname = \"a\"\nidentities = [\"y\"]")
                .contains("defined twice")
        );
        assert!(
            e("[[tenant]]\nname = \"a\"\nidentities = [\"x\"]\n[[tenant]]\nname = \"b\"\nidentities = [\"x\"]")
                .contains("two tenants")
        );
        assert!(
            e("[[tenant]]\nname = \"a\"\nidentities = [\"x\"]\nentitlements = [\"root\"]")
                .contains("unknown entitlement")
        );
        assert!(e("[[tenant]]\nname = \"A B\"\nidentities = [\"x\"]").contains("invalid tenant"));
        assert!(
            Config::parse(
                &BASE.replace("client_ca = [\"ca.pem\"]", "client_ca = []"),
                Path::new("k")
            )
            .unwrap_err()
            .to_string()
            .contains("client certificates are required")
        );
    }

    #[test]
    fn history_retention() {
        let r = parse("").unwrap().history.retention().unwrap();
        assert_eq!(r, crate::records::Retention::default());
        assert_eq!((r.max_age_secs, r.max_entries), (7 * 86400, 1000));
        let c = parse("[history]\nmax_age = \"2h\"\nmax_entries = 5\n").unwrap();
        assert_eq!(
            c.history.retention().unwrap(),
            crate::records::Retention {
                max_age_secs: 7200,
                max_entries: 5
            }
        );
        for (bad, says) in [
            ("max_age = \"forever\"", "history.max_age"),
            ("max_entries = 0", "history.max_entries"),
            ("keep = 3", "unknown field"),
        ] {
            let err = parse(&format!("[history]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn gc_policy() {
        let c = parse("[gc]\ninterval = \"1h\"\nkeep_duration = \"7d\"\ntenant_bytes = \"1g\"\n")
            .unwrap();
        let (interval, p) = c.gc.policy().unwrap();
        assert_eq!(interval, Some(std::time::Duration::from_secs(3600)));
        assert_eq!(p.keep_duration, Some(7 * 86400));
        assert_eq!(p.tenant_bytes, Some(1 << 30));
        assert_eq!(p.keep_bytes, None);
        assert!(
            parse("[gc]\ninterval = \"soon\"\n")
                .unwrap_err()
                .to_string()
                .contains("gc.interval")
        );
        assert!(
            parse("[gc]\nkeep_bytes = \"lots\"\n")
                .unwrap_err()
                .to_string()
                .contains("gc.keep_bytes")
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes("99999999999999g"), None);
    }
}
