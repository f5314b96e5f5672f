//! The HTTP side of the distribution API: transport security, authentication, requests.
//!
//! Transport: `https://` with rustls (aws-lc-rs) trusting the system roots plus, when given,
//! the PEM certificates of `--registry-ca` / `KILN_REGISTRY_CA`. `http://` only for a registry
//! named with `--insecure-registry` whose host is a loopback address (or `localhost`); any
//! other insecure name is refused (fail closed).
//!
//! Authentication follows the registry's challenge on `GET /v2/`: none, `Basic` (the docker
//! config's credentials, checked once so a wrong password fails before anything is sent), or
//! `Bearer` (a token from the challenge's realm for `repository:NAME:ACTIONS`, asked with the
//! credentials when there are some). Headers are cached per host and scope.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ureq::http::{Method, Response};
use ureq::{Body, SendBody};

use super::RegistryError;
use super::auth::{Challenge, DockerConfig, Secret, parse_challenge};
use super::reference::Reference;

/// Registry settings of a build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryOptions {
    /// `--insecure-registry HOST:PORT`: plain HTTP (loopback hosts only).
    pub insecure: Vec<String>,
    /// `--registry-ca FILE` / `KILN_REGISTRY_CA`: extra trusted CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// The docker config file to read credentials from (default
    /// [`DockerConfig::default_path`]).
    pub docker_config: Option<PathBuf>,
}

/// Overall time limit of one registry request (a large blob included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1800);

/// A registry client shared by a build (pull, push, cache).
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    opts: RegistryOptions,
    creds: DockerConfig,
    /// (host, scope) → Authorization header (`None`: anonymous).
    auth: Mutex<HashMap<(String, String), Option<Secret>>>,
    /// Host → challenge seen on `GET /v2/` (`None`: no auth needed).
    challenges: Mutex<HashMap<String, Option<Challenge>>>,
}

impl Client {
    /// A client with `opts`; reads the CA file and the docker config now.
    pub fn new(opts: RegistryOptions) -> Result<Arc<Self>, RegistryError> {
        let mut certs: Vec<ureq::tls::Certificate<'static>> =
            rustls_native_certs::load_native_certs()
                .certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect();
        if let Some(ca) = &opts.ca_file {
            let ca_err = |reason: String| RegistryError::Config {
                what: "registry CA",
                path: ca.clone(),
                reason,
            };
            let pem = std::fs::read(ca).map_err(|e| ca_err(e.to_string()))?;
            let mut n = 0;
            for item in ureq::tls::parse_pem(&pem) {
                if let ureq::tls::PemItem::Certificate(c) =
                    item.map_err(|e| ca_err(e.to_string()))?
                {
                    certs.push(c.to_owned());
                    n += 1;
                }
            }
            if n == 0 {
                return Err(ca_err("no PEM certificate in the file".into()));
            }
        }
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(crate::ops::CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(crate::ops::MAX_REDIRECTS)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let creds = match opts
            .docker_config
            .clone()
            .or_else(DockerConfig::default_path)
        {
            Some(p) => DockerConfig::load(&p)?,
            None => DockerConfig::default(),
        };
        Ok(Arc::new(Self {
            agent,
            opts,
            creds,
            auth: Mutex::default(),
            challenges: Mutex::default(),
        }))
    }

    /// `https://HOST` or, for an allowed insecure loopback registry, `http://HOST`.
    pub fn base_url(&self, r: &Reference) -> Result<String, RegistryError> {
        let host = r.api_host();
        if self
            .opts
            .insecure
            .iter()
            .any(|h| h == host || h == &r.registry)
        {
            if !is_loopback(host) {
                return Err(RegistryError::InsecureNotLoopback {
                    host: host.to_owned(),
                });
            }
            return Ok(format!("http://{host}"));
        }
        Ok(format!("https://{host}"))
    }

    /// A request to `/v2/<repository>/<path>` (or to `url` when it is absolute, as upload
    /// locations are), authorised for `actions` (`pull` or `pull,push`) on `r`'s repository
    /// plus, for cross-repository mounts, `extra_pull` repositories.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        r: &Reference,
        actions: &str,
        extra_pull: &[String],
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: SendBody<'_>,
    ) -> Result<Response<Body>, RegistryError> {
        let base = self.base_url(r)?;
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            if !path.starts_with(&base) {
                return Err(RegistryError::Invalid {
                    host: r.registry.clone(),
                    what: "upload location".into(),
                    reason: "points at another host or scheme".into(),
                });
            }
            path.to_owned()
        } else if let Some(abs) = path.strip_prefix('/') {
            format!("{base}/{abs}")
        } else {
            format!("{base}/v2/{}/{path}", r.repository)
        };
        let mut scope = format!("repository:{}:{actions}", r.repository);
        for e in extra_pull {
            scope.push_str(&format!(" repository:{e}:pull"));
        }
        let auth = self.authorization(r, &base, &scope)?;
        let mut b = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(a) = &auth {
            b = b.header("Authorization", a.expose());
        }
        let req = b.body(body).map_err(|e| self.transport(r, e.to_string()))?;
        let resp = self
            .agent
            .run(req)
            .map_err(|e| self.transport(r, e.to_string()))?;
        if resp.status() == 401 {
            return Err(RegistryError::Unauthorized {
                host: r.registry.clone(),
                status: 401,
                hint: format!(" for {scope}"),
            });
        }
        Ok(resp)
    }

    fn transport(&self, r: &Reference, message: String) -> RegistryError {
        let hint = if message.contains("certificate") || message.contains("UnknownIssuer") {
            "; the registry's certificate is not trusted (pass its CA with --registry-ca FILE \
             or KILN_REGISTRY_CA)"
        } else {
            ""
        };
        RegistryError::Transport {
            host: r.registry.clone(),
            message: format!("{message}{hint}"),
        }
    }

    /// The Authorization header for `scope` on `r`'s registry (`None`: anonymous).
    fn authorization(
        &self,
        r: &Reference,
        base: &str,
        scope: &str,
    ) -> Result<Option<Secret>, RegistryError> {
        let host = r.api_host().to_owned();
        let key = (host.clone(), scope.to_owned());
        if let Some(a) = lock(&self.auth).get(&key) {
            return Ok(a.clone());
        }
        let challenge = self.challenge(r, base)?;
        let unauthorized = |status: u16, hint: String| RegistryError::Unauthorized {
            host: r.registry.clone(),
            status,
            hint,
        };
        let creds = self
            .creds
            .get(&r.registry)
            .or_else(|| self.creds.get(&host));
        let header = match challenge {
            None => None,
            Some(Challenge::Basic) => {
                let c = creds.ok_or_else(|| {
                    unauthorized(
                        401,
                        format!(
                            ": the registry wants a login and the docker config has none for {}",
                            r.registry
                        ),
                    )
                })?;
                let h = c.basic_header();
                let resp = self.get(r, &format!("{base}/v2/"), Some(&h))?;
                if resp.status() == 401 || resp.status() == 403 {
                    return Err(unauthorized(
                        resp.status().as_u16(),
                        format!(": wrong user name or password for user {:?}", c.username),
                    ));
                }
                Some(h)
            }
            Some(Challenge::Bearer { realm, service }) => {
                // Credentials go to the realm: never over plain HTTP, unless the registry
                // itself is an allowed loopback one and so is the realm.
                let realm_host = realm
                    .strip_prefix("http://")
                    .map(|r| r.split('/').next().unwrap_or(r));
                if let Some(h) = realm_host
                    && !(base.starts_with("http://") && is_loopback(h))
                {
                    return Err(unauthorized(
                        401,
                        format!(": refusing the plain-HTTP token realm {realm:?}"),
                    ));
                }
                let mut url = format!("{realm}?");
                if let Some(s) = &service {
                    url.push_str(&format!("service={}&", query_escape(s)));
                }
                for s in scope.split(' ') {
                    url.push_str(&format!("scope={}&", query_escape(s)));
                }
                url.pop();
                let basic = creds.map(|c| c.basic_header());
                let mut resp = self.get(r, &url, basic.as_ref())?;
                if resp.status() == 401 || resp.status() == 403 {
                    return Err(unauthorized(
                        resp.status().as_u16(),
                        match creds {
                            Some(c) => format!(": the token service refused user {:?}", c.username),
                            None => ": the token service wants a login".into(),
                        },
                    ));
                }
                if resp.status() != 200 {
                    return Err(unauthorized(
                        resp.status().as_u16(),
                        ": the token service failed".into(),
                    ));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: Option<String>,
                    #[serde(default)]
                    access_token: Option<String>,
                }
                let bytes = resp
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_vec()
                    .map_err(|e| self.transport(r, e.to_string()))?;
                let t: Token = serde_json::from_slice(&bytes).map_err(|_| {
                    unauthorized(200, ": the token service's answer is not JSON".into())
                })?;
                let tok = t.token.or(t.access_token).ok_or_else(|| {
                    unauthorized(200, ": the token service returned no token".into())
                })?;
                Some(Secret::new(format!("Bearer {tok}")))
            }
        };
        lock(&self.auth).insert(key, header.clone());
        Ok(header)
    }

    /// The host's challenge on `GET /v2/`, asked once.
    fn challenge(&self, r: &Reference, base: &str) -> Result<Option<Challenge>, RegistryError> {
        let host = r.api_host().to_owned();
        if let Some(c) = lock(&self.challenges).get(&host) {
            return Ok(c.clone());
        }
        let resp = self.get(r, &format!("{base}/v2/"), None)?;
        let c = match resp.status().as_u16() {
            401 => {
                let h = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                Some(
                    parse_challenge(h).ok_or_else(|| RegistryError::Unauthorized {
                        host: r.registry.clone(),
                        status: 401,
                        hint: format!(": unsupported authentication challenge {h:?}"),
                    })?,
                )
            }
            s if (200..300).contains(&s) => None,
            s => {
                return Err(RegistryError::Status {
                    host: r.registry.clone(),
                    what: "GET /v2/".into(),
                    status: s,
                    body: String::new(),
                });
            }
        };
        lock(&self.challenges).insert(host, c.clone());
        Ok(c)
    }

    fn get(
        &self,
        r: &Reference,
        url: &str,
        auth: Option<&Secret>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut b = ureq::http::Request::builder().method(Method::GET).uri(url);
        if let Some(a) = auth {
            b = b.header("Authorization", a.expose());
        }
        let req = b.body(()).map_err(|e| self.transport(r, e.to_string()))?;
        self.agent
            .run(req)
            .map_err(|e| self.transport(r, e.to_string()))
    }
}

/// An error for an unexpected status, with the start of the body (registries explain there).
pub fn status_error(r: &Reference, what: String, mut resp: Response<Body>) -> RegistryError {
    let body = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .map(|s| {
            let s = s.trim().chars().take(300).collect::<String>();
            if s.is_empty() { s } else { format!(": {s}") }
        })
        .unwrap_or_default();
    RegistryError::Status {
        host: r.registry.clone(),
        what,
        status: resp.status().as_u16(),
        body,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True for `localhost`, 127.0.0.0/8 and `[::1]`, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_count_as_loopback() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.8.9.1"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("registry.example:5000"));
        assert!(!is_loopback("127.0.0.1.example:5000"));
    }

    #[test]
    fn insecure_registries_off_loopback_are_refused() {
        let c = Client::new(RegistryOptions {
            insecure: vec!["10.1.2.3:5000".into(), "127.0.0.1:5000".into()],
            ..Default::default()
        })
        .ok();
        let Some(c) = c else { return };
        let r = Reference::parse("10.1.2.3:5000/a:b").ok();
        assert!(matches!(
            r.map(|r| c.base_url(&r)),
            Some(Err(RegistryError::InsecureNotLoopback { .. }))
        ));
        let r = Reference::parse("127.0.0.1:5000/a:b").ok();
        assert_eq!(
            r.and_then(|r| c.base_url(&r).ok()).as_deref(),
            Some("http://127.0.0.1:5000")
        );
        let r = Reference::parse("127.0.0.1:5001/a:b").ok();
        assert_eq!(
            r.and_then(|r| c.base_url(&r).ok()).as_deref(),
            Some("https://127.0.0.1:5001")
        );
    }
}
