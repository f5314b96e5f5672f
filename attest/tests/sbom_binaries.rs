//! Go build info and cargo-auditable data are read from executables.
//!
//! Neither a Go toolchain nor `cargo auditable` is available where these tests were written,
//! so most binaries are synthetic: minimal ELF64 files built here with the exact on-disk
//! formats (Go ≥ 1.18 inline build info with its module-info sentinels; zlib-compressed
//! cargo-auditable JSON in `.dep-v0`). No binary is committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kiln_attest::sbom::{DirTree, PackageKind, catalog};

/// A little-endian ELF64 executable whose only content is the given sections.
fn elf64(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut shstrtab = vec![0u8];
    let mut name_offsets = Vec::new();
    for name in [".shstrtab"].iter().chain(sections.iter().map(|(n, _)| n)) {
        name_offsets.push(u32::try_from(shstrtab.len()).unwrap());
        shstrtab.extend_from_slice(name.as_bytes());
        shstrtab.push(0);
    }
    let mut out = vec![0u8; 64];
    let mut headers = vec![[0u8; 64]]; // the null section
    let place = |out: &mut Vec<u8>, name: u32, ty: u32, data: &[u8]| {
        while !out.len().is_multiple_of(16) {
            out.push(0);
        }
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&(out.len() as u64).to_le_bytes());
        h[0x20..0x28].copy_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
        h
    };
    headers.push(place(&mut out, name_offsets[0], 3, &shstrtab));
    for (i, (_, data)) in sections.iter().enumerate() {
        headers.push(place(&mut out, name_offsets[i + 1], 1, data));
    }
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let shoff = out.len() as u64;
    for h in &headers {
        out.extend_from_slice(h);
    }
    out[0..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little endian
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    out[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out[0x3c..0x3e].copy_from_slice(&u16::try_from(headers.len()).unwrap().to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes()); // e_shstrndx
    out
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let b = u8::try_from(n & 0x7f).unwrap();
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Go ≥ 1.18 `.go.buildinfo`: magic, pointer size, flags (2 = inline strings), padding to 32
/// bytes, then the Go version and the module info as varint-prefixed strings, the module info
/// framed by the linker's 16-byte sentinels.
fn go_buildinfo(go_version: &str, modinfo: &str) -> Vec<u8> {
    const START: &[u8; 16] = b"0w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xe6";
    const END: &[u8; 16] = b"\xf92C1\x86\x18 r\x00\x82B\x10A\x16\xd8\xf2";
    let mut b = b"\xff Go buildinf:".to_vec();
    b.push(8);
    b.push(2);
    b.resize(32, 0);
    varint(go_version.len(), &mut b);
    b.extend_from_slice(go_version.as_bytes());
    let framed: Vec<u8> = [START.as_slice(), modinfo.as_bytes(), END.as_slice()].concat();
    varint(framed.len(), &mut b);
    b.extend_from_slice(&framed);
    b
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn install(root: &Path, path: &str, bytes: &[u8]) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const MODINFO: &str = "path\texample.com/app/cmd/app\n\
mod\texample.com/app\tv1.4.0\th1:AAAA=\n\
dep\tgithub.com/spf13/cobra\tv1.8.1\th1:e5/va=\n\
dep\tgolang.org/x/sys\tv0.22.0\th1:RI27o=\n\
dep\tgithub.com/old/yaml\tv2.0.0\th1:x=\n\
=>\tgithub.com/new/yaml\tv2.0.1\th1:y=\n\
build\t-compiler=gc\nbuild\tGOOS=linux\n";

fn purls(root: &Path, kind: PackageKind) -> Vec<(String, String)> {
    let sbom = catalog(&DirTree::new(root)).unwrap();
    sbom.packages
        .iter()
        .filter(|p| p.kind == kind)
        .map(|p| (p.purl.clone(), p.found_in.clone()))
        .collect()
}

#[test]
fn go_modules_are_read_from_go_buildinfo() {
    let dir = tempfile::tempdir().unwrap();
    let elf = elf64(&[
        (".text", b"\xc3"),
        (".go.buildinfo", &go_buildinfo("go1.22.5", MODINFO)),
    ]);
    install(dir.path(), "/usr/local/bin/app", &elf);
    let found = "/usr/local/bin/app".to_owned();
    assert_eq!(
        purls(dir.path(), PackageKind::Go),
        [
            (
                "pkg:golang/example.com/app@v1.4.0".to_owned(),
                found.clone()
            ),
            (
                "pkg:golang/github.com/new/yaml@v2.0.1".to_owned(),
                found.clone()
            ),
            (
                "pkg:golang/github.com/spf13/cobra@v1.8.1".to_owned(),
                found.clone()
            ),
            (
                "pkg:golang/golang.org/x/sys@v0.22.0".to_owned(),
                found.clone()
            ),
            ("pkg:golang/stdlib@1.22.5".to_owned(), found),
        ]
    );
}

#[test]
fn go_buildinfo_is_found_by_its_magic_without_the_section_name() {
    let dir = tempfile::tempdir().unwrap();
    let elf = elf64(&[(
        ".data",
        &go_buildinfo(
            "go1.22.5",
            "path\tx\nmod\tx\t(devel)\t\ndep\tgolang.org/x/text\tv0.16.0\th1:a=\n",
        ),
    )]);
    install(dir.path(), "/bin/stripped", &elf);
    assert_eq!(
        purls(dir.path(), PackageKind::Go),
        [
            (
                "pkg:golang/golang.org/x/text@v0.16.0".to_owned(),
                "/bin/stripped".to_owned()
            ),
            (
                "pkg:golang/stdlib@1.22.5".to_owned(),
                "/bin/stripped".to_owned()
            ),
        ]
    );
}

#[test]
fn cargo_auditable_registry_crates_are_read_from_dep_v0() {
    let dir = tempfile::tempdir().unwrap();
    let json = br#"{"packages":[
        {"name":"app","version":"0.1.0","source":"local","root":true,"dependencies":[1,2,3]},
        {"name":"serde","version":"1.0.210","source":"crates.io"},
        {"name":"cc","version":"1.1.0","source":"crates.io","kind":"build"},
        {"name":"fork","version":"0.1.0","source":"git"},
        {"name":"itoa","version":"1.0.11","source":"crates.io","kind":"runtime"}]}"#;
    install(
        dir.path(),
        "/usr/bin/rusty",
        &elf64(&[(".dep-v0", &zlib(json))]),
    );
    assert_eq!(
        purls(dir.path(), PackageKind::Cargo),
        [
            (
                "pkg:cargo/itoa@1.0.11".to_owned(),
                "/usr/bin/rusty".to_owned()
            ),
            (
                "pkg:cargo/serde@1.0.210".to_owned(),
                "/usr/bin/rusty".to_owned()
            ),
        ]
    );
}

#[test]
fn malformed_binaries_are_noted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let mut truncated_go = go_buildinfo("go1.22.5", MODINFO);
    truncated_go.truncate(40);
    install(
        dir.path(),
        "/bin/a",
        &elf64(&[(".go.buildinfo", &truncated_go)]),
    );
    install(dir.path(), "/bin/b", &elf64(&[(".dep-v0", b"not zlib")]));
    let mut bad_headers = elf64(&[]);
    bad_headers[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
    bad_headers[0x3c..0x3e].copy_from_slice(&100u16.to_le_bytes());
    install(dir.path(), "/bin/c", &bad_headers);
    let sbom = catalog(&DirTree::new(dir.path())).unwrap();
    assert!(sbom.packages.is_empty(), "{:?}", sbom.packages);
    assert_eq!(sbom.notes.len(), 3, "{:?}", sbom.notes);
    assert!(
        sbom.notes
            .iter()
            .any(|n| n.starts_with("/bin/a: Go build info not read"))
    );
    assert!(
        sbom.notes
            .iter()
            .any(|n| n.starts_with("/bin/b: .dep-v0 section does not decompress"))
    );
    assert!(
        sbom.notes
            .iter()
            .any(|n| n.starts_with("/bin/c: ELF not scanned"))
    );
}

/// Real Go binaries from the host (skopeo, umoci, docker: installed by
/// `KILN_DEPS_FULL=1 scripts/deps.sh`), copied into a temporary tree — never committed.
#[test]
fn go_build_info_is_read_from_real_go_binaries_when_the_host_has_some() {
    let candidates = [
        "/usr/bin/umoci",
        "/usr/bin/skopeo",
        "/usr/sbin/runc",
        "/usr/bin/docker",
    ];
    let present: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|p| Path::new(p).is_file())
        .collect();
    if present.is_empty() {
        println!(
            "skipped: no Go binary on this host (KILN_DEPS_FULL=1 scripts/deps.sh installs some)"
        );
        return;
    }
    for host in present {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(host).unwrap();
        install(dir.path(), host, &bytes);
        let sbom = catalog(&DirTree::new(dir.path())).unwrap();
        let go: Vec<&kiln_attest::sbom::Package> = sbom
            .packages
            .iter()
            .filter(|p| p.kind == PackageKind::Go)
            .collect();
        println!(
            "{host}: {:?}; notes {:?}",
            go.iter().map(|p| &p.purl).collect::<Vec<_>>(),
            sbom.notes
        );
        // Every Go ≥ 1.18 binary names its toolchain; Debian's are built in GOPATH mode, so
        // they carry no module lines (a note says so), module builds list their modules.
        let stdlib = go
            .iter()
            .find(|p| p.name == "stdlib")
            .expect("stdlib from build info");
        assert!(stdlib.version.starts_with("1."), "{}", stdlib.version);
        assert!(stdlib.purl.starts_with("pkg:golang/stdlib@1."));
        if go.len() == 1 {
            assert!(
                sbom.notes
                    .iter()
                    .any(|n| n.contains("without module information"))
            );
        }
    }
}
