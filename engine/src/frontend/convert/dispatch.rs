//! Dispatching one stage's instructions onto the graph and the image state.

use super::state::{HistoryItem, ImageState, Scope};
use super::{ConvertError, Converter, ResolvedImage, StageResult};
use crate::Digest;
use crate::frontend::instructions::{
    CommandLine, CopyArgs, Instruction, Located, MountFlag, MountType, NetworkMode, SecurityMode,
    Stage, parse_mount,
};
use crate::graph::{
    CopyOp, ExecMount, ExecMountKind, ExecOp, FileOp, Network, Op, SourceOp, VertexIdx,
};

/// Per-stage dispatch state.
struct St {
    vertex: VertexIdx,
    image: ImageState,
    /// ARGs declared in this stage: name → value.
    args: Vec<(String, Option<String>)>,
    index: usize,
    /// `[name n/m]` prefix for progress.
    label: String,
    step: usize,
    steps: usize,
}

impl St {
    /// The scope for expanding words: the build-time env (ENV and ARG, later wins).
    fn scope(&self) -> Vec<(String, Option<String>)> {
        self.image
            .run_env
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect()
    }
}

pub(super) fn stage(
    c: &mut Converter<'_>,
    i: usize,
    stage: &Stage,
) -> Result<StageResult, ConvertError> {
    let line = stage.line;
    let base = c
        .lexer
        .process_word(&stage.base, &Scope(&c.global_args))
        .map_err(|e| ConvertError::at(line, 1, format!("FROM: {e}")))?;
    if base.is_empty() {
        return Err(ConvertError::at(
            line,
            1,
            "FROM: base name is empty after expansion",
        ));
    }
    for a in &c.global_args {
        if stage.base.contains(a.0.as_str()) {
            c.used_args.insert(a.0.clone());
        }
    }
    let (vertex, image) = if let Some(j) = c.stage_ref(&base, i, false) {
        let r = c.stage(j)?;
        let mut image = r.image;
        // CMD set in the parent stage counts as inherited here (an ENTRYPOINT resets it).
        image.cmd_inherited = image.cmd.is_some();
        // The parent's build-time env carries over, with the image's ENV re-applied on top
        // (BuildKit re-adds the config env to every stage's state).
        for (k, v) in image.env.clone() {
            image.set_arg(&k, v);
        }
        (r.vertex, image)
    } else if base.eq_ignore_ascii_case(&stage.name.clone().unwrap_or_default())
        && !base.eq_ignore_ascii_case("scratch")
    {
        return Err(ConvertError::at(
            line,
            1,
            format!("circular dependency detected on stage: {base}"),
        ));
    } else {
        let (v, img) = c.source(&base, line)?;
        let image = img.map(|i| from_image(&i)).unwrap_or_else(|| {
            // An empty image starts with the default PATH, as BuildKit's does.
            let mut s = ImageState::default();
            s.set_env("PATH", DEFAULT_PATH.to_owned());
            s.workdir = "/".to_owned();
            s
        });
        (v, image)
    };
    let display = stage.name.clone().unwrap_or_else(|| format!("stage-{i}"));
    let mut st = St {
        vertex,
        image,
        args: Vec::new(),
        index: i,
        label: display,
        step: 0,
        steps: stage.instructions.len(),
    };
    // ONBUILD triggers of the base image run first (and are consumed).
    let triggers = std::mem::take(&mut st.image.onbuild);
    if !triggers.is_empty() {
        // Triggers are parsed as the body of a stage of their own.
        let mut text = String::from("FROM scratch\n");
        for t in &triggers {
            text.push_str(t);
            text.push('\n');
        }
        let ast = crate::frontend::parser::parse(&text)
            .map_err(|e| ConvertError::at(line, 1, format!("ONBUILD trigger: {e}")))?;
        let parsed = crate::frontend::instructions::parse_dockerfile(&ast)
            .map_err(|e| ConvertError::at(line, 1, format!("ONBUILD trigger: {e}")))?
            .stages
            .into_iter()
            .next()
            .map(|s| s.instructions)
            .unwrap_or_default();
        st.steps += parsed.len();
        for ins in &parsed {
            dispatch(c, &mut st, ins)?;
        }
    }
    for ins in &stage.instructions {
        dispatch(c, &mut st, ins)?;
    }
    Ok(StageResult {
        vertex: st.vertex,
        image: st.image,
    })
}

/// The image state a base image gives a stage.
fn from_image(img: &ResolvedImage) -> ImageState {
    let cfg = &img.config;
    let cc = cfg.config.clone().unwrap_or_default();
    let env: Vec<(String, String)> = cc
        .env
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let history = cfg
        .history
        .iter()
        .map(|h| HistoryItem {
            created_by: h.created_by.clone().unwrap_or_default(),
            comment: h.comment.clone(),
            empty_layer: h.empty_layer,
            created: h.created.clone(),
        })
        .collect();
    ImageState {
        run_env: env.clone(),
        env,
        user: cc.user.clone().unwrap_or_default(),
        workdir: cc.working_dir.clone().unwrap_or_default(),
        entrypoint: cc.entrypoint.clone(),
        cmd_inherited: cc.cmd.is_some(),
        cmd: cc.cmd.clone(),
        shell: (!cc.shell.is_empty()).then(|| cc.shell.clone()),
        labels: cc.labels.clone(),
        exposed_ports: cc.exposed_ports.keys().cloned().collect(),
        volumes: cc.volumes.keys().cloned().collect(),
        stop_signal: cc.stop_signal.clone(),
        healthcheck: cc.healthcheck.clone(),
        onbuild: cc.on_build.clone(),
        author: cfg.author.clone(),
        history,
        base_layers: cfg.rootfs.diff_ids.len(),
    }
}

fn expand(
    c: &Converter<'_>,
    st: &St,
    word: &str,
    ins: &Located<Instruction>,
) -> Result<String, ConvertError> {
    c.lexer
        .process_word(word, &Scope(&st.scope()))
        .map_err(|e| ConvertError::at(ins.line, ins.column, e.to_string()))
}

fn expand_words(
    c: &Converter<'_>,
    st: &St,
    word: &str,
    ins: &Located<Instruction>,
) -> Result<Vec<String>, ConvertError> {
    c.lexer
        .process_words(word, &Scope(&st.scope()))
        .map_err(|e| ConvertError::at(ins.line, ins.column, e.to_string()))
}

/// Joins `p` onto the working directory like BuildKit (`WORKDIR` and relative destinations).
fn abs_path(workdir: &str, p: &str) -> String {
    if p.starts_with('/') {
        p.to_owned()
    } else {
        let wd = if workdir.is_empty() { "/" } else { workdir };
        format!("{}/{}", wd.trim_end_matches('/'), p)
    }
}

/// Cleans a path like Go's path.Clean (absolute input).
pub(crate) fn clean_abs(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

fn dispatch(
    c: &mut Converter<'_>,
    st: &mut St,
    ins: &Located<Instruction>,
) -> Result<(), ConvertError> {
    st.step += 1;
    let name = format!(
        "[{} {}/{}] {}",
        st.label,
        st.step,
        st.steps,
        ins.original.trim()
    );
    match &ins.inner {
        Instruction::Env(pairs) => {
            // Every word is expanded before any is applied (`ENV a=1 b=$a` sees the old a).
            let mut expanded = Vec::new();
            for (k, v) in pairs {
                expanded.push((expand(c, st, k, ins)?, expand(c, st, v, ins)?));
            }
            let mut shown = Vec::new();
            for (k, v) in expanded {
                shown.push(format!("{k}={v}"));
                st.image.set_env(&k, v);
            }
            st.image.note(format!("ENV {}", shown.join(" ")));
        }
        Instruction::Arg(decls) => {
            let mut values = Vec::new();
            for a in decls {
                let value = if let Some(v) = c.opts.build_args.get(&a.name) {
                    c.used_args.insert(a.name.clone());
                    Some(v.clone())
                } else if let Some(d) = &a.default {
                    Some(expand(c, st, d, ins)?)
                } else {
                    // A re-declared global ARG takes the global value.
                    c.global_args
                        .iter()
                        .rev()
                        .find(|(k, _)| k == &a.name)
                        .and_then(|(_, v)| v.clone())
                };
                values.push((a.name.clone(), value));
            }
            // Like ENV: defaults are expanded before any of this line's ARGs apply.
            for (name, value) in values {
                if let Some(v) = &value {
                    st.image.set_arg(&name, v.clone());
                }
                st.args.retain(|(k, _)| k != &name);
                st.args.push((name, value));
            }
            let shown: Vec<String> = decls
                .iter()
                .map(|a| match &a.default {
                    Some(d) => format!("{}={d}", a.name),
                    None => a.name.clone(),
                })
                .collect();
            st.image.note(format!("ARG {}", shown.join(" ")));
        }
        Instruction::Label(pairs) => {
            let mut expanded = Vec::new();
            for (k, v) in pairs {
                expanded.push((expand(c, st, k, ins)?, expand(c, st, v, ins)?));
            }
            let mut shown = Vec::new();
            for (k, v) in expanded {
                shown.push(format!("{k}={v}"));
                st.image.labels.insert(k, v);
            }
            st.image.note(format!("LABEL {}", shown.join(" ")));
        }
        Instruction::Maintainer(m) => {
            st.image.author = Some(m.clone());
            st.image.note(format!("MAINTAINER {m}"));
        }
        Instruction::User(u) => {
            let u = expand(c, st, u, ins)?;
            st.image.user = u.clone();
            st.image.note(format!("USER {u}"));
        }
        Instruction::Workdir(w) => {
            let w = expand(c, st, w, ins)?;
            let path = clean_abs(&abs_path(&st.image.workdir, &w));
            st.image.workdir = path.clone();
            if path == "/" {
                // The root always exists: nothing to create (BuildKit adds no step either).
                st.image.note(format!("WORKDIR {path}"));
            } else {
                let owner = (!st.image.user.is_empty()).then(|| st.image.user.clone());
                st.vertex = c.graph.add(
                    Op::File(FileOp::Mkdir {
                        path: path.clone(),
                        owner,
                    }),
                    vec![st.vertex],
                    name,
                );
                st.image.layer(format!("WORKDIR {path}"));
            }
        }
        Instruction::Expose(ports) => {
            let mut shown = Vec::new();
            for p in ports {
                for w in expand_words(c, st, p, ins)? {
                    for port in
                        expose_ports(&w).map_err(|m| ConvertError::at(ins.line, ins.column, m))?
                    {
                        shown.push(port.clone());
                        if !st.image.exposed_ports.contains(&port) {
                            st.image.exposed_ports.push(port);
                        }
                    }
                }
            }
            st.image.note(format!("EXPOSE {}", shown.join(" ")));
        }
        Instruction::Volume(vols) => {
            for v in vols {
                let v = expand(c, st, v, ins)?;
                if v.is_empty() {
                    return Err(ConvertError::at(
                        ins.line,
                        ins.column,
                        "VOLUME specified can not be an empty string",
                    ));
                }
                if !st.image.volumes.contains(&v) {
                    st.image.volumes.push(v);
                }
            }
            st.image.note(format!("VOLUME {:?}", vols));
        }
        Instruction::StopSignal(s) => {
            let s = expand(c, st, s, ins)?;
            if !valid_signal(&s) {
                return Err(ConvertError::at(
                    ins.line,
                    ins.column,
                    format!("invalid signal: {s}"),
                ));
            }
            st.image.stop_signal = Some(s.clone());
            st.image.note(format!("STOPSIGNAL {s}"));
        }
        Instruction::Healthcheck(h) => {
            st.image.healthcheck = h.as_ref().map(health);
            st.image.note(format!(
                "HEALTHCHECK {}",
                ins.original.trim().get(11..).unwrap_or("").trim()
            ));
        }
        Instruction::Onbuild(t) => {
            st.image.onbuild.push(t.clone());
            st.image.note(format!("ONBUILD {t}"));
        }
        Instruction::Shell(sh) => {
            st.image.shell = Some(sh.clone());
            st.image.note(format!("SHELL {}", json_list(sh)));
        }
        Instruction::Cmd(cl) => {
            let args = command_args(&st.image, cl);
            st.image.note(format!("CMD {}", json_list(&args)));
            st.image.cmd = Some(args);
            st.image.cmd_inherited = false;
        }
        Instruction::Entrypoint(cl) => {
            let args = command_args(&st.image, cl);
            st.image.note(format!("ENTRYPOINT {}", json_list(&args)));
            st.image.entrypoint = Some(args);
            if st.image.cmd_inherited {
                st.image.cmd = None;
                st.image.cmd_inherited = false;
            }
        }
        Instruction::Run {
            command,
            heredocs,
            mounts,
            network,
            security,
        } => run(
            c, st, ins, name, command, heredocs, mounts, *network, *security,
        )?,
        Instruction::Copy(a) => copy(c, st, ins, name, a, false)?,
        Instruction::Add(a) => copy(c, st, ins, name, a, true)?,
    }
    Ok(())
}

fn health(h: &crate::frontend::instructions::HealthConfig) -> crate::oci::types::Healthcheck {
    let nanos =
        |d: Option<std::time::Duration>| d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    crate::oci::types::Healthcheck {
        test: h.test.clone(),
        interval: nanos(h.interval),
        timeout: nanos(h.timeout),
        start_period: nanos(h.start_period),
        start_interval: nanos(h.start_interval),
        retries: h.retries.map(i64::from),
    }
}

/// Docker's signal syntax: a number, or a name with or without `SIG` (`TERM`, `SIGRTMIN+3`).
fn valid_signal(s: &str) -> bool {
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return n > 0 && n <= 64;
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    if NAMES.contains(&name) {
        return true;
    }
    for base in ["RTMIN", "RTMAX"] {
        if let Some(rest) = name.strip_prefix(base) {
            return rest.is_empty()
                || rest
                    .strip_prefix(['+', '-'])
                    .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n <= 30));
        }
    }
    false
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// CMD/ENTRYPOINT args: exec form as is, shell form wrapped in the stage's shell.
fn command_args(image: &ImageState, cl: &CommandLine) -> Vec<String> {
    match cl {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(s) => {
            let mut a = image.shell();
            a.push(s.clone());
            a
        }
    }
}

/// Docker's EXPOSE normalisation: `80` → `80/tcp`, ranges expanded.
fn expose_ports(w: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match w.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (w, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let parse = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("invalid containerPort: {s}"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(format!(
            "invalid range specified for containerPort: {ports}"
        ));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

#[allow(clippy::too_many_arguments)]
fn run(
    c: &mut Converter<'_>,
    st: &mut St,
    ins: &Located<Instruction>,
    name: String,
    command: &CommandLine,
    heredocs: &[crate::frontend::parser::Heredoc],
    mounts: &[MountFlag],
    network: Option<NetworkMode>,
    security: Option<SecurityMode>,
) -> Result<(), ConvertError> {
    let at = |m: String| ConvertError::at(ins.line, ins.column, m);
    let mut heredoc_file = None;
    let args = match command {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(s) => {
            let mut a = st.image.shell();
            // `RUN <<EOF` alone: the heredoc is the script.
            let script = match heredocs {
                [h] if is_only_heredoc(s, &h.name) && h.content.starts_with("#!") => {
                    // A script with a shebang is a file, run directly (BuildKit mounts it at
                    // /dev/pipes/NAME).
                    let file = c.graph.add(
                        Op::File(FileOp::Mkfiles {
                            files: vec![(h.name.clone(), h.content.clone())],
                            mode: Some(0o755),
                        }),
                        vec![],
                        format!("{name} (heredoc)"),
                    );
                    heredoc_file = Some(file);
                    String::new()
                }
                [h] if is_only_heredoc(s, &h.name) => h.content.clone(),
                [] => s.clone(),
                hs => {
                    let mut full = s.clone();
                    for h in hs {
                        full.push('\n');
                        full.push_str(&h.content);
                        full.push_str(&h.name);
                    }
                    full
                }
            };
            match (&heredoc_file, heredocs.first()) {
                (Some(_), Some(h)) => vec![format!("/dev/pipes/{}", h.name)],
                _ => {
                    a.push(script);
                    a
                }
            }
        }
    };
    let network = match network {
        None | Some(NetworkMode::None) | Some(NetworkMode::Default) => Network::None,
        Some(NetworkMode::Host) if c.opts.allow_host_network => Network::Host,
        Some(NetworkMode::Host) => {
            return Err(at(
                "RUN --network=host needs the network.host entitlement (kiln build --allow network.host); \
                 it gives the step the host's network"
                    .into(),
            ));
        }
    };
    if let Some(SecurityMode::Insecure) = security {
        return Err(at(
            "RUN --security=insecure is not supported by this kiln build".into(),
        ));
    }
    let mut inputs = vec![st.vertex];
    let mut exec_mounts = Vec::new();
    if let Some(file) = heredoc_file {
        inputs.push(file);
        exec_mounts.push(ExecMount {
            target: "/dev/pipes".into(),
            kind: ExecMountKind::Bind {
                input: inputs.len() - 1,
                source: "/".into(),
                readwrite: false,
            },
        });
    }
    for raw in mounts {
        // Mount options are expanded now, with the stage's ARG/ENV, then checked again.
        let scope = st.scope();
        let lexer = &c.lexer;
        let expander = |w: &str| lexer.process_word(w, &Scope(&scope));
        let m = parse_mount(&raw.raw, Some(&expander)).map_err(|e| at(e.to_string()))?;
        if !matches!(m.mount_type, MountType::Bind | MountType::Tmpfs) {
            return Err(at(format!(
                "RUN --mount=type={} is parsed but not executed by this kiln version",
                format!("{:?}", m.mount_type).to_ascii_lowercase()
            )));
        }
        let target = m
            .target
            .clone()
            .ok_or_else(|| at("mount target is required".into()))?;
        let target = clean_abs(&abs_path(&st.image.workdir, &target));
        let kind = match m.mount_type {
            MountType::Bind => {
                let src_vertex = match &m.from {
                    None => c.context_vertex(),
                    Some(f) => from_vertex(c, st, f, ins.line)?,
                };
                inputs.push(src_vertex);
                ExecMountKind::Bind {
                    input: inputs.len() - 1,
                    source: clean_abs(&format!("/{}", m.source.clone().unwrap_or_default())),
                    readwrite: !m.readonly,
                }
            }
            MountType::Tmpfs => ExecMountKind::Tmpfs { size: m.size },
            other => {
                return Err(at(format!(
                    "RUN --mount=type={} is parsed but not executed by this kiln version",
                    format!("{other:?}").to_ascii_lowercase()
                )));
            }
        };
        exec_mounts.push(ExecMount { target, kind });
    }
    // The step's environment: the build-time env (ENV and ARG in order), like BuildKit.
    let mut env = st.image.run_env_strings();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    let op = ExecOp {
        args: args.clone(),
        env,
        cwd: if st.image.workdir.is_empty() {
            "/".into()
        } else {
            st.image.workdir.clone()
        },
        user: st.image.user.clone(),
        network,
        mounts: exec_mounts,
    };
    st.vertex = c.graph.add(Op::Exec(op), inputs, name);
    st.image.layer(format!("RUN {}", args.join(" ")));
    Ok(())
}

/// The PATH a step gets when the image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn is_only_heredoc(cmd: &str, name: &str) -> bool {
    let t = cmd.trim();
    let rest = t.strip_prefix("<<").unwrap_or("");
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let rest = rest.trim_matches(|c| c == '"' || c == '\'');
    rest == name
}

/// The vertex a `--from` names: an earlier stage (name or index), a named context, or an image.
fn from_vertex(
    c: &mut Converter<'_>,
    st: &St,
    from: &str,
    line: usize,
) -> Result<VertexIdx, ConvertError> {
    // BuildKit resolves --from once every stage is known: a later stage may be named too;
    // only a cycle is an error.
    let j = c.stage_index(from).or_else(|| {
        from.parse::<usize>()
            .ok()
            .filter(|&n| n < c.df.stages.len())
    });
    if let Some(j) = j {
        if j == st.index {
            return Err(ConvertError::at(
                line,
                1,
                format!("circular dependency detected on stage: {from}"),
            ));
        }
        return Ok(c.stage(j)?.vertex);
    }
    Ok(c.source(from, line)?.0)
}

fn copy(
    c: &mut Converter<'_>,
    st: &mut St,
    ins: &Located<Instruction>,
    name: String,
    a: &CopyArgs,
    is_add: bool,
) -> Result<(), ConvertError> {
    let at = |m: String| ConvertError::at(ins.line, ins.column, m);
    let verb = if is_add { "ADD" } else { "COPY" };
    let mut sources = Vec::new();
    for s in &a.sources {
        let s = expand(c, st, s, ins)?;
        if is_add && is_git_source(&s) {
            return Err(at(format!(
                "ADD {s}: git sources are not supported by kiln; add the checkout to the build \
                 context or pass it with --build-context NAME=DIR"
            )));
        }
        if !is_add && is_http_source(&s) {
            return Err(at(format!(
                "COPY {s}: source can't be a URL for COPY (use ADD --checksum=sha256:… <url>)"
            )));
        }
        sources.push(s);
    }
    if is_add && sources.iter().any(|s| is_http_source(s)) {
        return add_url(c, st, ins, name, a, sources);
    }
    let from = a
        .from
        .as_deref()
        .map(|f| expand(c, st, f, ins))
        .transpose()?;
    let (src_vertex, from_stage) = match &from {
        None => (c.context_vertex(), false),
        Some(f) => (from_vertex(c, st, f, ins.line)?, true),
    };
    let dest = expand(c, st, &a.dest, ins)?;
    let chown = a
        .chown
        .as_deref()
        .map(|x| expand(c, st, x, ins))
        .transpose()?;
    let chmod = match a
        .chmod
        .as_deref()
        .map(|x| expand(c, st, x, ins))
        .transpose()?
    {
        Some(m) => Some(
            u32::from_str_radix(&m, 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .ok_or_else(|| at(format!("invalid chmod parameter: {m}")))?,
        ),
        None => None,
    };
    if a.checksum.is_some() {
        return Err(at(
            "ADD --checksum is only valid with a remote source".into()
        ));
    }
    let mut excludes = Vec::new();
    for e in &a.exclude {
        excludes.push(expand(c, st, e, ins)?);
    }
    let workdir = if st.image.workdir.is_empty() {
        "/".to_owned()
    } else {
        st.image.workdir.clone()
    };
    // Heredoc sources become files in a scratch layer, copied like context files.
    let (src_vertex, sources) = if a.heredoc_sources.is_empty() {
        (src_vertex, sources)
    } else {
        let mut files = Vec::new();
        for h in &a.heredoc_sources {
            let content = if h.expand {
                expand(c, st, &h.content, ins)?
            } else {
                h.content.clone()
            };
            files.push((h.name.clone(), content));
        }
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        let v = c.graph.add(
            Op::File(FileOp::Mkfiles { files, mode: None }),
            vec![],
            format!("{name} (heredoc)"),
        );
        (v, names)
    };
    let copy = CopyOp {
        src: 1,
        dest: if a.link { None } else { Some(0) },
        sources: sources.clone(),
        dest_path: dest.clone(),
        workdir,
        chown,
        chmod,
        keep_owner: from_stage && a.chown.is_none(),
        parents: a.parents,
        excludes,
        unpack: is_add && !from_stage && a.unpack.unwrap_or(true),
    };
    let shown = format!("{verb} {} {dest}", sources.join(" "));
    if a.link {
        let scratch = c.scratch_vertex();
        let copied = c.graph.add(
            Op::File(FileOp::Copy(copy)),
            vec![scratch, src_vertex],
            name.clone(),
        );
        st.vertex = c
            .graph
            .add(Op::Merge, vec![st.vertex, copied], format!("{name} (link)"));
    } else {
        st.vertex = c.graph.add(
            Op::File(FileOp::Copy(copy)),
            vec![st.vertex, src_vertex],
            name,
        );
    }
    st.image.layer(shown);
    Ok(())
}

/// `http://` or `https://` (BuildKit's `isHTTPSource`), and not a git repository.
fn is_http_source(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && !is_git_source(s)
}

/// A git repository reference BuildKit would clone: `git@host:…`, `git://…`, `ssh://…`, or an
/// http(s) URL whose path ends in `.git` (optionally followed by `#ref`).
fn is_git_source(s: &str) -> bool {
    if s.starts_with("git@") || s.starts_with("git://") || s.starts_with("ssh://") {
        return true;
    }
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return false;
    };
    let before_fragment = rest.split('#').next().unwrap_or(rest);
    let path = before_fragment.split('?').next().unwrap_or(before_fragment);
    path.trim_end_matches('/').ends_with(".git")
}

/// The file name an http source gets, by BuildKit's Dockerfile rule (`dockerfile2llb`):
/// `path.Base` of the URL's decoded path, or `__unnamed__` when that is `.` or `/`.
/// `None` when the path's percent-encoding is invalid or decodes to something that cannot
/// be a file name.
fn url_filename(uri: &ureq::http::Uri) -> Option<String> {
    let raw = uri.path().as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let path = String::from_utf8(decoded).ok()?;
    if path.contains('\0') {
        return None;
    }
    // Go's path.Base: trailing slashes are dropped, then the last element; "" → "."; all
    // slashes → "/".
    let trimmed = path.trim_end_matches('/');
    let base = if trimmed.is_empty() {
        if path.is_empty() { "." } else { "/" }
    } else {
        trimmed.rsplit('/').next().unwrap_or(trimmed)
    };
    Some(match base {
        "." | "/" | ".." => "__unnamed__".to_owned(),
        b => b.to_owned(),
    })
}

/// `ADD [--checksum=sha256:…] [--chown] [--chmod] [--link] <http(s) url> <dest>`: the file
/// becomes an [`SourceOp::Http`] vertex (downloaded by the engine, pinned by the checksum),
/// copied into the stage like a context file. Remote files are never unpacked (BuildKit).
fn add_url(
    c: &mut Converter<'_>,
    st: &mut St,
    ins: &Located<Instruction>,
    name: String,
    a: &CopyArgs,
    sources: Vec<String>,
) -> Result<(), ConvertError> {
    let at = |m: String| ConvertError::at(ins.line, ins.column, m);
    let url = match sources.as_slice() {
        [one] => one.clone(),
        _ => {
            let listed = sources.join(" ");
            return Err(at(if a.checksum.is_some() {
                format!("ADD {listed}: checksum can't be specified for multiple sources")
            } else {
                format!(
                    "ADD {listed}: a URL must be the only source (kiln requires ADD <url> to be \
                     pinned with --checksum=sha256:…, which names one file)"
                )
            }));
        }
    };
    let Some(checksum) = a.checksum.as_deref() else {
        return Err(at(format!(
            "ADD {url} requires --checksum=sha256:… so the download is pinned (kiln refuses \
             unpinned remote sources; BuildKit does not)"
        )));
    };
    let checksum = expand(c, st, checksum, ins)?;
    let checksum: Digest = checksum.parse().map_err(|e: crate::digest::DigestError| {
        at(match e {
            crate::digest::DigestError::Algorithm(_) => format!(
                "ADD --checksum={checksum}: unsupported digest algorithm (kiln pins downloads \
                 with sha256:<64 lowercase hex digits>)"
            ),
            crate::digest::DigestError::Malformed(_) => format!(
                "ADD --checksum={checksum}: malformed digest; expected sha256:<64 lowercase \
                 hex digits>"
            ),
        })
    })?;
    if a.from.is_some() {
        return Err(at(format!(
            "ADD --from cannot be used with a URL source ({url})"
        )));
    }
    if a.unpack == Some(true) {
        return Err(at(format!(
            "ADD --unpack=true {url}: kiln does not unpack remote archives; ADD the file and \
             extract it in a RUN step"
        )));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e: ureq::http::uri::InvalidUri| at(format!("ADD {url}: invalid URL: {e}")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(at(format!("ADD {url}: invalid URL: no host")));
    }
    let filename = url_filename(&uri).ok_or_else(|| {
        at(format!(
            "ADD {url}: invalid URL: bad percent-encoding in the path"
        ))
    })?;
    let dest = expand(c, st, &a.dest, ins)?;
    let chown = a
        .chown
        .as_deref()
        .map(|x| expand(c, st, x, ins))
        .transpose()?;
    let chmod = match a
        .chmod
        .as_deref()
        .map(|x| expand(c, st, x, ins))
        .transpose()?
    {
        Some(m) => Some(
            u32::from_str_radix(&m, 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .ok_or_else(|| at(format!("invalid chmod parameter: {m}")))?,
        ),
        None => None,
    };
    let workdir = if st.image.workdir.is_empty() {
        "/".to_owned()
    } else {
        st.image.workdir.clone()
    };
    let src_vertex = c.graph.add(
        Op::Source(SourceOp::Http {
            url: url.clone(),
            checksum,
            filename: filename.clone(),
        }),
        vec![],
        format!("{name} (download)"),
    );
    let copy = CopyOp {
        src: 1,
        dest: if a.link { None } else { Some(0) },
        sources: vec![filename],
        dest_path: dest.clone(),
        workdir,
        chown,
        chmod,
        keep_owner: false,
        parents: false,
        excludes: Vec::new(),
        unpack: false,
    };
    if a.link {
        let scratch = c.scratch_vertex();
        let copied = c.graph.add(
            Op::File(FileOp::Copy(copy)),
            vec![scratch, src_vertex],
            name.clone(),
        );
        st.vertex = c
            .graph
            .add(Op::Merge, vec![st.vertex, copied], format!("{name} (link)"));
    } else {
        st.vertex = c.graph.add(
            Op::File(FileOp::Copy(copy)),
            vec![st.vertex, src_vertex],
            name,
        );
    }
    st.image.layer(format!("ADD {url} {dest}"));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn url_file_names_follow_buildkit() {
        let f = |u: &str| url_filename(&u.parse().unwrap());
        assert_eq!(
            f("https://example.com/a/b.tar.gz").as_deref(),
            Some("b.tar.gz")
        );
        assert_eq!(f("https://example.com/a/dir/").as_deref(), Some("dir"));
        assert_eq!(f("https://example.com/").as_deref(), Some("__unnamed__"));
        assert_eq!(f("https://example.com").as_deref(), Some("__unnamed__"));
        assert_eq!(f("https://example.com/x?y=/z#w").as_deref(), Some("x"));
        assert_eq!(
            f("https://example.com/a%20b.txt").as_deref(),
            Some("a b.txt")
        );
        assert_eq!(f("https://example.com/a%2Fb").as_deref(), Some("b"));
        assert_eq!(f("https://example.com/%zz"), None);
        assert_eq!(f("https://example.com/a%00b"), None);
    }

    #[test]
    fn git_sources_are_recognised() {
        assert!(is_git_source("git@github.com:org/repo.git"));
        assert!(is_git_source("https://github.com/org/repo.git"));
        assert!(is_git_source("https://github.com/org/repo.git#v1"));
        assert!(is_git_source("git://host/repo"));
        assert!(!is_git_source("https://example.com/file.tar.gz"));
        assert!(is_http_source("https://example.com/file.git.tar"));
        assert!(!is_http_source("https://example.com/r.git"));
        assert!(!is_http_source("file.txt"));
    }

    #[test]
    fn expose_normalises_like_docker() {
        assert_eq!(expose_ports("80"), Ok(vec!["80/tcp".to_owned()]));
        assert_eq!(expose_ports("53/UDP"), Ok(vec!["53/udp".to_owned()]));
        assert_eq!(
            expose_ports("8000-8001"),
            Ok(vec!["8000/tcp".to_owned(), "8001/tcp".to_owned()])
        );
        assert!(expose_ports("x").is_err());
    }

    #[test]
    fn paths_join_and_clean_like_buildkit() {
        assert_eq!(clean_abs(&abs_path("/app", "sub/../x")), "/app/x");
        assert_eq!(clean_abs(&abs_path("", "a")), "/a");
        assert_eq!(clean_abs(&abs_path("/w", "/abs/")), "/abs");
    }
}
