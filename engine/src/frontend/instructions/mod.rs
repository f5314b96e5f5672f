//! Typed instructions from the parser's [`Ast`], as BuildKit's `instructions` package: one
//! [`Instruction`] per node, grouped into build [`Stage`]s. Words stay unexpanded (conversion
//! expands them with ARG/ENV); the syntax of every flag is checked here.

mod commands;
mod flags;
mod mount;

pub use mount::{CacheSharing, Expander, MountError, MountFlag, MountType, parse_mount};

use std::time::Duration;

use crate::frontend::parser::{Ast, Directives, Heredoc, Node};

/// A Dockerfile as typed instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The parser directives.
    pub directives: Directives,
    /// `ARG`s before the first `FROM` (usable in `FROM` lines).
    pub meta_args: Vec<ArgDecl>,
    /// The build stages, in order.
    pub stages: Vec<Stage>,
}

/// One build stage: a `FROM` and the instructions after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// 0-based position among the stages.
    pub index: usize,
    /// The `AS` name, lower-cased as BuildKit does.
    pub name: Option<String>,
    /// The base image or stage, unexpanded.
    pub base: String,
    /// `--platform`, unexpanded.
    pub platform: Option<String>,
    /// 1-based line of the `FROM`.
    pub line: usize,
    /// The stage's instructions.
    pub instructions: Vec<Located<Instruction>>,
}

/// A value with its position in the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// 1-based start line.
    pub line: usize,
    /// 1-based column of the instruction word.
    pub column: usize,
    /// 1-based end line (continuations and heredocs included).
    pub end_line: usize,
    /// The value.
    pub inner: T,
    /// The instruction's logical line as written (continuations joined).
    pub original: String,
}

/// An `ARG` declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    /// The name.
    pub name: String,
    /// The default value, unexpanded (quotes still in place).
    pub default: Option<String>,
}

/// A command in shell form (run through the stage's `SHELL`) or exec form (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandLine {
    /// `RUN echo hi`: the text, unexpanded.
    Shell(String),
    /// `RUN ["echo", "hi"]`.
    Exec(Vec<String>),
}

/// `RUN --network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkMode {
    /// No network.
    None,
    /// The builder's default network.
    Default,
    /// The host's network (needs an explicit entitlement).
    Host,
}

/// `RUN --security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecurityMode {
    /// The normal sandbox.
    Sandbox,
    /// Elevated privileges (needs an explicit entitlement).
    Insecure,
}

/// The arguments of `COPY` and `ADD`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyArgs {
    /// Source paths (or URLs for ADD), unexpanded.
    pub sources: Vec<String>,
    /// Heredoc sources (`COPY <<EOF /dst`); `name` is the file name, content chomped if
    /// `chomp` is set.
    pub heredoc_sources: Vec<Heredoc>,
    /// The destination, unexpanded.
    pub dest: String,
    /// `--from`.
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents` (COPY).
    pub parents: bool,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// `--checksum` (ADD).
    pub checksum: Option<String>,
    /// `--keep-git-dir` (ADD).
    pub keep_git_dir: bool,
    /// `--unpack` (ADD); `None` when not given (archives are unpacked, URLs are not).
    pub unpack: Option<bool>,
    /// The sources were written as a JSON array.
    pub json: bool,
}

/// `HEALTHCHECK` settings as Docker stores them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthConfig {
    /// `["CMD-SHELL", cmd]`, `["CMD", args...]` or `["NONE"]`.
    pub test: Vec<String>,
    /// `--interval` (`None`: not given or zero).
    pub interval: Option<Duration>,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// `--start-period`.
    pub start_period: Option<Duration>,
    /// `--start-interval`.
    pub start_interval: Option<Duration>,
    /// `--retries`.
    pub retries: Option<u32>,
}

/// One Dockerfile instruction (FROM is a [`Stage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Instruction {
    /// `RUN`.
    Run {
        /// The command.
        command: CommandLine,
        /// Heredocs named on the line (content chomped if `chomp` is set).
        heredocs: Vec<Heredoc>,
        /// `--mount` flags.
        mounts: Vec<MountFlag>,
        /// `--network`.
        network: Option<NetworkMode>,
        /// `--security`.
        security: Option<SecurityMode>,
    },
    /// `COPY`.
    Copy(CopyArgs),
    /// `ADD`.
    Add(CopyArgs),
    /// `ARG`.
    Arg(Vec<ArgDecl>),
    /// `ENV` pairs, unexpanded.
    Env(Vec<(String, String)>),
    /// `LABEL` pairs, unexpanded.
    Label(Vec<(String, String)>),
    /// `WORKDIR`.
    Workdir(String),
    /// `USER`.
    User(String),
    /// `EXPOSE` ports, sorted as BuildKit does.
    Expose(Vec<String>),
    /// `ENTRYPOINT`.
    Entrypoint(CommandLine),
    /// `CMD`.
    Cmd(CommandLine),
    /// `SHELL` (JSON form only).
    Shell(Vec<String>),
    /// `VOLUME`.
    Volume(Vec<String>),
    /// `STOPSIGNAL`.
    StopSignal(String),
    /// `HEALTHCHECK`; `NONE` gives a config whose test is `["NONE"]`. `None` is not
    /// produced by the parser (it stands for "inherit from the base image").
    Healthcheck(Option<HealthConfig>),
    /// `ONBUILD`: the trigger's text (heredocs appended as BuildKit does).
    Onbuild(String),
    /// `MAINTAINER` (deprecated).
    Maintainer(String),
}

/// Why an instruction was rejected; messages follow BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InstructionErrorKind {
    /// An instruction word that does not exist.
    #[error("unknown instruction: {instruction}")]
    UnknownInstruction {
        /// The word as written.
        instruction: String,
    },
    /// An instruction before the first FROM (other than ARG).
    #[error("no build stage in current context")]
    NoStage,
    /// A flag the instruction does not take.
    #[error("unknown flag: {flag}")]
    UnknownFlag {
        /// The flag name (without `--`).
        flag: String,
    },
    /// A single-valued flag given twice.
    #[error("duplicate flag specified: {flag}")]
    DuplicateFlag {
        /// The flag name.
        flag: String,
    },
    /// `--flag` without `=value`, or a boolean flag with `=`.
    #[error("missing a value on flag: {flag}")]
    MissingFlagValue {
        /// The flag name.
        flag: String,
    },
    /// A boolean flag with a value other than true/false.
    #[error("expecting boolean value for flag {flag}, not: {value}")]
    BadBoolFlag {
        /// The flag name.
        flag: String,
        /// The value given.
        value: String,
    },
    /// A flag word not starting with `--`.
    #[error("arg should start with -- : {arg}")]
    NotAFlag {
        /// The word.
        arg: String,
    },
    /// No arguments.
    #[error("{instruction} requires at least one argument")]
    AtLeastOneArgument {
        /// The instruction.
        instruction: &'static str,
    },
    /// Not exactly one argument.
    #[error("{instruction} requires exactly one argument")]
    ExactlyOneArgument {
        /// The instruction.
        instruction: &'static str,
    },
    /// COPY/ADD with one argument.
    #[error(
        "{instruction} requires at least two arguments, but only one was provided. Destination could not be determined"
    )]
    NoDestination {
        /// The instruction.
        instruction: &'static str,
    },
    /// An empty name in ENV/LABEL/ARG.
    #[error("{instruction} names can not be blank")]
    BlankName {
        /// The instruction.
        instruction: &'static str,
    },
    /// Malformed name/value list.
    #[error("Bad input to {instruction}, too many arguments")]
    TooManyArguments {
        /// The instruction.
        instruction: &'static str,
    },
    /// FROM with 2 or more than 3 words, or a middle word other than AS.
    #[error("FROM requires either one or three arguments")]
    FromArguments,
    /// `FROM x AS 1bad`.
    #[error(
        "invalid name for build stage: {}, name can't start with a number or contain symbols",
        crate::frontend::parser::go_quote(name)
    )]
    InvalidStageName {
        /// The name as written.
        name: String,
    },
    /// SHELL not in JSON form.
    #[error("{instruction} requires the arguments to be in JSON form")]
    NotJson {
        /// The instruction.
        instruction: &'static str,
    },
    /// A heredoc as COPY/ADD destination.
    #[error("{instruction} cannot accept a heredoc as a destination")]
    HeredocDestination {
        /// The instruction.
        instruction: &'static str,
    },
    /// `ONBUILD ONBUILD`.
    #[error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChaining,
    /// `ONBUILD FROM` / `ONBUILD MAINTAINER`.
    #[error("{trigger} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger {
        /// The trigger instruction.
        trigger: String,
    },
    /// `HEALTHCHECK NONE args`.
    #[error("HEALTHCHECK NONE takes no arguments")]
    HealthcheckNoneArguments,
    /// `HEALTHCHECK CMD` alone.
    #[error("Missing command after HEALTHCHECK CMD")]
    HealthcheckMissingCommand,
    /// `HEALTHCHECK FOO`.
    #[error(
        "Unknown type {} in HEALTHCHECK (try CMD)",
        crate::frontend::parser::go_quote(kind)
    )]
    HealthcheckType {
        /// The type word.
        kind: String,
    },
    /// A duration flag that is not a Go duration.
    #[error("time: invalid duration {}", crate::frontend::parser::go_quote(value))]
    BadDuration {
        /// The value given.
        value: String,
    },
    /// A duration below 1ms.
    #[error(
        "Interval {} cannot be less than 1ms",
        crate::frontend::parser::go_quote(flag)
    )]
    DurationTooShort {
        /// The flag name.
        flag: &'static str,
    },
    /// `--retries` not a 32-bit integer.
    #[error(
        "strconv.ParseInt: parsing {}: invalid syntax",
        crate::frontend::parser::go_quote(value)
    )]
    BadRetries {
        /// The value given.
        value: String,
    },
    /// `--retries` below zero.
    #[error("--retries cannot be negative ({value})")]
    NegativeRetries {
        /// The value given.
        value: i64,
    },
    /// `--network` with an unknown mode.
    #[error(
        "unsupported network mode {}",
        crate::frontend::parser::go_quote(value)
    )]
    NetworkMode {
        /// The value given.
        value: String,
    },
    /// `--security` with an unknown mode.
    #[error("security {} is not valid", crate::frontend::parser::go_quote(value))]
    SecurityMode {
        /// The value given.
        value: String,
    },
    /// `VOLUME ""`.
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    /// A bad `--mount`.
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// An instruction error at a position; `Display` gives `line L:C: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}:{column}: {message}")]
pub struct InstructionError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (of the instruction, or of the offending flag).
    pub column: usize,
    /// The rendered message (`kind.to_string()`).
    pub message: String,
    /// What went wrong.
    pub kind: InstructionErrorKind,
}

impl InstructionError {
    pub(crate) fn at(node: &Node, column: usize, kind: InstructionErrorKind) -> Self {
        Self {
            line: node.start_line,
            column,
            message: kind.to_string(),
            kind,
        }
    }

    pub(crate) fn node(node: &Node, kind: InstructionErrorKind) -> Self {
        Self::at(node, node.column, kind)
    }
}

/// What one node turns into.
pub(crate) enum Parsed {
    From {
        name: Option<String>,
        base: String,
        platform: Option<String>,
    },
    Instruction(Instruction),
}

/// Converts a parsed Dockerfile into stages of typed instructions.
pub fn parse_dockerfile(ast: &Ast) -> Result<Dockerfile, InstructionError> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &ast.children {
        match commands::parse_node(node)? {
            Parsed::From {
                name,
                base,
                platform,
            } => stages.push(Stage {
                index: stages.len(),
                name,
                base,
                platform,
                line: node.start_line,
                instructions: Vec::new(),
            }),
            Parsed::Instruction(inner) => {
                let Some(stage) = stages.last_mut() else {
                    if let Instruction::Arg(args) = inner {
                        meta_args.extend(args);
                        continue;
                    }
                    return Err(InstructionError::node(node, InstructionErrorKind::NoStage));
                };
                stage.instructions.push(Located {
                    line: node.start_line,
                    column: node.column,
                    end_line: node.end_line,
                    inner,
                    original: node.original.clone(),
                });
            }
        }
    }
    Ok(Dockerfile {
        directives: ast.directives.clone(),
        meta_args,
        stages,
    })
}
