//! `BuildResult::base_images` / `Planned::base_images`: every image `FROM` resolves to is
//! recorded as (reference as written, manifest digest), for provenance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln_engine::builder::{BuildRequest, Engine};
use kiln_engine::store::{ImageRecord, StagedRecords, Store};

#[test]
fn resolved_base_images_are_recorded_with_their_manifest_digests() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(&root.path().join("store")).unwrap();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    let cd = store.content.write_bytes(config).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[]}}"#,
        config.len()
    );
    let md = store.content.write_bytes(manifest.as_bytes()).unwrap();
    let mut staged = StagedRecords::default();
    staged.images.insert(
        "base:1".into(),
        ImageRecord {
            manifest: md,
            config: cd,
            size: manifest.len() as u64,
            layers: Vec::new(),
            index: None,
        },
    );
    store.meta.commit(&staged).unwrap();

    let ctx = root.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM base:1 AS a\nRUN true\nFROM base:1\nCOPY --from=a / /\n",
    )
    .unwrap();
    let engine = Engine::new(store, "/nonexistent/kiln".into());
    let planned = engine.plan(&BuildRequest::new(&ctx)).unwrap();
    assert_eq!(planned.base_images, vec![("base:1".to_owned(), md)]);
}
