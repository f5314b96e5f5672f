//! kilnd end to end, with the real binaries: a development PKI from `kiln pki`, a daemon on
//! loopback, and `kiln build --addr` / `kiln remote` as its clients.
//!
//! - mutual TLS refusals, each with a clear client-side message: no client certificate, a
//!   certificate from another CA, an expired one, one whose identity maps to no tenant, and a
//!   TLS 1.2-only client (openssl s_client);
//! - tenant isolation: builds, cancel, cache hits, cache mounts, entitlements and policy;
//! - incremental context: a rebuild after one changed file of 20,000 sends that file;
//! - remote and embedded builds of the engine's end-to-end vectors give the same digests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "../../sandbox/probe/compile.rs"]
mod compile;

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::kiln::{BASE, Kiln, Run, copy_tree, kiln_bin, root_or_skip, which};

const ALPHA: &str = "spiffe://kiln.test/tenant/alpha";
const BETA: &str = "spiffe://kiln.test/tenant/beta";

fn kilnd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kilnd")
}

fn kiln(args: &[&str]) -> Run {
    let out = Command::new(kiln_bin())
        .args(args)
        .env_remove("KILN_ADDR")
        .output()
        .unwrap();
    Run::from(out)
}

/// A CA and certificates made with `kiln pki`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        let ok = |args: &[&str]| {
            let r = kiln(args);
            assert_eq!(r.code, 0, "kiln {args:?}: {}", r.stderr);
        };
        ok(&["pki", "init", "--dir", &d]);
        ok(&["pki", "issue", "--dir", &d, "server", "--name", "kilnd"]);
        for (name, uri) in [
            ("alpha", ALPHA),
            ("beta", BETA),
            ("gamma", "spiffe://kiln.test/tenant/gamma"),
        ] {
            ok(&[
                "pki", "issue", "--dir", &d, "client", "--name", name, "--uri", uri,
            ]);
        }
        ok(&[
            "pki",
            "issue",
            "--dir",
            &d,
            "client",
            "--name",
            "expired",
            "--uri",
            ALPHA,
            "--not-before",
            "2020-01-01T00:00:00Z",
            "--not-after",
            "2020-02-01T00:00:00Z",
        ]);
        let other = format!("{d}/other");
        ok(&["pki", "init", "--dir", &other]);
        ok(&[
            "pki", "issue", "--dir", &other, "client", "--name", "alpha", "--uri", ALPHA,
        ]);
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A running kilnd over a copy of the base store.
struct Kilnd {
    child: Child,
    log: PathBuf,
    addr: String,
    _store: Kiln,
    state: tempfile::TempDir,
}

impl Drop for Kilnd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test shows what kilnd said: its side of a failure is often the reason.
        if std::thread::panicking() {
            eprintln!("--- kilnd log ({}) ---\n{}", self.log.display(), self.log());
        }
    }
}

impl Kilnd {
    /// Starts kilnd with these `[[tenant]]` tables; `prepare` may build into its store first.
    fn start(pki: &Pki, tenants: &str, prepare: impl FnOnce(&Kiln)) -> Kilnd {
        let store = Kiln::with_base();
        prepare(&store);
        let state = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(store.root(), state.path().join("store")).unwrap();
        let config = state.path().join("kilnd.toml");
        // Top-level keys (before the first table) go before [tls].
        let split = tenants
            .lines()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(tenants.lines().count());
        let top: String = tenants
            .lines()
            .take(split)
            .map(|l| format!("{l}\n"))
            .collect();
        let tables: String = tenants
            .lines()
            .skip(split)
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n{top}[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = [\"{}\"]\n{tables}",
                state.path().display(),
                pki.path("kilnd.pem"),
                pki.path("kilnd.key"),
                pki.path("ca.pem"),
            ),
        )
        .unwrap();
        let log = state.path().join("kilnd.log");
        let child = Command::new(kilnd_bin())
            .arg("--config")
            .arg(&config)
            .env("KILND_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find(|l| l.contains("kilnd listening"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split_whitespace().next())
            {
                break addr.to_owned();
            }
            assert!(Instant::now() < deadline, "kilnd did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        Kilnd {
            child,
            log,
            addr: format!("https://{addr}"),
            _store: store,
            state,
        }
    }

    fn admin(&self, command: &str) -> Run {
        let sock = self.state.path().join("admin.sock");
        kiln(&["admin", command, "--socket", sock.to_str().unwrap()])
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kiln ARGS` as the holder of `cert` (`None`: no client certificate).
    fn command(&self, pki: &Pki, cert: Option<&str>, args: &[&str]) -> Command {
        let mut c = Command::new(kiln_bin());
        c.args(args)
            .env("KILN_ADDR", &self.addr)
            .env("KILN_TLS_CA", pki.path("ca.pem"))
            .env_remove("KILN_TLS_CERT")
            .env_remove("KILN_TLS_KEY")
            .env_remove("SOURCE_DATE_EPOCH");
        if let Some(cert) = cert {
            c.env("KILN_TLS_CERT", pki.path(&format!("{cert}.pem")))
                .env("KILN_TLS_KEY", pki.path(&format!("{cert}.key")));
        }
        c
    }

    fn run(&self, pki: &Pki, cert: Option<&str>, args: &[&str]) -> Run {
        let out = self.command(pki, cert, args).output().unwrap();
        Run::from(out)
    }
}

fn context(dir: &Path, dockerfile: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    dir.to_owned()
}

/// `(steps run, steps cached)` from the `built … (N steps run, M cached)` line.
fn counts(r: &Run) -> (u32, u32) {
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("built "))
        .unwrap_or_else(|| panic!("no built line:\n{}", r.stderr));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    let n = nums.len();
    (nums[n - 2], nums[n - 1])
}

const TENANTS: &str = r#"
[[tenant]]
name = "alpha"
identities = ["spiffe://kiln.test/tenant/alpha"]
policy = "POLICY"
[[tenant]]
name = "beta"
identities = ["spiffe://kiln.test/tenant/beta"]
entitlements = ["network.host"]
"#;

#[test]
fn mutual_tls_refusals_are_clear() {
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let d = Kilnd::start(&pki, &TENANTS.replace("policy = \"POLICY\"\n", ""), |_| {});

    let ok = d.run(&pki, Some("alpha"), &["remote", "info"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stdout
            .contains("tenant: alpha (identity spiffe://kiln.test/tenant/alpha)")
    );

    let refusals = [
        (None, "requires a client certificate"),
        (
            Some("other/alpha"),
            "does not chain to a CA the daemon trusts",
        ),
        (Some("expired"), "has expired"),
        (Some("gamma"), "maps to no tenant"),
    ];
    for (cert, want) in refusals {
        let r = d.run(&pki, cert, &["remote", "info"]);
        assert_eq!(r.code, 1, "{cert:?} must be refused: {}", r.stdout);
        assert!(
            r.stderr.contains(want),
            "{cert:?}: expected {want:?} in:\n{}",
            r.stderr
        );
        assert!(!r.stdout.contains("tenant:"));
    }
    let r = d.run(&pki, Some("gamma"), &["remote", "info"]);
    assert!(
        r.stderr.contains("spiffe://kiln.test/tenant/gamma"),
        "{}",
        r.stderr
    );

    // A TLS 1.2-only client (a real one: openssl s_client) is refused at the handshake.
    assert!(which("openssl"), "openssl is installed by scripts/deps.sh");
    let hostport = d.addr.trim_start_matches("https://");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", hostport, "-tls1_2"])
        .args([
            "-cert",
            &pki.path("alpha.pem"),
            "-key",
            &pki.path("alpha.key"),
        ])
        .args(["-CAfile", &pki.path("ca.pem")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "TLS 1.2 must fail:\n{text}");
    assert!(text.contains("protocol version"), "{text}");

    // The daemon logged each refusal with the peer.
    let log = d.log();
    assert!(log.contains("TLS handshake refused"), "{log}");
    assert!(log.contains("identity maps to no tenant"), "{log}");
}

#[test]
fn tenants_are_isolated() {
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("alpha.rego");
    fs::write(
        &policy,
        "package kiln.exec\ndeny contains \"alpha may not run forbidden things\" if contains(concat(\" \", input.step.command), \"forbidden\")\n",
    )
    .unwrap();
    let d = Kilnd::start(
        &pki,
        &TENANTS.replace("POLICY", policy.to_str().unwrap()),
        |_| {},
    );
    let build = |cert: &str, ctx: &Path, extra: &[&str]| {
        let mut args = vec!["build", "--progress=plain"];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        d.run(&pki, Some(cert), &args)
    };

    // Cache hits are per tenant: the same build is run again for alpha, not served from beta's.
    let ctx = context(
        &tmp.path().join("same"),
        &format!("FROM {BASE}\nRUN echo built > /x\n"),
    );
    let b1 = build("beta", &ctx, &[]);
    assert_eq!(b1.code, 0, "{}", b1.stderr);
    let (beta_run, _) = counts(&b1);
    assert!(beta_run >= 1);
    let a1 = build("alpha", &ctx, &[]);
    assert_eq!(a1.code, 0, "{}", a1.stderr);
    assert_eq!(
        counts(&a1).0,
        beta_run,
        "alpha got beta's cached step:\n{}",
        a1.stderr
    );
    assert_eq!(
        a1.stdout.trim(),
        b1.stdout.trim(),
        "same inputs, same image"
    );
    let a2 = build("alpha", &ctx, &[]);
    assert_eq!(
        counts(&a2).0,
        0,
        "alpha's own rebuild is cached:\n{}",
        a2.stderr
    );

    // Cache mounts are per tenant: alpha does not see what beta left in cache id "shared".
    let ctx = context(
        &tmp.path().join("mounts"),
        &format!(
            "FROM {BASE}\nARG WHO\nRUN --mount=type=cache,id=shared,target=/c (cat /c/who 2>/dev/null || echo none) > /seen && echo $WHO > /c/who\n"
        ),
    );
    let seen = |cert: &str, who: &str| {
        let out = tmp.path().join(format!("out-{cert}-{who}"));
        let r = build(
            cert,
            &ctx,
            &[
                "--build-arg",
                &format!("WHO={who}"),
                "-o",
                &format!("type=local,dest={}", out.display()),
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        fs::read_to_string(out.join("seen"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(seen("beta", "beta1"), "none");
    assert_eq!(
        seen("beta", "beta2"),
        "beta1",
        "beta's own cache mount persists"
    );
    assert_eq!(
        seen("alpha", "alpha1"),
        "none",
        "alpha must not read beta's cache mount"
    );

    // Builds: alpha neither sees nor cancels beta's; beta does both.
    let slow = context(
        &tmp.path().join("slow"),
        &format!("FROM {BASE}\nRUN sleep 60\n"),
    );
    let mut beta_build = d
        .command(
            &pki,
            Some("beta"),
            &["build", "--progress=plain", slow.to_str().unwrap()],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let ls = d.run(&pki, Some("beta"), &["remote", "ls"]);
        if let Some(line) = ls.stdout.lines().find(|l| l.contains(" running ")) {
            break line.split_whitespace().next().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "beta's build never ran: {}",
            ls.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ls = d.run(&pki, Some("alpha"), &["remote", "ls"]);
    assert_eq!(ls.code, 0);
    assert!(
        !ls.stdout.contains(&id),
        "alpha sees beta's build:\n{}",
        ls.stdout
    );
    let c = d.run(&pki, Some("alpha"), &["remote", "cancel", &id]);
    assert_eq!(c.code, 1);
    assert!(c.stderr.contains("no build"), "{}", c.stderr);
    let c = d.run(&pki, Some("beta"), &["remote", "cancel", &id]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let status = beta_build.wait().unwrap();
    let mut err = String::new();
    beta_build
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(err.contains("cancel"), "{err}");

    // Entitlements: network.host is beta's only.
    let net = context(
        &tmp.path().join("net"),
        &format!("FROM {BASE}\nRUN --network=host true\n"),
    );
    let r = build("alpha", &net, &["--allow", "network.host"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("entitlement network.host is not granted to tenant alpha"),
        "{}",
        r.stderr
    );
    let r = build("beta", &net, &["--allow", "network.host"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Policies: alpha's applies to alpha only.
    let forbidden = context(
        &tmp.path().join("forbidden"),
        &format!("FROM {BASE}\nRUN echo forbidden > /f\n"),
    );
    let r = build("alpha", &forbidden, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("alpha may not run forbidden things"),
        "{}",
        r.stderr
    );
    let r = build("beta", &forbidden, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// The `context: sent N of M bytes` line.
fn sent(r: &Run) -> (u64, u64) {
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("context: sent "))
        .unwrap_or_else(|| panic!("no context line:\n{}", r.stderr));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn a_rebuild_sends_only_the_changed_file() {
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let d = Kilnd::start(&pki, &TENANTS.replace("policy = \"POLICY\"\n", ""), |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("big"),
        &format!("FROM {BASE}\nCOPY . /ctx\nRUN find /ctx -type f | wc -l > /count\n"),
    );
    for dir in 0..100 {
        let sub = ctx.join(format!("d{dir:03}"));
        fs::create_dir(&sub).unwrap();
        for f in 0..200 {
            fs::write(
                sub.join(format!("f{f:03}")),
                format!("{dir}/{f} {}\n", "x".repeat(90)),
            )
            .unwrap();
        }
    }
    let build = || {
        d.run(
            &pki,
            Some("alpha"),
            &["build", "--progress=plain", ctx.to_str().unwrap()],
        )
    };
    let first = build();
    assert_eq!(first.code, 0, "{}", first.stderr);
    let (sent1, total) = sent(&first);
    assert!(total > 20_000 * 90, "{total}");
    assert_eq!(sent1, total, "the first build sends everything");
    // kilnd's progress events render in the same view as an embedded build's.
    assert!(
        first
            .stderr
            .lines()
            .any(|l| l.starts_with('#') && l.contains("COPY . /ctx")),
        "{}",
        first.stderr
    );
    fs::write(ctx.join("d042/f017"), "changed\n").unwrap();
    let second = build();
    assert_eq!(second.code, 0, "{}", second.stderr);
    let (sent2, total2) = sent(&second);
    println!(
        "20,000-file context: first build sent {sent1} bytes, rebuild after one change sent {sent2} of {total2}"
    );
    assert!(
        sent2 * 100 < total2,
        "sent {sent2} of {total2} bytes (>= 1%)"
    );
    assert_eq!(sent2, "changed\n".len() as u64);
    assert_ne!(
        first.stdout.trim(),
        second.stdout.trim(),
        "the change is in the image"
    );

    // The daemon's copy is exactly the context: the embedded build gives the same image.
    let k = Kiln::with_base();
    let e = k.build(&ctx, &["-q"]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert_eq!(e.stdout.trim(), second.stdout.trim());
}

#[test]
fn remote_and_embedded_builds_of_the_e2e_vectors_match() {
    if !root_or_skip() {
        return;
    }
    let vectors = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/e2e"));
    let mut cases: Vec<PathBuf> = fs::read_dir(&vectors)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("expect.json").is_file())
        .collect();
    cases.sort();
    let tmp = tempfile::tempdir().unwrap();
    let args_of = |dir: &Path| -> Vec<String> {
        fs::read_to_string(dir.join("args"))
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    // Base images the vectors pre-build with -t go into the daemon's store before it starts
    // (and into the embedded store), as an operator would provide them.
    let embedded = Kiln::with_base();
    let pre_build = |k: &Kiln| {
        for dir in &cases {
            let expect: serde_json::Value =
                serde_json::from_slice(&fs::read(dir.join("expect.json")).unwrap()).unwrap();
            if let Some(pre) = expect.get("pre") {
                let ctx = tmp.path().join(format!(
                    "pre-{}-{}",
                    dir.file_name().unwrap().to_string_lossy(),
                    k.root().display().to_string().len()
                ));
                copy_tree(&dir.join(pre["dir"].as_str().unwrap()), &ctx, &|_| false);
                let r = k.build(&ctx, &["-t", pre["tag"].as_str().unwrap()]);
                assert_eq!(r.code, 0, "{}", r.stderr);
            }
        }
    };
    pre_build(&embedded);
    let pki = Pki::new();
    let d = Kilnd::start(&pki, &TENANTS.replace("policy = \"POLICY\"\n", ""), |k| {
        pre_build(k)
    });
    let mut compared = 0;
    let mut mismatches = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let args = args_of(dir);
        let expect: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("expect.json")).unwrap()).unwrap();
        let pre_dir = expect
            .get("pre")
            .and_then(|p| p["dir"].as_str())
            .map(|p| dir.join(p));
        let ctx = tmp.path().join(format!("ctx-{name}"));
        copy_tree(dir, &ctx, &|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            (p.parent() == Some(dir.as_path()) && (n == "expect.json" || n == "args"))
                || pre_dir.as_deref() == Some(p)
        });
        let mut a: Vec<String> = vec!["-q".into()];
        a.extend(args.iter().cloned());
        let e = embedded.build_with(&ctx, &a, |_| {});
        let mut remote_args: Vec<&str> = vec!["build", "-q"];
        remote_args.extend(args.iter().map(String::as_str));
        remote_args.push(ctx.to_str().unwrap());
        // In the context directory, as the embedded build runs (`--file` is relative to it).
        let out = d
            .command(&pki, Some("alpha"), &remote_args)
            .current_dir(&ctx)
            .output()
            .unwrap();
        let r = Run::from(out);
        if e.code != 0 || r.code != 0 || e.stdout.trim() != r.stdout.trim() {
            mismatches.push(format!(
                "{name}: embedded exit {} {:?}, remote exit {} {:?}\n{}\n{}",
                e.code,
                e.stdout.trim(),
                r.code,
                r.stdout.trim(),
                e.stderr,
                r.stderr
            ));
        }
        compared += 1;
    }
    println!(
        "remote vs embedded: {compared} e2e vectors compared, {} differ",
        mismatches.len()
    );
    assert_eq!(compared, cases.len(), "every vector is compared");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Acceptance 3: 12 concurrent builds from 3 tenants (cached and uncached) all succeed with
/// the right digests, and no tenant ever has more builds running than its limit — read from
/// the daemon's own `build started … running=N limit=M` events.
#[test]
fn twelve_concurrent_builds_respect_each_tenants_limit() {
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let tenants = r#"
[[tenant]]
name = "alpha"
identities = ["spiffe://kiln.test/tenant/alpha"]
max_concurrent_builds = 1
[[tenant]]
name = "beta"
identities = ["spiffe://kiln.test/tenant/beta"]
max_concurrent_builds = 2
[[tenant]]
name = "gamma"
identities = ["spiffe://kiln.test/tenant/gamma"]
max_concurrent_builds = 3
"#;
    let d = Kilnd::start(&pki, tenants, |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("load"),
        &format!("FROM {BASE}\nARG V\nRUN sleep 1 && echo $V > /v\n"),
    );
    let build = |cert: &str, v: u32| {
        d.command(
            &pki,
            Some(cert),
            &[
                "build",
                "-q",
                "--build-arg",
                &format!("V={v}"),
                ctx.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    // V=0 built once per tenant first: the cached part of the mix.
    let mut cached = Vec::new();
    for cert in ["alpha", "beta", "gamma"] {
        let out = build(cert, 0).wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cached.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    assert!(cached.iter().all(|d| d == &cached[0]), "{cached:?}");

    // 12 at once: each tenant builds V = 0 (cached), 1, 2, 3 (cold).
    let mut children = Vec::new();
    for v in 0..4 {
        for cert in ["alpha", "beta", "gamma"] {
            children.push((cert, v, build(cert, v)));
        }
    }
    let mut digests: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    for (cert, v, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{cert} V={v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        digests
            .entry(v)
            .or_default()
            .push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    for (v, ds) in &digests {
        assert_eq!(ds.len(), 3);
        assert!(
            ds.iter().all(|d| d == &ds[0]),
            "V={v}: tenants disagree: {ds:?}"
        );
    }
    assert_eq!(digests[&0][0], cached[0], "the cached build's digest");
    // The same inputs built in this process, embedded, give the same images.
    let k = Kiln::with_base();
    let e = k.build(&ctx, &["-q", "--build-arg", "V=3"]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert_eq!(e.stdout.trim(), digests[&3][0]);

    // The daemon's events: running counts per tenant never exceed the limit, and the limits
    // were reached (the builds did overlap).
    let log = d.log();
    let mut max: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
    for line in log.lines().filter(|l| l.contains("build started")) {
        let field = |k: &str| {
            line.split(&format!(" {k}="))
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or_default()
                .to_owned()
        };
        let running: u32 = field("running").parse().unwrap();
        let limit: u32 = field("limit").parse().unwrap();
        let e = max.entry(field("tenant")).or_default();
        e.0 = e.0.max(running);
        e.1 = limit;
        assert!(running <= limit, "over the limit: {line}");
    }
    println!("max running per tenant (max, limit): {max:?}");
    assert_eq!(max.len(), 3, "{log}");
    assert_eq!(max["alpha"].0, 1);
    assert!(
        max["gamma"].0 >= 2,
        "gamma's builds never overlapped: {max:?}"
    );
}

#[test]
fn disk_usage_and_prune_are_per_tenant() {
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let d = Kilnd::start(&pki, &TENANTS.replace("policy = \"POLICY\"\n", ""), |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("cm"),
        &format!("FROM {BASE}\nRUN --mount=type=cache,id=c,target=/c echo data > /c/f\n"),
    );
    for cert in ["alpha", "beta"] {
        let r = d.run(&pki, Some(cert), &["build", "-q", ctx.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let du = |cert: &str| {
        let r = d.run(&pki, Some(cert), &["remote", "du"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let row = |name: &str| -> (u64, u64) {
            let line = r.stdout.lines().find(|l| l.starts_with(name)).unwrap();
            let nums: Vec<u64> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            (nums[0], nums[1])
        };
        (row("cache mounts"), row("context copies"))
    };
    let ((a_bytes, a_mounts), (_, a_copies)) = du("alpha");
    assert_eq!((a_mounts, a_copies), (1, 1));
    assert!(a_bytes > 0);
    let p = d.run(&pki, Some("alpha"), &["remote", "prune"]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert!(
        p.stdout
            .contains("removed 1 cache mounts and 1 context copies"),
        "{}",
        p.stdout
    );
    let ((_, a_mounts), (_, a_copies)) = du("alpha");
    assert_eq!((a_mounts, a_copies), (0, 0));
    let ((_, b_mounts), (_, b_copies)) = du("beta");
    assert_eq!(
        (b_mounts, b_copies),
        (1, 1),
        "alpha's prune left beta's alone"
    );
}

/// `[gc]` in kilnd.toml: the daemon collects the build cache by policy on its own; records
/// unused for longer than `keep_duration` go (and a rebuild runs the steps again), images stay.
#[test]
fn periodic_gc_drops_unused_cache_by_policy() {
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let tenants = format!(
        "[gc]\ninterval = \"1s\"\nkeep_duration = \"1s\"\n{}",
        TENANTS.replace("policy = \"POLICY\"\n", "")
    );
    let d = Kilnd::start(&pki, &tenants, |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("gc"),
        &format!("FROM {BASE}\nRUN echo one > /one\nRUN echo two > /two\n"),
    );
    let build = || {
        d.run(
            &pki,
            Some("alpha"),
            &["build", "--progress=plain", ctx.to_str().unwrap()],
        )
    };
    let first = build();
    assert_eq!(first.code, 0, "{}", first.stderr);
    let (ran, _) = counts(&first);
    assert_eq!(ran, 2);
    // The records are older than keep_duration after 2 s; the base image's layers are an
    // image's, never collected: wait until the collections removed this build's 2 layers.
    let removed_layers = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("gc: collected"))
            .filter_map(|l| {
                l.split(" layers=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while removed_layers(&d.log()) < 2 {
        assert!(
            Instant::now() < deadline,
            "gc did not collect:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = build();
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        counts(&second).0,
        2,
        "the collected steps run again:\n{}",
        second.stderr
    );
    assert_eq!(
        first.stdout.trim(),
        second.stdout.trim(),
        "and give the same image"
    );

    // On demand, over the admin socket; the store stays consistent.
    let gc = d.admin("gc");
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(gc.stdout.starts_with("gc: removed "), "{}", gc.stdout);
    let fsck = d.admin("fsck");
    assert_eq!(fsck.code, 0, "{}{}", fsck.stdout, fsck.stderr);
}

/// SIGTERM: no new connections; `on_shutdown = "finish"` lets a running build finish,
/// `"cancel"` cancels it; kilnd then exits cleanly.
#[test]
fn graceful_shutdown_finishes_or_cancels_running_builds() {
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("slow"),
        &format!("FROM {BASE}\nARG V\nRUN sleep 3 && echo $V > /v\n"),
    );
    for (mode, v) in [("finish", "1"), ("cancel", "2")] {
        let tenants = format!(
            "on_shutdown = \"{mode}\"\nshutdown_grace_secs = 60\n{}",
            TENANTS.replace("policy = \"POLICY\"\n", "")
        );
        let mut d = Kilnd::start(&pki, &tenants, |_| {});
        let build = d
            .command(
                &pki,
                Some("alpha"),
                &[
                    "build",
                    "-q",
                    "--build-arg",
                    &format!("V={v}"),
                    ctx.to_str().unwrap(),
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.log().contains("build started") {
            assert!(Instant::now() < deadline, "{}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = Command::new("kill")
            .args(["-TERM", &d.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let out = build.wait_with_output().unwrap();
        let status = d.child.wait().unwrap();
        assert!(status.success(), "kilnd exit: {status:?}\n{}", d.log());
        let err = String::from_utf8_lossy(&out.stderr);
        match mode {
            "finish" => assert!(out.status.success(), "{mode}: {err}\n{}", d.log()),
            _ => {
                assert!(!out.status.success(), "{mode}: the build must be cancelled");
                assert!(err.contains("cancel"), "{err}");
            }
        }
    }
}

/// `--ssh` through kilnd: the step's agent client lists the key of the agent on the client's
/// side, relayed over the build's stream (the daemon never holds the key).
#[test]
fn ssh_agent_is_relayed_from_the_client() {
    if !root_or_skip() {
        return;
    }
    for tool in ["ssh-agent", "ssh-add", "ssh-keygen"] {
        if !which(tool) {
            println!("skipped: {tool} is not installed (Debian openssh-client)");
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let key = tmp.path().join("id");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "relayed-key", "-f"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &sock)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    );

    let pki = Pki::new();
    let d = Kilnd::start(&pki, &TENANTS.replace("policy = \"POLICY\"\n", ""), |_| {});
    let ctx = context(
        &tmp.path().join("ctx"),
        &format!(
            "FROM {BASE}\nCOPY probe /probe\nRUN --mount=type=ssh /probe ssh-identities > /keys\n"
        ),
    );
    let probe =
        compile::compile_probe(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-daemon-probe"))
            .unwrap();
    fs::copy(probe, ctx.join("probe")).unwrap();
    let out = tmp.path().join("out");
    let r = d.run(
        &pki,
        Some("alpha"),
        &[
            "build",
            "--progress=plain",
            "--ssh",
            &format!("default={}", sock.display()),
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
    );
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let keys = fs::read_to_string(out.join("keys")).unwrap();
    assert!(
        keys.lines()
            .any(|l| l.starts_with("kiln-probe: ssh key ") && l.ends_with(" relayed-key")),
        "{keys}"
    );
    let private = fs::read_to_string(&key).unwrap();
    assert!(!d.log().contains(private.lines().nth(1).unwrap()));
}

/// Secrets through kilnd: the daemon asks only for the offered secrets the build's steps
/// mount, and the step gets the value.
#[test]
fn the_daemon_asks_only_for_the_secrets_the_build_uses() {
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let d = Kilnd::start(&pki, &TENANTS.replace("policy = \"POLICY\"\n", ""), |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("sec"),
        &format!("FROM {BASE}\nRUN --mount=type=secret,id=used cat /run/secrets/used > /got\n"),
    );
    let out = tmp.path().join("out");
    let r = d
        .command(
            &pki,
            Some("alpha"),
            &[
                "build",
                "--progress=plain",
                "--secret",
                "id=used,env=KILN_TEST_USED",
                "--secret",
                "id=unused,env=KILN_TEST_UNUSED",
                "-o",
                &format!("type=local,dest={}", out.display()),
                ctx.to_str().unwrap(),
            ],
        )
        .env("KILN_TEST_USED", "used-value")
        .env("KILN_TEST_UNUSED", "never-sent")
        .output()
        .unwrap();
    assert!(out.exists() || !r.status.success());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(fs::read_to_string(out.join("got")).unwrap(), "used-value");
    let log = d.log();
    assert!(log.contains("offered=2 asked=1"), "{log}");
    assert!(!log.contains("never-sent") && !log.contains("used-value"));
}

/// Sharing by explicit config: tenants given the same `cache_namespace` get each other's
/// cache hits (the isolation test shows that by default they do not).
#[test]
fn a_shared_cache_namespace_shares_cached_results() {
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let tenants = r#"
[[tenant]]
name = "alpha"
identities = ["spiffe://kiln.test/tenant/alpha"]
cache_namespace = "team"
[[tenant]]
name = "beta"
identities = ["spiffe://kiln.test/tenant/beta"]
cache_namespace = "team"
"#;
    let d = Kilnd::start(&pki, tenants, |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("shared"),
        &format!("FROM {BASE}\nRUN echo shared > /s\n"),
    );
    let a = d.run(
        &pki,
        Some("alpha"),
        &["build", "--progress=plain", ctx.to_str().unwrap()],
    );
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(counts(&a).0, 1);
    let b = d.run(
        &pki,
        Some("beta"),
        &["build", "--progress=plain", ctx.to_str().unwrap()],
    );
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert_eq!(
        counts(&b).0,
        0,
        "beta shares alpha's namespace:\n{}",
        b.stderr
    );
    assert_eq!(a.stdout.trim(), b.stdout.trim());
}

#[test]
fn finished_builds_beyond_the_history_limit_are_forgotten() {
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let tenants = format!(
        "{}[history]\nmax_entries = 2\n",
        TENANTS.replace("policy = \"POLICY\"\n", "")
    );
    let d = Kilnd::start(&pki, &tenants, |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("c"),
        &format!("FROM {BASE}\nRUN echo hi > /hi\n"),
    );
    for _ in 0..3 {
        let r = d.run(&pki, Some("alpha"), &["build", ctx.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let ls = d.run(&pki, Some("alpha"), &["remote", "ls"]);
    assert_eq!(ls.code, 0, "{}", ls.stderr);
    let listed = ls
        .stdout
        .lines()
        .filter(|l| l.contains(" succeeded "))
        .count();
    assert_eq!(listed, 2, "kiln remote ls:\n{}", ls.stdout);
    let on_disk = fs::read_dir(d.state.path().join("records"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(on_disk, 2, "records on disk");
    assert!(
        d.log().contains("pruned the records of finished builds"),
        "{}",
        d.log()
    );
}
