//! Typed instructions: what a Dockerfile author writes becomes the instruction they meant,
//! and every mistake is reported at its line and column.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kiln_engine::frontend::instructions::{
    CacheSharing, CommandLine, Dockerfile, Instruction, InstructionError, InstructionErrorKind,
    MountType, NetworkMode, SecurityMode, parse_dockerfile,
};
use kiln_engine::frontend::parser::parse;

fn df(src: &str) -> Dockerfile {
    parse_dockerfile(&parse(src).unwrap()).unwrap()
}

fn fails(src: &str) -> InstructionError {
    parse_dockerfile(&parse(src).unwrap()).unwrap_err()
}

fn first(src: &str) -> Instruction {
    df(src).stages[0].instructions[0].inner.clone()
}

#[test]
fn stages_meta_args_and_names() {
    let d = df(
        "ARG BASE=alpine\nARG V\nFROM --platform=$BUILDPLATFORM ${BASE}:3 AS Build\nRUN x\nFROM scratch\nCOPY --from=build /a /b\n",
    );
    assert_eq!(d.meta_args.len(), 2);
    assert_eq!(d.meta_args[0].default.as_deref(), Some("alpine"));
    assert_eq!(d.meta_args[1].default, None);
    assert_eq!(d.stages.len(), 2);
    let s = &d.stages[0];
    assert_eq!(s.name.as_deref(), Some("build"));
    assert_eq!(s.base, "${BASE}:3");
    assert_eq!(s.platform.as_deref(), Some("$BUILDPLATFORM"));
    assert_eq!((s.index, s.line), (0, 3));
    assert_eq!(d.stages[1].name, None);
    assert_eq!(d.stages[1].instructions[0].line, 6);
}

#[test]
fn run_shell_exec_heredoc_and_flags() {
    let d = df(concat!(
        "FROM a\n",
        "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n",
        "    --mount=type=secret,id=npm,env=NPM_TOKEN --network=none --security=insecure \\\n",
        "    apt-get update\n",
        "RUN [\"echo\", \"hi\"]\n",
        "RUN <<-EOF\n\techo $HOME\n\tEOF\n",
    ));
    let ins = &d.stages[0].instructions;
    let Instruction::Run {
        command,
        mounts,
        network,
        security,
        ..
    } = &ins[0].inner
    else {
        panic!("not a RUN: {:?}", ins[0]);
    };
    assert_eq!(*command, CommandLine::Shell("apt-get update".into()));
    assert_eq!(mounts.len(), 2);
    assert_eq!(mounts[0].mount_type, MountType::Cache);
    assert_eq!(mounts[0].sharing, Some(CacheSharing::Locked));
    assert_eq!(mounts[1].mount_type, MountType::Secret);
    assert_eq!(mounts[1].env.as_deref(), Some("NPM_TOKEN"));
    assert_eq!(*network, Some(NetworkMode::None));
    assert_eq!(*security, Some(SecurityMode::Insecure));
    assert_eq!((ins[0].line, ins[0].end_line), (2, 4));
    assert!(
        matches!(&ins[1].inner, Instruction::Run { command: CommandLine::Exec(v), .. } if v == &["echo", "hi"])
    );
    let Instruction::Run { heredocs, .. } = &ins[2].inner else {
        panic!()
    };
    assert_eq!(heredocs[0].content, "echo $HOME\n");
    assert!(heredocs[0].expand);
}

#[test]
fn copy_and_add_flags_and_heredoc_sources() {
    let c = first(
        "FROM a\nCOPY --from=b --chown=1:2 --chmod=755 --link --parents --exclude=*.md --exclude=.git x y /dst/\n",
    );
    let Instruction::Copy(c) = c else { panic!() };
    assert_eq!(c.sources, ["x", "y"]);
    assert_eq!(c.dest, "/dst/");
    assert_eq!(c.from.as_deref(), Some("b"));
    assert_eq!(c.chown.as_deref(), Some("1:2"));
    assert_eq!(c.chmod.as_deref(), Some("755"));
    assert!(c.link && c.parents);
    assert_eq!(c.exclude, ["*.md", ".git"]);

    let a = first(
        "FROM a\nADD --checksum=sha256:abc --keep-git-dir=true --unpack=false --link=false https://x/y.tgz /\n",
    );
    let Instruction::Add(a) = a else { panic!() };
    assert_eq!(a.checksum.as_deref(), Some("sha256:abc"));
    assert!(a.keep_git_dir && !a.link);
    assert_eq!(a.unpack, Some(false));

    let h = first("FROM a\nCOPY <<one <<'two' /etc/\nhello $X\none\nworld\ntwo\n");
    let Instruction::Copy(h) = h else { panic!() };
    assert!(h.sources.is_empty());
    assert_eq!(h.heredoc_sources.len(), 2);
    assert_eq!(h.heredoc_sources[0].name, "one");
    assert_eq!(h.heredoc_sources[0].content, "hello $X\n");
    assert!(h.heredoc_sources[0].expand);
    assert_eq!(h.heredoc_sources[1].content, "world\n");
    assert!(!h.heredoc_sources[1].expand);
}

#[test]
fn simple_instructions() {
    let d = df(concat!(
        "FROM a\n",
        "ENV A=1 B=\"two words\"\n",
        "ENV LEGACY value with spaces\n",
        "LABEL org.x=y\n",
        "ARG N=1 M\n",
        "WORKDIR /app\n",
        "USER nobody:nogroup\n",
        "EXPOSE 8080/tcp 443\n",
        "ENTRYPOINT [\"/bin/app\"]\n",
        "CMD app --help\n",
        "SHELL [\"/bin/bash\", \"-c\"]\n",
        "VOLUME /data /logs\n",
        "STOPSIGNAL SIGTERM\n",
        "MAINTAINER me\n",
        "ONBUILD RUN make\n",
    ));
    let got: Vec<Instruction> = d.stages[0]
        .instructions
        .iter()
        .map(|l| l.inner.clone())
        .collect();
    let s = |v: &str| v.to_string();
    assert_eq!(
        got[0],
        Instruction::Env(vec![(s("A"), s("1")), (s("B"), s("\"two words\""))])
    );
    assert_eq!(
        got[1],
        Instruction::Env(vec![(s("LEGACY"), s("value with spaces"))])
    );
    assert_eq!(got[2], Instruction::Label(vec![(s("org.x"), s("y"))]));
    let Instruction::Arg(args) = &got[3] else {
        panic!()
    };
    assert_eq!(args[0].default.as_deref(), Some("1"));
    assert_eq!(got[4], Instruction::Workdir(s("/app")));
    assert_eq!(got[5], Instruction::User(s("nobody:nogroup")));
    assert_eq!(got[6], Instruction::Expose(vec![s("443"), s("8080/tcp")]));
    assert_eq!(
        got[7],
        Instruction::Entrypoint(CommandLine::Exec(vec![s("/bin/app")]))
    );
    assert_eq!(
        got[8],
        Instruction::Cmd(CommandLine::Shell(s("app --help")))
    );
    assert_eq!(got[9], Instruction::Shell(vec![s("/bin/bash"), s("-c")]));
    assert_eq!(got[10], Instruction::Volume(vec![s("/data"), s("/logs")]));
    assert_eq!(got[11], Instruction::StopSignal(s("SIGTERM")));
    assert_eq!(got[12], Instruction::Maintainer(s("me")));
    assert_eq!(got[13], Instruction::Onbuild(s("RUN make")));
}

#[test]
fn healthcheck_forms() {
    let Instruction::Healthcheck(Some(h)) = first(
        "FROM a\nHEALTHCHECK --interval=30s --timeout=1m30s --start-period=5s --start-interval=500ms --retries=3 CMD curl -f http://x/ || exit 1\n",
    ) else {
        panic!()
    };
    assert_eq!(h.test, ["CMD-SHELL", "curl -f http://x/ || exit 1"]);
    assert_eq!(h.interval, Some(Duration::from_secs(30)));
    assert_eq!(h.timeout, Some(Duration::from_secs(90)));
    assert_eq!(h.start_interval, Some(Duration::from_millis(500)));
    assert_eq!(h.retries, Some(3));
    let Instruction::Healthcheck(Some(h)) =
        first("FROM a\nHEALTHCHECK CMD [\"/bin/check\", \"-q\"]\n")
    else {
        panic!()
    };
    assert_eq!(h.test, ["CMD", "/bin/check", "-q"]);
    let Instruction::Healthcheck(Some(h)) = first("FROM a\nhealthcheck none\n") else {
        panic!()
    };
    assert_eq!(h.test, ["NONE"]);
}

/// (Dockerfile, line, column, message)
const NEGATIVE: &[(&str, usize, usize, &str)] = &[
    ("FROM a\n  FOO bar\n", 2, 3, "unknown instruction: FOO"),
    (
        "FROM a\nRUN --mnt=type=cache x\n",
        2,
        5,
        "unknown flag: mnt",
    ),
    (
        "FROM a\nCOPY --from=a --from=b x y\n",
        2,
        15,
        "duplicate flag specified: from",
    ),
    (
        "FROM a\nCOPY --chown x y\n",
        2,
        6,
        "missing a value on flag: chown",
    ),
    (
        "FROM a\nCOPY --link=maybe x y\n",
        2,
        6,
        "expecting boolean value for flag link, not: maybe",
    ),
    ("FROM a\nADD --from=b x y\n", 2, 5, "unknown flag: from"),
    ("FROM a\nENV --x=1 A=b\n", 2, 5, "unknown flag: x"),
    // As in BuildKit, leading `--words` are flags for every instruction.
    ("FROM a\nCMD --help\n", 2, 5, "unknown flag: help"),
    (
        "FROM a\nRUN --mount=type=cache,target=/c,uid=me make\n",
        2,
        5,
        "invalid value me for uid",
    ),
    (
        "FROM a\nRUN --network=host --mount=type=bind,mode=0600 make\n",
        2,
        20,
        "mode not allowed for \"bind\" type mounts",
    ),
    (
        "FROM a\nRUN --network=bridge x\n",
        2,
        5,
        "unsupported network mode \"bridge\"",
    ),
    (
        "FROM a\nRUN --security=root x\n",
        2,
        5,
        "security \"root\" is not valid",
    ),
    ("RUN x\n", 1, 1, "no build stage in current context"),
    (
        "FROM a b\n",
        1,
        1,
        "FROM requires either one or three arguments",
    ),
    (
        "FROM a TO b\n",
        1,
        1,
        "FROM requires either one or three arguments",
    ),
    (
        "FROM a AS 1st\n",
        1,
        1,
        "invalid name for build stage: \"1st\", name can't start with a number or contain symbols",
    ),
    (
        "FROM\n",
        1,
        1,
        "FROM requires either one or three arguments",
    ),
    (
        "FROM a\nCOPY x\n",
        2,
        1,
        "COPY requires at least two arguments, but only one was provided. Destination could not be determined",
    ),
    (
        "FROM a\nCOPY x <<EOF\nEOF\n",
        2,
        1,
        "COPY cannot accept a heredoc as a destination",
    ),
    (
        "FROM a\nSHELL /bin/sh -c\n",
        2,
        1,
        "SHELL requires the arguments to be in JSON form",
    ),
    (
        "FROM a\nSHELL []\n",
        2,
        1,
        "SHELL requires at least one argument",
    ),
    (
        "FROM a\nWORKDIR\n",
        2,
        1,
        "WORKDIR requires exactly one argument",
    ),
    (
        "FROM a\nEXPOSE\n",
        2,
        1,
        "EXPOSE requires at least one argument",
    ),
    ("FROM a\nARG =x\n", 2, 1, "ARG names can not be blank"),
    ("FROM a\nENV =x\n", 2, 1, "ENV names can not be blank"),
    ("FROM a\nRUN\n", 2, 1, "RUN requires at least one argument"),
    (
        "FROM a\nVOLUME [\"\"]\n",
        2,
        1,
        "VOLUME specified can not be an empty string",
    ),
    (
        "FROM a\nONBUILD ONBUILD RUN x\n",
        2,
        1,
        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
    ),
    (
        "FROM a\nONBUILD FROM x\n",
        2,
        1,
        "FROM isn't allowed as an ONBUILD trigger",
    ),
    (
        "FROM a\nONBUILD BOGUS x\n",
        2,
        1,
        "unknown instruction: BOGUS",
    ),
    (
        "FROM a\nHEALTHCHECK NONE x\n",
        2,
        1,
        "HEALTHCHECK NONE takes no arguments",
    ),
    (
        "FROM a\nHEALTHCHECK CMD\n",
        2,
        1,
        "Missing command after HEALTHCHECK CMD",
    ),
    (
        "FROM a\nHEALTHCHECK PING x\n",
        2,
        1,
        "Unknown type \"PING\" in HEALTHCHECK (try CMD)",
    ),
    (
        "FROM a\nHEALTHCHECK --interval=10 CMD x\n",
        2,
        13,
        "time: invalid duration \"10\"",
    ),
    (
        "FROM a\nHEALTHCHECK --timeout=1ns CMD x\n",
        2,
        13,
        "Interval \"timeout\" cannot be less than 1ms",
    ),
    (
        "FROM a\nHEALTHCHECK --retries=-1 CMD x\n",
        2,
        13,
        "--retries cannot be negative (-1)",
    ),
];

#[test]
fn mistakes_are_reported_at_line_and_column() {
    let mut failures = Vec::new();
    for &(src, line, column, message) in NEGATIVE {
        let got = parse(src)
            .map_err(|e| e.to_string())
            .and_then(|ast| parse_dockerfile(&ast).map_err(|e| e.to_string()));
        let want = format!("line {line}:{column}: {message}");
        match got {
            Err(e) if e == want => {}
            other => failures.push(format!("{src:?}: got {other:?}, want {want:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn error_kinds_are_structured() {
    let e = fails("FROM a\nRUN --mount=type=nfs x\n");
    assert!(matches!(e.kind, InstructionErrorKind::Mount(_)));
    assert_eq!((e.line, e.column), (2, 5));
    let e = fails("FROM a\nFOO\n");
    assert!(
        matches!(e.kind, InstructionErrorKind::UnknownInstruction { ref instruction } if instruction == "FOO")
    );
}
