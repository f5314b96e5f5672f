//! Golden tests: each `vectors/sbom/<case>/rootfs` is catalogued through `DirTree` and the
//! result — distribution, the (kind, name, version, purl, found_in) of every package, and the
//! notes —
//! must equal `vectors/sbom/<case>/expected.json` exactly. `KILN_BLESS=1` rewrites the
//! expected files (review the diff before committing it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kiln_attest::sbom::{DirTree, catalog};
use serde_json::{Value, json};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/sbom"));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("vectors/sbom")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("rootfs").is_dir())
        .collect();
    out.sort();
    out
}

fn summary(case: &Path) -> Value {
    let sbom = catalog(&DirTree::new(case.join("rootfs"))).expect("catalog");
    let packages: Vec<Value> = sbom
        .packages
        .iter()
        .map(|p| json!({ "kind": p.kind.as_str(), "name": p.name, "version": p.version, "purl": p.purl, "found_in": p.found_in }))
        .collect();
    json!({ "distro": sbom.distro, "packages": packages, "notes": sbom.notes })
}

#[test]
fn every_fixture_rootfs_catalogs_to_its_expected_packages() {
    let cases = cases();
    assert!(
        cases.len() >= 4,
        "expected the sbom fixture cases, found {cases:?}"
    );
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let got = summary(&case);
        let path = case.join("expected.json");
        if bless {
            std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
            continue;
        }
        let want: Value = serde_json::from_slice(&std::fs::read(&path).expect("expected.json"))
            .expect("expected.json is JSON");
        if got != want {
            failures.push(format!(
                "{}:\n got: {}\nwant: {}",
                case.display(),
                serde_json::to_string_pretty(&got).unwrap(),
                serde_json::to_string_pretty(&want).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn dpkg_files_and_dep5_licenses_are_attached_to_their_package() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vectors/sbom/debian12/rootfs"
    ));
    let sbom = catalog(&DirTree::new(dir)).unwrap();
    let zlib = sbom
        .packages
        .iter()
        .find(|p| p.name == "zlib1g")
        .expect("zlib1g");
    assert_eq!(
        zlib.files,
        [
            "/usr/lib/x86_64-linux-gnu/libz.so.1",
            "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
            "/usr/share/doc/zlib1g/copyright"
        ]
    );
    assert_eq!(zlib.licenses, ["Zlib"]);
    assert_eq!(zlib.source.as_deref(), Some("zlib"));
    assert_eq!(zlib.arch.as_deref(), Some("amd64"));
    let zstd = sbom
        .packages
        .iter()
        .find(|p| p.name == "libzstd1")
        .expect("libzstd1");
    assert!(
        zstd.licenses.contains(&"BSD-3-clause or GPL-2".to_owned()),
        "{:?}",
        zstd.licenses
    );
    // The .list says /lib/...; /lib is a symlink to usr/lib (usrmerge): the files are
    // attributed at their real paths. Regular files are hashed; the symlink is owned but not
    // hashed (nothing to hash).
    let libz = sbom
        .files
        .iter()
        .find(|f| f.path == "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13")
        .unwrap();
    assert_eq!(libz.size, 16);
    assert!(!sbom.files.iter().any(|f| f.path.ends_with("/libz.so.1")));
}

#[test]
fn python_record_paths_resolve_relative_to_site_packages() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vectors/sbom/languages/rootfs"
    ));
    let sbom = catalog(&DirTree::new(dir)).unwrap();
    let requests = sbom.packages.iter().find(|p| p.name == "requests").unwrap();
    assert_eq!(
        requests.files,
        [
            "/usr/local/bin/requests-demo",
            "/usr/local/lib/python3.12/site-packages/requests-2.32.3.dist-info/METADATA",
            "/usr/local/lib/python3.12/site-packages/requests-2.32.3.dist-info/RECORD",
            "/usr/local/lib/python3.12/site-packages/requests/__init__.py",
        ]
    );
    assert_eq!(requests.licenses, ["Apache-2.0"]);
    let te = sbom
        .packages
        .iter()
        .find(|p| p.name == "typing_extensions")
        .unwrap();
    assert_eq!(te.licenses, ["PSF-2.0"]);
}

#[test]
fn npm_packages_own_their_directory_but_not_nested_packages() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vectors/sbom/languages/rootfs"
    ));
    let sbom = catalog(&DirTree::new(dir)).unwrap();
    let files = |name: &str| {
        sbom.packages
            .iter()
            .find(|p| p.name == name && p.found_in.ends_with("/package.json"))
            .unwrap()
            .files
            .clone()
    };
    assert_eq!(files("express"), ["/app/node_modules/express/package.json"]);
    assert_eq!(
        files("debug"),
        ["/app/node_modules/express/node_modules/debug/package.json"]
    );
    assert_eq!(
        files("lodash"),
        [
            "/app/node_modules/lodash/fp/package.json",
            "/app/node_modules/lodash/package.json"
        ]
    );
}
