//! kilnd survives `kill -9` (issue 8, acceptance 5): rounds of builds (a context of a few MB,
//! RUN steps writing files, COPY; a build arg varied so some run cold), each ended by a
//! SIGKILL of kilnd at a random moment; after each restart on the same state directory:
//! - `kiln admin fsck` (through the admin socket: kilnd holds the store) finds no problem;
//! - `kiln remote ls` shows every build the kill interrupted as failed, saying why; a build is
//!   interrupted when its record on disk was still in progress at the kill (kilnd records a
//!   build's end, synced, before it logs it, so the log alone misses builds killed between
//!   the two); every other build keeps the state its record had, and none was recorded
//!   succeeded before its engine build was over;
//! - a rebuild of a fixed reference context gives the digest it had before any crash.
//!
//! Replay a failure with the seed it printed: `KILN_CRASH_SEED=<n> cargo test -p kiln --test
//! daemon_crash -- --nocapture`; `KILN_CRASH_ROUNDS` sets the number of rounds (default 20).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::kiln::{BASE, Kiln, Run, kiln_bin, root_or_skip};

const ALPHA: &str = "spiffe://kiln.test/tenant/alpha";
const EPOCH: &str = "1700000000";

fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap();
    Run::from(out)
}

/// xorshift64*: a replayable stream of choices without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A development PKI (`kiln pki`): kilnd's server certificate and tenant alpha's client one.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        for args in [
            vec!["pki", "init", "--dir", &d],
            vec!["pki", "issue", "--dir", &d, "server", "--name", "kilnd"],
            vec![
                "pki", "issue", "--dir", &d, "client", "--name", "alpha", "--uri", ALPHA,
            ],
        ] {
            let r = run(Command::new(kiln_bin()).args(&args));
            assert_eq!(r.code, 0, "kiln {args:?}: {}", r.stderr);
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// kilnd on a state directory that outlives it: started, killed, started again.
struct Kilnd {
    state: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    addr: String,
    starts: usize,
}

impl Drop for Kilnd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Kilnd {
    fn new(pki: &Pki, state: &Path, store: &Path) -> Kilnd {
        Self::with_extra(pki, state, store, "")
    }

    /// `extra`: more top-level kilnd.toml keys.
    fn with_extra(pki: &Pki, state: &Path, store: &Path, extra: &str) -> Kilnd {
        std::os::unix::fs::symlink(store, state.join("store")).unwrap();
        let config = state.join("kilnd.toml");
        fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n{extra}[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = [\"{}\"]\n[[tenant]]\nname = \"alpha\"\nidentities = [\"{ALPHA}\"]\nmax_concurrent_builds = 3\n",
                state.display(),
                pki.path("kilnd.pem"),
                pki.path("kilnd.key"),
                pki.path("ca.pem"),
            ),
        )
        .unwrap();
        let mut k = Kilnd {
            state: state.to_owned(),
            config,
            child: None,
            addr: String::new(),
            starts: 0,
        };
        k.start();
        k
    }

    fn log_path(&self) -> PathBuf {
        self.state.join(format!("kilnd-{}.log", self.starts))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start(&mut self) {
        self.starts += 1;
        let log = self.log_path();
        let child = Command::new(env!("CARGO_BIN_EXE_kilnd"))
            .arg("--config")
            .arg(&self.config)
            .env("KILND_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        self.addr = loop {
            let text = self.log();
            if let Some(addr) = text
                .lines()
                .find(|l| l.contains("kilnd listening"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split_whitespace().next())
            {
                break format!("https://{addr}");
            }
            assert!(Instant::now() < deadline, "kilnd did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
    }

    /// SIGKILL, as an OOM killer or `kill -9` would. Returns the dead kilnd's pid.
    fn kill9(&mut self) -> Option<u32> {
        let mut c = self.child.take()?;
        let pid = c.id();
        c.kill().unwrap();
        c.wait().unwrap();
        Some(pid)
    }

    fn client(&self, pki: &Pki, args: &[&str]) -> Command {
        let mut c = Command::new(kiln_bin());
        c.args(args)
            .env("KILN_ADDR", &self.addr)
            .env("KILN_TLS_CA", pki.path("ca.pem"))
            .env("KILN_TLS_CERT", pki.path("alpha.pem"))
            .env("KILN_TLS_KEY", pki.path("alpha.key"))
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn admin(&self, command: &str) -> Run {
        self.admin_at(&self.state.join("admin.sock"), command)
    }

    fn admin_at(&self, socket: &Path, command: &str) -> Run {
        run(Command::new(kiln_bin()).args(["admin", command, "--socket", socket.to_str().unwrap()]))
    }
}

/// The manifest digest from `built sha256:… on …`.
fn built_digest(r: &Run) -> String {
    r.stderr
        .lines()
        .find_map(|l| l.strip_prefix("built "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| {
            panic!(
                "no built line:\nstdout:\n{}\nstderr:\n{}",
                r.stdout, r.stderr
            )
        })
        .to_owned()
}

/// Deterministic pseudo-random bytes (incompressible enough that layers have real size).
fn noise(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(n);
    v
}

/// The three kinds of build the rounds start.
fn contexts(root: &Path, rng: &mut Rng) -> Vec<PathBuf> {
    // A context of a few MB, copied in.
    let big = root.join("big");
    fs::create_dir_all(big.join("data/sub")).unwrap();
    for i in 0..6 {
        fs::write(big.join(format!("data/f{i}")), noise(rng, 512 << 10)).unwrap();
    }
    for i in 0..50 {
        fs::write(big.join(format!("data/sub/s{i}")), format!("small {i}\n")).unwrap();
    }
    fs::write(
        big.join("Dockerfile"),
        format!(
            "FROM {BASE}\nARG R=0\nCOPY data /data\nRUN echo \"$R\" > /data/round && cat /data/f* | md5sum > /sum && dd if=/dev/urandom of=/rand bs=64k count=64 2>/dev/null\n"
        ),
    )
    .unwrap();
    // RUN steps writing files.
    let steps = root.join("steps");
    fs::create_dir_all(&steps).unwrap();
    fs::write(
        steps.join("Dockerfile"),
        format!(
            "FROM {BASE}\nARG R=0\nRUN mkdir /w && for i in $(seq 1 300); do echo \"$i $R\" > /w/f$i; done\nRUN dd if=/dev/urandom of=/w/rand bs=64k count=96 2>/dev/null && echo \"$R\" >> /w/rand\nRUN sleep 0.$((R % 7)) && ls -l /w > /w/listing\n"
        ),
    )
    .unwrap();
    // COPY of a tree, then a step reading it.
    let copy = root.join("copy");
    fs::create_dir_all(copy.join("tree/a/b")).unwrap();
    for i in 0..40 {
        fs::write(copy.join(format!("tree/a/b/x{i}")), noise(rng, 16 << 10)).unwrap();
    }
    fs::write(
        copy.join("Dockerfile"),
        format!("FROM {BASE}\nARG R=0\nCOPY tree /tree\nRUN echo \"$R\" > /tree/r && find /tree | sort > /index && sleep 0.5\nCOPY tree /again\n"),
    )
    .unwrap();
    vec![big, steps, copy]
}

/// The reference build: its digest must never change.
fn reference(root: &Path) -> PathBuf {
    let dir = root.join("reference");
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(dir.join("src/hello.txt"), "hello, reference\n").unwrap();
    fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {BASE}\nCOPY src /src\nRUN cat /src/hello.txt > /out && echo done >> /out\nRUN mkdir /more && echo 1 > /more/one\n"
        ),
    )
    .unwrap();
    dir
}

/// Build ids the log says were accepted, and which of them got where.
#[derive(Debug, Default)]
struct Seen {
    accepted: BTreeSet<String>,
    syncing: BTreeSet<String>,
    started: BTreeSet<String>,
    stopped: BTreeSet<String>,
    finished: BTreeSet<String>,
}

fn seen(log: &str) -> Seen {
    let id = |l: &str| {
        l.split("build=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_owned)
    };
    let mut s = Seen::default();
    for l in log.lines() {
        let Some(b) = id(l) else { continue };
        let set = if l.contains("build accepted") {
            &mut s.accepted
        } else if l.contains("context sync") {
            &mut s.syncing
        } else if l.contains("build started") {
            &mut s.started
        } else if l.contains("build stopped running") {
            &mut s.stopped
        } else if l.contains("build finished") {
            &mut s.finished
        } else {
            continue;
        };
        set.insert(b);
    }
    s
}

/// The state in build `id`'s record under kilnd's `state` directory (`missing` if there is
/// none, `unreadable` if it is not a record).
fn record_state(state: &Path, id: &str) -> String {
    match fs::read(state.join("records").join(format!("{id}.json"))) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "unreadable".to_owned()),
        Err(_) => "missing".to_owned(),
    }
}

/// Live (not zombie) processes in the step cgroups of the kiln process `owner`
/// (`kiln/step-<owner>-…`).
fn steps_of(owner: u32) -> Vec<String> {
    let needle = format!("/kiln/step-{owner}-");
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(&needle))
                && fs::read_to_string(e.path().join("stat")).is_ok_and(|s| still_running(&s))
        })
        .map(|e| {
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            )
        })
        .collect()
}

/// Whether the process whose `/proc/PID/stat` is `stat` still runs: not a zombie, and not
/// on its way out. A process that was SIGKILLed can take a moment to leave (its memory is
/// released first, so its cmdline reads empty) and stays in its cgroup meanwhile; the
/// kernel marks it `PF_EXITING` (0x4 in the flags, the 9th field).
fn still_running(stat: &str) -> bool {
    // After the command name in parentheses: state ppid pgrp session tty tpgid flags …
    let Some(rest) = stat.rsplit(')').next() else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    const PF_EXITING: u64 = 0x4;
    let exiting = fields
        .get(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0);
    fields.first().is_some_and(|state| *state != "Z") && !exiting
}

/// Step inits (the sandbox's re-executed init) still alive: a killed daemon's steps.
fn step_inits() -> usize {
    let Ok(rd) = fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|a| a == kiln_sandbox::INIT_ARG.as_bytes())
            })
        })
        .count()
}

#[test]
fn kilnd_survives_kill_9_during_builds() {
    if !root_or_skip() {
        return;
    }
    let seed = std::env::var("KILN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let rounds: usize = std::env::var("KILN_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("daemon_crash: seed {seed} (replay: KILN_CRASH_SEED={seed}), {rounds} rounds");
    let mut rng = Rng(seed);
    let t0 = Instant::now();

    let pki = Pki::new();
    let store = Kiln::with_base();
    let state = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ctxs = contexts(tmp.path(), &mut rng);
    let refctx = reference(tmp.path());
    let mut d = Kilnd::new(&pki, state.path(), store.root());

    let build = |d: &Kilnd, ctx: &Path, extra: &[String]| -> Command {
        let mut args: Vec<&str> = vec!["build", "--progress=plain"];
        args.extend(extra.iter().map(String::as_str));
        args.push(ctx.to_str().unwrap());
        let mut c = d.client(&pki, &args);
        c.current_dir(ctx);
        c
    };
    let r = run(&mut build(&d, &refctx, &[]));
    assert_eq!(r.code, 0, "reference build:\n{}", r.stderr);
    let want = built_digest(&r);
    let fsck = d.admin("fsck");
    assert_eq!(
        fsck.code, 0,
        "fsck before any crash:\n{}{}",
        fsck.stdout, fsck.stderr
    );

    let (mut kills_sync, mut kills_build, mut kills_after, mut kills_idle) = (0, 0, 0, 0);
    let mut interrupted_total = 0;
    let mut orphans_total = 0;
    let mut max_fsck = Duration::ZERO;
    for round in 1..=rounds {
        // 1 to 3 builds; about half of them cold (a new build arg).
        let n = 1 + rng.below(3) as usize;
        let mut clients = Vec::new();
        for i in 0..n {
            let ctx = &ctxs[rng.below(ctxs.len() as u64) as usize];
            let r = if rng.below(2) == 0 {
                1000 + round * 10 + i
            } else {
                7
            };
            // Touch one file of the big context now and then, so a sync sends data.
            if rng.below(3) == 0 {
                let f = ctxs[0].join(format!("data/f{}", rng.below(6)));
                fs::write(&f, noise(&mut rng, 512 << 10)).unwrap();
            }
            let mut extra = vec![format!("--build-arg=R={r}")];
            if rng.below(2) == 0 {
                let out = tmp.path().join(format!("out-{round}-{i}.tar"));
                extra.push(format!("--output=type=oci,dest={}", out.display()));
            }
            clients.push(build(&d, ctx, &extra).spawn().unwrap());
        }
        // 0 to 1500 ms; one round in four between 100 and 300 ms, where contexts sync (the
        // clients need about 100 ms to start and connect).
        let wait = if rng.below(4) == 0 {
            100 + rng.below(201)
        } else {
            rng.below(1501)
        };
        std::thread::sleep(Duration::from_millis(wait));
        let dead = d.kill9().expect("kilnd was running");
        // Read after the kill: whatever the log says last is what the killed daemon did.
        let log = d.log();
        for mut c in clients {
            // The connection is gone: each client fails (or had finished) promptly.
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "a client hung after kill -9");
                std::thread::sleep(Duration::from_millis(20));
            }
            if std::env::var_os("KILN_CRASH_DEBUG").is_some() {
                let out = c.wait_with_output().unwrap();
                println!("client: {}", String::from_utf8_lossy(&out.stderr));
                println!("log: {log}");
            }
        }
        let orphans = step_inits();
        orphans_total += orphans;
        let s = seen(&log);
        // What each build's durable record said when kilnd died. kilnd writes a build's
        // final state (and syncs it) before it logs "build finished", so a kill between the
        // two leaves a finished record without the log line: such a build was not
        // interrupted, and must keep its state. A build whose record was still in progress
        // was interrupted.
        let at_kill: BTreeMap<&String, String> = s
            .accepted
            .iter()
            .map(|b| (b, record_state(&d.state, b)))
            .collect();
        for b in &s.finished {
            let state = record_state(&d.state, b);
            assert!(
                ["succeeded", "failed", "cancelled"].contains(&state.as_str()),
                "round {round} (seed {seed}): build {b} logged as finished, record says {state}"
            );
        }
        let interrupted: BTreeSet<&String> = at_kill
            .iter()
            .filter(|(_, state)| ["syncing", "queued", "running"].contains(&state.as_str()))
            .map(|(b, _)| *b)
            .collect();
        let finished_unlogged: Vec<(&String, &String)> = at_kill
            .iter()
            .filter(|(b, _)| !interrupted.contains(*b) && !s.finished.contains(**b))
            .map(|(b, state)| (*b, state))
            .collect();
        let phase = if interrupted
            .iter()
            .any(|b| s.started.contains(*b) && !s.stopped.contains(*b))
        {
            kills_build += 1;
            "build"
        } else if interrupted.iter().any(|b| s.stopped.contains(*b)) {
            kills_after += 1;
            "export"
        } else if !interrupted.is_empty() {
            kills_sync += 1;
            "sync"
        } else {
            kills_idle += 1;
            "idle"
        };
        interrupted_total += interrupted.len();

        d.start();
        // The new kilnd killed the dead one's steps before it listened.
        let left = steps_of(dead);
        assert!(
            left.is_empty(),
            "round {round}: steps of the killed kilnd still run after the restart:\n{}",
            left.join("\n")
        );
        let t = Instant::now();
        let fsck = d.admin("fsck");
        max_fsck = max_fsck.max(t.elapsed());
        assert_eq!(
            fsck.code, 0,
            "round {round} (seed {seed}, killed at {wait} ms, {phase}): fsck found problems:\n{}{}",
            fsck.stdout, fsck.stderr
        );
        assert!(fsck.stdout.contains("no problems"), "{}", fsck.stdout);

        let health = d.admin("health");
        assert!(
            health.code == 0 && health.stdout.contains("healthy"),
            "{}{}",
            health.stdout,
            health.stderr
        );
        let all = d.admin("builds");
        assert_eq!(all.code, 0, "{}", all.stderr);
        for b in &interrupted {
            assert!(
                all.stdout
                    .lines()
                    .any(|l| l.starts_with(b.as_str()) && l.contains(" failed ")),
                "round {round} (seed {seed}, killed at {wait} ms, {phase}): interrupted build {b} is not failed in kiln admin builds:\n{}\nkilnd log:\n{log}",
                all.stdout
            );
        }
        for (b, state) in &finished_unlogged {
            // Never durably succeeded before its engine build was over.
            assert!(
                state.as_str() != "succeeded" || s.stopped.contains(*b),
                "round {round} (seed {seed}): build {b} was recorded succeeded before it stopped running"
            );
            assert!(
                all.stdout
                    .lines()
                    .any(|l| l.starts_with(b.as_str()) && l.contains(&format!(" {state} "))),
                "round {round} (seed {seed}): build {b}, {state} on disk when kilnd was killed, is not {state} after the restart:\n{}",
                all.stdout
            );
        }
        let ls = run(&mut d.client(&pki, &["remote", "ls"]));
        assert_eq!(ls.code, 0, "{}", ls.stderr);
        for b in &interrupted {
            let line = ls
                .stdout
                .lines()
                .find(|l| l.starts_with(b.as_str()))
                .unwrap_or_else(|| panic!("round {round}: build {b} not listed:\n{}", ls.stdout));
            assert!(
                line.contains(" failed ")
                    && line.contains(
                        "kilnd restarted (crash or kill) while the build was in progress"
                    ),
                "round {round} (seed {seed}): interrupted build {b} must show as failed:\n{line}"
            );
        }
        // Nothing in the listing is left looking alive.
        for state in ["syncing", "queued", "running"] {
            assert!(
                !ls.stdout.contains(&format!(" {state} ")),
                "round {round}: {state} after a restart:\n{}",
                ls.stdout
            );
        }

        let r = run(&mut build(&d, &refctx, &[]));
        assert_eq!(r.code, 0, "round {round}: reference rebuild:\n{}", r.stderr);
        assert_eq!(
            built_digest(&r),
            want,
            "round {round} (seed {seed}): the reference digest changed after a crash"
        );
        println!(
            "round {round:>2}: {n} build(s), kill -9 at {wait:>4} ms ({phase}), {} interrupted; fsck clean; reference {want}",
            interrupted.len()
        );
    }

    // A rebuild without the cache: the store's layers and blobs were not what made it equal.
    let r = run(&mut build(&d, &refctx, &["--no-cache".to_owned()]));
    assert_eq!(r.code, 0, "--no-cache reference rebuild:\n{}", r.stderr);
    assert_eq!(built_digest(&r), want, "--no-cache rebuild differs");
    let fsck = d.admin("fsck");
    assert_eq!(fsck.code, 0, "final fsck:\n{}", fsck.stdout);
    println!(
        "daemon_crash: seed {seed}: {rounds} rounds, {rounds} kills (sync {kills_sync}, build {kills_build}, after the build/export {kills_after}, idle {kills_idle}), {interrupted_total} builds interrupted, {orphans_total} step inits alive just after a kill, every fsck clean (slowest {} ms: {}), reference digest stable, {:.0} s",
        max_fsck.as_millis(),
        fsck.stdout.lines().last().unwrap_or(""),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn the_admin_socket_serves_only_root_and_kilnds_user() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    if !root_or_skip() {
        return;
    }
    let pki = Pki::new();
    let store = Kiln::with_base();
    let state = tempfile::tempdir().unwrap();
    // A directory others may enter, so the socket's own mode and the peer check are what
    // stand in the way.
    let run_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(run_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let socket = run_dir.path().join("admin.sock");
    let d = Kilnd::with_extra(
        &pki,
        state.path(),
        store.root(),
        &format!("admin_socket = \"{}\"\n", socket.display()),
    );
    let mode = fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the admin socket is owner-only");
    let r = d.admin_at(&socket, "health");
    assert_eq!(r.code, 0, "root is served: {}", r.stderr);
    assert!(r.stdout.contains("healthy"), "{}", r.stdout);

    let as_nobody = || {
        run(Command::new(kiln_bin())
            .args(["admin", "health", "--socket", socket.to_str().unwrap()])
            .uid(65534)
            .gid(65534))
    };
    // The mode keeps others out...
    let r = as_nobody();
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    // ...and with the mode opened, the peer check still does.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let r = as_nobody();
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr
            .contains("uid 65534 may not use kilnd's admin socket (only root and uid 0)"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("healthy"));
    assert!(
        d.log().contains("admin socket: peer refused"),
        "{}",
        d.log()
    );
}
