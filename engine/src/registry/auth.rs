//! Registry credentials from Docker's client configuration, and the `WWW-Authenticate`
//! challenge.
//!
//! `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: `auths.<host>.auth`
//! (base64 `user:password`), or `username`/`password`, or `identitytoken` (an OAuth refresh
//! token, sent to the token endpoint). Credential helpers (`credsStore`, `credHelpers`) are not
//! run. Values are kept in [`Secret`], whose `Debug` prints `****`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::RegistryError;

/// A credential value; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name (not secret; may be shown).
    pub username: String,
    /// Password or token.
    pub password: Secret,
}

impl Credentials {
    /// `Basic base64(user:password)`.
    pub fn basic_header(&self) -> Secret {
        let raw = format!("{}:{}", self.username, self.password.expose());
        Secret(format!("Basic {}", base64_encode(raw.as_bytes())))
    }
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Credentials by registry host, as read from the docker config.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    by_host: BTreeMap<String, Credentials>,
}

impl DockerConfig {
    /// The config file kiln reads: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(d).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// Reads `path`; a missing file means no credentials.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let cfg_err = |reason: String| RegistryError::Config {
            what: "docker config",
            path: path.to_path_buf(),
            reason,
        };
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(cfg_err(e.to_string())),
        };
        // Serde's message could quote part of the file (a credential): never show it.
        let file: ConfigFile = serde_json::from_slice(&text)
            .map_err(|e| cfg_err(format!("not valid JSON (line {})", e.line())))?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in file.auths {
            let host = normalize_host(&key);
            let creds = if let Some(a) = entry.auth.filter(|a| !a.is_empty()) {
                let raw = base64_decode(&a)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| cfg_err(format!("auths.{key:?}.auth is not base64")))?;
                let (u, p) = raw
                    .split_once(':')
                    .ok_or_else(|| cfg_err(format!("auths.{key:?}.auth is not user:password")))?;
                Credentials {
                    username: u.to_owned(),
                    password: Secret::new(p),
                }
            } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
                Credentials {
                    username: u,
                    password: Secret::new(p),
                }
            } else if let Some(t) = entry.identitytoken {
                Credentials {
                    username: "<token>".into(),
                    password: Secret::new(t),
                }
            } else {
                continue;
            };
            by_host.insert(host, creds);
        }
        Ok(Self { by_host })
    }

    /// Credentials for a registry host (`docker.io` also matches Docker Hub's legacy key).
    pub fn get(&self, registry: &str) -> Option<&Credentials> {
        self.by_host.get(registry).or_else(|| {
            (registry == super::reference::DOCKER_HUB
                || registry == super::reference::DOCKER_HUB_API)
                .then(|| self.by_host.get("index.docker.io"))
                .flatten()
        })
    }
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `host:port` stays.
fn normalize_host(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k).to_owned()
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`.
    Basic,
    /// `Bearer realm=…,service=…[,scope=…]`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The service name to ask for.
        service: Option<String>,
    },
}

/// Parses the first challenge kiln understands.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let h = header.trim();
    let (scheme, params) = h.split_once(' ').unwrap_or((h, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    for (k, v) in parse_params(params) {
        match k.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            _ => {}
        }
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
    })
}

/// `a="x, y",b=z` → pairs (quoted values may hold commas).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.push((k.trim().to_owned(), v.to_owned()));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(B64[idx]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (padding optional); `None` on any other character.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.trim().bytes() {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&x| x == c)?;
        acc = (acc << 6) | u32::try_from(v).ok()?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "user:p@ss:word"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&e).unwrap(), s.as_bytes());
        }
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
    }

    #[test]
    fn credentials_never_print() {
        let c = Credentials {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", c.basic_header()).contains("aHVudGVy"));
    }

    #[test]
    fn docker_config_reads_auths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"auths":{"https://127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"},"h:1":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        let c = DockerConfig::load(&p).unwrap();
        assert_eq!(c.get("127.0.0.1:5000").unwrap().username, "user");
        assert_eq!(c.get("h:1").unwrap().password.expose(), "b");
        assert!(c.get("other").is_none());
    }
}
