//! Exporters and importers: determinism, schema validity, interop with skopeo/umoci, and
//! verification of every blob.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use kiln_engine::Digest;
use kiln_engine::oci::blob::{BlobError, BlobSource};
use kiln_engine::oci::compress::{BlobWriter, Compression};
use kiln_engine::oci::export::{
    AssembledImage, ExportError, ExportOptions, ImageRef, assemble, export_docker_archive,
    export_oci_dir, export_oci_tar,
};
use kiln_engine::oci::import::{ImportError, import_docker_archive, import_oci_layout};
use kiln_engine::oci::layer::{LayerOptions, write_layer};
use kiln_engine::oci::types::{
    ContainerConfig, Empty, Healthcheck, History, ImageConfig, RootFs, rfc3339_from_epoch,
};

const EPOCH: u64 = 1_700_000_000;
const NAME: &str = "kiln.test/app:1.0";

#[derive(Default)]
struct MemStore(Mutex<HashMap<Digest, Vec<u8>>>);

impl MemStore {
    fn put(&self, bytes: Vec<u8>) -> Digest {
        let d = Digest::of(&bytes);
        self.0.lock().unwrap().insert(d, bytes);
        d
    }
}

impl BlobSource for MemStore {
    fn open_blob(&self, d: &Digest) -> io::Result<Box<dyn Read + Send>> {
        let b = self.0.lock().unwrap().get(d).cloned();
        b.map(|b| Box::new(io::Cursor::new(b)) as Box<dyn Read + Send>)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

/// Builds a one-layer image in a fresh store.
fn image(compression: Compression) -> (MemStore, AssembledImage) {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/hello"), b"hello from kiln\n").unwrap();
    fs::create_dir_all(root.path().join("bin")).unwrap();
    fs::write(root.path().join("bin/app"), b"#!/bin/sh\necho hi\n").unwrap();
    let store = MemStore::default();
    let mut w = BlobWriter::new(Vec::new(), compression).unwrap();
    write_layer(root.path(), &mut w, &LayerOptions { epoch: EPOCH }).unwrap();
    let (blob, info) = w.finish().unwrap();
    store.put(blob);
    let layer = kiln_engine::oci::types::Descriptor::new(info.media_type, info.digest, info.size);
    let mut cc = ContainerConfig {
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
        cmd: Some(vec!["/bin/app".into()]),
        working_dir: Some("/".into()),
        stop_signal: Some("SIGTERM".into()),
        healthcheck: Some(Healthcheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: Some(30_000_000_000),
            ..Healthcheck::default()
        }),
        ..ContainerConfig::default()
    };
    cc.exposed_ports.insert("8080/tcp".into(), Empty {});
    cc.volumes.insert("/data".into(), Empty {});
    cc.labels.insert(
        "org.opencontainers.image.source".into(),
        "https://example.invalid".into(),
    );
    let config = ImageConfig {
        created: Some(rfc3339_from_epoch(EPOCH)),
        architecture: "amd64".into(),
        os: "linux".into(),
        config: Some(cc),
        rootfs: RootFs {
            diff_ids: vec![info.diff_id],
            ..RootFs::default()
        },
        history: vec![History {
            created: Some(rfc3339_from_epoch(EPOCH)),
            created_by: Some("COPY . /".into()),
            ..History::default()
        }],
        ..ImageConfig::default()
    };
    let a = assemble(&config, vec![layer], BTreeMap::new()).unwrap();
    store.put(a.config.clone());
    store.put(a.manifest.clone());
    (store, a)
}

fn image_ref(store: &MemStore, a: &AssembledImage) -> ImageRef {
    ImageRef::load(store, a.manifest_descriptor.clone(), &[NAME.to_owned()]).unwrap()
}

fn tar_files(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(fs::File::open(path).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn oci_tar_export_is_deterministic_and_sorted() {
    let (store, a) = image(Compression::Gzip);
    let img = image_ref(&store, &a);
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (dir.path().join("x.tar"), dir.path().join("y.tar"));
    let opts = ExportOptions { epoch: EPOCH };
    export_oci_tar(&store, &img, &x, &opts).unwrap();
    export_oci_tar(&store, &img, &y, &opts).unwrap();
    assert!(fs::read(&x).unwrap() == fs::read(&y).unwrap());
    let mut a = tar::Archive::new(fs::File::open(&x).unwrap());
    let mut names = Vec::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(
            (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
            (0, 0, EPOCH)
        );
        assert!(matches!(h.mode().unwrap(), 0o644 | 0o755));
        names.push(e.path().unwrap().to_string_lossy().into_owned());
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let files = tar_files(&x);
    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let ann = &index["manifests"][0]["annotations"];
    assert_eq!(ann["org.opencontainers.image.ref.name"], "1.0");
    assert_eq!(ann["io.containerd.image.name"], NAME);
    // No temp file left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn a_corrupt_blob_fails_the_export_and_leaves_nothing() {
    let (store, a) = image(Compression::Gzip);
    let img = image_ref(&store, &a);
    let layer = img.manifest().layers[0].digest;
    store.0.lock().unwrap().get_mut(&layer).unwrap()[20] ^= 1;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.tar");
    let e = export_oci_tar(&store, &img, &dest, &ExportOptions::default()).unwrap_err();
    assert!(
        matches!(e, ExportError::Blob(BlobError::Digest { expected, .. }) if expected == layer),
        "{e:?}"
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no output, no temp file"
    );
}

fn schema_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_SHARED_VECTORS")
        .map(|v| PathBuf::from(v).join("oci-image-spec"))
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/vectors/oci-image-spec"
            ))
        });
    dir.is_dir().then_some(dir)
}

/// The schema validator both schema tests run (Python `jsonschema`).
const VALIDATE_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/validate_oci_schemas.py"
);

fn validate(dir: &Path, pairs: &[(&str, PathBuf)]) {
    let mut args = vec![dir.to_string_lossy().into_owned()];
    for (schema, doc) in pairs {
        args.push((*schema).to_owned());
        args.push(doc.to_string_lossy().into_owned());
    }
    let out = Command::new("python3")
        .arg(VALIDATE_PY)
        .args(&args)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(_) => {
            println!("skipped: python3 not installed");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named") {
        println!("skipped: python jsonschema not installed");
        return;
    }
    assert!(
        out.status.success(),
        "schema validation failed:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn every_document_we_write_validates_against_the_oci_schemas() {
    let Some(schemas) = schema_dir() else {
        println!("skipped: oci-image-spec schemas not found");
        return;
    };
    let (store, a) = image(Compression::Zstd);
    let img = image_ref(&store, &a);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    export_oci_dir(&store, &img, &layout).unwrap();
    let blob = |d: &Digest| layout.join("blobs/sha256").join(d.hex());
    let pairs = vec![
        ("image-layout-schema.json", layout.join("oci-layout")),
        ("image-index-schema.json", layout.join("index.json")),
        (
            "image-manifest-schema.json",
            blob(&a.manifest_descriptor.digest),
        ),
        ("config-schema.json", blob(&a.config_descriptor.digest)),
    ];
    validate(&schemas, &pairs);
    // The validator is not vacuous: a manifest with a bad digest is rejected.
    let bad = dir.path().join("bad.json");
    let mut m: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
    m["config"]["digest"] = "no digest here".into();
    fs::write(&bad, serde_json::to_vec(&m).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(VALIDATE_PY)
        .args([
            schemas.to_str().unwrap(),
            "image-manifest-schema.json",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad digest must fail validation");
}

#[test]
fn oci_dir_export_merges_into_an_existing_layout() {
    let (store, a) = image(Compression::Gzip);
    let img = image_ref(&store, &a);
    let dir = tempfile::tempdir().unwrap();
    export_oci_dir(&store, &img, dir.path()).unwrap();
    export_oci_dir(&store, &img, dir.path()).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let imported = import_oci_layout(dir.path(), None, &mut |_, r| {
        io::copy(r, &mut io::sink())?;
        Ok(())
    })
    .unwrap();
    assert_eq!(imported.manifest_digest, a.manifest_descriptor.digest);
}

fn ingest_into(
    store: &MemStore,
) -> impl FnMut(
    &kiln_engine::oci::types::Descriptor,
    &mut dyn Read,
) -> Result<(), kiln_engine::oci::import::IngestError>
+ '_ {
    |d, r| {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        assert_eq!(Digest::of(&buf), d.digest);
        store.put(buf);
        Ok(())
    }
}

#[test]
fn oci_tar_and_docker_archive_import_round_trip() {
    let (store, a) = image(Compression::Gzip);
    let img = image_ref(&store, &a);
    let dir = tempfile::tempdir().unwrap();
    let (oci, docker) = (dir.path().join("oci.tar"), dir.path().join("docker.tar"));
    export_oci_tar(&store, &img, &oci, &ExportOptions::default()).unwrap();
    export_docker_archive(&store, &img, &docker, &ExportOptions::default()).unwrap();

    let target = MemStore::default();
    let got = import_oci_layout(
        &oci,
        Some(&a.manifest_descriptor.digest),
        &mut ingest_into(&target),
    )
    .unwrap();
    assert_eq!(got.manifest_digest, a.manifest_descriptor.digest);
    assert_eq!(got.config_digest, a.config_descriptor.digest);
    assert_eq!(target.0.lock().unwrap().len(), 3);

    // docker-archive with an OCI layout inside: read through index.json.
    let got = import_docker_archive(&docker, &mut ingest_into(&MemStore::default())).unwrap();
    assert_eq!(got.manifest_digest, a.manifest_descriptor.digest);
    let files = tar_files(&docker);
    let m: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(m[0]["RepoTags"][0], "kiln.test/app:1.0");
    assert_eq!(
        m[0]["Config"],
        format!("blobs/sha256/{}", a.config_descriptor.digest.hex())
    );

    // Legacy docker save layout: <hex>.json config, <id>/layer.tar (uncompressed), a symlink.
    let legacy = dir.path().join("legacy.tar");
    let (s2, a2) = image(Compression::Uncompressed);
    let layer = s2.0.lock().unwrap()[&a2.diff_id()].clone();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("abc/layer.tar", &layer);
    add(
        &format!("{}.json", a2.config_descriptor.digest.hex()),
        &a2.config,
    );
    let manifest = format!(
        r#"[{{"Config":"{}.json","RepoTags":["x:1"],"Layers":["def/layer.tar"]}}]"#,
        a2.config_descriptor.digest.hex()
    );
    add("manifest.json", manifest.as_bytes());
    let mut h = tar::Header::new_ustar();
    h.set_path("def/layer.tar").unwrap();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_link_name("../abc/layer.tar").unwrap();
    h.set_size(0);
    h.set_cksum();
    b.append(&h, io::empty()).unwrap();
    fs::write(&legacy, b.into_inner().unwrap()).unwrap();
    let got = import_docker_archive(&legacy, &mut ingest_into(&MemStore::default())).unwrap();
    assert_eq!(got.config_digest, a2.config_descriptor.digest);
    assert_eq!(got.layers[0].digest, a2.diff_id());
    assert_eq!(
        got.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
}

trait DiffId {
    fn diff_id(&self) -> Digest;
}
impl DiffId for AssembledImage {
    fn diff_id(&self) -> Digest {
        let c: ImageConfig = serde_json::from_slice(&self.config).unwrap();
        c.rootfs.diff_ids[0]
    }
}

#[test]
fn import_rejects_a_tampered_blob_and_a_lazy_ingest() {
    let (store, a) = image(Compression::Gzip);
    let img = image_ref(&store, &a);
    let dir = tempfile::tempdir().unwrap();
    export_oci_dir(&store, &img, dir.path()).unwrap();
    let lazy = import_oci_layout(dir.path(), None, &mut |_, _| Ok(())).unwrap_err();
    assert!(matches!(lazy, ImportError::NotConsumed { .. }), "{lazy:?}");
    let layer = &img.manifest().layers[0];
    let path = dir.path().join("blobs/sha256").join(layer.digest.hex());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let target = MemStore::default();
    let e = import_oci_layout(dir.path(), None, &mut ingest_into(&target)).unwrap_err();
    match e {
        ImportError::Blob {
            path,
            source: BlobError::Digest { expected, .. },
        } => {
            assert_eq!(expected, layer.digest);
            assert!(path.contains(&layer.digest.hex()));
        }
        other => panic!("{other:?}"),
    }
    assert!(target.0.lock().unwrap().is_empty(), "nothing stored");
}

#[test]
fn skopeo_and_umoci_read_our_images() {
    let (store, a) = image(Compression::Gzip);
    let img = image_ref(&store, &a);
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("img.tar");
    export_oci_tar(&store, &img, &oci, &ExportOptions::default()).unwrap();
    if which("skopeo") {
        let target = format!("oci-archive:{}", oci.display());
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", &target])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(Digest::of(&out.stdout), a.manifest_descriptor.digest);
        let docker = dir.path().join("docker.tar");
        export_docker_archive(&store, &img, &docker, &ExportOptions::default()).unwrap();
        let out = Command::new("skopeo")
            .args(["inspect", &format!("docker-archive:{}", docker.display())])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker-archive: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // skopeo reads the legacy manifest.json and reports the uncompressed layer digest.
        assert_eq!(v["Layers"][0], a.diff_id().to_string());
    } else {
        println!("skipped: skopeo not installed");
    }
    if which("umoci") {
        let layout = dir.path().join("layout");
        export_oci_dir(&store, &img, &layout).unwrap();
        let bundle = dir.path().join("bundle");
        let out = Command::new("umoci")
            .args(["unpack", "--image", &format!("{}:1.0", layout.display())])
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fs::read(bundle.join("rootfs/etc/hello")).unwrap(),
            b"hello from kiln\n"
        );
    } else {
        println!("skipped: umoci not installed");
    }
}

/// A layout directory whose `blobs` is a symlink (to a copy of the real blobs) is refused: a
/// crafted layout must not make the importer read files outside it.
#[test]
fn a_layout_directory_cannot_lead_the_importer_through_a_symlink() {
    let (store, a) = image(Compression::Gzip);
    let img = image_ref(&store, &a);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    export_oci_dir(&store, &img, &layout).unwrap();
    let drain =
        |_: &_, r: &mut dyn io::Read| -> Result<(), kiln_engine::oci::import::IngestError> {
            io::copy(r, &mut io::sink())?;
            Ok(())
        };
    // The plain layout imports.
    import_oci_layout(&layout, None, &mut drain.clone()).unwrap();
    // The same blobs behind a symlinked directory do not.
    fs::rename(layout.join("blobs"), dir.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), layout.join("blobs")).unwrap();
    let err = import_oci_layout(&layout, None, &mut drain.clone()).unwrap_err();
    assert!(!matches!(err, ImportError::NotConsumed { .. }), "{err}");
}
