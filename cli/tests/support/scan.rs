//! Looking for a value in everything a build left: files, names, and what gzip, zstd and tar
//! data unpack to. Shared by the secret and SSH tests (included by path).
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::Path;

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn find(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Scans `data` (and, recursively, what it decompresses or unpacks to: gzip, zstd, tar) for
/// every needle; returns `where: form` for each hit.
pub fn scan(label: &str, data: &[u8], needles: &[(String, Vec<u8>)], hits: &mut Vec<String>) {
    for (form, n) in needles {
        if find(data, n) {
            hits.push(format!("{label}: {form}"));
        }
    }
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        if flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .is_ok()
        {
            scan(&format!("{label} (gunzip)"), &out, needles, hits);
        }
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        if let Ok(out) = zstd::stream::decode_all(data) {
            scan(&format!("{label} (unzstd)"), &out, needles, hits);
        }
    } else if data.len() > 262 && &data[257..262] == b"ustar" {
        let mut a = tar::Archive::new(data);
        if let Ok(entries) = a.entries() {
            for e in entries.flatten() {
                let mut e = e;
                let name = e
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                for (form, n) in needles {
                    if find(name.as_bytes(), n) {
                        hits.push(format!("{label}:{name} (entry name): {form}"));
                    }
                }
                let mut body = Vec::new();
                if e.read_to_end(&mut body).is_ok() {
                    scan(&format!("{label}:{name}"), &body, needles, hits);
                }
            }
        }
    }
}

/// Scans every regular file under `dir` (names too).
pub fn scan_tree(dir: &Path, needles: &[(String, Vec<u8>)], hits: &mut Vec<String>) -> usize {
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            for (form, n) in needles {
                if find(p.as_os_str().as_encoded_bytes(), n) {
                    hits.push(format!("{} (path): {form}", p.display()));
                }
            }
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                files += 1;
                scan(
                    &p.display().to_string(),
                    &fs::read(&p).unwrap(),
                    needles,
                    hits,
                );
            }
        }
    }
    files
}
