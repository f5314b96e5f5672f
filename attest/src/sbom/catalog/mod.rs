//! The catalogers: one per package database or manifest format, run over a [`FileTree`].
//!
//! Everything read is untrusted (the build wrote it). Each read is capped ([`limits`]), each
//! parser is line- or length-bounded, and malformed data skips the package with a note in
//! [`Sbom::notes`] rather than failing the SBOM or panicking. Only files the tree lists as
//! regular files are opened, so a symlinked database is reported, not followed.

use std::collections::BTreeMap;
use std::io::Read;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::model::{Distro, FileDigest, Package, Sbom};
use super::{EntryKind, FileEntry, FileTree, SbomError};

mod apk;
mod binary;
mod cargo;
mod dpkg;
mod elf;
mod go;
mod npm;
mod osrelease;
mod python;
mod rpm;
mod sqlite;

/// Caps on what the catalogers read.
pub mod limits {
    /// Largest package database read (dpkg status, apk installed).
    pub const DATABASE_BYTES: u64 = 64 << 20;
    /// Largest lockfile read (`Cargo.lock`, `package-lock.json`).
    pub const LOCKFILE_BYTES: u64 = 32 << 20;
    /// Largest per-package manifest read (`package.json`, `METADATA`, `RECORD`, `.list`).
    pub const MANIFEST_BYTES: u64 = 8 << 20;
    /// Largest `copyright` or `os-release` file read.
    pub const SMALL_BYTES: u64 = 1 << 20;
    /// Largest executable scanned for Go build info and cargo-auditable data.
    pub const BINARY_BYTES: u64 = 256 << 20;
    /// Most packages taken from one database or manifest.
    pub const PACKAGES_PER_SOURCE: usize = 100_000;
    /// Most executables scanned in one tree.
    pub const BINARIES: usize = 20_000;
}

/// What the catalog learned about one regular file from its content alone: its digests and,
/// for an executable, what the binary scan found in it. A caller whose files never change under
/// a key (an immutable layer) can keep these and hand them back ([`FactsCache`]), so the next
/// catalog neither reads nor hashes the file again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileFacts {
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// SHA-1, lowercase hex.
    pub sha1: String,
    /// Size in bytes.
    pub size: u64,
    /// The binary scan's packages and notes for this file, once scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<(Vec<Package>, Vec<String>)>,
}

/// Per-file facts kept between catalogs, looked up by the file's path in the tree. The tree
/// owner decides what makes a fact still true (kiln's engine keys them by the immutable layer
/// that holds the file); the catalog only asks and tells.
pub trait FactsCache {
    /// Facts about the regular file at `path`, if known.
    fn get(&self, path: &str) -> Option<FileFacts>;
    /// Facts learned about the regular file at `path`.
    fn put(&mut self, path: &str, facts: FileFacts);
}

/// A cache that knows nothing and keeps nothing.
struct NoCache;

impl FactsCache for NoCache {
    fn get(&self, _: &str) -> Option<FileFacts> {
        None
    }
    fn put(&mut self, _: &str, _: FileFacts) {}
}

/// Catalogs `tree`: its distribution, its packages and the digest of every regular file.
///
/// # Errors
/// [`SbomError::Entries`] when the tree cannot be listed, [`SbomError::Read`] when a regular
/// file it lists cannot be read. Malformed package data is a note, not an error.
pub fn catalog(tree: &dyn FileTree) -> Result<Sbom, SbomError> {
    catalog_with(tree, &mut NoCache)
}

/// [`catalog`], reusing and recording per-file facts in `cache`: the result is the same as
/// without it (a test checks), only cheaper when files are known.
pub fn catalog_with(tree: &dyn FileTree, cache: &mut dyn FactsCache) -> Result<Sbom, SbomError> {
    let entries = tree
        .entries()
        .map_err(|source| SbomError::Entries { source })?;
    let mut files = Vec::new();
    // One read buffer for every file (20,000 files of 64 KiB each would be 1.3 GB to zero).
    let mut buf = vec![0u8; 64 * 1024];
    for e in entries.iter().filter(|e| e.kind == EntryKind::Regular) {
        match cache.get(&e.path) {
            Some(f) => files.push(FileDigest {
                path: e.path.clone(),
                sha256: f.sha256,
                sha1: f.sha1,
                size: f.size,
            }),
            None => {
                let d = digest(tree, &e.path, &mut buf)?;
                cache.put(
                    &e.path,
                    FileFacts {
                        sha256: d.sha256.clone(),
                        sha1: d.sha1.clone(),
                        size: d.size,
                        scan: None,
                    },
                );
                files.push(d);
            }
        }
    }
    let mut ctx = Ctx {
        tree,
        entries: entries.into_iter().map(|e| (e.path.clone(), e)).collect(),
        distro: None,
        notes: Vec::new(),
        packages: Vec::new(),
        links: BTreeMap::new(),
    };
    ctx.distro = osrelease::find(&mut ctx)?;
    dpkg::catalog(&mut ctx)?;
    apk::catalog(&mut ctx)?;
    rpm::catalog(&mut ctx)?;
    python::catalog(&mut ctx)?;
    npm::catalog(&mut ctx)?;
    cargo::catalog_lockfiles(&mut ctx)?;
    scan_binaries(&mut ctx, cache)?;

    let Ctx {
        distro,
        mut notes,
        mut packages,
        ..
    } = ctx;
    for p in &mut packages {
        p.files.sort();
        p.files.dedup();
        p.licenses.sort();
        p.licenses.dedup();
    }
    packages.sort_by(|a, b| {
        (a.kind, &a.name, &a.version, &a.found_in, &a.purl).cmp(&(
            b.kind,
            &b.name,
            &b.version,
            &b.found_in,
            &b.purl,
        ))
    });
    packages.dedup();
    notes.sort();
    notes.dedup();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Sbom {
        distro,
        packages,
        files,
        notes,
    })
}

/// Streams one file through SHA-256 and SHA-1.
fn digest(tree: &dyn FileTree, path: &str, buf: &mut [u8]) -> Result<FileDigest, SbomError> {
    let err = |source| SbomError::Read {
        path: path.to_owned(),
        source,
    };
    let mut r = tree.open(path).map_err(err)?;
    let mut sha256 = Sha256::new();
    let mut sha1 = Sha1::new();
    let mut size = 0u64;
    loop {
        let n = r.read(buf).map_err(err)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        sha256.update(chunk);
        sha1.update(chunk);
        size += n as u64;
    }
    Ok(FileDigest {
        path: path.to_owned(),
        sha256: hex::encode(sha256.finalize()),
        sha1: hex::encode(sha1.finalize()),
        size,
    })
}

/// Shared state of one catalog run.
pub(crate) struct Ctx<'a> {
    tree: &'a dyn FileTree,
    entries: BTreeMap<String, FileEntry>,
    pub(crate) distro: Option<Distro>,
    notes: Vec<String>,
    packages: Vec<Package>,
    /// Symlink targets read so far (`None`: unreadable).
    links: BTreeMap<String, Option<String>>,
}

/// Most symlinks followed (inside the tree) to resolve one path, as Linux's `MAXSYMLINKS`.
const MAX_LINK_HOPS: usize = 40;

impl Ctx<'_> {
    /// Records what was skipped and why.
    pub(crate) fn note(&mut self, msg: impl Into<String>) {
        self.notes.push(msg.into());
    }

    /// Adds a package.
    pub(crate) fn push(&mut self, p: Package) {
        self.packages.push(p);
    }

    /// The entry at `path`, if any.
    pub(crate) fn entry(&self, path: &str) -> Option<&FileEntry> {
        self.entries.get(path)
    }

    /// Paths of regular files for which `pred` holds, in order.
    pub(crate) fn regular_files(&self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        self.entries
            .values()
            .filter(|e| e.kind == EntryKind::Regular && pred(&e.path))
            .map(|e| e.path.clone())
            .collect()
    }

    /// Regular files below directory `dir`, except those below a nested `skip` directory
    /// (`node_modules`) at any depth.
    pub(crate) fn files_below(&self, dir: &str, skip: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        let nested = format!("/{skip}/");
        self.entries
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, e)| {
                e.kind == EntryKind::Regular
                    && !p
                        .get(prefix.len() - 1..)
                        .is_some_and(|rest| rest.contains(&nested))
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Keeps the paths that exist in the tree as something other than a directory — directly,
    /// or once symlinked directories on the way are resolved inside the tree (a package lists
    /// `/lib/x/libz.so.1`, the file is at `/usr/lib/x/libz.so.1` under a usrmerged `/lib`).
    pub(crate) fn existing_files<I: IntoIterator<Item = String>>(
        &mut self,
        paths: I,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for p in paths {
            if self.is_non_directory(&p) {
                out.push(p);
            } else if let Some(real) = self.resolve_parents(&p)
                && self.is_non_directory(&real)
            {
                out.push(real);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn is_non_directory(&self, path: &str) -> bool {
        self.entries
            .get(path)
            .is_some_and(|e| e.kind != EntryKind::Directory)
    }

    /// `path` with every symlink among its directories replaced by its target, lexically and
    /// never above the tree's root; `None` when a link cannot be read or there are too many.
    fn resolve_parents(&mut self, path: &str) -> Option<String> {
        let mut todo: Vec<String> = path.rsplit('/').map(str::to_owned).collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(comp) = todo.pop() {
            match comp.as_str() {
                "" | "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => done.push(comp),
            }
            if todo.iter().all(|c| c.is_empty()) {
                break; // the last component itself stays as it is
            }
            let cur = format!("/{}", done.join("/"));
            if self
                .entries
                .get(&cur)
                .is_none_or(|e| e.kind != EntryKind::Symlink)
            {
                continue;
            }
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return None;
            }
            let target = self.link_target(&cur)?;
            done.pop();
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(target.rsplit('/').map(str::to_owned));
        }
        Some(format!("/{}", done.join("/")))
    }

    fn link_target(&mut self, path: &str) -> Option<String> {
        if let Some(t) = self.links.get(path) {
            return t.clone();
        }
        let t = self.tree.read_link(path).ok();
        self.links.insert(path.to_owned(), t.clone());
        t
    }

    /// Reads the regular file at `path`, at most `cap` bytes. `None` (with a note) when it is
    /// absent, not a regular file, or larger than `cap`.
    pub(crate) fn read(&mut self, path: &str, cap: u64) -> Result<Option<Vec<u8>>, SbomError> {
        match self.entries.get(path).map(|e| (e.kind, e.size)) {
            None => return Ok(None),
            Some((EntryKind::Regular, size)) if size > cap => {
                self.note(format!(
                    "{path}: skipped, {size} bytes is over the {cap}-byte limit"
                ));
                return Ok(None);
            }
            Some((EntryKind::Regular, _)) => {}
            Some((kind, _)) => {
                self.note(format!(
                    "{path}: skipped, a {kind:?} and not a regular file"
                ));
                return Ok(None);
            }
        }
        let err = |source| SbomError::Read {
            path: path.to_owned(),
            source,
        };
        let r = self.tree.open(path).map_err(err)?;
        let mut buf = Vec::new();
        r.take(cap.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(err)?;
        if buf.len() as u64 > cap {
            self.note(format!(
                "{path}: skipped, grew over the {cap}-byte limit while read"
            ));
            return Ok(None);
        }
        Ok(Some(buf))
    }

    /// [`Ctx::read`] as text (invalid UTF-8 replaced).
    pub(crate) fn read_text(&mut self, path: &str, cap: u64) -> Result<Option<String>, SbomError> {
        Ok(self.read(path, cap)?.map(|b| match String::from_utf8(b) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }))
    }
}

/// The parent directory of an absolute path (`/a/b` → `/a`, `/a` → ``).
pub(crate) fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Joins a relative path onto an absolute directory and normalises `.` and `..` (never above
/// the root). `None` for an absolute `rel` that is empty.
pub(crate) fn join_normalised(dir: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    let start = if rel.starts_with('/') { "" } else { dir };
    for comp in start.split('/').chain(rel.split('/')) {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

/// Scans executables (any `x` bit, ELF magic) for Go build info and cargo-auditable data.
fn scan_binaries(ctx: &mut Ctx<'_>, cache: &mut dyn FactsCache) -> Result<(), SbomError> {
    let candidates: Vec<(String, u64)> = ctx
        .entries
        .values()
        .filter(|e| e.kind == EntryKind::Regular && e.mode & 0o111 != 0 && e.size >= 64)
        .map(|e| (e.path.clone(), e.size))
        .collect();
    if candidates.len() > limits::BINARIES {
        ctx.note(format!(
            "{} executables: only the first {} scanned for Go/cargo-auditable data",
            candidates.len(),
            limits::BINARIES
        ));
    }
    for (path, _) in candidates.into_iter().take(limits::BINARIES) {
        let known = cache.get(&path);
        if let Some((packages, notes)) = known.as_ref().and_then(|f| f.scan.clone()) {
            ctx.packages.extend(packages);
            ctx.notes.extend(notes);
            continue;
        }
        let (packages_before, notes_before) = (ctx.packages.len(), ctx.notes.len());
        scan_binary(ctx, &path)?;
        if let Some(mut facts) = known {
            facts.scan = Some((
                ctx.packages
                    .get(packages_before..)
                    .unwrap_or_default()
                    .to_vec(),
                ctx.notes.get(notes_before..).unwrap_or_default().to_vec(),
            ));
            cache.put(&path, facts);
        }
    }
    Ok(())
}

/// Scans one executable for Go build info, cargo-auditable data and version banners; what it
/// finds goes into `ctx` (packages and notes about this file only).
fn scan_binary(ctx: &mut Ctx<'_>, path: &str) -> Result<(), SbomError> {
    if !starts_with_elf_magic(ctx.tree, path) {
        return Ok(());
    }
    let Some(bytes) = ctx.read(path, limits::BINARY_BYTES)? else {
        return Ok(());
    };
    let elf = match elf::Elf::parse(&bytes) {
        Ok(elf) => elf,
        Err(reason) => {
            ctx.note(format!("{path}: ELF not scanned: {reason}"));
            return Ok(());
        }
    };
    go::catalog_binary(ctx, path, &elf, &bytes);
    cargo::catalog_auditable(ctx, path, &elf);
    binary::catalog_binary(ctx, path, &bytes);
    Ok(())
}

fn starts_with_elf_magic(tree: &dyn FileTree, path: &str) -> bool {
    let mut magic = [0u8; 4];
    tree.open(path)
        .and_then(|mut r| r.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_normalises_and_stays_under_root() {
        assert_eq!(
            join_normalised("/usr/lib/python3/site-packages", "a/b.py").as_deref(),
            Some("/usr/lib/python3/site-packages/a/b.py")
        );
        assert_eq!(
            join_normalised("/usr/lib/py", "../../../../bin/x").as_deref(),
            Some("/bin/x")
        );
        assert_eq!(join_normalised("/a", "/etc/x").as_deref(), Some("/etc/x"));
        assert_eq!(join_normalised("/", ".."), None);
    }
}
