//! Go: the build information the linker embeds in every Go binary (`runtime/debug.BuildInfo`).
//!
//! Located in the `.go.buildinfo` section (else by its 16-byte-aligned magic). Go ≥ 1.18
//! writes the Go version and the module info inline as varint-length-prefixed strings (flag
//! bit 2); older binaries hold pointers into the data segment and are noted, not read.

use super::elf::Elf;
use super::{Ctx, limits};
use crate::sbom::model::{Package, PackageKind};
use crate::sbom::purl::Purl;

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Flag: strings are inline (Go ≥ 1.18).
const FLAG_INLINE: u8 = 0x2;
/// Longest version or module-info string accepted.
const MAX_STRING: u64 = 4 << 20;

pub(super) fn catalog_binary(ctx: &mut Ctx<'_>, path: &str, elf: &Elf<'_>, bytes: &[u8]) {
    let Some(info) = elf.section(".go.buildinfo").or_else(|| find_magic(bytes)) else {
        return;
    };
    let (go_version, modinfo) = match parse_buildinfo(info) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            ctx.note(format!(
                "{path}: Go binary with pre-1.18 build info, modules not catalogued"
            ));
            return;
        }
        Err(reason) => {
            ctx.note(format!("{path}: Go build info not read: {reason}"));
            return;
        }
    };
    // The standard library is linked into every Go binary: its version is the toolchain's
    // (`go1.22.5`, maybe followed by ` X:boringcrypto`), as `pkg:golang/stdlib@1.22.5`.
    let toolchain = go_version.split_whitespace().next().unwrap_or_default();
    if let Some(v) = toolchain.strip_prefix("go").filter(|v| !v.is_empty()) {
        push(ctx, path, "stdlib".to_owned(), v.to_owned());
    }
    let modules = modules(&modinfo);
    if modules.is_empty() {
        ctx.note(format!(
            "{path}: Go binary without module information (built in GOPATH mode or as a \
             development build): only the Go standard library is catalogued"
        ));
    }
    for (module, version) in modules.into_iter().take(limits::PACKAGES_PER_SOURCE) {
        push(ctx, path, module, version);
    }
}

fn push(ctx: &mut Ctx<'_>, path: &str, module: String, version: String) {
    let (namespace, name) = module.rsplit_once('/').unwrap_or(("", module.as_str()));
    let purl = Purl::new("golang", name, &version)
        .namespace(namespace.split('/'))
        .build();
    ctx.push(Package {
        kind: PackageKind::Go,
        name: module.clone(),
        version,
        purl,
        licenses: Vec::new(),
        files: Vec::new(),
        found_in: path.to_owned(),
        arch: None,
        supplier: None,
        source: None,
    });
}

fn find_magic(bytes: &[u8]) -> Option<&[u8]> {
    (0..bytes.len())
        .step_by(16)
        .find(|&i| bytes.get(i..i + MAGIC.len()) == Some(MAGIC.as_slice()))
        .and_then(|i| bytes.get(i..))
}

/// (Go version, module info) from inline build info; `Ok(None)` for the pointer format.
fn parse_buildinfo(b: &[u8]) -> Result<Option<(String, String)>, &'static str> {
    if b.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err("no build info magic");
    }
    let flags = *b.get(15).ok_or("truncated header")?;
    if flags & FLAG_INLINE == 0 {
        return Ok(None);
    }
    let rest = b.get(32..).ok_or("truncated header")?;
    let (version, rest) = varint_string(rest)?;
    let (modinfo, _) = varint_string(rest)?;
    // The module info is framed by 16-byte sentinels (cmd/go/internal/modload.ModInfoData).
    let modinfo = if modinfo.len() >= 33 && modinfo.get(modinfo.len() - 17) == Some(&b'\n') {
        modinfo.get(16..modinfo.len() - 16).unwrap_or_default()
    } else {
        modinfo
    };
    Ok(Some((
        String::from_utf8_lossy(version).into_owned(),
        String::from_utf8_lossy(modinfo).into_owned(),
    )))
}

fn varint_string(b: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let mut len: u64 = 0;
    let mut used = 0;
    for (i, byte) in b.iter().enumerate().take(10) {
        len |= u64::from(byte & 0x7f) << (7 * i);
        used = i + 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    if used == 0 || len > MAX_STRING {
        return Err("bad string length");
    }
    let end = usize::try_from(len).map_err(|_| "bad string length")? + used;
    let s = b.get(used..end).ok_or("string runs past the section")?;
    Ok((s, b.get(end..).unwrap_or_default()))
}

/// `(module, version)` of the main module (unless `(devel)`) and each dependency, a `=>`
/// replacement line taking the place of the dependency before it.
fn modules(modinfo: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in modinfo.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["mod" | "dep", path, version, ..] if *version != "(devel)" && !version.is_empty() => {
                out.push(((*path).to_owned(), (*version).to_owned()));
            }
            ["=>", path, version, ..] => {
                if let Some(last) = out.last_mut() {
                    *last = ((*path).to_owned(), (*version).to_owned());
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_lines_give_modules() {
        let m = "path\texample.com/app\nmod\texample.com/app\t(devel)\t\ndep\tgolang.org/x/sys\tv0.1.0\th1:x=\ndep\tgithub.com/a/b\tv1.0.0\th1:y=\n=>\tgithub.com/fork/b\tv1.0.1\th1:z=\nbuild\tGOOS=linux\n";
        assert_eq!(
            modules(m),
            vec![
                ("golang.org/x/sys".to_owned(), "v0.1.0".to_owned()),
                ("github.com/fork/b".to_owned(), "v1.0.1".to_owned())
            ]
        );
    }

    #[test]
    fn truncated_build_info_is_an_error() {
        let mut b = MAGIC.to_vec();
        b.extend([8, 2]);
        b.resize(32, 0);
        b.push(0x7f);
        assert!(parse_buildinfo(&b).is_err());
    }
}
