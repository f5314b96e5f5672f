//! The client against a scripted registry on loopback (std only): the Bearer token flow,
//! credentials sent only where they belong, a manifest that does not match its digest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::auth::base64_encode;
use super::{Client, Reference, RegistryError, RegistryOptions, pull};
use crate::Digest;

/// One request as the fake saw it: request line and headers (lower-cased names).
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serves `handler(request) -> (status, headers, body)` on a loopback port, one request per
/// connection, until the test ends.
fn serve(
    handler: impl Fn(&Seen, u16) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + 'static,
) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let req = Seen {
                line: line.trim().to_owned(),
                headers,
            };
            log.lock().unwrap().push(req.clone());
            let (status, hs, body) = handler(&req, port);
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in hs {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let _ = s.write_all(out.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (port, seen)
}

fn client_with_creds(port: u16, user: &str, pass: &str) -> (Arc<Client>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    let auth = base64_encode(format!("{user}:{pass}").as_bytes());
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"127.0.0.1:{port}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let c = Client::new(RegistryOptions {
        insecure: vec![format!("127.0.0.1:{port}")],
        ca_file: None,
        docker_config: Some(cfg),
    })
    .unwrap();
    (c, dir)
}

const MANIFEST: &[u8] = br#"{"schemaVersion":2}"#;

#[test]
fn bearer_token_is_fetched_with_the_credentials_and_used_for_the_repository() {
    let (port, seen) = serve(|req, port| {
        let auth = req.header("authorization").unwrap_or("");
        if req.line.starts_with("GET /token?") {
            let ok = auth == format!("Basic {}", base64_encode(b"u:p"));
            return if ok {
                (200, vec![], br#"{"token":"tok-123"}"#.to_vec())
            } else {
                (401, vec![], Vec::new())
            };
        }
        if auth != "Bearer tok-123" {
            let ch =
                format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake",scope="x""#);
            return (401, vec![("WWW-Authenticate".into(), ch)], Vec::new());
        }
        let d = Digest::of(MANIFEST).to_string();
        (
            200,
            vec![
                ("Docker-Content-Digest".into(), d),
                (
                    "Content-Type".into(),
                    "application/vnd.oci.image.manifest.v1+json".into(),
                ),
            ],
            MANIFEST.to_vec(),
        )
    });
    let (c, _d) = client_with_creds(port, "u", "p");
    let r = Reference::parse(&format!("127.0.0.1:{port}/team/app:1")).unwrap();
    let m = pull::fetch_manifest(&c, &r).unwrap();
    assert_eq!(m.digest, Digest::of(MANIFEST));
    let seen = seen.lock().unwrap().clone();
    let token = seen
        .iter()
        .find(|s| s.line.starts_with("GET /token"))
        .unwrap();
    assert!(token.line.contains("service=fake"), "{}", token.line);
    assert!(
        token.line.contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{}",
        token.line
    );
    // The password went to the token endpoint only.
    for s in seen.iter().filter(|s| !s.line.starts_with("GET /token")) {
        assert!(!s.header("authorization").unwrap_or("").starts_with("Basic"));
    }
}

#[test]
fn wrong_credentials_at_the_token_service_name_the_registry() {
    let (port, _) = serve(|req, port| {
        if req.line.starts_with("GET /token?") {
            return (401, vec![], Vec::new());
        }
        let ch = format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake""#);
        (401, vec![("WWW-Authenticate".into(), ch)], Vec::new())
    });
    let (c, _d) = client_with_creds(port, "u", "nope");
    let r = Reference::parse(&format!("127.0.0.1:{port}/app:1")).unwrap();
    let e = pull::fetch_manifest(&c, &r).unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains("nope"), "{msg}");
}

#[test]
fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let (port, _) = serve(|req, _| {
        if req.line.starts_with("GET /v2/ ") {
            return (200, vec![], Vec::new());
        }
        let wrong = Digest::of(b"something else").to_string();
        (
            200,
            vec![("Docker-Content-Digest".into(), wrong)],
            MANIFEST.to_vec(),
        )
    });
    let (c, _d) = client_with_creds(port, "u", "p");
    let r = Reference::parse(&format!("127.0.0.1:{port}/app:1")).unwrap();
    let e = pull::fetch_manifest(&c, &r).unwrap_err();
    assert!(matches!(e, RegistryError::Digest { .. }), "{e}");
    let pinned = r.with_digest(Digest::of(b"pinned"));
    let e = pull::fetch_manifest(&c, &pinned).unwrap_err();
    assert!(matches!(e, RegistryError::Digest { .. }), "{e}");
}

#[test]
fn an_interrupted_blob_download_resumes_with_a_range_request_and_is_verified() {
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&blob);
    let half = blob.len() / 2;
    let data = blob.clone();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let ranges: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = ranges.clone();
    std::thread::spawn(move || {
        let mut blob_requests = 0;
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let mut range = None;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range:") {
                    range = Some(v.trim().to_owned());
                }
            }
            if line.starts_with("GET /v2/ ") {
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            blob_requests += 1;
            log.lock().unwrap().push(range.clone().unwrap_or_default());
            if blob_requests == 1 {
                // Promise everything, send half, hang up.
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&data[..half]);
                continue;
            }
            let from: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let rest = &data[from..];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                rest.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(rest);
        }
    });
    let (c, _d) = client_with_creds(port, "u", "p");
    let root = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(root.path()).unwrap();
    let r = Reference::parse(&format!("127.0.0.1:{port}/app:1")).unwrap();
    let desc = crate::oci::types::Descriptor::new(
        crate::oci::media::OCI_LAYER_TAR,
        digest,
        blob.len() as u64,
    );
    pull::fetch_blob(&c, &store, &r, &desc).unwrap();
    assert_eq!(store.content.read_blob(&digest).unwrap(), blob);
    let ranges = ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], "");
    assert!(ranges[1].starts_with("bytes="), "{ranges:?}");
}
