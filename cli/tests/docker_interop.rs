//! Docker interop: `docker load` accepts what `kiln build -o type=docker` writes, and
//! `docker run` of the loaded image behaves as the Dockerfile says.
//!
//! kiln builds the busybox base (FROM scratch) and, on it, a small multi-stage app (a file
//! COPYed from another stage, WORKDIR, USER by name, ENV used in the output, ENTRYPOINT + CMD,
//! LABEL, EXPOSE). A private dockerd (Debian `docker.io` 20.10, own socket and data root, no
//! bridge, no registry access; see `support/dockerd.rs`) loads the archive; then:
//!
//! - the loaded image's ID equals kiln's config digest (docker 20.10's image ID is the config
//!   digest), found both through the archive's `manifest.json` and its OCI `index.json`;
//! - `docker run --network=none app` prints exactly the expected lines, and with arguments
//!   they replace CMD but not ENTRYPOINT;
//! - `docker run --entrypoint /bin/sh app -c 'id -u; pwd'` shows USER and WORKDIR;
//! - `docker image inspect`'s Config (Env, Cmd, Entrypoint, WorkingDir, User, Labels,
//!   ExposedPorts), Os/Architecture and RootFS diff IDs equal kiln's config;
//! - `docker save` of the loaded image gives back kiln's config bytes unchanged.
//!
//! docker 20.10 cannot load an OCI layout (`-o type=oci`), so that output is not loaded here.
//!
//! Skips with a printed `skipped: …` line when not root, when dockerd or the docker CLI is
//! missing, or when dockerd fails to start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "support/dockerd.rs"]
mod dockerd;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use dockerd::Dockerd;
use support::kiln::{Kiln, root_or_skip, tar_files};

const DOCKERFILE: &str = r#"FROM kiln-test/busybox AS gen
RUN mkdir -p /out && echo "made in stage gen" > /out/message.txt

FROM kiln-test/busybox
LABEL org.example.suite="docker-interop" org.example.owner="kiln tests"
EXPOSE 8080/tcp 5353/udp
ENV GREETING="hello from kiln" APP_HOME=/srv/app
WORKDIR $APP_HOME
COPY --from=gen /out/message.txt ./message.txt
COPY run.sh /usr/local/bin/run.sh
USER app
ENTRYPOINT ["/usr/local/bin/run.sh"]
CMD ["default-arg"]
"#;

const RUN_SH: &str = r#"#!/bin/sh
echo "uid=$(id -u) gid=$(id -g) user=$(id -un)"
echo "pwd=$(pwd)"
echo "greeting=$GREETING"
echo "file=$(cat message.txt)"
echo "args=$*"
"#;

/// What `docker run app` must print.
const EXPECTED_RUN: &str = "uid=1000 gid=1000 user=app\n\
pwd=/srv/app\n\
greeting=hello from kiln\n\
file=made in stage gen\n\
args=default-arg\n";

const TAG: &str = "app";
/// The name docker gives the loaded image (`RepoTags` of kiln's `manifest.json`).
const LOADED: &str = "app:latest";

const CONFIG_FIELDS: [&str; 7] = [
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Panics with both streams unless `docker <what>` exited 0; returns stdout.
fn ok(what: &str, o: Output, d: &Dockerd) -> String {
    assert!(
        o.status.success(),
        "docker {what} failed ({}):\nstdout:\n{}\nstderr:\n{}\ndockerd log:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr),
        d.log_tail(20)
    );
    text(&o.stdout)
}

fn sha256_hex(path: &Path) -> String {
    let o = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(o.status.success(), "sha256sum {}", path.display());
    text(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// An absent or null config field is the same as an empty one for this comparison (docker
/// prints `null` for unset fields; kiln omits them).
fn field(cfg: &Value, name: &str) -> Value {
    match cfg.get(name) {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if s.is_empty() => Value::Null,
        Some(Value::Array(a)) if a.is_empty() => Value::Null,
        Some(Value::Object(o)) if o.is_empty() => Value::Null,
        Some(v) => v.clone(),
    }
}

/// What kiln's docker archive says about the image.
struct Archive {
    files: BTreeMap<String, Vec<u8>>,
    /// `sha256:…` of the config, from `manifest.json`.
    config_digest: String,
    config: Value,
}

fn read_archive(path: &Path, manifest_digest: &str) -> Archive {
    let files = tar_files(path);
    let json = |name: &str| -> Value {
        let b = files
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the docker archive"));
        serde_json::from_slice(b).unwrap_or_else(|e| panic!("{name}: {e}"))
    };

    // The legacy docker-save manifest.json: one image, tagged, config and layers by path.
    let m = json("manifest.json");
    let entries = m.as_array().expect("manifest.json is an array");
    assert_eq!(entries.len(), 1, "manifest.json: {m}");
    let e = &entries[0];
    assert_eq!(
        e["RepoTags"],
        serde_json::json!([LOADED]),
        "manifest.json RepoTags"
    );
    let config_path = e["Config"].as_str().expect("manifest.json Config");
    let hex = config_path
        .strip_prefix("blobs/sha256/")
        .unwrap_or_else(|| panic!("Config path {config_path:?}"));
    let config_digest = format!("sha256:{hex}");
    let config = json(config_path);

    // The OCI view of the same archive names the same manifest and config.
    let index = json("index.json");
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .expect("index.json manifests[0].digest");
    assert_eq!(
        mdigest, manifest_digest,
        "index.json's manifest is the one kiln printed"
    );
    let manifest = json(&format!(
        "blobs/sha256/{}",
        mdigest.strip_prefix("sha256:").unwrap()
    ));
    assert_eq!(
        manifest["config"]["digest"].as_str(),
        Some(config_digest.as_str()),
        "OCI manifest config vs manifest.json Config"
    );
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .expect("manifest layers")
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap();
            format!("blobs/sha256/{}", d.strip_prefix("sha256:").unwrap())
        })
        .collect();
    assert_eq!(
        e["Layers"],
        serde_json::json!(layers),
        "manifest.json Layers vs the OCI manifest's layers"
    );
    Archive {
        files,
        config_digest,
        config,
    }
}

#[test]
fn docker_loads_and_runs_kiln_docker_archive() {
    if !root_or_skip() {
        return;
    }
    let d = match Dockerd::start() {
        Ok(d) => d,
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    let version = ok(
        "version",
        d.run(&[
            "version",
            "--format",
            "{{.Client.Version}} / {{.Server.Version}}",
        ]),
        &d,
    );
    println!("docker client / server: {}", version.trim());

    // kiln: the busybox base (FROM scratch), then the app on it.
    let k = Kiln::with_base();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(ctx.join("run.sh"), RUN_SH).unwrap();
    fs::set_permissions(ctx.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let archive = tmp.path().join("app-docker.tar");
    let r = k
        .build(
            &ctx,
            &[
                "-t",
                TAG,
                "-o",
                &format!("type=docker,dest={}", archive.display()),
            ],
        )
        .ok();
    let manifest_digest = r.digest();
    assert!(
        manifest_digest.starts_with("sha256:"),
        "kiln printed {manifest_digest:?}"
    );
    let a = read_archive(&archive, &manifest_digest);
    let config_bytes = a.files[&format!(
        "blobs/sha256/{}",
        a.config_digest.strip_prefix("sha256:").unwrap()
    )]
        .clone();
    // The config blob is what its digest says.
    let cfg_file = tmp.path().join("config.json");
    fs::write(&cfg_file, &config_bytes).unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&cfg_file)),
        a.config_digest,
        "kiln's config blob vs its digest"
    );

    // docker load.
    let o = d
        .docker()
        .arg("load")
        .arg("-i")
        .arg(&archive)
        .output()
        .unwrap();
    let loaded = ok("load", o, &d);
    assert!(
        loaded
            .lines()
            .any(|l| l.trim() == format!("Loaded image: {LOADED}")),
        "docker load output: {loaded}"
    );

    // The image ID is kiln's config digest.
    let id = ok(
        "image inspect",
        d.run(&["image", "inspect", "--format", "{{.Id}}", LOADED]),
        &d,
    );
    assert_eq!(id.trim(), a.config_digest, "docker image ID vs kiln config");

    // docker run with the image's ENTRYPOINT and CMD.
    let out = ok("run", d.run(&["run", "--rm", "--network=none", TAG]), &d);
    assert_eq!(out, EXPECTED_RUN, "docker run {TAG}");

    // Arguments replace CMD, not ENTRYPOINT.
    let out = ok(
        "run (args)",
        d.run(&["run", "--rm", "--network=none", LOADED, "x", "y z"]),
        &d,
    );
    assert_eq!(
        out,
        EXPECTED_RUN.replace("args=default-arg", "args=x y z"),
        "docker run {LOADED} x 'y z'"
    );

    // USER and WORKDIR with another entrypoint.
    let out = ok(
        "run --entrypoint",
        d.run(&[
            "run",
            "--rm",
            "--network=none",
            "--entrypoint",
            "/bin/sh",
            TAG,
            "-c",
            "id -u; pwd",
        ]),
        &d,
    );
    assert_eq!(out, "1000\n/srv/app\n", "id -u; pwd");

    // docker image inspect: the config fields are kiln's.
    let inspect = ok("image inspect", d.run(&["image", "inspect", LOADED]), &d);
    let inspect: Value = serde_json::from_str(&inspect).unwrap();
    let img = &inspect[0];
    let dcfg = &img["Config"];
    let kcfg = &a.config["config"];
    for f in CONFIG_FIELDS {
        assert_eq!(
            field(dcfg, f),
            field(kcfg, f),
            "Config.{f}: docker {dcfg} vs kiln {kcfg}"
        );
    }
    // And they are what the Dockerfile says (so the comparison above is not vacuous).
    assert_eq!(
        kcfg["Env"],
        serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "GREETING=hello from kiln",
            "APP_HOME=/srv/app"
        ])
    );
    assert_eq!(
        kcfg["Entrypoint"],
        serde_json::json!(["/usr/local/bin/run.sh"])
    );
    assert_eq!(kcfg["Cmd"], serde_json::json!(["default-arg"]));
    assert_eq!(kcfg["WorkingDir"], "/srv/app");
    assert_eq!(kcfg["User"], "app");
    assert_eq!(
        kcfg["Labels"],
        serde_json::json!({
            "org.example.owner": "kiln tests",
            "org.example.suite": "docker-interop"
        })
    );
    assert_eq!(
        kcfg["ExposedPorts"],
        serde_json::json!({"5353/udp": {}, "8080/tcp": {}})
    );
    assert_eq!(img["Os"], a.config["os"], "Os");
    assert_eq!(
        img["Architecture"], a.config["architecture"],
        "Architecture"
    );
    assert_eq!(img["RootFS"]["Type"], "layers");
    assert_eq!(
        img["RootFS"]["Layers"], a.config["rootfs"]["diff_ids"],
        "RootFS layers vs kiln's diff_ids"
    );

    // docker save gives back kiln's config bytes (the image is stored as loaded).
    let saved = tmp.path().join("saved.tar");
    ok(
        "save",
        d.run(&["save", "-o", saved.to_str().unwrap(), LOADED]),
        &d,
    );
    let sfiles = tar_files(&saved);
    let sm: Value = serde_json::from_slice(&sfiles["manifest.json"]).unwrap();
    let sconfig = sm[0]["Config"]
        .as_str()
        .expect("saved manifest.json Config");
    assert_eq!(
        sfiles[sconfig], config_bytes,
        "docker save's config vs kiln's config blob"
    );
}
