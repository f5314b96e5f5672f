//! The command line as a user meets it: debugging aids, disk usage and pruning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::kiln::{BASE, Kiln, root_or_skip};

fn buildkit_vectors() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("KILN_SHARED_VECTORS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors")
        })
        .join("buildkit-dockerfile/parser");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: {} not found", dir.display());
        None
    }
}

#[test]
fn dump_ast_prints_buildkits_format_for_every_parser_vector() {
    let Some(dir) = buildkit_vectors() else {
        return;
    };
    let k = Kiln::empty();
    let mut n = 0;
    for case in std::fs::read_dir(&dir).unwrap() {
        let case = case.unwrap().path();
        let want = std::fs::read_to_string(case.join("result")).unwrap();
        let run = k.run(&case, ["debug", "dump-ast", "Dockerfile"]);
        assert_eq!(run.code, 0, "{}: {}", case.display(), run.stderr);
        assert_eq!(run.stdout, want, "{}", case.display());
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn expand_prints_the_expansion_or_fails_with_exit_1() {
    let k = Kiln::empty();
    let cwd = std::env::temp_dir();
    let run = k.run(
        &cwd,
        [
            "debug",
            "expand",
            "--env",
            "A=1",
            "${A:-x}-${B:-y}-${A:+set}",
        ],
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, "1-y-set\n"));
    let run = k.run(
        &cwd,
        ["debug", "expand", "--words", "--env", "W=a b", "$W 'c d'"],
    );
    assert_eq!(run.stdout, "a\nb\nc d\n");
    let run = k.run(&cwd, ["debug", "expand", "${UNSET:?must be set}"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("must be set"), "{}", run.stderr);
    let run = k.run(&cwd, ["debug", "expand", "--env", "novalue", "x"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn dump_graph_prints_the_graph_as_json() {
    let k = Kiln::empty();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch AS a\nCOPY f /f\nFROM scratch\nCOPY --from=a /f /g\n",
    )
    .unwrap();
    let run = k.run(ctx.path(), ["debug", "dump-graph", "."]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let g: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let vs = g["vertices"].as_array().unwrap();
    assert_eq!(g["targets"].as_array().unwrap().len(), 1);
    let kinds: Vec<&str> = vs
        .iter()
        .map(|v| v["op"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "file").count(),
        2,
        "{kinds:?}"
    );
    // The second COPY reads the first one's result.
    let last = vs.last().unwrap();
    assert!(last["inputs"].as_array().unwrap().len() == 2);
}

#[test]
fn prune_removes_the_build_cache_but_keeps_images_usable() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {BASE} AS a\nRUN echo a > /a\nFROM {BASE}\nCOPY --from=a /a /a\nRUN cat /a\n"
        ),
    )
    .unwrap();
    k.build(ctx.path(), &["-t", "app"]).ok();
    assert!(k.cache_records() > 0);
    let images_before = k.images();
    let run = k.run(k.root(), ["prune"]).ok();
    assert!(run.stdout.starts_with("removed "), "{}", run.stdout);
    assert_eq!(k.cache_records(), 0);
    assert_eq!(k.images(), images_before, "prune removed an image");
    // Images still work as bases; the cache is cold, so the steps run again.
    let ctx2 = tempfile::tempdir().unwrap();
    std::fs::write(ctx2.path().join("Dockerfile"), "FROM app\nRUN test -f /a\n").unwrap();
    let out = k.build(ctx2.path(), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = k
        .build_with(ctx.path(), &["--progress=json".to_owned()], |_| {})
        .ok();
    assert!(
        run.events().iter().any(|e| e["event"] == "started"),
        "steps did not re-run after prune"
    );
    // `prune --all` also empties the image store.
    k.run(k.root(), ["prune", "--all"]).ok();
    assert_eq!(k.images().lines().count(), 1, "only the header is left");
    let du = k.du();
    assert_eq!(support::kiln::du_count(&du, "layers"), 0, "{du}");
}

#[test]
fn the_file_hash_cache_never_hides_a_change() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = tempfile::tempdir().unwrap();
    let f = ctx.path().join("data.txt");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {BASE}\nCOPY data.txt /\n"),
    )
    .unwrap();
    std::fs::write(&f, "aaaa").unwrap();
    // Files changed in the last two seconds are not remembered (coarse file times); wait so
    // that this one is, and the cache is really in play below.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let first = k.build(ctx.path(), &[]).ok().digest();
    assert_eq!(
        k.build(ctx.path(), &[]).ok().digest(),
        first,
        "no-op rebuild"
    );
    // Same size, same mtime (restored): only the status-change time tells the difference.
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::fs::write(&f, "bbbb").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), mtime);
    let second = k.build(ctx.path(), &[]).ok().digest();
    assert_ne!(
        second, first,
        "a changed file was served from the file-hash cache"
    );
    // And back: the old content gives the old image again.
    std::fs::write(&f, "aaaa").unwrap();
    assert_eq!(k.build(ctx.path(), &[]).ok().digest(), first);
}

#[test]
fn local_output_refuses_a_non_empty_directory() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {BASE}\n")).unwrap();
    let dest = tempfile::tempdir().unwrap();
    std::fs::write(dest.path().join("mine.txt"), "keep me").unwrap();
    let out = k.build(
        ctx.path(),
        &["-o", &format!("type=local,dest={}", dest.path().display())],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("not empty"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(dest.path().join("mine.txt")).unwrap(),
        "keep me"
    );
    // A new directory works.
    let fresh = dest.path().join("rootfs");
    k.build(
        ctx.path(),
        &["-o", &format!("type=local,dest={}", fresh.display())],
    )
    .ok();
    assert!(fresh.join("bin/busybox").is_file());
}

#[test]
fn a_build_ends_the_steps_a_killed_kiln_left_running() {
    if !root_or_skip() {
        return;
    }
    // Made first: making the base image is a kiln build too.
    let k = Kiln::with_base();
    // What a SIGKILLed kiln leaves: a step cgroup named for its pid, now gone, with the step
    // still running in it. The "kiln" here is a process that lives until the step is in
    // place (other tests' builds may sweep at any moment once it is gone).
    let mut owner = std::process::Command::new("/bin/sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let cg = match kiln_sandbox::StepCgroup::create(
        &format!("step-{}-0rphan22-0", owner.id()),
        &kiln_sandbox::Limits::defaults(),
    ) {
        Ok(cg) => cg,
        Err(e) => {
            let _ = owner.kill();
            let _ = owner.wait();
            eprintln!("skipped: no step cgroup can be made here: {e}");
            return;
        }
    };
    let mut step = std::process::Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .unwrap();
    for procs in cg.procs_files() {
        std::fs::write(procs, step.id().to_string()).unwrap();
    }
    let paths: Vec<std::path::PathBuf> = cg.paths().into_iter().map(Into::into).collect();
    std::mem::forget(cg);
    owner.kill().unwrap();
    owner.wait().unwrap();

    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {BASE}\nRUN true\n"),
    )
    .unwrap();
    let r = k.build(ctx.path(), &[]).ok();
    // Another test's build, running beside this one, may be the one that ends it.
    if !r
        .stderr
        .contains("killed the steps a kiln process that is gone left running")
    {
        println!("note: another kiln build ended the orphaned step first");
    }
    let status = step.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    assert!(paths.iter().all(|p| !p.exists()), "{paths:?}");
}
