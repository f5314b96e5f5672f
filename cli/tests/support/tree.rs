//! File-tree snapshots for differential tests: walk a directory into a sorted list of entries
//! (path, type, permission bits, owner, content digest, link target; never times) and diff two
//! such lists into readable lines.
//!
//! Self-contained (std only, with its own SHA-256) so that any test crate can include it with
//! `#[path = "support/tree.rs"] mod tree;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl Kind {
    pub fn letter(self) -> char {
        match self {
            Kind::File => 'f',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::Fifo => 'p',
            Kind::CharDev => 'c',
            Kind::BlockDev => 'b',
            Kind::Socket => 's',
        }
    }

    pub fn from_letter(c: char) -> Option<Kind> {
        Some(match c {
            'f' => Kind::File,
            'd' => Kind::Dir,
            'l' => Kind::Symlink,
            'p' => Kind::Fifo,
            'c' => Kind::CharDev,
            'b' => Kind::BlockDev,
            's' => Kind::Socket,
            _ => return None,
        })
    }
}

/// One file of a tree. `path` is absolute-style (`/etc/passwd`), relative to the walked root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`& 0o7777`). Symlinks: not compared.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Files: `sha256:<hex>` of the content; symlinks: the target; devices: `major,minor`.
    pub detail: String,
}

impl fmt::Display for Entry {
    /// `f 0644 0:0 /path sha256:...` — the same format `parse_line` reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04o} {}:{} {}",
            self.kind.letter(),
            self.mode,
            self.uid,
            self.gid,
            self.path
        )?;
        if !self.detail.is_empty() {
            write!(f, " {}", self.detail)?;
        }
        Ok(())
    }
}

/// A snapshot: entries keyed (and so sorted) by path.
pub type Tree = BTreeMap<String, Entry>;

/// Walks `root` (not following symlinks) into a [`Tree`]. The root itself is not an entry.
pub fn walk(root: &Path) -> io::Result<Tree> {
    let mut out = Tree::new();
    walk_into(root, "", &mut out)?;
    Ok(out)
}

fn walk_into(dir: &Path, prefix: &str, out: &mut Tree) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let full = dir.join(&name);
        let rel = format!("{prefix}/{}", name.to_string_lossy());
        let md = fs::symlink_metadata(&full)?;
        let ft = md.file_type();
        let (kind, detail) = if ft.is_symlink() {
            (
                Kind::Symlink,
                fs::read_link(&full)?.to_string_lossy().into_owned(),
            )
        } else if ft.is_dir() {
            (Kind::Dir, String::new())
        } else if ft.is_file() {
            (Kind::File, format!("sha256:{}", sha256_file(&full)?))
        } else if ft.is_fifo() {
            (Kind::Fifo, String::new())
        } else if ft.is_char_device() {
            (Kind::CharDev, dev_detail(md.rdev()))
        } else if ft.is_block_device() {
            (Kind::BlockDev, dev_detail(md.rdev()))
        } else {
            (Kind::Socket, String::new())
        };
        let mode = if kind == Kind::Symlink {
            0o777
        } else {
            md.mode() & 0o7777
        };
        out.insert(
            rel.clone(),
            Entry {
                path: rel.clone(),
                kind,
                mode,
                uid: md.uid(),
                gid: md.gid(),
                detail,
            },
        );
        if kind == Kind::Dir {
            walk_into(&full, &rel, out)?;
        }
    }
    Ok(())
}

fn dev_detail(rdev: u64) -> String {
    // glibc's encoding of major/minor.
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
    format!("{major},{minor}")
}

/// Which attributes [`diff`] compares.
#[derive(Debug, Clone, Copy)]
pub struct Compare {
    pub owner: bool,
    pub mode: bool,
}

impl Default for Compare {
    fn default() -> Self {
        Compare {
            owner: true,
            mode: true,
        }
    }
}

/// Differences between `left` and `right` as readable lines (empty when equal):
/// `only in <left_name>: <entry>`, `only in <right_name>: <entry>`, `differs <path>: ...`.
pub fn diff(
    left_name: &str,
    left: &Tree,
    right_name: &str,
    right: &Tree,
    cmp: Compare,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (path, l) in left {
        match right.get(path) {
            None => lines.push(format!("only in {left_name}: {l}")),
            Some(r) => {
                let mut what = Vec::new();
                if l.kind != r.kind {
                    what.push(format!("type {} vs {}", l.kind.letter(), r.kind.letter()));
                }
                if cmp.mode && l.kind == r.kind && l.kind != Kind::Symlink && l.mode != r.mode {
                    what.push(format!("mode {:04o} vs {:04o}", l.mode, r.mode));
                }
                if cmp.owner && (l.uid, l.gid) != (r.uid, r.gid) {
                    what.push(format!("owner {}:{} vs {}:{}", l.uid, l.gid, r.uid, r.gid));
                }
                if l.kind == r.kind && l.detail != r.detail {
                    let label = if l.kind == Kind::Symlink {
                        "target"
                    } else {
                        "content"
                    };
                    what.push(format!("{label} {} vs {}", l.detail, r.detail));
                }
                if !what.is_empty() {
                    lines.push(format!(
                        "differs {path} ({left_name} vs {right_name}): {}",
                        what.join(", ")
                    ));
                }
            }
        }
    }
    for (path, r) in right {
        if !left.contains_key(path) {
            lines.push(format!("only in {right_name}: {r}"));
        }
    }
    lines
}

/// The entries of `tree` at or below any of `roots` (e.g. `/out`).
pub fn restrict(tree: &Tree, roots: &[String]) -> Tree {
    tree.iter()
        .filter(|(p, _)| {
            roots.iter().any(|r| {
                let r = r.trim_end_matches('/');
                p.as_str() == r || p.starts_with(&format!("{r}/"))
            })
        })
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect()
}

/// Parses one line of a tree description, the [`Entry`] display format:
/// `f 0644 0:0 /path sha256:<hex>` or, for hand-written expectations, `f 0644 0:0 /path
/// text:<content>` where `<content>` is taken to the end of the line with `\n`, `\t` and `\\`
/// escapes (so `text:hi\n` is the 3-byte file "hi\n"); `l 0777 0:0 /link target`;
/// `d 0755 0:0 /dir`.
pub fn parse_line(line: &str) -> Result<Entry, String> {
    let mut parts = line.splitn(5, ' ');
    let bad = || format!("bad tree line: {line:?}");
    let kind = parts
        .next()
        .and_then(|k| {
            let mut c = k.chars();
            let first = c.next()?;
            if c.next().is_some() {
                return None;
            }
            Kind::from_letter(first)
        })
        .ok_or_else(bad)?;
    let mode = u32::from_str_radix(parts.next().ok_or_else(bad)?, 8).map_err(|_| bad())?;
    let (uid, gid) = parts
        .next()
        .and_then(|o| o.split_once(':'))
        .ok_or_else(bad)?;
    let uid = uid.parse().map_err(|_| bad())?;
    let gid = gid.parse().map_err(|_| bad())?;
    let path = parts.next().ok_or_else(bad)?.to_string();
    if !path.starts_with('/') {
        return Err(bad());
    }
    let mut detail = parts.next().unwrap_or("").to_string();
    if kind == Kind::File {
        if let Some(text) = detail.strip_prefix("text:") {
            detail = format!("sha256:{}", sha256_hex(&unescape(text)));
        } else if !detail.starts_with("sha256:") {
            return Err(bad());
        }
    }
    let mode = if kind == Kind::Symlink { 0o777 } else { mode };
    Ok(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
        detail,
    })
}

/// Parses a whole description: one entry a line; blank lines and `#` comments are skipped.
pub fn parse(text: &str) -> Result<Tree, String> {
    let mut out = Tree::new();
    for line in text.lines() {
        let t = line.trim_end();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let e = parse_line(t)?;
        out.insert(e.path.clone(), e);
    }
    Ok(out)
}

fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push(b'\n'),
                Some('t') => out.push(b'\t'),
                Some('\\') => out.push(b'\\'),
                Some(o) => {
                    out.push(b'\\');
                    let mut b = [0; 4];
                    out.extend_from_slice(o.encode_utf8(&mut b).as_bytes());
                }
                None => out.push(b'\\'),
            }
        } else {
            let mut b = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
    out
}

/// Renders a tree, one entry a line.
pub fn render(tree: &Tree) -> String {
    let mut s = String::new();
    for e in tree.values() {
        s.push_str(&e.to_string());
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4), so this file needs no crate.

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Incremental SHA-256.
#[derive(Debug, Clone)]
pub struct Sha256 {
    h: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    total: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256 {
            h: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            buf: [0; 64],
            buf_len: 0,
            total: 0,
        }
    }
}

impl Sha256 {
    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let n = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
            self.buf_len += n;
            data = &data[n..];
            if self.buf_len == 64 {
                let block = self.buf;
                self.compress(&block);
                self.buf_len = 0;
            }
        }
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.h.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }

    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.total.wrapping_mul(8);
        self.update(&[0x80]);
        while self.buf_len != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 32];
        for (i, v) in self.h.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
        }
        out
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut s = Sha256::default();
    s.update(data);
    hex(&s.finish())
}

/// Lowercase hex SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut s = Sha256::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        s.update(&buf[..n]);
    }
    Ok(hex(&s.finish()))
}
