//! Attack vectors: every `vectors/attacks/<case>/` is a Dockerfile whose steps try to escape
//! the sandbox, built with the real `kiln build` as root. The test fails if any attack
//! succeeds, or if a case ends in any way other than the refusal it expects (a case that fails
//! for an unrelated reason proves nothing). `vectors/attacks/README.md` documents `case.json`.
//!
//! Per case: a fresh store holding the busybox base, a private copy of the case's directory as
//! the context with the compiled probe (`sandbox/probe/attack_probe.rs`) added as `probe`, the
//! host-side fixtures the case `needs` (`support/attacks.rs`), then `kiln build --progress=plain`
//! with the case's `args`, the fixtures' build-args and (for cases expected to build) OCI and
//! local outputs. Checked: the outcome, the probe's verdict lines (one `blocked` line per probe
//! call, never `ESCAPED`), secrets absent from the log and the outputs, the fixtures' host
//! checks, and that no process of the build outlives it.
//!
//! `KILN_ATTACK_CASE=<substring>` runs only the matching cases. `KILN_ATTACK_ALL_ATTEMPTS=1` is
//! for diagnosis: each shell-form `RUN` that calls the probe gets `|| true` appended, so the
//! build goes on after an escape and one run shows the verdict of every attempt (an `ESCAPED`
//! verdict still fails the case; the count of `blocked` verdicts is not checked then).

#[path = "support/attack_build.rs"]
mod build;
#[path = "support/attacks.rs"]
mod fixtures;
mod support;

use std::fs;
use std::path::{Path, PathBuf};

use build::{Finished, R};
use serde_json::Value;
use support::kiln::{Kiln, copy_tree, root_or_skip};

fn vectors() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/attacks"))
}

/// A parsed `case.json`.
#[derive(Debug)]
struct Case {
    name: String,
    dir: PathBuf,
    expect_ok: bool,
    stderr_contains: Vec<String>,
    or_fails_with: Vec<String>,
    log_forbids: Vec<String>,
    args: Vec<String>,
    needs: Vec<String>,
    probes: Option<usize>,
    matrix: Option<(String, Vec<String>)>,
}

fn strings(v: &Value, key: &str, errs: &mut Vec<String>) -> Vec<String> {
    match v.get(key) {
        None => Vec::new(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        Some(_) => {
            errs.push(format!("{key} must be an array of strings"));
            Vec::new()
        }
    }
}

const KEYS: &[&str] = &[
    "attack",
    "reference",
    "expect",
    "stderr_contains",
    "or_fails_with",
    "log_forbids",
    "args",
    "needs",
    "probes",
    "matrix",
];

fn load(dir: &Path) -> R<Case> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = fs::read(dir.join("case.json")).map_err(|e| format!("{name}/case.json: {e}"))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{name}/case.json: {e}"))?;
    let mut errs = Vec::new();
    if let Some(obj) = v.as_object() {
        for k in obj.keys().filter(|k| !KEYS.contains(&k.as_str())) {
            errs.push(format!("unknown key {k:?}"));
        }
    }
    for key in ["attack", "reference"] {
        if v.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
            errs.push(format!("{key} (a non-empty string) is required"));
        }
    }
    let expect_ok = match v.get("expect").and_then(Value::as_str) {
        Some("build_ok") => true,
        Some("build_fails") => false,
        _ => {
            errs.push("expect must be \"build_ok\" or \"build_fails\"".into());
            false
        }
    };
    let needs = strings(&v, "needs", &mut errs);
    for n in needs
        .iter()
        .filter(|n| !fixtures::FIXTURES.contains(&n.as_str()))
    {
        errs.push(format!("unknown fixture {n:?} in needs"));
    }
    let probes = match v.get("probes") {
        None => None,
        Some(p) => match p.as_u64().and_then(|p| usize::try_from(p).ok()) {
            Some(p) => Some(p),
            None => {
                errs.push("probes must be a number".into());
                None
            }
        },
    };
    let matrix = match v.get("matrix").and_then(Value::as_object) {
        None => None,
        Some(m) if m.len() == 1 => m.iter().next().map(|(k, vals)| {
            let vals: Vec<String> = vals
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            (k.clone(), vals)
        }),
        Some(_) => {
            errs.push("matrix must have exactly one build-arg".into());
            None
        }
    };
    let or_fails_with = strings(&v, "or_fails_with", &mut errs);
    if !expect_ok && !or_fails_with.is_empty() {
        errs.push("or_fails_with only makes sense with expect build_ok".into());
    }
    let stderr_contains = strings(&v, "stderr_contains", &mut errs);
    if !expect_ok && stderr_contains.is_empty() {
        errs.push("a build_fails case must say why in stderr_contains".into());
    }
    let dockerfile = fs::read_to_string(dir.join("Dockerfile")).unwrap_or_default();
    if dockerfile.is_empty() {
        errs.push("no Dockerfile".into());
    }
    if count_probe_calls(&dockerfile) > 0 && !dockerfile.contains("COPY probe /probe") {
        errs.push("calls the probe without `COPY probe /probe`".into());
    }
    let case = Case {
        name: name.clone(),
        dir: dir.to_owned(),
        expect_ok,
        stderr_contains,
        or_fails_with,
        log_forbids: strings(&v, "log_forbids", &mut errs),
        args: strings(&v, "args", &mut errs),
        needs,
        probes,
        matrix,
    };
    if errs.is_empty() {
        Ok(case)
    } else {
        Err(format!("{name}/case.json: {}", errs.join("; ")))
    }
}

fn cases() -> R<Vec<Case>> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(vectors())
        .map_err(|e| format!("{}: {e}", vectors().display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let (ok, bad): (Vec<_>, Vec<_>) = dirs.iter().map(|d| load(d)).partition(Result::is_ok);
    let bad: Vec<String> = bad.into_iter().filter_map(Result::err).collect();
    if bad.is_empty() {
        Ok(ok.into_iter().filter_map(Result::ok).collect())
    } else {
        Err(bad.join("\n"))
    }
}

/// Probe calls in a Dockerfile: every call passes exactly one `expect=` argument.
fn count_probe_calls(dockerfile: &str) -> usize {
    dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.matches("expect=").count())
        .sum()
}

/// The probe's verdict lines in a plain-progress log (`#N 0.123 kiln-probe: …`). Lines of a
/// tool the probe ran are indented by the probe and never match.
fn verdicts(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| {
            // Under `script` (the tty case) lines may start with echoed input.
            let rest = l.trim().strip_prefix('#')?;
            let (step, rest) = rest.split_once(' ')?;
            let (time, rest) = rest.split_once(' ')?;
            let numeric =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.');
            (numeric(step) && numeric(time) && rest.starts_with("kiln-probe: ")).then_some(rest)
        })
        .collect()
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n      ")
}

/// What one run of a case came to.
struct Report {
    /// What went wrong; empty when the case passed.
    errs: Vec<String>,
    /// The probe's verdict lines, and for a refused build its error line.
    notes: Vec<String>,
}

/// Runs one case (one matrix value).
fn run_case(case: &Case, matrix: Option<(&str, &str)>) -> R<Report> {
    let probe = build::probe()?;
    let k = Kiln::with_base();
    let tmp = tempfile::Builder::new()
        .prefix("kiln-attack")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let ctx = tmp.path().join("ctx");
    copy_tree(&case.dir, &ctx, &|p| {
        p.file_name().is_some_and(|n| n == "case.json") && p.parent() == Some(&case.dir)
    });
    fs::copy(probe, ctx.join("probe")).map_err(|e| format!("copying the probe: {e}"))?;
    let all_attempts = std::env::var_os("KILN_ATTACK_ALL_ATTEMPTS").is_some();
    if all_attempts {
        let df = ctx.join("Dockerfile");
        let text = fs::read_to_string(&df).map_err(|e| format!("{}: {e}", df.display()))?;
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                let shell_run = l.starts_with("RUN ") && !l.contains("RUN [");
                if shell_run && l.contains("expect=") && !l.ends_with('\\') {
                    format!("{l} || true")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        fs::write(&df, text.join("\n")).map_err(|e| format!("{}: {e}", df.display()))?;
    }
    let out = tmp.path().join("out");
    let (oci, local) = (out.join("image.tar"), out.join("rootfs"));
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    // From here on every path reaches `env.finish`, which also cleans up the host.
    let env = fixtures::prepare(&case.needs, tmp.path(), &ctx, k.root())?;

    let mut cmd = k.cmd();
    cmd.current_dir(&ctx)
        .args(["build", "--progress=plain"])
        .args(&case.args)
        .args(&env.kiln_args);
    for (key, val) in env
        .build_args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(matrix)
    {
        cmd.arg("--build-arg").arg(format!("{key}={val}"));
    }
    if case.expect_ok {
        cmd.arg(format!("--output=type=oci,dest={}", oci.display()));
        cmd.arg(format!("--output=type=local,dest={}", local.display()));
    }
    cmd.arg(&ctx);
    let mut done = build::run_build(cmd, &env);
    done.oci = oci.is_file().then_some(oci);
    done.local = local.is_dir().then_some(local);

    let mut errs = std::mem::take(&mut done.errors);
    errs.extend(check_outcome(case, &done, all_attempts));
    errs.extend(check_secrets(&env, &done));
    let token = env.token.clone();
    errs.extend(env.finish(&done));
    let strays = build::processes_with_env(&token);
    if !strays.is_empty() {
        errs.push(format!("processes of the build outlived it: {strays:?}"));
    }
    if !errs.is_empty() {
        errs.push(format!("log (last lines):\n      {}", tail(&done.log, 25)));
    }
    let mut notes: Vec<String> = verdicts(&done.log).into_iter().map(str::to_owned).collect();
    if done.code != Some(0) {
        let last_error = done.log.lines().rev().find(|l| l.starts_with("error: "));
        notes.push(format!(
            "build failed: {}",
            last_error.unwrap_or("(no error line)")
        ));
    }
    Ok(Report { errs, notes })
}

fn check_outcome(case: &Case, done: &Finished, all_attempts: bool) -> Vec<String> {
    let mut errs = Vec::new();
    let log = &done.log;
    if done.timed_out {
        errs.push(format!(
            "the build did not finish within {:?}",
            build::BUILD_TIMEOUT
        ));
    }
    if let Some(sig) = done.signal {
        errs.push(format!("kiln was killed by signal {sig}"));
    }
    // ESCAPED, unexpected errno or outcome, usage error: anything but `blocked`.
    let verdicts = verdicts(log);
    for v in &verdicts {
        if !v.contains(": blocked ") {
            errs.push(format!("probe: {v}"));
        }
    }
    for f in &case.log_forbids {
        if log.contains(f.as_str()) {
            errs.push(format!(
                "the log contains {f:?}, the sign of a successful attack"
            ));
        }
    }
    let ok = done.code == Some(0);
    let has_all = |want: &[String]| want.iter().all(|w| log.contains(w.as_str()));
    if case.expect_ok {
        if ok {
            let blocked = verdicts.iter().filter(|v| v.contains(": blocked ")).count();
            let want = case.probes.unwrap_or_else(|| {
                count_probe_calls(
                    &fs::read_to_string(case.dir.join("Dockerfile")).unwrap_or_default(),
                )
            });
            if blocked != want && !all_attempts {
                errs.push(format!(
                    "{blocked} probe calls reported `blocked`, expected {want}: a step did not run its probe"
                ));
            }
            if !has_all(&case.stderr_contains) {
                errs.push(format!("the log lacks one of {:?}", case.stderr_contains));
            }
        } else if case.or_fails_with.is_empty() || !has_all(&case.or_fails_with) {
            errs.push(format!(
                "expected the build to succeed with every attempt refused, it exited {:?}",
                done.code
            ));
        }
    } else if ok {
        errs.push("expected the build to fail, it succeeded".into());
    } else if !has_all(&case.stderr_contains) {
        errs.push(format!(
            "the build failed, but not with the expected refusal: stderr lacks one of {:?}",
            case.stderr_contains
        ));
    }
    errs
}

fn check_secrets(env: &fixtures::Env, done: &Finished) -> Vec<String> {
    let mut errs = Vec::new();
    let blobs = build::output_blobs(done);
    for (what, secret) in &env.secrets {
        if build::contains(done.log.as_bytes(), secret) {
            errs.push(format!("{what} appears in the build log"));
        }
        for (name, bytes) in &blobs {
            if build::contains(bytes, secret) {
                errs.push(format!("{what} appears in the output {name}"));
            }
        }
    }
    errs
}

#[test]
fn attack_vectors_are_well_formed() {
    let cases = match cases() {
        Ok(c) => c,
        Err(e) => panic!("malformed attack cases:\n{e}"),
    };
    assert!(
        cases.len() >= 32,
        "expected at least 32 attack cases, found {}",
        cases.len()
    );
    let mut errs = Vec::new();
    for c in &cases {
        let dockerfile = fs::read_to_string(c.dir.join("Dockerfile")).unwrap_or_default();
        for from in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
            if !from.starts_with(&format!("FROM {}", support::kiln::BASE)) {
                errs.push(format!(
                    "{}: {from:?}: the base must be the test busybox image",
                    c.name
                ));
            }
        }
        if let Some((k, vals)) = &c.matrix {
            if vals.is_empty() {
                errs.push(format!("{}: matrix {k} has no values", c.name));
            }
            if !dockerfile.contains(&format!("ARG {k}")) {
                errs.push(format!(
                    "{}: the Dockerfile does not declare ARG {k}",
                    c.name
                ));
            }
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// The probe can tell success from refusal: run on the host (no sandbox), attempts that
/// harmlessly succeed there must be reported as ESCAPED, and refusals as blocked.
#[test]
fn probe_reports_escapes_on_the_host() -> R<()> {
    let probe = build::probe()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let marker = format!("kiln-probe-selftest-{}", fixtures::random_hex(4)?);
    build::write_file(&dir.path().join(&marker), b"x")?;
    let dir_s = dir.path().to_string_lossy().into_owned();
    let connect = format!("127.0.0.1:{port}");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["expect=EPERM", "syscall", "getpid"], 1, "ESCAPED"),
        (
            &["expect=ECONNREFUSED,EACCES", "connect", &connect],
            1,
            "ESCAPED",
        ),
        (
            &["expect=ENOENT,EACCES", "open-ro", "/proc/self/status"],
            1,
            "ESCAPED",
        ),
        (
            &["expect=NOTFOUND", "find-marker", &marker, &dir_s],
            1,
            "ESCAPED",
        ),
        (
            &["expect=EROFS", "create-file", &format!("{dir_s}/new")],
            1,
            "ESCAPED",
        ),
        (
            &["expect=ENOENT", "open-ro", "/nonexistent/kiln"],
            0,
            "blocked ENOENT",
        ),
        (
            &["expect=EPERM", "open-ro", "/nonexistent/kiln"],
            1,
            "unexpected errno ENOENT",
        ),
        (
            &["expect=NOTFOUND", "find-marker", "no-such-marker", &dir_s],
            0,
            "blocked NOTFOUND",
        ),
        (
            &["expect=ENOENT", "run", "ls", "/nonexistent/kiln"],
            0,
            "blocked ENOENT",
        ),
        (&["expect=EPERM", "run", "true"], 1, "ESCAPED"),
        (&["expect=CONTAINED", "cwd-in-root"], 0, "blocked CONTAINED"),
        (&["expect=EPERM", "no-such-attack"], 2, ""),
    ];
    let mut errs = Vec::new();
    for (args, code, want) in cases {
        let (got, stdout) = build::host_output(std::process::Command::new(probe).args(*args))?;
        if got != *code || !stdout.contains(want) {
            errs.push(format!(
                "probe {args:?}: exit {got}, stdout {stdout:?}; expected exit {code} and {want:?}"
            ));
        }
    }
    drop(listener);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    Ok(())
}

#[test]
fn every_attack_is_refused() -> R<()> {
    if !root_or_skip() {
        return Ok(());
    }
    let filter = std::env::var("KILN_ATTACK_CASE").unwrap_or_default();
    let cases = cases()?;
    let mut failed = Vec::new();
    let mut ran = 0;
    for case in cases.iter().filter(|c| c.name.contains(&filter)) {
        let runs: Vec<Option<(&str, &str)>> = match &case.matrix {
            None => vec![None],
            Some((k, vals)) => vals
                .iter()
                .map(|v| Some((k.as_str(), v.as_str())))
                .collect(),
        };
        for m in runs {
            let label = match m {
                None => case.name.clone(),
                Some((k, v)) => format!("{}[{k}={v}]", case.name),
            };
            ran += 1;
            let Report { errs, notes } = run_case(case, m).unwrap_or_else(|e| Report {
                errs: vec![format!("could not run: {e}")],
                notes: Vec::new(),
            });
            if errs.is_empty() {
                println!("ok   {label}");
                for n in notes {
                    println!("       {n}");
                }
            } else {
                println!("FAIL {label}:\n    {}", errs.join("\n    "));
                failed.push(label);
            }
        }
    }
    assert!(
        ran > 0,
        "no attack case matches KILN_ATTACK_CASE={filter:?}"
    );
    assert!(
        failed.is_empty(),
        "{} of {ran} attack runs failed (details above): {}",
        failed.len(),
        failed.join(", ")
    );
    Ok(())
}
