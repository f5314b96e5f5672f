//! Build secrets (`RUN --mount=type=secret`, `kiln build --secret`) through the real binary:
//! a canary never reaches the store, an output or the progress stream (issue 4, acceptance 1);
//! changing a value re-runs exactly the steps that mount it and the store holds no plain hash
//! of it (4); a missing required secret fails before the step runs and commits nothing (5);
//! the mount options are honoured and the mount leaves nothing in the layer. Needs root (RUN
//! steps use namespaces and overlayfs); without root each test prints why it skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/scan.rs"]
mod scan;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use scan::{base64, hex, scan, scan_tree, unhex};
use support::kiln::{BASE, Kiln, Run, root_or_skip};

/// A fresh canary: 32 random bytes, hex-encoded so it is a printable token.
fn canary() -> String {
    let mut raw = [0u8; 32];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut raw)
        .unwrap();
    hex(&raw)
}

/// `sha256sum`/`sha512sum` of `data`, hex.
fn digest_hex(tool: &str, data: &[u8]) -> String {
    let mut child = Command::new(tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Every form of the canary a leak could take: as given (a hex token), the 32 bytes it
/// encodes, hex of the token (lower and upper), base64 of the token and of the bytes (a
/// base64 window misaligned by the surrounding bytes is covered by its inner 40 characters).
fn needles(c: &str) -> Vec<(String, Vec<u8>)> {
    let raw = unhex(c);
    let mut v = vec![
        ("token".to_owned(), c.as_bytes().to_vec()),
        ("token upper".to_owned(), c.to_uppercase().into_bytes()),
        ("raw bytes".to_owned(), raw.clone()),
        ("hex of token".to_owned(), hex(c.as_bytes()).into_bytes()),
        (
            "HEX of token".to_owned(),
            hex(c.as_bytes()).to_uppercase().into_bytes(),
        ),
    ];
    for (name, data) in [("token", c.as_bytes().to_vec()), ("raw bytes", raw)] {
        for shift in 0..3 {
            let mut padded = vec![0u8; shift];
            padded.extend_from_slice(&data);
            let b = base64(&padded);
            // Skip the characters the unknown neighbours influence.
            let inner = b.get(4..b.len().saturating_sub(4)).unwrap_or_default();
            v.push((
                format!("base64 of {name} (shift {shift})"),
                inner.as_bytes().to_vec(),
            ));
        }
    }
    v
}

/// A context directory with `Dockerfile` and the secret file `secret.txt` kept outside it.
struct Ctx {
    dir: tempfile::TempDir,
    secrets: tempfile::TempDir,
}

impl Ctx {
    fn new(dockerfile: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
        Self {
            dir,
            secrets: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `value` to a file outside the context; returns `id=ID,src=FILE`.
    fn secret_file(&self, id: &str, value: &str) -> String {
        let p = self.secrets.path().join(id);
        fs::write(&p, value).unwrap();
        format!("id={id},src={}", p.display())
    }
}

/// `kiln build` with `args`, the canary also in the environment as `KILN_TEST_CANARY`.
fn build(k: &Kiln, ctx: &Ctx, args: &[String], env_value: Option<&str>) -> Run {
    k.build_with(ctx.path(), args, |c| {
        c.env_remove("KILN_TEST_CANARY");
        if let Some(v) = env_value {
            c.env("KILN_TEST_CANARY", v);
        }
    })
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

#[test]
fn secret_never_reaches_the_store_an_output_or_the_logs() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let c = canary();
    let ctx = Ctx::new(&format!(
        "FROM {BASE}\n\
         RUN --mount=type=secret,id=canary cat /run/secrets/canary; echo\n\
         RUN --mount=type=secret,id=canary cp /run/secrets/canary /copy && cat /copy > /copy2 && rm /copy /copy2\n\
         RUN --mount=type=secret,id=canary wc -c < /run/secrets/canary > /len\n\
         RUN --mount=type=secret,id=envcanary,env=TOK sh -c 'echo \"tok=$TOK\"; echo ${{#TOK}} > /envlen'\n\
         RUN --mount=type=secret,id=canary,target=/etc/canary.conf,mode=0444 sh -c 'cat /etc/canary.conf >&2; cat /etc/canary.conf > /dev/null'\n"
    ));
    let file_secret = ctx.secret_file("canary", &c);
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    let mut args = s(&["--progress=plain", "--secret"]);
    args.push(file_secret.clone());
    args.extend(s(&[
        "--secret",
        "id=envcanary,env=KILN_TEST_CANARY",
        "-t",
        "secrets/canary",
    ]));
    for (t, dest) in [
        ("oci", "image.oci.tar"),
        ("docker", "image.docker.tar"),
        ("local", "local"),
        ("tar", "rootfs.tar"),
    ] {
        args.push("-o".into());
        args.push(format!("type={t},dest={}", o.join(dest).display()));
    }
    let plain = build(&k, &ctx, &args, Some(&c)).ok();

    // The secret really was there: the length steps saw all of it.
    let local = o.join("local");
    assert_eq!(fs::read_to_string(local.join("len")).unwrap().trim(), "64");
    assert_eq!(
        fs::read_to_string(local.join("envlen")).unwrap().trim(),
        "64"
    );
    // The step that printed it shows the redaction instead (stdout and stderr).
    assert!(
        plain.stderr.contains("****") || plain.stdout.contains("****"),
        "no redacted line in the output:\n{}",
        plain.stderr
    );
    assert!(plain.stderr.contains("tok=****"), "{}", plain.stderr);
    // The mount points left nothing behind.
    assert!(
        !local.join("run").exists(),
        "/run/secrets left in the image"
    );
    assert!(
        !local.join("etc/canary.conf").exists(),
        "the secret's target left in the image"
    );
    assert!(!local.join("copy").exists());

    // Again with JSON progress (the steps re-run: --no-cache).
    let mut json_args = args.clone();
    json_args[0] = "--progress=json".into();
    json_args.push("--no-cache".into());
    for a in json_args.iter_mut().filter(|a| a.starts_with("type=")) {
        *a = a.replace(
            &format!("dest={}/", o.display()),
            &format!("dest={}/json-", o.display()),
        );
    }
    let json = build(&k, &ctx, &json_args, Some(&c)).ok();
    assert!(
        json.events().iter().any(|e| e["event"] == "log"
            && e["data"].as_str().unwrap_or_default().contains("****")),
        "no redacted log event:\n{}",
        json.stderr
    );

    let needles = needles(&c);
    // The scanner itself finds each form, also inside gzip and tar.
    for (form, n) in &needles {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(n.len() as u64 + 2);
        h.set_cksum();
        let mut body = b"<<".to_vec();
        body.extend_from_slice(n);
        tar.append_data(&mut h, "f", &body[..]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        let mut found = Vec::new();
        scan("self-check", &gz.finish().unwrap(), &needles, &mut found);
        assert!(
            found.iter().any(|f| f.ends_with(form.as_str())),
            "scanner misses {form}"
        );
    }
    let mut hits = Vec::new();
    let store_files = scan_tree(k.root(), &needles, &mut hits);
    let output_files = scan_tree(o, &needles, &mut hits);
    for (name, run) in [("plain", &plain), ("json", &json)] {
        scan(
            &format!("{name} stdout"),
            run.stdout.as_bytes(),
            &needles,
            &mut hits,
        );
        scan(
            &format!("{name} stderr"),
            run.stderr.as_bytes(),
            &needles,
            &mut hits,
        );
    }
    assert!(store_files > 10 && output_files > 10, "nothing scanned?");
    assert!(hits.is_empty(), "the canary leaked:\n{}", hits.join("\n"));
    // The store's MAC key is private.
    let key = fs::metadata(k.root().join("secret-mac.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
}

/// Per step name (a substring), whether the build `started` or took it from the cache.
fn states(run: &Run, steps: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for step in steps {
        let mut seen = Vec::new();
        for e in run.events() {
            if e["name"].as_str().is_some_and(|n| n.contains(step))
                && let Some(ev) = e["event"].as_str()
                && (ev == "started" || ev == "cached")
            {
                seen.push(ev.to_owned());
            }
        }
        out.insert((*step).to_owned(), seen.join("+"));
    }
    out
}

#[test]
fn changing_a_secret_reruns_exactly_the_steps_that_mount_it() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = Ctx::new(&format!(
        "FROM {BASE} AS a\n\
         RUN echo independent-a > /a\n\
         RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /len\n\
         RUN --mount=type=secret,id=opt echo optional > /opt\n\
         FROM {BASE} AS b\n\
         RUN echo independent-b > /b\n\
         FROM {BASE}\n\
         COPY --from=a /len /opt /\n\
         COPY --from=b /b /\n"
    ));
    const STEPS: [&str; 4] = ["independent-a", "wc -c", "echo optional", "independent-b"];
    let first_value = canary();
    let run = |value: &str, opt: bool| {
        let mut args = s(&["--progress=json", "--secret"]);
        args.push(ctx.secret_file("tok", value));
        if opt {
            args.push("--secret".into());
            args.push(ctx.secret_file("opt", "optional-value"));
        }
        build(&k, &ctx, &args, None).ok()
    };
    let first = run(&first_value, true);
    let st = states(&first, &STEPS);
    assert!(st.values().all(|v| v == "started"), "{st:?}");

    // The same value: everything from the cache.
    let st = states(&run(&first_value, true), &STEPS);
    assert!(st.values().all(|v| v == "cached"), "same value: {st:?}");

    // A new value of `tok`: the step mounting it (and, in its stage, the one after) re-runs.
    let second_value = canary();
    let st = states(&run(&second_value, true), &STEPS);
    assert_eq!(st["independent-a"], "cached", "{st:?}");
    assert_eq!(st["independent-b"], "cached", "{st:?}");
    assert_eq!(st["wc -c"], "started", "{st:?}");
    assert_eq!(st["echo optional"], "started", "its input changed: {st:?}");

    // An optional secret given, then not: only the step mounting it re-runs.
    let st = states(&run(&second_value, false), &STEPS);
    assert_eq!(st["wc -c"], "cached", "{st:?}");
    assert_eq!(st["echo optional"], "started", "{st:?}");
    assert_eq!(st["independent-a"], "cached", "{st:?}");

    // Back to the first value: its result is still in the cache.
    let st = states(&run(&first_value, true), &STEPS);
    assert!(
        st.values().all(|v| v == "cached"),
        "first value again: {st:?}"
    );

    // No plain hash of either value anywhere in the store.
    let mut needles = Vec::new();
    for v in [&first_value, &second_value] {
        for tool in ["sha256sum", "sha512sum"] {
            let h = digest_hex(tool, v.as_bytes());
            needles.push((format!("{tool} hex"), h.clone().into_bytes()));
            needles.push((format!("{tool} HEX"), h.to_uppercase().into_bytes()));
            needles.push((format!("{tool} raw"), unhex(&h)));
        }
        needles.extend(self::needles(v));
    }
    let mut hits = Vec::new();
    scan_tree(k.root(), &needles, &mut hits);
    assert!(hits.is_empty(), "found in the store:\n{}", hits.join("\n"));
}

#[test]
fn a_missing_required_secret_fails_before_the_step_runs_and_commits_nothing() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = Ctx::new(&format!(
        "FROM {BASE}\n\
         RUN --mount=type=secret,id=foo,required touch /ran\n\
         RUN echo after > /after\n"
    ));
    let du = k.du();
    let images = k.images();
    let run = build(
        &k,
        &ctx,
        &s(&["--progress=plain", "-t", "secrets/req"]),
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            r#"secret "foo" is required but was not provided (kiln build --secret id=foo,src="#
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("touch /ran\n#"),
        "the step ran:\n{}",
        run.stderr
    );
    assert_eq!(k.du(), du, "the store changed");
    assert_eq!(k.images(), images);

    // Malformed --secret flags are usage errors; an unreadable source too.
    for bad in ["src=/etc/hostname", "id=foo,bogus=1", "id=foo,type=ssh"] {
        let run = build(&k, &ctx, &s(&["--secret", bad]), None);
        assert_eq!(run.code, 2, "--secret {bad}: {}", run.stderr);
    }
    let run = build(
        &k,
        &ctx,
        &s(&["--secret", "id=foo,src=/nonexistent/kiln"]),
        None,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("id=foo"), "{}", run.stderr);
    assert_eq!(k.du(), du, "the store changed");
}

#[test]
fn secret_mount_options_are_honoured_and_leave_nothing_in_the_layer() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = Ctx::new(&format!(
        "FROM {BASE}\n\
         ARG API_TOKEN=x\n\
         ENV PUBLIC_KEY=y DB_PASSWORD=z\n\
         WORKDIR /w\n\
         RUN mkdir /data && ln -s /data /link\n\
         RUN --mount=type=secret,id=s,target=/link/secrets/s cat /link/secrets/s > /dev/null && echo ok > /via-link\n\
         RUN --mount=type=secret,id=s,target=/etc/app/cred,mode=0440,uid=1000,gid=1000 stat -c '%a %u %g' /etc/app/cred > /opts\n\
         RUN --mount=type=secret,id=s sh -c \"stat -c '%a %u %g' /run/secrets/s > /defaults; (echo x > /run/secrets/s) 2>/dev/null && echo writable > /ro || echo read-only > /ro\"\n\
         RUN --mount=type=secret,id=s,dst=rel/cred cat /w/rel/cred > /dev/null && echo ok > /relative\n\
         RUN --mount=type=secret,id=s,env=SVAR,target=/run/x/both sh -c 'echo ${{#SVAR}} > /both; wc -c < /run/x/both >> /both'\n\
         RUN --mount=type=secret,id=s,env=ONLYENV sh -c 'echo ${{#ONLYENV}} > /envonly; ls /run/secrets > /envonly-ls 2>&1 || true'\n\
         RUN --mount=type=secret,id=missing sh -c 'test -e /run/secrets/missing && echo present > /missing || echo absent > /missing'\n\
         USER app\n\
         RUN --mount=type=secret,id=s,uid=1000 sh -c 'wc -c < /run/secrets/s' \n\
         RUN --mount=type=secret,id=s sh -c 'cat /run/secrets/s > /dev/null 2>&1 && echo readable || echo unreadable' \n"
    ));
    let out = tempfile::tempdir().unwrap();
    let mut args = s(&["--progress=plain", "--secret"]);
    args.push(ctx.secret_file("s", "value-of-s"));
    args.push("-o".into());
    args.push(format!("type=local,dest={}", out.path().display()));
    let run = build(&k, &ctx, &args, None).ok();
    let read = |p: &str| fs::read_to_string(out.path().join(p)).unwrap();
    assert_eq!(read("opts").trim(), "440 1000 1000");
    assert_eq!(read("defaults").trim(), "400 0 0");
    assert_eq!(read("ro").trim(), "read-only");
    assert_eq!(read("relative").trim(), "ok");
    assert_eq!(
        read("both").split_whitespace().collect::<Vec<_>>(),
        ["10", "10"]
    );
    assert_eq!(read("envonly").trim(), "10");
    assert!(
        read("envonly-ls").contains("No such file"),
        "env-only secret was mounted as a file too: {}",
        read("envonly-ls")
    );
    assert_eq!(read("missing").trim(), "absent");
    // A target behind an image symlink leaves nothing behind where the symlink points.
    assert_eq!(read("via-link").trim(), "ok");
    let under_data: Vec<_> = fs::read_dir(out.path().join("data")).unwrap().collect();
    assert!(under_data.is_empty(), "left under /data: {under_data:?}");
    // uid=1000 lets user app read it; the default (root, 0400) does not.
    assert!(run.stderr.contains("unreadable"), "{}", run.stderr);
    // Nothing of the mounts is in the image.
    for p in ["run", "etc/app", "w/rel"] {
        assert!(!out.path().join(p).exists(), "{p} left in the image");
    }
    // SecretsUsedInArgOrEnv, as BuildKit words it; PUBLIC_KEY is on the allow-list.
    assert!(
        run.stderr.contains(
            "WARN: SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ARG \"API_TOKEN\") (line 2)"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("(ENV \"DB_PASSWORD\") (line 3)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("PUBLIC_KEY\")"), "{}", run.stderr);
}

#[test]
fn secret_leaves_no_trace_with_the_copying_snapshotter_and_in_a_user_namespace() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = Ctx::new(&format!(
        "FROM {BASE}\n\
         RUN --mount=type=secret,id=s sh -c \"stat -c '%a %u %g' /run/secrets/s > /stat; wc -c < /run/secrets/s > /len\"\n\
         RUN --mount=type=secret,id=s,target=/etc/app.key,uid=1000 sh -c \"stat -c '%a %u %g' /etc/app.key > /stat-app; cat /proc/self/uid_map > /uid_map\"\n"
    ));
    for extra in [
        &["--snapshotter", "copy"][..],
        &["--userns-remap", "default", "--no-cache"][..],
    ] {
        let out = tempfile::tempdir().unwrap();
        let mut args = s(&["--progress=plain", "--secret"]);
        args.push(ctx.secret_file("s", "value-of-s"));
        args.extend(s(extra));
        args.push("-o".into());
        args.push(format!("type=local,dest={}", out.path().display()));
        build(&k, &ctx, &args, None).ok();
        let read = |p: &str| fs::read_to_string(out.path().join(p)).unwrap();
        assert_eq!(read("stat").trim(), "400 0 0", "{extra:?}");
        assert_eq!(read("len").trim(), "10", "{extra:?}");
        assert_eq!(read("stat-app").trim(), "400 1000 0", "{extra:?}");
        let remapped = read("uid_map").contains("100000");
        assert_eq!(remapped, extra.contains(&"--userns-remap"), "{extra:?}");
        assert!(!out.path().join("run").exists(), "{extra:?}: /run left");
        assert!(
            !out.path().join("etc/app.key").exists(),
            "{extra:?}: /etc/app.key left"
        );
    }
}
