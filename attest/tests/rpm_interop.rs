//! The rpm cataloger against the real `rpm` (Debian's rpm 4.18): for the SQLite database of
//! `vectors/sbom/fedora40-rpm`, every package rpm lists, with its epoch, version, release,
//! arch, license, vendor, source rpm and files, is the package kiln's SBOM lists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kiln_attest::sbom::{DirTree, catalog};

const DB: &str = "usr/lib/sysimage/rpm/rpmdb.sqlite";

/// `rpm -qa` of the database in `dir`: name → (fields, files).
fn rpm_query(dir: &Path) -> BTreeMap<String, (String, Vec<String>)> {
    let out = Command::new("rpm")
        .args(["--define", "_db_backend sqlite", "--dbpath"])
        .arg(dir)
        .args([
            "-qa",
            "--qf",
            "@%{NAME}|%{EPOCH}:%{VERSION}-%{RELEASE}|%{ARCH}|%{LICENSE}|%{VENDOR}|%{SOURCERPM}\\n[%{FILENAMES}\\n]",
        ])
        .output()
        .expect("run rpm");
    assert!(
        out.status.success(),
        "rpm -qa: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut packages = BTreeMap::new();
    let mut current: Option<(String, String, Vec<String>)> = None;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        if let Some(fields) = line.strip_prefix('@') {
            if let Some((name, f, files)) = current.take() {
                packages.insert(name, (f, files));
            }
            let name = fields.split('|').next().unwrap().to_owned();
            current = Some((name, fields.replace("(none):", ""), Vec::new()));
        } else if let Some((_, _, files)) = current.as_mut()
            && !line.is_empty()
        {
            files.push(line.to_owned());
        }
    }
    if let Some((name, f, files)) = current {
        packages.insert(name, (f, files));
    }
    packages
}

#[test]
fn the_sqlite_rpmdb_catalogs_to_what_rpm_lists() {
    if Command::new("rpm").arg("--version").output().is_err() {
        println!("SKIP: rpm is not installed (apt-get install rpm; scripts/deps.sh does)");
        return;
    }
    let fixture = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vectors/sbom/fedora40-rpm/rootfs"
    ));
    // A root file system holding the database and every file rpm says the packages own, so
    // the SBOM's file lists (which keep only files present) are the whole lists.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    let db = root.join(DB);
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(fixture.join(DB), &db).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(fixture.join("etc/os-release"), root.join("etc/os-release")).unwrap();
    // rpm queries a copy (it may take a lock beside the database).
    let query_dir = tmp.path().join("query");
    std::fs::create_dir_all(&query_dir).unwrap();
    std::fs::copy(fixture.join(DB), query_dir.join("rpmdb.sqlite")).unwrap();
    let mut want = rpm_query(&query_dir);
    assert_eq!(want.len(), 27, "the fixture's packages");
    // rpm lists the directories a package owns among its files; the SBOM lists files only.
    let all: std::collections::BTreeSet<String> =
        want.values().flat_map(|(_, f)| f.iter().cloned()).collect();
    let is_dir = |p: &String| all.iter().any(|q| q.starts_with(&format!("{p}/")));
    for (_, files) in want.values_mut() {
        files.retain(|f| !is_dir(f));
        for f in files.iter() {
            let p = root.join(f.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
    }

    let sbom = catalog(&DirTree::new(&root)).unwrap();
    let got: BTreeMap<String, (String, Vec<String>)> = sbom
        .packages
        .iter()
        .map(|p| {
            let fields = format!(
                "{}|{}|{}|{}|{}|{}",
                p.name,
                p.version,
                p.arch.clone().unwrap_or_default(),
                p.licenses.join(" "),
                p.supplier.clone().unwrap_or_default(),
                p.source.clone().unwrap_or_default()
            );
            let mut files = p.files.clone();
            files.sort();
            (p.name.clone(), (fields, files))
        })
        .collect();
    for (_, files) in want.values_mut() {
        files.sort();
    }
    assert_eq!(got, want);
    assert!(sbom.notes.is_empty(), "{:?}", sbom.notes);
    let tzdata = sbom.packages.iter().find(|p| p.name == "tzdata").unwrap();
    assert_eq!(tzdata.files.len(), 400, "a header on overflow pages");
    let ssl = sbom
        .packages
        .iter()
        .find(|p| p.name == "openssl-libs")
        .unwrap();
    assert_eq!(
        ssl.purl,
        "pkg:rpm/fedora/openssl-libs@3.2.2-3.fc40?arch=x86_64&distro=fedora-40&epoch=1&upstream=openssl-libs-3.2.2-3.fc40.src.rpm"
    );
}
