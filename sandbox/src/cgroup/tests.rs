//! The real thing, as root, on whatever hierarchies the host has (CI: hybrid). Without root or
//! a cgroup file system each test says why on stderr and returns.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The host's hierarchies, or `None` (the reason on stderr) when the real tests can not run.
fn host(needs: &[Controller]) -> Option<Hierarchies> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: cgroup tests need root");
        return None;
    }
    let h = match Hierarchies::detect() {
        Ok(h) if h.all().next().is_some() => h,
        Ok(_) => {
            eprintln!("skipped: no cgroup file system mounted");
            return None;
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            return None;
        }
    };
    if let Some(c) = needs.iter().find(|c| h.locate(**c).is_none()) {
        eprintln!("skipped: no {c} controller on this host");
        return None;
    }
    Some(h)
}

fn unique(tag: &str) -> String {
    format!("test-{}-{tag}", std::process::id())
}

fn only(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::unlimited();
    f(&mut l);
    l
}

/// Start `cmd` inside `cg`: the child joins between fork and exec.
fn spawn_in(cg: &StepCgroup, cmd: &mut Command) -> std::io::Result<Child> {
    let procs = cg.procs_files();
    // SAFETY: the closure runs in the child between fork and exec. `join_cgroups` makes only
    // open(2), write(2) and close(2) calls, which are async-signal-safe, on paths shorter than
    // 256 bytes that rustix turns into C strings on the stack; `procs` was built before the
    // fork and is only read. It allocates only to report a failed join, and glibc's malloc is
    // usable in a forked child; the io::Error returned is made from an errno, allocation-free.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroups(&procs).map_err(|e| match e {
                CgroupError::Join { source, .. } => source,
                _ => std::io::Error::from_raw_os_error(libc::EINVAL),
            })
        })
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", script]);
    c
}

/// Wait for `child`, killing it (and failing) after `secs`.
fn wait_for(child: &mut Child, secs: u64) -> Result<ExitStatus, Box<dyn std::error::Error>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("child still running after {secs} s").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll `cond` for up to `secs`.
fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

#[test]
fn names_that_are_not_one_safe_path_component_are_refused() {
    for bad in [
        "",
        "a/b",
        "/abs",
        "..",
        ".",
        ".hidden",
        "-opt",
        "a b",
        "é",
        "a\0b",
        &"x".repeat(MAX_NAME_LEN + 1),
    ] {
        assert!(
            matches!(validate_name(bad), Err(CgroupError::InvalidName { .. })),
            "{bad:?} accepted"
        );
        assert!(
            matches!(
                StepCgroup::create(bad, &Limits::unlimited()),
                Err(CgroupError::InvalidName { .. })
            ),
            "{bad:?} accepted by create"
        );
    }
    for good in ["a", "step-1.a_b", "0", &"x".repeat(MAX_NAME_LEN)] {
        assert!(validate_name(good).is_ok(), "{good:?} refused");
    }
    assert!(remove_stale_cgroups("../").is_err());
}

#[test]
fn invalid_limits_are_refused_before_anything_is_created() {
    let err = StepCgroup::create(&unique("badlimit"), &only(|l| l.pids = Some(0)));
    assert!(matches!(
        err,
        Err(CgroupError::InvalidLimit { limit: "pids", .. })
    ));
    assert!(
        !kiln_cgroups()
            .iter()
            .any(|p| p.ends_with(unique("badlimit")))
    );
}

#[test]
fn joining_a_missing_cgroup_is_an_error_naming_it() {
    let missing = PathBuf::from("/nonexistent/kiln/x/cgroup.procs");
    match join_cgroups(std::slice::from_ref(&missing)) {
        Err(CgroupError::Join { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_is_reported() -> TestResult {
    let Some(h) = host(&[Controller::Pids]) else {
        return Ok(());
    };
    let cg = StepCgroup::create_with(
        &h,
        &unique("forkbomb"),
        &only(|l| l.pids = Some(16)),
        KillVia::Auto,
    )?;
    assert!(!cg.outcome().pids_limit_hit);
    let mut bomb = spawn_in(
        &cg,
        &mut sh("i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done; wait"),
    )?;
    let hit = eventually(30, || cg.outcome().pids_limit_hit);
    let held = cg.processes()?.len();
    eprintln!("fork bomb: {held} processes, {:?}", cg.outcome());
    cg.remove()?;
    let status = wait_for(&mut bomb, 10)?;
    assert!(hit, "pids.events never counted a refused fork");
    assert!(held <= 16, "{held} processes under a limit of 16");
    assert!(!status.success());
    Ok(())
}

#[test]
fn a_memory_hog_is_oom_killed_and_reported() -> TestResult {
    let Some(h) = host(&[Controller::Memory]) else {
        return Ok(());
    };
    let tail = Path::new("/usr/bin/tail");
    if !tail.exists() {
        eprintln!("skipped: no {} to hog memory with", tail.display());
        return Ok(());
    }
    let cg = StepCgroup::create_with(
        &h,
        &unique("memhog"),
        &only(|l| l.memory_bytes = Some(32 << 20)),
        KillVia::Auto,
    )?;
    // `tail` keeps everything since the last newline; /dev/zero has none.
    let mut hog = spawn_in(&cg, Command::new(tail).arg("/dev/zero"))?;
    let status = wait_for(&mut hog, 60)?;
    let outcome = cg.outcome();
    eprintln!("memory hog: {status:?}, {outcome:?}");
    cg.remove()?;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(outcome.oom_killed, "{outcome:?}");
    assert!(!outcome.pids_limit_hit);
    if let Some(peak) = outcome.memory_peak_bytes {
        assert!(peak > 16 << 20 && peak <= 32 << 20, "peak {peak}");
    }
    Ok(())
}

#[test]
fn limit_files_hold_the_values_given() -> TestResult {
    let Some(h) = host(&[Controller::Memory, Controller::Pids, Controller::Cpu]) else {
        return Ok(());
    };
    let limits = Limits {
        memory_bytes: Some(48 << 20),
        pids: Some(77),
        cpu: Some(CpuLimit {
            quota_us: 30_000,
            period_us: 200_000,
        }),
    };
    let cg = StepCgroup::create_with(&h, &unique("files"), &limits, KillVia::Auto)?;
    let dir = |c| {
        cg.dirs
            .iter()
            .find(|d| d.controllers.contains(&c))
            .ok_or(format!("no {c} directory"))
    };
    let value = |d: &StepDir, file: &str| std::fs::read_to_string(d.path.join(file));
    let (mem, pids, cpu) = (
        dir(Controller::Memory)?,
        dir(Controller::Pids)?,
        dir(Controller::Cpu)?,
    );
    assert_eq!(value(pids, "pids.max")?.trim(), "77");
    match cpu.version {
        Version::V2 => assert_eq!(value(cpu, "cpu.max")?.trim(), "30000 200000"),
        Version::V1 => {
            assert_eq!(value(cpu, "cpu.cfs_period_us")?.trim(), "200000");
            assert_eq!(value(cpu, "cpu.cfs_quota_us")?.trim(), "30000");
        }
    }
    let limit = (48u64 << 20).to_string();
    match mem.version {
        Version::V2 => {
            assert_eq!(value(mem, "memory.max")?.trim(), limit);
            if let Ok(swap) = value(mem, "memory.swap.max") {
                assert_eq!(swap.trim(), "0");
            }
        }
        Version::V1 => {
            assert_eq!(value(mem, "memory.limit_in_bytes")?.trim(), limit);
            if let Ok(memsw) = value(mem, "memory.memsw.limit_in_bytes") {
                assert_eq!(memsw.trim(), limit);
            }
        }
    }
    cg.remove()?;
    Ok(())
}

#[test]
fn a_process_that_joined_is_in_every_hierarchy_of_the_step() -> TestResult {
    let Some(h) = host(&[]) else {
        return Ok(());
    };
    let cg = StepCgroup::create_with(&h, &unique("join"), &Limits::defaults(), KillVia::Auto)?;
    let mut child = spawn_in(&cg, Command::new("/bin/sleep").arg("60"))?;
    let pid = i32::try_from(child.id())?;
    for procs in cg.procs_files() {
        let listed = std::fs::read_to_string(&procs)?;
        assert!(
            listed.lines().any(|l| l == pid.to_string()),
            "{pid} not in {}",
            procs.display()
        );
    }
    assert_eq!(cg.processes()?, [pid]);
    cg.remove()?;
    assert_eq!(wait_for(&mut child, 10)?.signal(), Some(libc::SIGKILL));
    Ok(())
}

/// Background sleeps plus a loop that forks all the time, so killing races with forks.
const BUSY: &str = "for i in 1 2 3 4 5; do sleep 60 & done; \
                    while :; do sleep 60 & kill $! 2>/dev/null; done";

/// A real fork bomb (each shell forks two more, forever), held at the pids limit. A shell
/// whose fork is refused exits, so the bomb may also burn out; the sleep stays either way.
const BOMB: &str = "sleep 60 & b() { b & b; }; b";

fn kill_all_kills_everything(via: KillVia, tag: &str, script: &str) -> TestResult {
    let needs: &[Controller] = match via {
        KillVia::V1Freezer => &[Controller::Freezer, Controller::Pids],
        _ => &[Controller::Pids],
    };
    let Some(h) = host(needs) else {
        return Ok(());
    };
    let cg = StepCgroup::create_with(&h, &unique(tag), &only(|l| l.pids = Some(128)), via)?;
    let mut child = spawn_in(&cg, &mut sh(script))?;
    let started = || match script {
        BOMB => cg.outcome().pids_limit_hit,
        _ => cg.processes().is_ok_and(|p| p.len() >= 6),
    };
    assert!(eventually(10, started), "the processes never started");
    let start = Instant::now();
    cg.kill_all()?;
    eprintln!("kill_all via {via:?} ({tag}): {:?}", start.elapsed());
    assert_eq!(cg.processes()?, [] as [i32; 0]);
    for procs in cg.procs_files() {
        assert_eq!(std::fs::read_to_string(&procs)?, "", "{}", procs.display());
    }
    // The bomb's first shell may have died of a refused fork already.
    let status = wait_for(&mut child, 10)?;
    assert!(
        script == BOMB || status.signal() == Some(libc::SIGKILL),
        "{status:?}"
    );
    cg.remove()?;
    Ok(())
}

#[test]
fn kill_all_leaves_no_process_auto() -> TestResult {
    kill_all_kills_everything(KillVia::Auto, "kill-auto", BUSY)
}

#[test]
fn kill_all_stops_a_fork_bomb_auto() -> TestResult {
    kill_all_kills_everything(KillVia::Auto, "kill-auto-bomb", BOMB)
}

#[test]
fn kill_all_leaves_no_process_with_the_v1_freezer() -> TestResult {
    kill_all_kills_everything(KillVia::V1Freezer, "kill-freezer", BUSY)
}

#[test]
fn kill_all_stops_a_fork_bomb_with_the_v1_freezer() -> TestResult {
    kill_all_kills_everything(KillVia::V1Freezer, "kill-freezer-bomb", BOMB)
}

#[test]
fn kill_all_leaves_no_process_with_signals_alone() -> TestResult {
    kill_all_kills_everything(KillVia::Signals, "kill-signals", BUSY)
}

#[test]
fn kill_all_stops_a_fork_bomb_with_signals_alone() -> TestResult {
    kill_all_kills_everything(KillVia::Signals, "kill-signals-bomb", BOMB)
}

#[test]
fn remove_leaves_no_directory_and_no_process() -> TestResult {
    let Some(h) = host(&[]) else {
        return Ok(());
    };
    let name = unique("remove");
    let cg = StepCgroup::create_with(&h, &name, &Limits::defaults(), KillVia::Auto)?;
    let paths: Vec<PathBuf> = cg.paths().into_iter().map(Path::to_owned).collect();
    assert!(!paths.is_empty());
    assert!(paths.iter().all(|p| p.is_dir()));
    let listed = kiln_cgroups();
    assert!(paths.iter().all(|p| listed.contains(p)), "{listed:?}");
    let mut child = spawn_in(&cg, &mut sh("sleep 60 & exec sleep 60"))?;
    assert!(eventually(10, || cg
        .processes()
        .is_ok_and(|p| p.len() == 2)));
    let start = Instant::now();
    cg.remove()?;
    eprintln!("remove with 2 live processes: {:?}", start.elapsed());
    assert!(wait_for(&mut child, 10)?.signal().is_some());
    assert!(paths.iter().all(|p| !p.exists()));
    assert!(!kiln_cgroups().iter().any(|p| p.ends_with(&name)));

    // Dropping cleans up as well; an empty cgroup goes quickly.
    let cg = StepCgroup::create_with(&h, &name, &Limits::defaults(), KillVia::Auto)?;
    let paths: Vec<PathBuf> = cg.paths().into_iter().map(Path::to_owned).collect();
    let start = Instant::now();
    drop(cg);
    eprintln!("drop of an empty step cgroup: {:?}", start.elapsed());
    assert!(paths.iter().all(|p| !p.exists()));
    Ok(())
}

#[test]
fn the_same_name_twice_is_refused_and_the_first_stays_intact() -> TestResult {
    let Some(h) = host(&[]) else {
        return Ok(());
    };
    let name = unique("twice");
    let first = StepCgroup::create_with(&h, &name, &Limits::defaults(), KillVia::Auto)?;
    let second = StepCgroup::create_with(&h, &name, &Limits::defaults(), KillVia::Auto);
    assert!(
        matches!(second, Err(CgroupError::Exists { .. })),
        "{second:?}"
    );
    assert!(first.paths().iter().all(|p| p.is_dir()));
    first.remove()?;
    Ok(())
}

#[test]
fn a_create_that_fails_halfway_leaves_nothing_behind() -> TestResult {
    let Some(h) = host(&[Controller::Pids]) else {
        return Ok(());
    };
    let name = unique("halfway");
    let pids = h.locate(Controller::Pids).ok_or("no pids")?;
    if h.v2.as_ref().is_some_and(|v2| v2.mount == pids.mount) {
        eprintln!("skipped: pids is in the only hierarchy, nothing to fail halfway");
        return Ok(());
    }
    // A leftover in the pids hierarchy only: the directories made before it must go again.
    let leftover = pids.mount.join(KILN_PARENT).join(&name);
    std::fs::create_dir_all(&leftover)?;
    let err = StepCgroup::create_with(&h, &name, &only(|l| l.pids = Some(8)), KillVia::Auto);
    let listed: Vec<PathBuf> = kiln_cgroups()
        .into_iter()
        .filter(|p| p.ends_with(&name))
        .collect();
    std::fs::remove_dir(&leftover)?;
    assert!(
        matches!(&err, Err(CgroupError::Exists { path }) if *path == leftover),
        "{err:?}"
    );
    assert_eq!(listed, [leftover]);
    Ok(())
}

#[test]
fn a_name_that_is_a_control_file_is_refused() -> TestResult {
    let Some(h) = host(&[]) else {
        return Ok(());
    };
    // Every cgroup directory, kiln/ included, has a cgroup.procs file.
    let err = StepCgroup::create_with(&h, "cgroup.procs", &Limits::unlimited(), KillVia::Auto);
    assert!(
        matches!(err, Err(CgroupError::InvalidName { .. })),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn stale_cgroups_of_a_dead_build_are_killed_and_removed() -> TestResult {
    let Some(h) = host(&[]) else {
        return Ok(());
    };
    let prefix = unique("stale-");
    let mut paths = Vec::new();
    let mut children = Vec::new();
    for i in 0..2 {
        let cg = StepCgroup::create_with(
            &h,
            &format!("{prefix}{i}"),
            &Limits::defaults(),
            KillVia::Auto,
        )?;
        children.push(spawn_in(&cg, Command::new("/bin/sleep").arg("60"))?);
        paths.extend(cg.paths().into_iter().map(Path::to_owned));
        // What a SIGKILLed kiln leaves behind: the directories, with the step still running.
        std::mem::forget(cg);
    }
    let mut removed = remove_stale_cgroups(&prefix)?;
    removed.sort();
    paths.sort();
    assert_eq!(removed, paths);
    assert!(paths.iter().all(|p| !p.exists()));
    for mut c in children {
        assert_eq!(wait_for(&mut c, 10)?.signal(), Some(libc::SIGKILL));
    }
    Ok(())
}

#[test]
fn step_cgroup_names_carry_their_owners_pid() {
    let name = crate::sandbox::next_cgroup_name();
    assert_eq!(step_owner(&name), Some(std::process::id()), "{name}");
    assert_eq!(step_owner("step-0-ab-1"), None);
    assert_eq!(step_owner("step-x-ab-1"), None);
    assert_eq!(step_owner("test-12-ab"), None);
}

#[test]
fn orphaned_step_cgroups_are_killed_and_removed_and_live_ones_kept() -> TestResult {
    let Some(h) = host(&[]) else {
        return Ok(());
    };
    // The "kiln" that owns the orphan lives until its step is in place, then dies (another
    // kiln process's sweep, e.g. under nextest, may end the orphan from then on).
    let mut owner = Command::new("/bin/sleep").arg("600").spawn()?;
    let dead = owner.id();
    let orphan = StepCgroup::create_with(
        &h,
        &format!("step-{dead}-0rphan00-0"),
        &Limits::defaults(),
        KillVia::Auto,
    )?;
    let live = StepCgroup::create_with(
        &h,
        &format!("step-{}-11ve0000-0", std::process::id()),
        &Limits::defaults(),
        KillVia::Auto,
    )?;
    let mut step = spawn_in(&orphan, Command::new("/bin/sleep").arg("60"))?;
    let mut kept_step = spawn_in(&live, Command::new("/bin/sleep").arg("60"))?;
    let orphan_paths: Vec<PathBuf> = orphan.paths().into_iter().map(Path::to_owned).collect();
    std::mem::forget(orphan);
    owner.kill()?;
    owner.wait()?;

    let removed = remove_orphaned_cgroups()?;
    assert!(
        !removed.iter().any(|p| live.paths().contains(&p.as_path())),
        "a live owner's cgroup was removed"
    );
    assert!(orphan_paths.iter().all(|p| !p.exists()), "{orphan_paths:?}");
    assert_eq!(wait_for(&mut step, 10)?.signal(), Some(libc::SIGKILL));
    assert!(live.paths().iter().all(|p| p.exists()));
    assert!(
        kept_step.try_wait()?.is_none(),
        "a live build's step was killed"
    );
    live.remove()?;
    assert_eq!(wait_for(&mut kept_step, 10)?.signal(), Some(libc::SIGKILL));
    Ok(())
}
