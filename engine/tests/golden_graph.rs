//! Golden conversion cases: `vectors/dockerfile/<case>/` holds a `Dockerfile`, optional `args`
//! and the expected result of parse → instructions → convert, either `graph.txt` (a readable
//! dump of the graph and the final image state) or `error.txt` (`{line}:{column}: {message}`).
//!
//! `args` has one option a line: `--build-arg=K=V`, `--target=T`, `--allow=network.host`, `--allow=security.insecure`
//! (blank lines and `#` comments are ignored).
//!
//! Regenerate the expected files with
//! `KILN_UPDATE_GOLDEN=1 cargo test -p kiln-engine --test golden_graph`, then review every
//! changed file by hand against Docker/BuildKit semantics before committing: a golden file
//! that encodes a bug is worse than none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kiln_engine::Digest;
use kiln_engine::frontend::convert::{
    ConvertOptions, Converted, ImageState, ResolvedImage, Resolver, convert,
};
use kiln_engine::frontend::instructions::parse_dockerfile;
use kiln_engine::frontend::parser::parse;
use kiln_engine::graph::{ExecMountKind, FileOp, Op, SourceOp};
use kiln_engine::oci::types::{ContainerConfig, Empty, Healthcheck, History, ImageConfig, RootFs};

/// Images and named contexts the cases may use.
struct FakeResolver {
    images: BTreeMap<&'static str, ResolvedImage>,
    contexts: &'static [&'static str],
}

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn history(entries: &[(&str, bool)]) -> Vec<History> {
    entries
        .iter()
        .map(|(by, empty)| History {
            created: Some("2024-01-01T00:00:00Z".into()),
            created_by: Some((*by).into()),
            author: None,
            comment: None,
            empty_layer: *empty,
        })
        .collect()
}

fn image(name: &str, layers: usize, cc: ContainerConfig, hist: &[(&str, bool)]) -> ResolvedImage {
    ResolvedImage {
        manifest: Digest::of(format!("manifest of {name}").as_bytes()),
        layers: Vec::new(),
        config: ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            config: Some(cc),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: (0..layers)
                    .map(|i| Digest::of(format!("{name} layer {i}").as_bytes()))
                    .collect(),
            },
            history: history(hist),
            ..ImageConfig::default()
        },
    }
}

impl FakeResolver {
    fn new() -> Self {
        let mut images = BTreeMap::new();
        // busybox:latest: PATH and CMD ["sh"].
        images.insert(
            "busybox:latest",
            image(
                "busybox:latest",
                1,
                ContainerConfig {
                    env: vec![PATH.into()],
                    cmd: Some(vec!["sh".into()]),
                    ..ContainerConfig::default()
                },
                &[("ADD file:busybox in / ", false), ("CMD [\"sh\"]", true)],
            ),
        );
        // alpine:3: PATH and CMD ["/bin/sh"].
        images.insert(
            "alpine:3",
            image(
                "alpine:3",
                1,
                ContainerConfig {
                    env: vec![PATH.into()],
                    cmd: Some(vec!["/bin/sh".into()]),
                    ..ContainerConfig::default()
                },
                &[
                    ("ADD file:alpine in / ", false),
                    ("CMD [\"/bin/sh\"]", true),
                ],
            ),
        );
        // alpine:3.19 (to tell ARG-selected tags apart).
        images.insert(
            "alpine:3.19",
            image(
                "alpine:3.19",
                1,
                ContainerConfig {
                    env: vec![PATH.into()],
                    cmd: Some(vec!["/bin/sh".into()]),
                    ..ContainerConfig::default()
                },
                &[
                    ("ADD file:alpine319 in / ", false),
                    ("CMD [\"/bin/sh\"]", true),
                ],
            ),
        );
        // example/node:20: a runtime image with a working dir, user, entrypoint, ports, labels,
        // a shell, a stop signal and a health check.
        let mut ports = BTreeMap::new();
        ports.insert("3000/tcp".to_owned(), Empty {});
        let mut labels = BTreeMap::new();
        labels.insert("org.example.base".to_owned(), "node".to_owned());
        images.insert(
            "example/node:20",
            image(
                "example/node:20",
                2,
                ContainerConfig {
                    env: vec![PATH.into(), "NODE_VERSION=20.11.0".into()],
                    user: Some("node".into()),
                    working_dir: Some("/home/node".into()),
                    entrypoint: Some(vec!["docker-entrypoint.sh".into()]),
                    cmd: Some(vec!["node".into()]),
                    exposed_ports: ports,
                    labels,
                    stop_signal: Some("SIGINT".into()),
                    shell: vec!["/bin/bash".into(), "-c".into()],
                    healthcheck: Some(Healthcheck {
                        test: vec!["CMD-SHELL".into(), "node healthcheck.js".into()],
                        interval: Some(30_000_000_000),
                        ..Healthcheck::default()
                    }),
                    ..ContainerConfig::default()
                },
                &[
                    ("ADD file:debian in / ", false),
                    ("ENV NODE_VERSION=20.11.0", true),
                    ("RUN install-node", false),
                    ("USER node", true),
                ],
            ),
        );
        // example/onbuild:1: ONBUILD triggers, WORKDIR /app.
        images.insert(
            "example/onbuild:1",
            image(
                "example/onbuild:1",
                1,
                ContainerConfig {
                    env: vec![PATH.into()],
                    working_dir: Some("/app".into()),
                    cmd: Some(vec!["/app/run".into()]),
                    on_build: vec!["COPY . /app/src".into(), "RUN make -C /app/src".into()],
                    ..ContainerConfig::default()
                },
                &[
                    ("ADD file:onbuild in / ", false),
                    ("WORKDIR /app", false),
                    ("ONBUILD COPY . /app/src", true),
                    ("ONBUILD RUN make -C /app/src", true),
                ],
            ),
        );
        // example/noenv:1: no ENV at all (the default PATH applies to RUN).
        images.insert(
            "example/noenv:1",
            image(
                "example/noenv:1",
                1,
                ContainerConfig::default(),
                &[("ADD file:noenv in / ", false)],
            ),
        );
        Self {
            images,
            contexts: &["extra", "docs"],
        }
    }
}

impl Resolver for FakeResolver {
    fn image(&self, reference: &str) -> Result<Option<ResolvedImage>, String> {
        if reference == "example/broken:1" {
            return Err("manifest unreadable".into());
        }
        Ok(self.images.get(reference).cloned())
    }

    fn has_context(&self, name: &str) -> bool {
        self.contexts.contains(&name)
    }
}

fn options(case: &Path) -> ConvertOptions {
    let mut opts = ConvertOptions {
        platform: "linux/amd64".into(),
        ..ConvertOptions::default()
    };
    let Ok(text) = std::fs::read_to_string(case.join("args")) else {
        return opts;
    };
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(kv) = line.strip_prefix("--build-arg=") {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            opts.build_args.insert(k.into(), v.into());
        } else if let Some(t) = line.strip_prefix("--target=") {
            opts.target = Some(t.into());
        } else if line == "--allow=network.host" {
            opts.allow_host_network = true;
        } else if line == "--allow=security.insecure" {
            opts.allow_insecure = true;
        } else {
            panic!("{}: unknown option in args: {line}", case.display());
        }
    }
    opts
}

/// parse → instructions → convert; errors as `{line}:{column}: {message}`.
fn run_case(src: &str, opts: &ConvertOptions) -> Result<Converted, String> {
    let ast = parse(src).map_err(|e| format!("{}:{}: {}", e.line, e.column, e.message))?;
    let df =
        parse_dockerfile(&ast).map_err(|e| format!("{}:{}: {}", e.line, e.column, e.message))?;
    convert(&df, opts, &FakeResolver::new())
        .map_err(|e| format!("{}:{}: {}", e.line, e.column, e.message))
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn ql(v: &[String]) -> String {
    serde_json::to_string(v).unwrap()
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_owned()
}

/// The readable dump: one block per vertex in graph order, then the target and image state.
fn dump(c: &Converted) -> String {
    let mut o = String::new();
    for (i, v) in c.graph.vertices().iter().enumerate() {
        let inputs: Vec<String> = v.inputs.iter().map(|x| x.to_string()).collect();
        match &v.op {
            Op::Source(SourceOp::Scratch) => writeln!(o, "{i} source scratch").unwrap(),
            Op::Source(SourceOp::Image { name, manifest }) => writeln!(
                o,
                "{i} source image {} manifest={}",
                q(name),
                short(manifest)
            )
            .unwrap(),
            Op::Source(SourceOp::Context { name }) => {
                writeln!(o, "{i} source context {}", q(name)).unwrap();
            }
            Op::Source(SourceOp::Http {
                url,
                checksum,
                filename,
            }) => writeln!(
                o,
                "{i} source http {} checksum={checksum} filename={}",
                q(url),
                q(filename)
            )
            .unwrap(),
            Op::Source(other) => writeln!(o, "{i} source {other:?}").unwrap(),
            Op::Exec(e) => {
                writeln!(o, "{i} exec").unwrap();
                writeln!(o, "  args: {}", ql(&e.args)).unwrap();
                writeln!(o, "  env: {}", ql(&e.env)).unwrap();
                writeln!(o, "  cwd: {}", q(&e.cwd)).unwrap();
                writeln!(o, "  user: {}", q(&e.user)).unwrap();
                writeln!(o, "  network: {:?}", e.network).unwrap();
                if e.security != kiln_engine::graph::Security::Sandbox {
                    writeln!(o, "  security: {:?}", e.security).unwrap();
                }
                for m in &e.mounts {
                    match &m.kind {
                        ExecMountKind::Bind {
                            input,
                            source,
                            readwrite,
                        } => writeln!(
                            o,
                            "  mount {} bind input={input} source={} readwrite={readwrite}",
                            q(&m.target),
                            q(source)
                        )
                        .unwrap(),
                        ExecMountKind::Tmpfs { size } => {
                            writeln!(o, "  mount {} tmpfs size={size:?}", q(&m.target)).unwrap();
                        }
                        ExecMountKind::Secret {
                            id,
                            file,
                            env,
                            required,
                            mode,
                            uid,
                            gid,
                        } => writeln!(
                            o,
                            "  mount {} secret id={} file={file} env={env:?} required={required} mode={mode:o} uid={uid} gid={gid}",
                            q(&m.target),
                            q(id)
                        )
                        .unwrap(),
                        ExecMountKind::Ssh {
                            id,
                            required,
                            mode,
                            uid,
                            gid,
                        } => writeln!(
                            o,
                            "  mount {} ssh id={} required={required} mode={mode:o} uid={uid} gid={gid}",
                            q(&m.target),
                            q(id)
                        )
                        .unwrap(),
                        other => writeln!(o, "  mount {} {other:?}", q(&m.target)).unwrap(),
                    }
                }
            }
            Op::File(FileOp::Copy(cp)) => {
                writeln!(o, "{i} file copy").unwrap();
                writeln!(o, "  src: input {}", cp.src).unwrap();
                writeln!(
                    o,
                    "  dest: {}",
                    match cp.dest {
                        Some(d) => format!("input {d}"),
                        None => "scratch".into(),
                    }
                )
                .unwrap();
                writeln!(o, "  sources: {}", ql(&cp.sources)).unwrap();
                writeln!(o, "  dest_path: {}", q(&cp.dest_path)).unwrap();
                writeln!(o, "  workdir: {}", q(&cp.workdir)).unwrap();
                writeln!(o, "  chown: {:?}", cp.chown).unwrap();
                writeln!(
                    o,
                    "  chmod: {}",
                    cp.chmod.map_or("None".into(), |m| format!("{m:04o}"))
                )
                .unwrap();
                writeln!(
                    o,
                    "  flags: keep_owner={} parents={} unpack={}",
                    cp.keep_owner, cp.parents, cp.unpack
                )
                .unwrap();
                writeln!(o, "  excludes: {}", ql(&cp.excludes)).unwrap();
            }
            Op::File(FileOp::Mkfiles { files, mode }) => {
                match mode {
                    Some(m) => writeln!(o, "{i} file mkfiles mode={m:o}").unwrap(),
                    None => writeln!(o, "{i} file mkfiles").unwrap(),
                }
                for (name, content) in files {
                    writeln!(o, "  file {} content={}", q(name), q(content)).unwrap();
                }
            }
            Op::File(FileOp::Mkdir { path, owner }) => {
                writeln!(o, "{i} file mkdir {} owner={owner:?}", q(path)).unwrap();
            }
            Op::File(other) => writeln!(o, "{i} file {other:?}").unwrap(),
            Op::Merge => writeln!(o, "{i} merge").unwrap(),
            other => writeln!(o, "{i} {other:?}").unwrap(),
        }
        writeln!(o, "  inputs: [{}]", inputs.join(", ")).unwrap();
        writeln!(o, "  digest: {}", short(&v.digest)).unwrap();
    }
    writeln!(o, "target: {}", c.target).unwrap();
    dump_image(&mut o, &c.image);
    if !c.unused_build_args.is_empty() {
        writeln!(o, "unused build args: {}", ql(&c.unused_build_args)).unwrap();
    }
    o
}

fn dump_image(o: &mut String, im: &ImageState) {
    writeln!(o, "image:").unwrap();
    writeln!(o, "  env: {}", ql(&im.env_strings())).unwrap();
    writeln!(o, "  user: {}", q(&im.user)).unwrap();
    writeln!(o, "  workdir: {}", q(&im.workdir)).unwrap();
    let opt = |v: &Option<Vec<String>>| v.as_ref().map_or("None".to_owned(), |v| ql(v));
    writeln!(o, "  entrypoint: {}", opt(&im.entrypoint)).unwrap();
    writeln!(o, "  cmd: {}", opt(&im.cmd)).unwrap();
    writeln!(o, "  shell: {}", opt(&im.shell)).unwrap();
    for (k, v) in &im.labels {
        writeln!(o, "  label {} = {}", q(k), q(v)).unwrap();
    }
    writeln!(o, "  exposed_ports: {}", ql(&im.exposed_ports)).unwrap();
    writeln!(o, "  volumes: {}", ql(&im.volumes)).unwrap();
    writeln!(o, "  stop_signal: {:?}", im.stop_signal).unwrap();
    match &im.healthcheck {
        None => writeln!(o, "  healthcheck: None").unwrap(),
        Some(h) => writeln!(
            o,
            "  healthcheck: test={} interval={:?} timeout={:?} start_period={:?} start_interval={:?} retries={:?}",
            ql(&h.test),
            h.interval,
            h.timeout,
            h.start_period,
            h.start_interval,
            h.retries
        )
        .unwrap(),
    }
    writeln!(o, "  onbuild: {}", ql(&im.onbuild)).unwrap();
    writeln!(o, "  author: {:?}", im.author).unwrap();
    writeln!(o, "  base_layers: {}", im.base_layers).unwrap();
    writeln!(o, "history:").unwrap();
    for h in &im.history {
        let mark = if h.empty_layer { "empty" } else { "layer" };
        writeln!(o, "  [{mark}] {}", q(&h.created_by)).unwrap();
    }
}

/// A line diff (longest common subsequence), `-` expected, `+` got.
fn diff(expected: &str, got: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = got.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("   {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("  +{}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("  -{}\n", a[i]));
            i += 1;
        }
    }
    out
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vectors/dockerfile")
}

#[test]
fn golden_graph_cases() {
    let update = std::env::var_os("KILN_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", cases_dir().display());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let src = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
        let (file, got) = match run_case(&src, &options(case)) {
            Ok(c) => ("graph.txt", dump(&c)),
            Err(e) => ("error.txt", format!("{e}\n")),
        };
        let other = if file == "graph.txt" {
            "error.txt"
        } else {
            "graph.txt"
        };
        if update {
            std::fs::write(case.join(file), &got).unwrap();
            let _ = std::fs::remove_file(case.join(other));
            println!("updated {name}/{file}");
            continue;
        }
        if case.join(other).is_file() {
            let expected = std::fs::read_to_string(case.join(other)).unwrap();
            println!("FAIL {name}: expected {other}, got {file}");
            println!("{}", diff(&expected, &got));
            failures.push(name);
            continue;
        }
        match std::fs::read_to_string(case.join(file)) {
            Ok(expected) if expected == got => println!("ok {name}"),
            Ok(expected) => {
                println!("FAIL {name} ({file}; -expected +got)");
                println!("{}", diff(&expected, &got));
                failures.push(name);
            }
            Err(_) => {
                println!("FAIL {name}: no {file}; got:\n{got}");
                failures.push(name);
            }
        }
    }
    println!("{} cases, {} failed", cases.len(), failures.len());
    assert!(failures.is_empty(), "failing golden cases: {failures:?}");
}
