//! Dispatching one stage's instructions onto the graph and the image state.

use super::run::DEFAULT_PATH;
use super::state::{HistoryItem, ImageState, Scope};
use super::{ConvertError, Converter, ResolvedImage, StageResult};
use crate::frontend::instructions::{CommandLine, Instruction, Located, Stage};
use crate::graph::{FileOp, Op, VertexIdx};

/// Per-stage dispatch state.
pub(super) struct St {
    pub(super) vertex: VertexIdx,
    pub(super) image: ImageState,
    /// ARGs declared in this stage: name → value.
    pub(super) args: Vec<(String, Option<String>)>,
    pub(super) index: usize,
    /// `[name n/m]` prefix for progress.
    label: String,
    step: usize,
    steps: usize,
}

impl St {
    /// The scope for expanding words: the build-time env (ENV and ARG, later wins).
    pub(super) fn scope(&self) -> Vec<(String, Option<String>)> {
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
    c.bases.insert(i, base.clone());
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
        base_blobs: img.layers.clone(),
    }
}

pub(super) fn expand(
    c: &Converter<'_>,
    st: &St,
    word: &str,
    ins: &Located<Instruction>,
) -> Result<String, ConvertError> {
    c.lexer
        .process_word(word, &Scope(&st.scope()))
        .map_err(|e| ConvertError::at(ins.line, ins.column, e.to_string()))
}

pub(super) fn expand_words(
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
pub(super) fn abs_path(workdir: &str, p: &str) -> String {
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
        } => super::run::run(
            c, st, ins, name, command, heredocs, mounts, *network, *security,
        )?,
        Instruction::Copy(a) => super::copy::copy(c, st, ins, name, a, false)?,
        Instruction::Add(a) => super::copy::copy(c, st, ins, name, a, true)?,
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

/// The vertex a `--from` names: an earlier stage (name or index), a named context, or an image.
pub(super) fn from_vertex(
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
