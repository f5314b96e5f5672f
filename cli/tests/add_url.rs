//! `ADD --checksum=sha256:… <http url>` end to end, against a tiny HTTP server on 127.0.0.1
//! (loopback only; it serves at most a bounded number of requests and stops by itself).
//!
//! - the right checksum: the file lands with the URL's last path component as its name, mode
//!   0600 (0755 with `--chmod`), and the CLI prints `fetched <url> <digest>`; redirects are
//!   followed;
//! - a wrong checksum fails naming the URL and both digests, and leaves no image;
//! - a rebuild is served from the cache without a request to the server;
//! - a missing `--checksum` is a conversion error with line:column (no request either).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln_engine::Digest;
use support::kiln::{Kiln, root_or_skip};

const BODY: &[u8] = b"#!/bin/sh\necho hello from the network\n";

/// Serves `/files/tool.sh` (BODY), `/redirect` (302 to it) and 404 for anything else; counts
/// requests. Stops on drop, after `MAX_REQUESTS`, or after `LIFETIME`.
struct Server {
    port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const MAX_REQUESTS: usize = 50;
const LIFETIME: Duration = Duration::from_secs(300);

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !s.load(Ordering::SeqCst)
                && start.elapsed() < LIFETIME
                && r.load(Ordering::SeqCst) < MAX_REQUESTS
            {
                match listener.accept() {
                    Ok((stream, _)) => {
                        r.fetch_add(1, Ordering::SeqCst);
                        let _ = serve(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let mut out = stream;
    match path {
        "/files/tool.sh" | "/mirror/tool.sh" => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                BODY.len()
            )?;
            out.write_all(BODY)?;
        }
        "/redirect" => write!(
            out,
            "HTTP/1.1 302 Found\r\nLocation: /files/tool.sh\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
        _ => write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    out.flush()
}

fn context(dir: &Path, dockerfile: &str) -> PathBuf {
    let ctx = dir.join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}

/// `kiln build` with no proxy variables (the server is on loopback).
fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> support::kiln::Run {
    let mut args: Vec<String> = vec!["--progress=plain".into()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    k.build_with(ctx, &args, |c| {
        for v in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            c.env_remove(v);
        }
    })
}

fn sum() -> String {
    Digest::of(BODY).to_string()
}

#[test]
fn add_url_with_the_right_checksum_is_fetched_once_and_cached() {
    if !root_or_skip() {
        return;
    }
    let server = Server::start();
    let k = Kiln::empty();
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("/files/tool.sh");
    let ctx = context(
        tmp.path(),
        &format!(
            "FROM scratch\n\
             ADD --checksum={sum} {url} /bin/\n\
             ADD --checksum={sum} --chmod=755 {redirect} /usr/local/bin/tool\n",
            sum = sum(),
            redirect = server.url("/redirect"),
        ),
    );
    let out = tmp.path().join("out");
    let r = build(
        &k,
        &ctx,
        &[
            "-t",
            "fetched:1",
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
    )
    .ok();
    // Named by the URL's last path component, BuildKit's http-source mode 0600.
    let f = out.join("bin/tool.sh");
    assert_eq!(fs::read(&f).unwrap(), BODY);
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    // Through the redirect, with --chmod.
    let g = out.join("usr/local/bin/tool");
    assert_eq!(fs::read(&g).unwrap(), BODY);
    assert_eq!(
        fs::metadata(&g).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    // The network step is reported.
    assert!(
        r.stderr.contains(&format!("fetched {url} {}", sum())),
        "no fetched line:\n{}",
        r.stderr
    );
    // /files/tool.sh, /redirect and the redirected /files/tool.sh.
    assert_eq!(server.requests(), 3, "stderr:\n{}", r.stderr);
    assert!(k.images().contains("fetched:1"));

    // A rebuild is served from the cache: no request, no fetched line, same image.
    let r2 = build(&k, &ctx, &["-t", "fetched:2"]).ok();
    assert_eq!(server.requests(), 3, "the rebuild contacted the server");
    assert!(!r2.stderr.contains("fetched http"), "{}", r2.stderr);
    assert_eq!(r2.digest(), r.digest());

    // The cache key is the checksum (and file name), not the URL: a mirror is not contacted.
    let mirror = context(
        &tmp.path().join("mirror"),
        &format!(
            "FROM scratch\nADD --checksum={} {} /bin/\n",
            sum(),
            server.url("/mirror/tool.sh")
        ),
    );
    let r4 = build(&k, &mirror, &[]).ok();
    assert_eq!(
        server.requests(),
        3,
        "the mirror was contacted:\n{}",
        r4.stderr
    );

    // -q prints only the digest, no fetched lines.
    let r3 = build(&k, &ctx, &["-q", "--no-cache"]).ok();
    assert!(!r3.stderr.contains("fetched http"), "{}", r3.stderr);
}

#[test]
fn add_url_with_a_wrong_checksum_fails_and_leaves_no_image() {
    if !root_or_skip() {
        return;
    }
    let server = Server::start();
    let k = Kiln::empty();
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("/files/tool.sh");
    let wrong = Digest::of(b"something else");
    let ctx = context(
        tmp.path(),
        &format!("FROM scratch\nADD --checksum={wrong} {url} /bin/\n"),
    );
    let before = (k.images(), k.cache_records());
    let r = build(&k, &ctx, &["-t", "bad:1"]);
    assert_eq!(r.code, 1, "stderr:\n{}", r.stderr);
    for want in [
        "checksum mismatch".to_owned(),
        url.clone(),
        format!("expected {wrong}"),
        format!("got {}", sum()),
    ] {
        assert!(r.stderr.contains(&want), "no {want:?} in:\n{}", r.stderr);
    }
    assert!(!r.stderr.contains("fetched http"), "{}", r.stderr);
    assert_eq!((k.images(), k.cache_records()), before);
    assert!(!k.images().contains("bad:1"));
    // Nothing was stored under either digest.
    let blobs = k.root().join("content/blobs/sha256");
    for d in [wrong, Digest::of(BODY)] {
        assert!(!blobs.join(d.hex()).exists(), "{d} was stored");
    }
    assert_eq!(server.requests(), 1);

    // https to a server that does not speak TLS: a clean error (the rustls/aws-lc-rs client
    // with the system roots is built), not a panic.
    let tls_url = format!("https://127.0.0.1:{}/files/tool.sh", server.port);
    let ctx = context(
        tmp.path(),
        &format!("FROM scratch\nADD --checksum={wrong} {tls_url} /\n"),
    );
    let r = build(&k, &ctx, &[]);
    assert_eq!(r.code, 1, "stderr:\n{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("fetching {tls_url}")),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    // A 404 is an error naming the URL too.
    let missing = server.url("/nope.txt");
    let ctx = context(
        tmp.path(),
        &format!("FROM scratch\nADD --checksum={wrong} {missing} /\n"),
    );
    let r = build(&k, &ctx, &[]);
    assert_eq!(r.code, 1, "stderr:\n{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("fetching {missing}")) && r.stderr.contains("404"),
        "{}",
        r.stderr
    );
}

#[test]
fn add_url_without_checksum_is_a_conversion_error() {
    let server = Server::start();
    let k = Kiln::empty();
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("/files/tool.sh");
    let ctx = context(tmp.path(), &format!("FROM scratch\n\n  ADD {url} /bin/\n"));
    let r = build(&k, &ctx, &[]);
    assert_eq!(r.code, 1, "stderr:\n{}", r.stderr);
    assert!(r.stderr.contains("Dockerfile:3:3:"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("ADD {url} requires --checksum=sha256:")),
        "{}",
        r.stderr
    );
    assert_eq!(server.requests(), 0);
}
