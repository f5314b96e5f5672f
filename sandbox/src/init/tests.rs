use super::*;
use crate::spec::{Mount, Rootfs};
use crate::syscall::tests::Recording;

fn spec() -> StepSpec {
    let mut spec = StepSpec::new(
        vec!["sh".into(), "-c".into(), "true".into()],
        Rootfs::Overlay {
            lowers: vec![],
            upper: "/u".into(),
            work: "/w".into(),
            mountpoint: "/m".into(),
        },
    );
    spec.user = "nobody".into();
    spec.cwd = "/src".into();
    spec.mounts.push(Mount {
        target: "/cache".into(),
        kind: MountKind::Tmpfs {
            size: None,
            mode: 0o755,
        },
    });
    spec
}

fn compiled() -> Result<crate::seccomp::Filters, InitError> {
    crate::seccomp::compile(crate::seccomp::SeccompProfile::Default)
        .map_err(|source| InitError::CompileSeccomp { source })
}

/// [`run_inner`] without a user namespace, with the default seccomp profile compiled.
fn run_default(sys: &Recording, spec: &StepSpec) -> Result<(), InitError> {
    let filters = compiled()?;
    run_inner(sys, spec, None, Some(&filters))
}

fn recording() -> Recording {
    Recording {
        executables: vec![PathBuf::from("/bin/sh")],
        files: vec![(
            PathBuf::from("/etc/passwd"),
            "nobody:x:65534:65534::/nonexistent:/bin/false\n".into(),
        )],
        ..Recording::default()
    }
}

#[test]
fn outer_init_unshares_before_forking_into_pid_1() -> Result<(), InitError> {
    let sys = recording();
    for step in OUTER_STEPS {
        match step {
            Step::CompileSeccomp => drop(compiled()?),
            Step::JoinCgroup => sys
                .join_cgroup(&[PathBuf::from("/cg/cgroup.procs")])
                .map_err(|source| InitError::JoinCgroup { source })?,
            Step::NewSession => sys
                .setsid()
                .map_err(|source| InitError::NewSession { source })?,
            Step::Unshare => sys
                .unshare(namespaces(NetworkMode::None))
                .map_err(|source| InitError::Unshare { source })?,
            Step::Fork => drop(sys.fork().map_err(|source| InitError::Fork { source })?),
            _ => {}
        }
    }
    assert_eq!(sys.names(), ["join_cgroup", "setsid", "unshare", "fork"]);
    assert_eq!(OUTER_STEPS.first(), Some(&Step::CompileSeccomp));
    Ok(())
}

#[test]
fn network_none_gets_a_new_net_namespace_and_host_does_not() {
    assert!(
        namespaces(NetworkMode::None)
            .contains(UnshareFlags::NEWNET | UnshareFlags::NEWPID | UnshareFlags::NEWNS)
    );
    assert!(!namespaces(NetworkMode::Host).contains(UnshareFlags::NEWNET));
}

#[test]
fn inner_steps_run_in_the_documented_order() -> Result<(), InitError> {
    let sys = recording();
    run_default(&sys, &spec())?;
    let calls = sys.calls.borrow().clone();
    let expect_prefixes = [
        "make_root_private()",
        "mount_rootfs(",
        "mount_in_root(/newroot, /proc, Proc)",
        "mount_in_root(/newroot, /dev, Dev)",
        "mount_in_root(/newroot, /dev/pts, Devpts)",
        "mount_in_root(/newroot, /dev/shm, Shm)",
        "mount_in_root(/newroot, /sys, Sysfs)",
        "mount_in_root(/newroot, /cache, Tmpfs",
        "make_dir_in_root(/newroot, /src)",
        "harden_in_root(/newroot, /proc/acpi, Mask)",
        "harden_in_root(/newroot, /proc/asound, Mask)",
        "harden_in_root(/newroot, /proc/interrupts, Mask)",
        "harden_in_root(/newroot, /proc/kcore, Mask)",
        "harden_in_root(/newroot, /proc/keys, Mask)",
        "harden_in_root(/newroot, /proc/latency_stats, Mask)",
        "harden_in_root(/newroot, /proc/sched_debug, Mask)",
        "harden_in_root(/newroot, /proc/scsi, Mask)",
        "harden_in_root(/newroot, /proc/timer_list, Mask)",
        "harden_in_root(/newroot, /proc/timer_stats, Mask)",
        "harden_in_root(/newroot, /sys/devices/virtual/powercap, Mask)",
        "harden_in_root(/newroot, /sys/firmware, Mask)",
        "harden_in_root(/newroot, /proc/bus, ReadOnlyBind)",
        "harden_in_root(/newroot, /proc/fs, ReadOnlyBind)",
        "harden_in_root(/newroot, /proc/irq, ReadOnlyBind)",
        "harden_in_root(/newroot, /proc/sys, ReadOnlyBind)",
        "harden_in_root(/newroot, /proc/sysrq-trigger, ReadOnlyBind)",
        "harden_in_root(/newroot, /dev, ReadOnlyMount)",
        "loopback_up()",
        "sethostname(kiln)",
        "pivot_root(/newroot)",
        "mkdir_all(/src)",
        "chdir(/src)",
        "drop_bounding(0xa80405fb)",
        "read_file(/etc/passwd)",
        "read_file(/etc/group)",
        "setgroups([])",
        "setgid(65534)",
        "setuid(65534)",
        "set_caps(e=0x0, p=0x0, i=0x0)",
        "set_no_new_privs()",
        "stdin_from_dev_null()",
        "cloexec_fds_above_stdio()",
        "landlock(None)",
        "apply_seccomp(",
        "reset_signals()",
        "report(",
        "execve(\"/bin/sh\"",
    ];
    assert_eq!(calls.len(), expect_prefixes.len(), "{calls:#?}");
    for (call, prefix) in calls.iter().zip(expect_prefixes) {
        assert!(
            call.starts_with(prefix),
            "expected {prefix:?}, got {call:?}"
        );
    }
    Ok(())
}

#[test]
fn ids_are_dropped_before_no_new_privs_and_exec_is_last() -> Result<(), InitError> {
    let sys = recording();
    run_default(&sys, &spec())?;
    let names = sys.names();
    let pos = |n: &str| names.iter().position(|c| c == n);
    assert!(pos("setuid") < pos("set_no_new_privs"));
    assert!(
        pos("pivot_root") < pos("read_file"),
        "users come from the image, not the host"
    );
    assert_eq!(names.last().map(String::as_str), Some("execve"));
    Ok(())
}

#[test]
fn home_comes_from_passwd_when_the_env_has_none() -> Result<(), InitError> {
    let sys = recording();
    run_default(&sys, &spec())?;
    let calls = sys.calls.borrow();
    let exec = calls.last().map(String::as_str).unwrap_or_default();
    assert!(exec.contains("HOME=/nonexistent"), "{exec}");
    Ok(())
}

#[test]
fn missing_executable_says_not_found_in_path() {
    let sys = Recording {
        executables: vec![],
        ..recording()
    };
    let err = run_default(&sys, &spec()).err();
    assert!(
        matches!(&err, Some(InitError::ExecNotFound { name }) if name == "sh"),
        "{err:?}"
    );
    let failure = err.as_ref().map(InitFailure::from);
    assert_eq!(failure.as_ref().map(|f| f.step), Some(Step::Exec));
    assert!(failure.is_some_and(|f| f.message.contains("executable file not found in $PATH")));
}

#[test]
fn host_network_skips_loopback() -> Result<(), InitError> {
    let sys = recording();
    let mut spec = spec();
    spec.network = NetworkMode::Host;
    run_default(&sys, &spec)?;
    assert!(!sys.names().iter().any(|n| n == "loopback_up"));
    Ok(())
}

#[test]
fn path_lookup_uses_the_step_env_path_in_order() {
    let sys = Recording {
        executables: vec!["/opt/bin/tool".into(), "/usr/bin/tool".into()],
        ..Recording::default()
    };
    let env = vec!["PATH=/nope:/opt/bin:/usr/bin".to_owned()];
    assert_eq!(
        lookup(&sys, "tool", &env),
        Some(PathBuf::from("/opt/bin/tool"))
    );
    assert_eq!(lookup(&sys, "./rel", &env), Some(PathBuf::from("./rel")));
    assert_eq!(lookup(&sys, "other", &env), None);
}

#[test]
fn init_failure_round_trips_as_json() -> Result<(), serde_json::Error> {
    let e = InitError::PivotRoot {
        source: OpError {
            op: "pivot_root",
            errno: Errno::PERM,
        },
    };
    let f = InitFailure::from(&e);
    let back: InitFailure = serde_json::from_slice(&serde_json::to_vec(&f)?)?;
    assert_eq!(back.step, Step::PivotRoot);
    assert_eq!(back.errno, Some(libc::EPERM));
    assert!(back.message.starts_with("pivot_root: "));
    Ok(())
}

#[test]
fn root_keeps_dockers_default_caps_and_insecure_keeps_all() -> Result<(), InitError> {
    let mut s = spec();
    s.user = String::new();
    let sys = recording();
    run_default(&sys, &s)?;
    let calls = sys.calls.borrow().clone();
    assert!(
        calls.contains(&"drop_bounding(0xa80405fb)".to_owned()),
        "{calls:#?}"
    );
    assert!(
        calls.contains(&"set_caps(e=0xa80405fb, p=0xa80405fb, i=0x0)".to_owned()),
        "{calls:#?}"
    );
    assert!(calls.iter().any(|c| c.starts_with("landlock(")));

    s.security = Security::Insecure;
    let sys = recording();
    run_default(&sys, &s)?;
    let calls = sys.calls.borrow().clone();
    assert!(calls.contains(&"drop_bounding(0x1ffffffffff)".to_owned()));
    assert!(
        !calls.iter().any(|c| c.starts_with("landlock(")),
        "an insecure step may mount; landlock forbids it"
    );
    Ok(())
}

#[test]
fn the_confinement_report_is_sent_right_before_exec() -> Result<(), InitError> {
    let sys = recording();
    run_default(&sys, &spec())?;
    let calls = sys.calls.borrow().clone();
    let report = calls
        .iter()
        .find(|c| c.starts_with("report("))
        .cloned()
        .unwrap_or_default();
    assert!(report.contains("\"no_new_privs\":true"), "{report}");
    assert!(report.contains("\"capabilities\":[]"), "{report}");
    assert!(report.contains("\"/proc/sys\""), "{report}");
    let names = sys.names();
    assert_eq!(names[names.len() - 2], "report");
    Ok(())
}

#[test]
fn a_user_namespace_is_entered_after_pivot_root_and_before_the_id_change() -> Result<(), InitError>
{
    let sys = recording();
    let devnull =
        std::fs::File::open("/dev/null").map_err(|source| InitError::ReadSpec { source })?;
    let mut s = spec();
    s.userns = Some(crate::spec::IdMap::DEFAULT);
    s.rootfs = Rootfs::Dir { path: "/r".into() };
    let filters = compiled()?;
    run_inner(
        &sys,
        &s,
        Some(std::os::fd::AsFd::as_fd(&devnull)),
        Some(&filters),
    )?;
    let names = sys.names();
    let pos = |n: &str| names.iter().position(|c| c == n).unwrap_or(usize::MAX);
    assert!(pos("make_dir_in_root") < pos("idmap_root"), "{names:?}");
    assert!(pos("harden_in_root") < pos("idmap_root"), "{names:?}");
    assert!(pos("idmap_root") < pos("pivot_root"), "{names:?}");
    assert!(pos("pivot_root") < pos("enter_userns"), "{names:?}");
    assert!(pos("enter_userns") < pos("drop_bounding"), "{names:?}");
    assert!(pos("enter_userns") < pos("setuid"), "{names:?}");
    let report = sys
        .calls
        .borrow()
        .iter()
        .find(|c| c.starts_with("report("))
        .cloned()
        .unwrap_or_default();
    assert!(
        report.contains("\"user_namespace\":{\"host_uid\":100000"),
        "{report}"
    );
    Ok(())
}

#[test]
fn a_user_namespace_with_an_overlay_root_is_refused() {
    let mut s = spec();
    s.userns = Some(crate::spec::IdMap::DEFAULT);
    assert!(matches!(validate(&s), Err(InitError::InvalidSpec { .. })));
}

#[test]
fn seccomp_is_the_last_step_before_exec_and_is_recorded() -> Result<(), InitError> {
    let sys = recording();
    run_default(&sys, &spec())?;
    let names = sys.names();
    let pos = |n: &str| names.iter().position(|c| c == n).unwrap_or(usize::MAX);
    assert!(pos("landlock") < pos("apply_seccomp"));
    assert!(pos("set_no_new_privs") < pos("apply_seccomp"));
    assert_eq!(
        names[pos("apply_seccomp") + 1..],
        ["reset_signals", "report", "execve"]
    );
    let report = sys
        .calls
        .borrow()
        .iter()
        .find(|c| c.starts_with("report("))
        .cloned()
        .unwrap_or_default();
    assert!(report.contains("\"seccomp\":\"default\""), "{report}");
    // Without compiled filters the step never runs (fail closed).
    let sys = recording();
    let err = run_inner(&sys, &spec(), None, None).err();
    assert!(matches!(err, Some(InitError::Seccomp { .. })), "{err:?}");
    assert!(!sys.names().contains(&"execve".to_owned()));
    Ok(())
}

#[test]
fn a_user_namespace_mapping_of_host_root_or_empty_or_overflowing_is_refused() {
    let mut s = spec();
    s.rootfs = Rootfs::Dir { path: "/r".into() };
    for bad in [
        crate::spec::IdMap {
            host_uid: 0,
            host_gid: 100_000,
            size: 65_536,
        },
        crate::spec::IdMap {
            host_uid: 100_000,
            host_gid: 0,
            size: 65_536,
        },
        crate::spec::IdMap {
            host_uid: 100_000,
            host_gid: 100_000,
            size: 0,
        },
        crate::spec::IdMap {
            host_uid: u32::MAX - 10,
            host_gid: 100_000,
            size: 65_536,
        },
    ] {
        s.userns = Some(bad);
        assert!(
            matches!(validate(&s), Err(InitError::InvalidSpec { .. })),
            "{bad:?}"
        );
    }
    s.userns = Some(crate::spec::IdMap::DEFAULT);
    assert!(validate(&s).is_ok());
}
