//! `Http` sources: `ADD <url>` downloads pinned by checksum.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Mode of a downloaded file before `--chmod` (BuildKit's http source).
pub const HTTP_FILE_MODE: u32 = 0o600;

impl OpContext {
    /// The HTTP client for downloads, built on first use: rustls with the aws-lc-rs provider
    /// and the system's root certificates (an empty set if none are found: https then fails
    /// verification instead of trusting anything), connect timeout [`CONNECT_TIMEOUT`],
    /// overall [`OpContext::fetch_timeout`], at most [`MAX_REDIRECTS`] redirects, proxies
    /// from the usual environment variables, no compression (the checksum is over the bytes
    /// the server sends).
    fn http_agent(&self) -> &ureq::Agent {
        self.http.get_or_init(|| {
            let roots = rustls_native_certs::load_native_certs();
            let certs: Vec<ureq::tls::Certificate<'static>> = roots
                .certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect();
            let tls = ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build();
            ureq::Agent::config_builder()
                .tls_config(tls)
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_global(Some(self.fetch_timeout))
                .max_redirects(MAX_REDIRECTS)
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                .build()
                .new_agent()
        })
    }

    fn record_fetch(&self, url: &str, digest: Digest) -> Result<(), OpError> {
        self.fetched
            .lock()
            .map_err(|e| OpError::Internal(format!("fetched list lock poisoned: {e}")))?
            .push((url.to_owned(), digest));
        Ok(())
    }
}

/// `ADD <url>`: downloads `url` into the content store, verifying `checksum` as it streams
/// (a mismatch stores nothing), then lays the blob out as the single file `filename`, mode
/// [`HTTP_FILE_MODE`], of a one-layer file system. Runs in the engine process, not in a
/// sandboxed step; the URL and digest are recorded in [`OpContext::fetched`].
pub(super) fn http_source(
    ctx: &OpContext,
    vertex: VertexIdx,
    url: &str,
    checksum: &Digest,
    filename: &str,
    key: &Digest,
) -> Result<Output, OpError> {
    if filename.is_empty() || filename.contains('/') || filename == "." || filename == ".." {
        return Err(OpError::Internal(format!(
            "invalid download file name {filename:?}"
        )));
    }
    let log = |data: String| {
        ctx.progress.send(Event::Log {
            vertex,
            stream: 2,
            data,
        });
    };
    let digest = if !ctx.no_cache && ctx.store.content.contains(checksum) {
        // Downloaded before (by a build whose records were not committed, say): the blob is
        // named by its verified digest, so there is nothing to fetch.
        log(format!(
            "{checksum} is in the content store; not fetching {url}\n"
        ));
        *checksum
    } else {
        download(ctx, url, checksum, &log)?
    };
    materialize_download(ctx, &digest, filename, key)
}

/// Streams `url` into the content store; the blob is kept only if it hashes to `checksum`.
fn download(
    ctx: &OpContext,
    url: &str,
    checksum: &Digest,
    log: &dyn Fn(String),
) -> Result<Digest, OpError> {
    let fetch_err = |message: String| OpError::Fetch {
        url: url.to_owned(),
        message,
    };
    log(format!("fetching {url}\n"));
    let start = std::time::Instant::now();
    let response = ctx
        .http_agent()
        .get(url)
        .call()
        .map_err(|e| fetch_err(e.to_string()))?;
    let mut body = response.into_body().into_reader();
    let mut writer = ctx.store.content.writer()?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        ctx.check_cancelled()?;
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fetch_err(e.to_string())),
        };
        let chunk = buf.get(..n).ok_or_else(|| fetch_err("short read".into()))?;
        std::io::Write::write_all(&mut writer, chunk).map_err(|source| StoreError::Io {
            op: "ingest",
            path: ctx.store.content.path(checksum),
            source,
        })?;
    }
    let size = writer.len();
    let digest = writer.commit(Some(*checksum)).map_err(|e| match e {
        StoreError::DigestMismatch {
            expected, actual, ..
        } => OpError::ChecksumMismatch(Box::new(ChecksumMismatch {
            url: url.to_owned(),
            expected,
            actual,
            size,
        })),
        other => other.into(),
    })?;
    log(format!(
        "fetched {url}: {size} bytes, {digest} verified ({:.1}s)\n",
        start.elapsed().as_secs_f64()
    ));
    ctx.record_fetch(url, digest)?;
    Ok(digest)
}

/// A one-layer file system holding the blob `digest` as `/filename`, mode [`HTTP_FILE_MODE`].
fn materialize_download(
    ctx: &OpContext,
    digest: &Digest,
    filename: &str,
    key: &Digest,
) -> Result<Output, OpError> {
    let digest = *digest;
    let pending = ctx.store.snapshots.create()?;
    let path = pending.dir.join(filename);
    let mut blob = ctx.store.content.open_blob(&digest)?;
    let file = fs::File::options()
        .write(true)
        .create_new(true)
        .mode(HTTP_FILE_MODE)
        .open(&path)
        .map_err(|source| StoreError::Io {
            op: "create",
            path: path.clone(),
            source,
        })?;
    // The blob is re-hashed on its way into the layer: what lands there is what was pinned.
    let mut sink = HashingWriter {
        inner: std::io::BufWriter::new(file),
        hasher: crate::digest::Hasher::new(),
    };
    std::io::copy(&mut blob, &mut sink).map_err(|source| StoreError::Io {
        op: "write",
        path: path.clone(),
        source,
    })?;
    let HashingWriter { inner, hasher } = sink;
    inner
        .into_inner()
        .map_err(|e| StoreError::Io {
            op: "flush",
            path: path.clone(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(|source| StoreError::Io {
            op: "fsync",
            path: path.clone(),
            source,
        })?;
    let written = hasher.finish();
    if written != digest {
        return Err(StoreError::DigestMismatch {
            what: format!("blob {digest} copied to {}", path.display()),
            expected: digest,
            actual: written,
        }
        .into());
    }
    // The umask may have narrowed the mode; set it exactly.
    fs::set_permissions(&path, fs::Permissions::from_mode(HTTP_FILE_MODE)).map_err(|source| {
        StoreError::Io {
            op: "chmod",
            path: path.clone(),
            source,
        }
    })?;
    let id = commit_layer(ctx, pending)?;
    finish(ctx, key, vec![id])
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: crate::digest::Hasher,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
