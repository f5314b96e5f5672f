//! One parse function per instruction, as BuildKit's `instructions/parse.go`.

use std::time::Duration;

use super::flags::{Flags, Kind};
use super::mount::parse_mount;
use super::{
    ArgDecl, CommandLine, CopyArgs, HealthConfig, Instruction, InstructionError,
    InstructionErrorKind as E, NetworkMode, Parsed, SecurityMode,
};
use crate::frontend::parser::{Heredoc, Node, chomp_heredoc_content, parse_heredoc};

type Result<T> = std::result::Result<T, InstructionError>;

/// Parses one node into a stage start or an instruction.
pub(super) fn parse_node(node: &Node) -> Result<Parsed> {
    let err = |kind| InstructionError::node(node, kind);
    let one = |instruction| -> Result<String> {
        match node.args.as_slice() {
            [a] => Ok(a.clone()),
            _ => Err(err(E::ExactlyOneArgument { instruction })),
        }
    };
    let inst = match node.value.as_str() {
        "from" => return parse_from(node),
        "run" => parse_run(node)?,
        "copy" => Instruction::Copy(parse_copy(node, "COPY")?),
        "add" => Instruction::Add(parse_copy(node, "ADD")?),
        "arg" => {
            Flags::parse(node, &[])?;
            parse_arg(node)?
        }
        "env" => {
            Flags::parse(node, &[])?;
            Instruction::Env(parse_kvps(node, "ENV")?)
        }
        "label" => {
            Flags::parse(node, &[])?;
            Instruction::Label(parse_kvps(node, "LABEL")?)
        }
        "maintainer" => {
            let m = one("MAINTAINER")?;
            Flags::parse(node, &[])?;
            Instruction::Maintainer(m)
        }
        "workdir" => {
            let w = one("WORKDIR")?;
            Flags::parse(node, &[])?;
            Instruction::Workdir(w)
        }
        "user" => {
            let u = one("USER")?;
            Flags::parse(node, &[])?;
            Instruction::User(u)
        }
        "stopsignal" => {
            let s = one("STOPSIGNAL")?;
            Flags::parse(node, &[])?;
            Instruction::StopSignal(s)
        }
        "expose" => {
            if node.args.is_empty() {
                return Err(err(E::AtLeastOneArgument {
                    instruction: "EXPOSE",
                }));
            }
            Flags::parse(node, &[])?;
            let mut ports = node.args.clone();
            ports.sort();
            Instruction::Expose(ports)
        }
        "volume" => {
            if node.args.is_empty() {
                return Err(err(E::AtLeastOneArgument {
                    instruction: "VOLUME",
                }));
            }
            Flags::parse(node, &[])?;
            let mut volumes = Vec::with_capacity(node.args.len());
            for v in &node.args {
                let v = v.trim();
                if v.is_empty() {
                    return Err(err(E::EmptyVolume));
                }
                volumes.push(v.to_string());
            }
            Instruction::Volume(volumes)
        }
        "cmd" => {
            Flags::parse(node, &[])?;
            Instruction::Cmd(command_line(node))
        }
        "entrypoint" => {
            Flags::parse(node, &[])?;
            Instruction::Entrypoint(command_line(node))
        }
        "shell" => {
            Flags::parse(node, &[])?;
            if node.args.is_empty() {
                return Err(err(E::AtLeastOneArgument {
                    instruction: "SHELL",
                }));
            }
            if !node.json {
                return Err(err(E::NotJson {
                    instruction: "SHELL",
                }));
            }
            Instruction::Shell(node.args.clone())
        }
        "healthcheck" => parse_healthcheck(node)?,
        "onbuild" => parse_onbuild(node)?,
        _ => {
            return Err(err(E::UnknownInstruction {
                instruction: instruction_word(node),
            }));
        }
    };
    Ok(Parsed::Instruction(inst))
}

/// The instruction word as written (the node's value is lower-cased).
fn instruction_word(node: &Node) -> String {
    node.original
        .trim_start()
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap_or(&node.value)
        .to_string()
}

fn parse_from(node: &Node) -> Result<Parsed> {
    let err = |kind| InstructionError::node(node, kind);
    let name = match node.args.as_slice() {
        [_] => None,
        [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
            let lower = name.to_lowercase();
            let mut chars = lower.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
                });
            if !valid {
                return Err(err(E::InvalidStageName { name: name.clone() }));
            }
            Some(lower)
        }
        _ => return Err(err(E::FromArguments)),
    };
    let flags = Flags::parse(node, &[("platform", Kind::Str)])?;
    Ok(Parsed::From {
        name,
        base: node.args.first().cloned().unwrap_or_default(),
        platform: flags.string("platform"),
    })
}

/// Heredocs with `<<-` bodies chomped.
fn chomped(heredocs: &[Heredoc]) -> Vec<Heredoc> {
    heredocs
        .iter()
        .map(|h| Heredoc {
            content: if h.chomp {
                chomp_heredoc_content(&h.content)
            } else {
                h.content.clone()
            },
            ..h.clone()
        })
        .collect()
}

fn command_line(node: &Node) -> CommandLine {
    if node.json {
        CommandLine::Exec(node.args.clone())
    } else {
        CommandLine::Shell(node.args.join(" "))
    }
}

fn parse_run(node: &Node) -> Result<Instruction> {
    let flags = Flags::parse(
        node,
        &[
            ("mount", Kind::Strs),
            ("network", Kind::Str),
            ("security", Kind::Str),
        ],
    )?;
    let col = |name| flags.column(name).unwrap_or(node.column);
    let mut mounts = Vec::new();
    for (value, column) in flags.strings("mount") {
        let m = parse_mount(&value, None)
            .map_err(|e| InstructionError::at(node, column, E::Mount(e)))?;
        mounts.push(m);
    }
    let network = match flags.string("network") {
        None => None,
        Some(v) => Some(match v.as_str() {
            "none" => NetworkMode::None,
            "default" => NetworkMode::Default,
            "host" => NetworkMode::Host,
            _ => {
                return Err(InstructionError::at(
                    node,
                    col("network"),
                    E::NetworkMode { value: v },
                ));
            }
        }),
    };
    let security = match flags.string("security") {
        None => None,
        Some(v) => Some(match v.as_str() {
            "sandbox" => SecurityMode::Sandbox,
            "insecure" => SecurityMode::Insecure,
            _ => {
                return Err(InstructionError::at(
                    node,
                    col("security"),
                    E::SecurityMode { value: v },
                ));
            }
        }),
    };
    if node.args.is_empty() {
        return Err(InstructionError::node(
            node,
            E::AtLeastOneArgument { instruction: "RUN" },
        ));
    }
    Ok(Instruction::Run {
        command: command_line(node),
        heredocs: chomped(&node.heredocs),
        mounts,
        network,
        security,
    })
}

fn parse_copy(node: &Node, instruction: &'static str) -> Result<CopyArgs> {
    let err = |kind| InstructionError::node(node, kind);
    let Some((dest, srcs)) = node.args.split_last().filter(|(_, s)| !s.is_empty()) else {
        return Err(err(E::NoDestination { instruction }));
    };
    let is_add = instruction == "ADD";
    let spec: &[(&str, Kind)] = if is_add {
        &[
            ("chown", Kind::Str),
            ("chmod", Kind::Str),
            ("link", Kind::Bool),
            ("keep-git-dir", Kind::Bool),
            ("checksum", Kind::Str),
            ("exclude", Kind::Strs),
            ("unpack", Kind::Bool),
        ]
    } else {
        &[
            ("chown", Kind::Str),
            ("from", Kind::Str),
            ("chmod", Kind::Str),
            ("link", Kind::Bool),
            ("parents", Kind::Bool),
            ("exclude", Kind::Strs),
        ]
    };
    let flags = Flags::parse(node, spec)?;
    // As BuildKit's MustParseHeredoc: a word that fails to lex is simply not a heredoc.
    let heredoc_of = |word: &str| {
        if node.json {
            None
        } else {
            parse_heredoc(word).ok().flatten()
        }
    };
    if heredoc_of(dest).is_some() {
        return Err(err(E::HeredocDestination { instruction }));
    }
    let bodies = chomped(&node.heredocs);
    let mut sources = Vec::new();
    let mut heredoc_sources = Vec::new();
    for src in srcs {
        match heredoc_of(src) {
            Some(doc) => {
                let content = bodies
                    .iter()
                    .rev()
                    .find(|b| b.name == doc.name)
                    .map(|b| b.content.clone())
                    .unwrap_or_default();
                heredoc_sources.push(Heredoc { content, ..doc });
            }
            None => sources.push(src.clone()),
        }
    }
    Ok(CopyArgs {
        sources,
        heredoc_sources,
        dest: dest.clone(),
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.bool("link").unwrap_or(false),
        parents: flags.bool("parents").unwrap_or(false),
        exclude: flags
            .strings("exclude")
            .into_iter()
            .map(|(v, _)| v)
            .collect(),
        checksum: flags.string("checksum"),
        keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
        unpack: flags.bool("unpack"),
        json: node.json,
    })
}

fn parse_arg(node: &Node) -> Result<Instruction> {
    if node.args.is_empty() {
        return Err(InstructionError::node(
            node,
            E::AtLeastOneArgument { instruction: "ARG" },
        ));
    }
    let mut decls = Vec::with_capacity(node.args.len());
    for arg in &node.args {
        let decl = match arg.split_once('=') {
            Some(("", _)) => {
                return Err(InstructionError::node(
                    node,
                    E::BlankName { instruction: "ARG" },
                ));
            }
            Some((name, value)) => ArgDecl {
                name: name.to_string(),
                default: Some(value.to_string()),
            },
            None => ArgDecl {
                name: arg.clone(),
                default: None,
            },
        };
        decls.push(decl);
    }
    Ok(Instruction::Arg(decls))
}

/// ENV/LABEL: the parser gives (name, value, separator) triples.
fn parse_kvps(node: &Node, instruction: &'static str) -> Result<Vec<(String, String)>> {
    let err = |kind| InstructionError::node(node, kind);
    if node.args.is_empty() {
        return Err(err(E::AtLeastOneArgument { instruction }));
    }
    if !node.args.len().is_multiple_of(3) {
        return Err(err(E::TooManyArguments { instruction }));
    }
    node.args
        .chunks(3)
        .map(|kv| match kv {
            [k, _, _] if k.is_empty() => Err(err(E::BlankName { instruction })),
            [k, v, _] => Ok((k.clone(), v.clone())),
            _ => Err(err(E::TooManyArguments { instruction })),
        })
        .collect()
}

fn parse_onbuild(node: &Node) -> Result<Instruction> {
    let err = |kind| InstructionError::node(node, kind);
    let Some(sub) = &node.sub else {
        return Err(err(E::AtLeastOneArgument {
            instruction: "ONBUILD",
        }));
    };
    Flags::parse(node, &[])?;
    let trigger = sub.value.to_uppercase();
    match trigger.as_str() {
        "ONBUILD" => return Err(err(E::OnbuildChaining)),
        "MAINTAINER" | "FROM" => return Err(err(E::OnbuildTrigger { trigger })),
        _ => {}
    }
    // Check the trigger now (BuildKit defers this to the child build): an unknown or
    // malformed trigger is reported against the ONBUILD line.
    let mut trigger_node = (**sub).clone();
    trigger_node.start_line = node.start_line;
    trigger_node.end_line = node.end_line;
    trigger_node.column = node.column;
    trigger_node.flag_columns = vec![node.column; trigger_node.flags.len()];
    trigger_node.heredocs = node.heredocs.clone();
    parse_node(&trigger_node)?;

    let original = node.original.trim_start();
    let mut expression = match original.get(..7) {
        Some(word) if word.eq_ignore_ascii_case("onbuild") => original[7..].trim_start(),
        _ => original,
    }
    .to_string();
    for h in &node.heredocs {
        expression.push('\n');
        expression.push_str(&h.content);
        expression.push_str(&h.name);
    }
    Ok(Instruction::Onbuild(expression))
}

fn parse_healthcheck(node: &Node) -> Result<Instruction> {
    let err = |kind| InstructionError::node(node, kind);
    let Some((kind, args)) = node.args.split_first() else {
        return Err(err(E::AtLeastOneArgument {
            instruction: "HEALTHCHECK",
        }));
    };
    let flags = Flags::parse(
        node,
        &[
            ("interval", Kind::Str),
            ("timeout", Kind::Str),
            ("start-period", Kind::Str),
            ("start-interval", Kind::Str),
            ("retries", Kind::Str),
        ],
    )?;
    let kind = kind.to_uppercase();
    if kind == "NONE" {
        if !args.is_empty() {
            return Err(err(E::HealthcheckNoneArguments));
        }
        return Ok(Instruction::Healthcheck(Some(HealthConfig {
            test: vec![kind],
            ..HealthConfig::default()
        })));
    }
    if kind != "CMD" {
        return Err(err(E::HealthcheckType { kind }));
    }
    let cmd: Vec<String> = if node.json {
        args.to_vec()
    } else if args.is_empty() {
        Vec::new()
    } else {
        vec![args.join(" ")]
    };
    if cmd.is_empty() {
        return Err(err(E::HealthcheckMissingCommand));
    }
    let mut test = vec![if node.json { "CMD" } else { "CMD-SHELL" }.to_string()];
    test.extend(cmd);

    let duration = |name: &'static str| -> Result<Option<Duration>> {
        let Some(v) = flags.string(name) else {
            return Ok(None);
        };
        let at = |kind| InstructionError::at(node, flags.column(name).unwrap_or(node.column), kind);
        if v.is_empty() {
            return Ok(None);
        }
        let nanos = parse_go_duration(&v).ok_or_else(|| at(E::BadDuration { value: v.clone() }))?;
        if nanos == 0 {
            return Ok(None);
        }
        if nanos < 1_000_000 {
            return Err(at(E::DurationTooShort { flag: name }));
        }
        Ok(Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        )))
    };
    let retries = match flags.string("retries") {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => {
            let at = |kind| {
                InstructionError::at(node, flags.column("retries").unwrap_or(node.column), kind)
            };
            let n: i64 = v
                .parse()
                .ok()
                .filter(|n| i32::try_from(*n).is_ok())
                .ok_or_else(|| at(E::BadRetries { value: v.clone() }))?;
            Some(u32::try_from(n).map_err(|_| at(E::NegativeRetries { value: n }))?)
        }
    };
    Ok(Instruction::Healthcheck(Some(HealthConfig {
        test,
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    })))
}

/// Go's `time.ParseDuration`, in nanoseconds: `[-+]?(\d*(\.\d*)?unit)+` or `0`.
fn parse_go_duration(s: &str) -> Option<i128> {
    let (neg, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_len = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut value = whole.checked_mul(scale)?;
        if !frac.is_empty() {
            let digits = frac.len().min(30);
            let f: i128 = frac[..digits].parse().ok()?;
            value = value.checked_add(
                f.checked_mul(scale)? / 10i128.checked_pow(u32::try_from(digits).ok()?)?,
            )?;
        }
        total = total.checked_add(value)?;
        if total > i128::from(i64::MAX) {
            return None;
        }
        rest = after;
    }
    Some(if neg { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::parse_go_duration;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s"), Some(5_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration("300ms"), Some(300_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("-1s"), Some(-1_000_000_000));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}
