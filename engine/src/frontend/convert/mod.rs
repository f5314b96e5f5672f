//! Conversion: typed Dockerfile instructions → build graph + image config, with BuildKit's
//! semantics for stages, ARG/ENV scoping and expansion, and image metadata.
//!
//! Stages are converted on demand from the target backwards (a stage no target needs is never
//! resolved, like BuildKit), each once. ARGs before the first FROM form the global scope, used
//! to expand FROM lines; a stage sees a global ARG only if it re-declares it.

mod copy;
mod dispatch;
mod run;
mod secrets;
mod ssh;
mod state;

use std::collections::{BTreeMap, HashMap};

pub use state::{HistoryItem, ImageState, host_platform};

use super::instructions::{Dockerfile, Stage};
use super::shell::Lexer;
use crate::Digest;
use crate::graph::{Graph, Op, SourceOp, VertexIdx};

/// Conversion errors; each names the Dockerfile line and column it comes from.
#[derive(Debug, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct ConvertError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl ConvertError {
    pub(crate) fn at(line: usize, column: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            column,
            message: message.into(),
        }
    }
}

/// An image a `FROM` or `--from` may name, found by the caller (local image store, named
/// build contexts).
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The manifest digest.
    pub manifest: Digest,
    /// The image's config (for ENV, USER, WORKDIR, … and ONBUILD triggers).
    pub config: crate::oci::types::ImageConfig,
    /// The manifest's layer descriptors (an image built on this one reuses them as they are).
    pub layers: Vec<crate::oci::types::Descriptor>,
}

/// What the conversion needs from outside: image lookup and named contexts.
pub trait Resolver {
    /// Finds an image by reference (already expanded). `Ok(None)`: unknown.
    fn image(&self, reference: &str) -> Result<Option<ResolvedImage>, String>;
    /// Whether a named build context of that name exists (as a directory).
    fn has_context(&self, name: &str) -> bool;
}

/// Options for one conversion.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// Allow `RUN --network=host` (entitlement `network.host`).
    pub allow_host_network: bool,
    /// Allow `RUN --security=insecure` (entitlement `security.insecure`, DANGEROUS).
    pub allow_insecure: bool,
    /// Target platform, `os/arch[/variant]`.
    pub platform: String,
}

/// The conversion's result.
#[derive(Debug)]
pub struct Converted {
    /// The graph.
    pub graph: Graph,
    /// The vertex whose file system is the image.
    pub target: VertexIdx,
    /// The image metadata.
    pub image: ImageState,
    /// Build args nobody declared (BuildKit warns about them).
    pub unused_build_args: Vec<String>,
    /// Lint warnings (e.g. `SecretsUsedInArgOrEnv`), each a line to show.
    pub warnings: Vec<String>,
    /// The stages the target needs, by index: (index, `AS` name, base after expansion).
    pub stages: Vec<(usize, Option<String>, String)>,
}

/// Converts a parsed Dockerfile.
pub fn convert(
    df: &Dockerfile,
    opts: &ConvertOptions,
    resolver: &dyn Resolver,
) -> Result<Converted, ConvertError> {
    let mut c = Converter::new(df, opts, resolver)?;
    let target = match &opts.target {
        Some(t) => c.stage_index(t).ok_or_else(|| {
            ConvertError::at(0, 0, format!("target stage {t:?} could not be found"))
        })?,
        None => df.stages.len().checked_sub(1).ok_or_else(|| {
            ConvertError::at(0, 0, "the Dockerfile has no stages (no FROM instruction)")
        })?,
    };
    c.stage(target)?;
    let done = c
        .done
        .remove(&target)
        .ok_or_else(|| ConvertError::at(0, 0, "internal: target stage not converted"))?;
    let mut unused: Vec<String> = opts
        .build_args
        .keys()
        .filter(|k| !c.used_args.contains(k.as_str()) && !state::is_predefined_arg(k))
        .cloned()
        .collect();
    unused.sort();
    let mut stages: Vec<_> = c.bases.into_iter().collect();
    stages.sort_by_key(|s| s.0);
    let stages = stages
        .into_iter()
        .map(|(i, base)| (i, df.stages.get(i).and_then(|s| s.name.clone()), base))
        .collect();
    Ok(Converted {
        graph: c.graph,
        target: done.vertex,
        image: done.image,
        unused_build_args: unused,
        warnings: crate::frontend::lint::secrets_used_in_arg_or_env(df),
        stages,
    })
}

/// A converted stage.
#[derive(Debug, Clone)]
struct StageResult {
    vertex: VertexIdx,
    image: ImageState,
}

struct Converter<'a> {
    df: &'a Dockerfile,
    opts: &'a ConvertOptions,
    resolver: &'a dyn Resolver,
    graph: Graph,
    lexer: Lexer,
    /// Global ARGs (before the first FROM) with their values.
    global_args: Vec<(String, Option<String>)>,
    done: HashMap<usize, StageResult>,
    in_progress: Vec<usize>,
    used_args: std::collections::BTreeSet<String>,
    context: Option<VertexIdx>,
    scratch: Option<VertexIdx>,
    /// Each converted stage's base, expanded.
    bases: HashMap<usize, String>,
}

impl<'a> Converter<'a> {
    fn new(
        df: &'a Dockerfile,
        opts: &'a ConvertOptions,
        resolver: &'a dyn Resolver,
    ) -> Result<Self, ConvertError> {
        let lexer = Lexer::new(df.directives.escape);
        let mut c = Self {
            df,
            opts,
            resolver,
            graph: Graph::new(),
            lexer,
            global_args: Vec::new(),
            done: HashMap::new(),
            in_progress: Vec::new(),
            used_args: Default::default(),
            context: None,
            scratch: None,
            bases: HashMap::new(),
        };
        // Global scope: automatic platform args, then ARGs before FROM in order, each
        // expandable with the ones before it.
        let mut globals: Vec<(String, Option<String>)> = state::platform_args(&opts.platform)
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for a in &df.meta_args {
            let value = match opts.build_args.get(&a.name) {
                Some(v) => {
                    c.used_args.insert(a.name.clone());
                    Some(v.clone())
                }
                None => match &a.default {
                    Some(d) => Some(
                        c.lexer
                            .process_word(d, &state::Scope(&globals))
                            .map_err(|e| ConvertError::at(0, 0, format!("ARG {}: {e}", a.name)))?,
                    ),
                    None => None,
                },
            };
            globals.retain(|(k, _)| k != &a.name);
            globals.push((a.name.clone(), value));
        }
        c.global_args = globals;
        Ok(c)
    }

    fn stage_index(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.df.stages.iter().position(|s| {
            s.name.as_deref().map(str::to_ascii_lowercase).as_deref() == Some(lower.as_str())
        })
    }

    /// A stage reference in `FROM x` or `--from=x`: a stage name, or (for --from) a number.
    fn stage_ref(&self, reference: &str, before: usize, allow_index: bool) -> Option<usize> {
        if let Some(i) = self.stage_index(reference)
            && i < before
        {
            return Some(i);
        }
        if allow_index
            && let Ok(i) = reference.parse::<usize>()
            && i < before
        {
            return Some(i);
        }
        None
    }

    fn context_vertex(&mut self) -> VertexIdx {
        if let Some(v) = self.context {
            return v;
        }
        let v = self.graph.add(
            Op::Source(SourceOp::Context {
                name: "context".into(),
            }),
            vec![],
            "context",
        );
        self.context = Some(v);
        v
    }

    fn scratch_vertex(&mut self) -> VertexIdx {
        if let Some(v) = self.scratch {
            return v;
        }
        let v = self
            .graph
            .add(Op::Source(SourceOp::Scratch), vec![], "scratch");
        self.scratch = Some(v);
        v
    }

    /// Converts stage `i` (and what it depends on) once.
    fn stage(&mut self, i: usize) -> Result<StageResult, ConvertError> {
        if let Some(r) = self.done.get(&i) {
            return Ok(r.clone());
        }
        let stage: &'a Stage = self
            .df
            .stages
            .get(i)
            .ok_or_else(|| ConvertError::at(0, 0, format!("internal: no stage {i}")))?;
        if self.in_progress.contains(&i) {
            let name = stage.name.clone().unwrap_or_else(|| i.to_string());
            return Err(ConvertError::at(
                stage.line,
                1,
                format!("circular dependency detected on stage: {name}"),
            ));
        }
        self.in_progress.push(i);
        let r = dispatch::stage(self, i, stage);
        self.in_progress.retain(|&x| x != i);
        let r = r?;
        self.done.insert(i, r.clone());
        Ok(r)
    }

    /// Resolves an image or a named context for FROM / --from / mount from=.
    fn source(
        &mut self,
        reference: &str,
        line: usize,
    ) -> Result<(VertexIdx, Option<ResolvedImage>), ConvertError> {
        if reference.eq_ignore_ascii_case("scratch") {
            return Ok((self.scratch_vertex(), None));
        }
        if self.resolver.has_context(reference) {
            let v = self.graph.add(
                Op::Source(SourceOp::Context {
                    name: reference.to_owned(),
                }),
                vec![],
                format!("context {reference}"),
            );
            return Ok((v, None));
        }
        match self.resolver.image(reference) {
            Ok(Some(img)) => {
                let v = self.graph.add(
                    Op::Source(SourceOp::Image {
                        name: reference.to_owned(),
                        manifest: img.manifest,
                    }),
                    vec![],
                    format!("[internal] load {reference}"),
                );
                Ok((v, Some(img)))
            }
            Ok(None) => Err(ConvertError::at(
                line,
                1,
                format!(
                    "base image {reference:?} not found in kiln's local image store \
                     (build it with `kiln build -t {reference}`, or pass it with \
                     --build-context {reference}=oci-layout://PATH or docker-archive://PATH.tar, \
                     or name the registry that has it: REGISTRY/NAME[:TAG|@sha256:…])"
                ),
            )),
            Err(e) => Err(ConvertError::at(
                line,
                1,
                format!("resolving {reference:?}: {e}"),
            )),
        }
    }
}
