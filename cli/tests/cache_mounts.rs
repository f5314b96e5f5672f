//! `RUN --mount=type=cache` end to end, with the real `kiln build` (as root): persistence
//! between builds, never in the image, `sharing=shared|private|locked` between concurrent
//! steps, tenants, `from`/`source` seeding, `ro`, `mode`/`uid`/`gid`, `kiln du` and
//! `kiln prune`, and symlinks a step leaves in a cache.
//!
//! Concurrency is tested between two parallel stages of one build and between two builds
//! running at once in one engine (what the daemon will do): one store belongs to one kiln
//! process at a time (the store's lock), so two `kiln build` processes can not share a cache;
//! the locks are the same `flock`s in all cases.
//! The concurrent steps meet at a barrier (each waits, up to 30 s, until it sees the other's
//! marker in a shared cache), so the tests do not depend on timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::kiln::{BASE, Kiln, Kind, OciImage, Tree, du_count, root_or_skip, walk_dir};

/// A context directory holding `Dockerfile`.
fn context(dockerfile: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("Dockerfile"), dockerfile).unwrap();
    d
}

/// Builds `dockerfile` with `args` and returns the `-o type=local` tree.
fn build_local(k: &Kiln, dockerfile: &str, args: &[&str]) -> Tree {
    let ctx = context(dockerfile);
    let out = ctx.path().join("out");
    let dest = format!("type=local,dest={}", out.display());
    let mut all = vec!["-o", dest.as_str()];
    all.extend_from_slice(args);
    k.build(ctx.path(), &all).ok();
    walk_dir(&out)
}

/// For each cache id in the store, how many instance directories it has.
fn instances_per_id(root: &Path) -> Vec<usize> {
    let mut out = Vec::new();
    for t in fs::read_dir(root.join("cache-mounts")).unwrap().flatten() {
        for id in fs::read_dir(t.path()).unwrap().flatten() {
            let n = fs::read_dir(id.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_type().unwrap().is_dir())
                .count();
            out.push(n);
        }
    }
    out
}

fn file(tree: &Tree, path: &str) -> String {
    match tree.get(path).map(|e| &e.kind) {
        Some(Kind::File(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("{path}: expected a file, got {other:?}"),
    }
}

/// Shell: wait (up to 30 s) until `$1` exists.
const WAIT_FOR: &str =
    "i=0; while [ ! -e \"$1\" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -e \"$1\" ]";

/// `from` (a `FROM` line, or empty after one) followed by a step writing `/wait-for PATH`.
fn with_wait(from: &str) -> String {
    format!("{from}\nRUN printf '%s\\n' '#!/bin/sh' '{WAIT_FOR}' > /wait-for && chmod +x /wait-for")
}

#[test]
fn content_written_in_one_build_is_seen_by_the_next() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    build_local(
        &k,
        &format!(
            "FROM {BASE}\nRUN --mount=type=cache,target=/var/cache/app echo one > /var/cache/app/f\n"
        ),
        &[],
    );
    // Another Dockerfile, same cache id (the target).
    let t = build_local(
        &k,
        &format!(
            "FROM {BASE}\nRUN --mount=type=cache,target=/var/cache/app cat /var/cache/app/f > /seen\n"
        ),
        &[],
    );
    assert_eq!(file(&t, "/seen"), "one\n");
    // The same step again with --no-cache runs again and appends to the same cache.
    let df = format!(
        "FROM {BASE}\nRUN --mount=type=cache,id=log,target=/c sh -c 'echo run >> /c/log; cp /c/log /log'\n"
    );
    build_local(&k, &df, &[]);
    let t = build_local(&k, &df, &["--no-cache"]);
    assert_eq!(file(&t, "/log"), "run\nrun\n");
    // A different id is a different cache.
    let t = build_local(
        &k,
        &format!(
            "FROM {BASE}\nRUN --mount=type=cache,id=other,target=/var/cache/app sh -c 'ls -A /var/cache/app > /seen'\n"
        ),
        &[],
    );
    assert_eq!(file(&t, "/seen"), "");
}

#[test]
fn cache_contents_and_the_mount_stub_never_reach_the_image() {
    if !root_or_skip() {
        return;
    }
    for snapshotter in ["overlay", "copy"] {
        never_in_the_image(snapshotter);
    }
}

fn never_in_the_image(snapshotter: &str) {
    let k = Kiln::with_base();
    let ctx = context(&format!(
        "FROM {BASE}\n\
         RUN --mount=type=cache,target=/new/cache sh -c 'echo cached-bytes > /new/cache/data; mkdir -p /new/cache/d; echo x > /new/cache/d/y; echo kept > /outside'\n\
         RUN --mount=type=cache,target=/etc/cachemount,id=two echo cached-bytes > /etc/cachemount/data\n"
    ));
    let oci = ctx.path().join("img.tar");
    let local = ctx.path().join("local");
    k.build(
        ctx.path(),
        &[
            "--snapshotter",
            snapshotter,
            "-o",
            &format!("type=oci,dest={}", oci.display()),
            "-o",
            &format!("type=local,dest={}", local.display()),
        ],
    )
    .ok();
    let img = OciImage::read(&oci);
    // Every layer on its own, not just the applied result: nothing of the cache in any.
    for (digest, mt) in &img.layers {
        let mut tree = Tree::new();
        support::kiln::apply_layer(&mut tree, &img.layer_tar(digest, mt));
        for (p, e) in &tree {
            assert!(
                !p.starts_with("/new") && !p.starts_with("/etc/cachemount"),
                "{snapshotter}: layer {digest} holds {p}"
            );
            if let Kind::File(b) = &e.kind {
                assert!(
                    !String::from_utf8_lossy(b).contains("cached-bytes"),
                    "{snapshotter}: layer {digest}: {p} holds the cache's content"
                );
            }
        }
    }
    for (what, tree) in [("oci", img.rootfs()), ("local", walk_dir(&local))] {
        let what = format!("{snapshotter} {what}");
        assert_eq!(file(&tree, "/outside"), "kept\n", "{what}");
        assert!(
            !tree.contains_key("/new"),
            "{what}: the stub /new is in the image"
        );
        assert!(
            !tree.contains_key("/etc/cachemount"),
            "{what}: the stub /etc/cachemount is in the image"
        );
        assert!(tree.contains_key("/etc/passwd"), "{what}");
    }
}

#[test]
fn shared_sharing_lets_concurrent_steps_use_the_cache_together() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    // Each step marks itself in the cache and waits for the other's mark: only possible if
    // both hold the same directory at the same time.
    let step = |me: &str, other: &str| {
        format!(
            "RUN --mount=type=cache,id=sh,target=/c sh -c 'touch /c/{me}; if /wait-for /c/{other}; then echo saw > /result; else echo timeout > /result; fi'"
        )
    };
    let df = format!(
        "FROM {BASE} AS w\n{}\n\
         FROM w AS a\n{}\n\
         FROM w AS b\n{}\n\
         FROM {BASE}\nCOPY --from=a /result /a\nCOPY --from=b /result /b\n",
        with_wait(""),
        step("a", "b"),
        step("b", "a"),
    );
    let t = build_local(&k, &df, &["--max-parallelism", "4"]);
    assert_eq!(file(&t, "/a"), "saw\n");
    assert_eq!(file(&t, "/b"), "saw\n");
}

#[test]
fn private_sharing_gives_each_concurrent_step_its_own_directory() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    // Both steps hold their private cache while they meet at a barrier in a shared one.
    let step = |me: &str, other: &str| {
        format!(
            "RUN --mount=type=cache,id=pv,target=/c,sharing=private --mount=type=cache,id=barrier,target=/b \
             sh -c 'touch /c/{me} /b/{me}; /wait-for /b/{other} || exit 7; ls /c > /seen'"
        )
    };
    let df = format!(
        "FROM {BASE} AS w\n{}\n\
         FROM w AS a\n{}\n\
         FROM w AS b\n{}\n\
         FROM {BASE}\nCOPY --from=a /seen /a\nCOPY --from=b /seen /b\n",
        with_wait(""),
        step("a", "b"),
        step("b", "a"),
    );
    let t = build_local(&k, &df, &["--max-parallelism", "4"]);
    assert_eq!(file(&t, "/a"), "a\n");
    assert_eq!(file(&t, "/b"), "b\n");
    // Both private instances are kept for later builds: two directories of one cache id.
    let mut instances = instances_per_id(k.root());
    instances.sort_unstable();
    assert_eq!(instances, vec![1, 2]);
}

#[test]
fn locked_sharing_serialises_concurrent_steps() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    // The stages meet at a barrier first, so their locked steps start together; inside the
    // lock each logs start and end around a sleep and notes whether the other was inside.
    let step = |me: &str, other: &str| {
        format!(
            "RUN --mount=type=cache,id=barrier,target=/b sh -c 'touch /b/{me}; /wait-for /b/{other}'\n\
             RUN --mount=type=cache,id=lk,target=/c,sharing=locked \
             sh -c '[ -e /c/busy ] && echo overlap >> /c/log; touch /c/busy; echo start-{me} >> /c/log; sleep 1; echo end-{me} >> /c/log; rm /c/busy; cp /c/log /log'"
        )
    };
    let df = format!(
        "FROM {BASE} AS w\n{}\n\
         FROM w AS a\n{}\n\
         FROM w AS b\n{}\n\
         FROM {BASE}\nCOPY --from=a /log /a\nCOPY --from=b /log /b\n",
        with_wait(""),
        step("a", "b"),
        step("b", "a"),
    );
    let t = build_local(&k, &df, &["--max-parallelism", "4"]);
    let (a, b) = (file(&t, "/a"), file(&t, "/b"));
    let full = if a.lines().count() > b.lines().count() {
        a
    } else {
        b
    };
    let lines: Vec<&str> = full.lines().collect();
    assert_eq!(lines.len(), 4, "{full}");
    assert!(!full.contains("overlap"), "{full}");
    // start-X end-X start-Y end-Y: the intervals do not overlap.
    assert_eq!(&lines[0][..6], "start-");
    assert_eq!(lines[1], format!("end-{}", &lines[0][6..]));
    assert_eq!(&lines[2][..6], "start-");
    assert_eq!(lines[3], format!("end-{}", &lines[2][6..]));
    assert_ne!(lines[0], lines[2]);
}

#[test]
fn two_tenants_never_see_each_others_cache() {
    if !root_or_skip() {
        return;
    }
    use kiln_engine::TenantId;
    use kiln_engine::builder::{BuildRequest, Engine};
    let k = Kiln::with_base();
    let engine = Engine::new(
        kiln_engine::store::Store::open(k.root()).unwrap(),
        PathBuf::from(support::kiln::kiln_bin()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let build = |tenant: &str, script: &str| {
        let ctx = context(&format!(
            "FROM {BASE}\nRUN --mount=type=cache,id=shared-name,target=/c sh -c '{script}'\n"
        ));
        let mut req = BuildRequest::new(ctx.path());
        req.tenant = TenantId::new(tenant).unwrap();
        req.no_cache = true;
        rt.block_on(engine.build(&req, kiln_engine::progress::Progress::discard()))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    build("team-a", "echo a-private > /c/a").unwrap();
    build("team-a", "test -f /c/a").unwrap();
    // Team b's cache of the same id is empty; its writes stay its own.
    build("team-b", "test -z \"$(ls -A /c)\" && echo b > /c/b").unwrap();
    build("team-a", "test -f /c/a && test ! -e /c/b").unwrap();
    let err = build("team-b", "test -f /c/a").unwrap_err();
    assert!(err.contains("exit code: 1"), "{err}");
}

#[test]
fn from_and_source_seed_a_new_cache_once() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let df = format!(
        "FROM {BASE} AS seed\nRUN mkdir -p /opt/seed/sub && echo seed > /opt/seed/f && echo deep > /opt/seed/sub/g && chown 1000:1000 /opt/seed && chmod 0751 /opt/seed\n\
         FROM {BASE}\n\
         RUN --mount=type=cache,id=seeded,target=/c,from=seed,source=/opt/seed sh -c 'cat /c/f /c/sub/g > /got; stat -c \"%a %u %g\" /c > /root-stat; echo more >> /c/f'\n"
    );
    let t = build_local(&k, &df, &[]);
    assert_eq!(file(&t, "/got"), "seed\ndeep\n");
    // The cache's root is the source directory (BuildKit: mode, uid and gid are ignored).
    assert_eq!(file(&t, "/root-stat"), "751 1000 1000\n");
    // Not seeded again: the cache keeps what the first build wrote.
    let t = build_local(&k, &df, &["--no-cache"]);
    assert_eq!(file(&t, "/got"), "seed\nmore\ndeep\n");
}

#[test]
fn ro_mode_uid_and_gid_apply_to_the_cache_directory() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let t = build_local(
        &k,
        &format!(
            "FROM {BASE}\n\
             RUN --mount=type=cache,id=owned,target=/c,mode=0710,uid=1000,gid=1001 stat -c '%a %u %g' /c > /stat\n\
             RUN --mount=type=cache,id=default,target=/d stat -c '%a %u %g' /d > /stat-default\n\
             RUN --mount=type=cache,id=owned,target=/c,ro sh -c 'if touch /c/x 2>/dev/null; then echo writable; else echo read-only; fi' > /ro\n\
             RUN --mount=type=cache,id=owned,target=/c sh -c 'touch /c/x && echo writable' > /rw\n"
        ),
        &[],
    );
    assert_eq!(file(&t, "/stat"), "710 1000 1001\n");
    assert_eq!(file(&t, "/stat-default"), "755 0 0\n");
    assert_eq!(file(&t, "/ro"), "read-only\n");
    assert_eq!(file(&t, "/rw"), "writable\n");
}

#[test]
fn du_lists_cache_mounts_and_prune_removes_them() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let df = format!(
        "FROM {BASE}\nRUN --mount=type=cache,id=big,target=/c sh -c 'ls -A /c > /before; head -c 100000 /dev/zero > /c/blob'\n"
    );
    let t = build_local(&k, &df, &[]);
    assert_eq!(file(&t, "/before"), "");
    let du = k.du();
    assert_eq!(du_count(&du, "cache mounts"), 1, "{du}");
    let row = du.lines().find(|l| l.starts_with("cache mounts")).unwrap();
    assert!(row.contains("100kB") || row.contains("100.0kB"), "{du}");
    let p = k.run(k.root(), ["prune"]).ok();
    assert!(p.stdout.contains("1 cache mounts"), "{}", p.stdout);
    assert_eq!(du_count(&k.du(), "cache mounts"), 0);
    assert!(
        fs::read_dir(k.root().join("cache-mounts"))
            .unwrap()
            .next()
            .is_none(),
        "prune left directories behind"
    );
    // Gone for the next build too.
    let t = build_local(&k, &df, &["--no-cache"]);
    assert_eq!(file(&t, "/before"), "");
    k.run(k.root(), ["prune", "--all"]).ok();
    assert_eq!(du_count(&k.du(), "cache mounts"), 0);
}

#[test]
fn symlinks_left_in_a_cache_reach_nothing_of_the_host_in_the_next_build() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("marker"), "host-secret").unwrap();
    let h = host.path().display().to_string();
    build_local(
        &k,
        &format!(
            "FROM {BASE}\nRUN --mount=type=cache,id=evil,target=/c sh -c 'ln -s / /c/root; ln -s {h} /c/h; ln -s {h}/marker /c/m; ln -s ../../../../../../..{h} /c/rel'\n"
        ),
        &[],
    );
    let t = build_local(
        &k,
        &format!(
            "FROM {BASE}\nRUN --mount=type=cache,id=evil,target=/c sh -c \
             'cat /c/m /c/h/marker /c/rel/marker /c/root{h}/marker > /r 2>/dev/null; echo done >> /r; \
             echo pwned > /c/h/new 2>/dev/null; ls /c/root/ > /ls'\n"
        ),
        &[],
    );
    assert_eq!(file(&t, "/r"), "done\n");
    // The planted link to / is the step's own root.
    assert!(file(&t, "/ls").contains("bin\n"));
    let left: Vec<_> = fs::read_dir(host.path()).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "the host directory changed");
    assert_eq!(
        fs::read_to_string(host.path().join("marker")).unwrap(),
        "host-secret"
    );
}

#[test]
fn caches_work_in_a_user_namespace_and_are_kept_apart_from_host_id_ones() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let remap = ["--userns-remap", "default"];
    let df = |script: &str| {
        format!(
            "FROM {BASE} AS seed\nRUN mkdir -p /s && echo seeded > /s/f\n\
             FROM {BASE}\n\
             RUN --mount=type=cache,id=u,target=/c sh -c '{script}'\n\
             RUN --mount=type=cache,id=seeded,target=/d,from=seed,source=/s sh -c 'echo more >> /d/f && stat -c \"%u %g\" /d/f > /d-owner'\n"
        )
    };
    let t = build_local(
        &k,
        &df("stat -c \"%u %g\" /c > /owner; echo in-ns > /c/f"),
        &remap,
    );
    // Root in the step owns its new cache (host ids 100000…, seen as 0 inside).
    assert_eq!(file(&t, "/owner"), "0 0\n");
    assert_eq!(file(&t, "/d-owner"), "0 0\n");
    let t = build_local(&k, &df("cat /c/f > /seen"), &remap);
    assert_eq!(file(&t, "/seen"), "in-ns\n");
    // Without the mapping, the same id is another cache.
    let t = build_local(&k, &df("ls -A /c > /seen"), &[]);
    assert_eq!(file(&t, "/seen"), "");
}

#[test]
fn two_concurrent_builds_of_one_engine_serialise_on_a_locked_cache_and_share_a_shared_one() {
    if !root_or_skip() {
        return;
    }
    use kiln_engine::builder::{BuildRequest, Engine};
    let k = Kiln::with_base();
    let engine = Engine::new(
        kiln_engine::store::Store::open(k.root()).unwrap(),
        PathBuf::from(support::kiln::kiln_bin()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Build `me`: meet the other build at a barrier in a shared cache (so both are running at
    // once), then take the locked cache, logging start and end around a sleep.
    let dockerfile = |me: &str, other: &str| {
        format!(
            "{}\n\
             RUN --mount=type=cache,id=barrier,target=/b sh -c 'touch /b/{me}; /wait-for /b/{other}'\n\
             RUN --mount=type=cache,id=lk,target=/c,sharing=locked \
             sh -c '[ -e /c/busy ] && echo overlap >> /c/log; touch /c/busy; echo start-{me} >> /c/log; sleep 1; echo end-{me} >> /c/log; rm /c/busy'\n",
            with_wait(&format!("FROM {BASE}"))
        )
    };
    let (ca, cb) = (
        context(&dockerfile("a", "b")),
        context(&dockerfile("b", "a")),
    );
    let (ra, rb) = (BuildRequest::new(ca.path()), BuildRequest::new(cb.path()));
    let progress = kiln_engine::progress::Progress::discard;
    let (a, b) = rt.block_on(async {
        tokio::join!(engine.build(&ra, progress()), engine.build(&rb, progress()))
    });
    a.unwrap();
    b.unwrap();
    let ctx = context(&format!(
        "FROM {BASE}\nRUN --mount=type=cache,id=lk,target=/c cp /c/log /log\n"
    ));
    let out = ctx.path().join("out");
    let mut req = BuildRequest::new(ctx.path());
    req.outputs = vec![
        kiln_engine::output::OutputSpec::parse(&format!("type=local,dest={}", out.display()))
            .unwrap(),
    ];
    rt.block_on(engine.build(&req, progress())).unwrap();
    let log = fs::read_to_string(out.join("log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(!log.contains("overlap"), "{log}");
    assert_eq!(lines[1], format!("end-{}", &lines[0][6..]), "{log}");
    assert_eq!(lines[3], format!("end-{}", &lines[2][6..]), "{log}");
}
