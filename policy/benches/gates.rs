//! Per-gate evaluation time of the example policy (`policy/examples`) on realistic inputs
//! shaped by `policy/schema/*.json`: `cargo bench -p kiln-policy`. Acceptance: median < 5 ms
//! per gate. The policy is loaded once; each iteration is one `Policy::evaluate` (input
//! conversion, engine clone, `deny` (and for source `rewrite`) evaluation, message sorting).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kiln_policy::{Gate, Policy};
use serde_json::{Value, json};

const D1: &str = "sha256:1d6f5e3b0c3f4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233";
const D2: &str = "sha256:2a7e1c9b8d0f4e3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a";
const D3: &str = "sha256:3b8f2d0c9e1a5f4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b";
const KEY: &str = "311113a3deb72e4005cba06f2337ba6d193a4840ca5a489115e438f4daa8b7da";

fn hex64(i: usize) -> String {
    format!("{:064x}", (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15)
}

fn admission() -> Value {
    let bases: Vec<Value> = [
        ("golang:1.23", "docker.io", "library/golang", D1),
        (
            "gcr.io/distroless/static-debian12",
            "gcr.io",
            "distroless/static-debian12",
            D2,
        ),
        (
            "registry.example.com/base/tools:2",
            "registry.example.com",
            "base/tools",
            D3,
        ),
    ]
    .iter()
    .map(|(r, reg, repo, d)| {
        json!({"ref": format!("{r}@{d}"), "normalized": format!("{reg}/{repo}@{d}"),
               "registry": reg, "repository": repo, "tag": null, "digest": d, "resolved": d})
    })
    .collect();
    json!({
        "tenant": "team-a",
        "request": {
            "frontend": "dockerfile.v0",
            "dockerfile": {"path": "Dockerfile", "digest": D1},
            "target": null,
            "stages": [
                {"index": 0, "name": "build", "base": format!("golang:1.23@{D1}")},
                {"index": 1, "name": "tools", "base": format!("registry.example.com/base/tools:2@{D3}")},
                {"index": 2, "name": null, "base": format!("gcr.io/distroless/static-debian12@{D2}")}
            ],
            "base_images": bases,
            "args": {"VERSION": "1.4.2", "GOFLAGS": "-trimpath"},
            "secrets": ["npm_token", "go_proxy_token"],
            "ssh": [],
            "secret_mounts": ["go_proxy_token"],
            "entitlements": [],
            "platforms": ["linux/amd64", "linux/arm64"],
            "outputs": [{"type": "registry", "ref": "registry.example.com/team-a/app:1.4.2"}],
            "tags": ["registry.example.com/team-a/app:1.4.2", "registry.example.com/team-a/app:latest"],
            "no_cache": false,
            "cache_from": ["type=registry,ref=registry.example.com/team-a/app:cache"]
        }
    })
}

fn source() -> Value {
    json!({"tenant": "team-a", "source": {"type": "image", "stage": "build", "image": {
        "ref": "golang:1.23", "normalized": "docker.io/library/golang:1.23",
        "registry": "docker.io", "repository": "library/golang", "tag": "1.23", "digest": null}}})
}

fn exec() -> Value {
    json!({
        "tenant": "team-a",
        "entitlements": [],
        "step": {
            "stage": "build",
            "name": "[build 4/7] RUN go build -trimpath -o /out/app ./cmd/app",
            "command": ["/bin/sh", "-c", "go build -trimpath -o /out/app ./cmd/app"],
            "network": "none",
            "security": "sandbox",
            "user": "",
            "workdir": "/src",
            "env_names": ["CGO_ENABLED", "GOFLAGS", "GOPROXY", "PATH"],
            "mounts": [
                {"type": "cache", "target": "/root/.cache/go-build", "id": "go-build", "sharing": "shared"},
                {"type": "cache", "target": "/go/pkg/mod", "id": "go-mod", "sharing": "locked"},
                {"type": "secret", "target": "/run/secrets/go_proxy_token", "id": "go_proxy_token", "required": true},
                {"type": "bind", "target": "/src", "from": "context", "source": ".", "readonly": true}
            ]
        }
    })
}

/// The SLSA v1 predicate as `kiln build` writes it (docs/provenance.md), `mode=max`.
fn provenance() -> Value {
    let steps: Vec<Value> = (0..12)
        .map(|i| {
            json!({"id": format!("sha256:{}", hex64(100 + i)), "name": format!("RUN step {i}"),
                   "cached": i % 3 == 0, "network": "none", "security": "sandbox"})
        })
        .collect();
    json!({
        "buildDefinition": {
            "buildType": "https://example.invalid/kiln/build-types/dockerfile/v1",
            "externalParameters": {
                "frontend": "dockerfile.v0",
                "configSource": {"uri": "Dockerfile", "name": "Dockerfile", "digest": {"sha256": hex64(1)}},
                "argNames": ["GOFLAGS", "VERSION"],
                "args": {"GOFLAGS": "-trimpath", "VERSION": "1.4.2"},
                "platforms": ["linux/amd64"],
                "secrets": ["go_proxy_token"],
                "ssh": [],
                "namedContexts": {"assets": "dir:./assets"}
            },
            "internalParameters": {
                "kilnVersion": "0.1.0",
                "sandbox": {"landlockAbi": 7, "seccompProfileDigest": format!("sha256:{}", hex64(2)),
                            "snapshotter": "overlayfs"},
                "policyDecisions": [],
                "steps": steps
            },
            "resolvedDependencies": [
                {"uri": "context", "name": "context", "digest": {"sha256": hex64(3)}},
                {"uri": "context:assets", "name": "assets", "digest": {"sha256": hex64(4)}},
                {"uri": "git+https://git.example.com/team-a/app@refs/heads/main", "digest": {"sha1": "4b825dc642cb6eb9a060e54bf8d69288fbee4904"}},
                {"uri": "pkg:docker/gcr.io/distroless/static-debian12@latest?platform=linux%2Famd64",
                 "name": format!("gcr.io/distroless/static-debian12@{D2}"),
                 "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": {"sha256": &D2[7..]}},
                {"uri": "pkg:docker/golang@1.23?platform=linux%2Famd64", "name": format!("golang:1.23@{D1}"),
                 "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": {"sha256": &D1[7..]}},
                {"uri": "https://downloads.example.com/protoc-27.1-linux-x86_64.zip", "digest": {"sha256": hex64(5)}}
            ]
        },
        "runDetails": {
            "builder": {"id": "https://kiln.example.com/builders/ci-1", "version": {"kiln": "0.1.0"}},
            "metadata": {"invocationId": "b1f0c9de-6a43-4d8e-9f51-0c2b7e1d5a10",
                         "startedOn": "2026-11-28T10:00:00Z", "finishedOn": "2026-11-28T10:02:31Z"},
            "byproducts": []
        }
    })
}

/// An SBOM summary of 200 packages with realistic (allowed) licenses and expressions.
fn sbom() -> Value {
    const LICENSES: [&[&str]; 8] = [
        &["MIT"],
        &["Apache-2.0"],
        &["BSD-3-Clause"],
        &["MIT OR Apache-2.0"],
        &["GPL-2.0-or-later", "LGPL-2.1-or-later"],
        &["(MIT OR Apache-2.0) AND Unicode-DFS-2016"],
        &["Apache-2.0 WITH LLVM-exception"],
        &[],
    ];
    const TYPES: [&str; 4] = ["deb", "golang", "npm", "python"];
    let packages: Vec<Value> = (0..200)
        .map(|i| {
            let t = TYPES[i % TYPES.len()];
            let name = format!("package-{i}");
            json!({"name": name, "version": format!("1.{}.{}", i / 10, i % 10), "type": t,
                   "purl": format!("pkg:{t}/{name}@1.{}.{}", i / 10, i % 10),
                   "licenses": LICENSES[i % LICENSES.len()]})
        })
        .collect();
    json!({"package_count": packages.len(), "packages": packages})
}

fn image_config() -> Value {
    json!({"user": "65532:65532", "exposed_ports": ["8080/tcp"], "env_names": ["PATH", "SSL_CERT_FILE"],
           "entrypoint": ["/app"], "cmd": ["serve"], "workdir": "/",
           "labels": {"org.opencontainers.image.source": "https://git.example.com/team-a/app",
                      "org.opencontainers.image.version": "1.4.2"}})
}

fn export() -> Value {
    json!({
        "tenant": "team-a",
        "image": {"manifest_digest": D1, "config_digest": D2, "config": image_config(),
                  "tags": ["registry.example.com/team-a/app:1.4.2"]},
        "provenance": provenance(),
        "sbom": sbom(),
        "outputs": [{"type": "registry", "ref": "registry.example.com/team-a/app:1.4.2"}]
    })
}

fn verify() -> Value {
    json!({
        "image": {"reference": "registry.example.com/team-a/app:1.4.2", "manifest_digest": D1,
                  "config": image_config()},
        "signature": {"verified": true, "key_ids": [KEY], "identities": []},
        "provenance": provenance(),
        "sbom": sbom(),
        "attestations": [
            {"predicate_type": "https://slsa.dev/provenance/v1", "signed": true},
            {"predicate_type": "https://spdx.dev/Document", "signed": true}
        ]
    })
}

fn gates(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let policy = Policy::load(&dir).unwrap();
    let mut group = c.benchmark_group("gate");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (gate, input) in [
        (Gate::Admission, admission()),
        (Gate::Source, source()),
        (Gate::Exec, exec()),
        (Gate::Export, export()),
        (Gate::Verify, verify()),
    ] {
        // Benchmark the real path (an allow through every rule), not an error.
        let d = policy.evaluate(gate, &input);
        assert!(d.allow && !d.error, "{gate}: {d:?}");
        group.bench_function(gate.name(), |b| {
            b.iter(|| policy.evaluate(gate, black_box(&input)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("policy");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("load_examples", |b| {
        b.iter(|| Policy::load(black_box(&dir)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, gates);
criterion_main!(benches);
