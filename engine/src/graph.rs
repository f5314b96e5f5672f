//! The build graph: content-addressed vertices (Source, Exec, File, Merge).
//!
//! A vertex's *definition digest* is the sha256 of a canonical encoding of its op and the
//! definition digests of its inputs, so two builds that share a step share its digest, and
//! identical vertices in one graph are stored once. Canonical encoding: the op serialized to
//! JSON with object keys sorted (serde_json's `Value` map is ordered), no whitespace, wrapped as
//! `{"inputs":[…],"op":…,"v":1}`. Secrets' values never enter an op; only their ids do.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// Version of the canonical vertex encoding; bump when an op's meaning changes.
pub const VERTEX_ENCODING_VERSION: u32 = 1;

/// Index of a vertex in its [`Graph`].
pub type VertexIdx = usize;

/// What a vertex does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Op {
    /// A file system that comes from outside the graph.
    Source(SourceOp),
    /// Run a command in the sandbox on input 0's file system.
    Exec(ExecOp),
    /// A file operation done by the engine.
    File(FileOp),
    /// Stack the inputs' layers, first input at the bottom (`COPY --link`).
    Merge,
}

/// Sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
#[non_exhaustive]
pub enum SourceOp {
    /// The empty file system.
    Scratch,
    /// An image whose manifest and config are in the content store.
    Image {
        /// The reference as written: for display only, so it is not part of the canonical
        /// encoding (`FROM base` and `FROM base:latest` of one manifest are the same vertex).
        #[serde(skip_serializing, default)]
        name: String,
        /// Manifest digest.
        manifest: Digest,
    },
    /// A client directory (the build context or a named context); what is read from it is
    /// hashed by the step that reads it.
    Context {
        /// Context name (`context` for the main one).
        name: String,
    },
    /// A file downloaded by the engine (`ADD <http(s) url>`), pinned by its sha256: the
    /// result is one file, `filename`, mode 0600, at the root of an otherwise empty file
    /// system. Its cache key is derived from `checksum` and `filename` only (not the URL), so
    /// a cached result is never downloaded again, from that URL or a mirror.
    Http {
        /// The URL as written (after expansion).
        url: String,
        /// The content's sha256 (`ADD --checksum`).
        checksum: Digest,
        /// The file's name (BuildKit's rule: last component of the URL path, else
        /// `__unnamed__`).
        filename: String,
    },
}

/// Network mode of a RUN step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A new network namespace with loopback only (kiln's default).
    None,
    /// The host's network (needs the `network.host` entitlement).
    Host,
}

/// How tightly a RUN step is confined (`RUN --security=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// The hardened sandbox (default).
    #[default]
    Sandbox,
    /// DANGEROUS: every capability, the insecure seccomp profile, no landlock domain. Needs
    /// the `security.insecure` entitlement.
    Insecure,
}

impl Security {
    fn is_sandbox(&self) -> bool {
        *self == Self::Sandbox
    }
}

/// Run a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    /// argv.
    pub args: Vec<String>,
    /// Environment, `K=V`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User (Dockerfile syntax), empty for root.
    pub user: String,
    /// Network mode.
    pub network: Network,
    /// Extra mounts.
    pub mounts: Vec<ExecMount>,
    /// Confinement. Left out of the encoding when it is the default, so definitions (and
    /// cache keys) of ordinary steps are what they were before the field existed.
    #[serde(default, skip_serializing_if = "Security::is_sandbox")]
    pub security: Security,
}

/// A mount for a RUN step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecMount {
    /// Absolute path inside the step.
    pub target: String,
    /// What is mounted.
    pub kind: ExecMountKind,
}

/// Mount kinds of a RUN step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum ExecMountKind {
    /// A path of another vertex's result (or of a context), read-only unless `readwrite`
    /// (writes are then discarded).
    Bind {
        /// Input index of the vertex providing the file system.
        input: usize,
        /// Path inside that file system.
        source: String,
        /// Writable (changes discarded after the step).
        readwrite: bool,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Size limit in bytes.
        size: Option<u64>,
    },
    /// A persistent cache directory of the build's tenant (`RUN --mount=type=cache`), kept
    /// in the store between builds and never part of a layer. Only this definition is part of
    /// the step's digest (and so of its cache key), never the directory's contents: a step
    /// that hits the cache does not run, whatever the cache directory holds (BuildKit's rule).
    Cache {
        /// The cache's id (`id=`, default the target as written).
        id: String,
        /// How concurrent users share it.
        sharing: CacheSharing,
        /// Mounted read-only.
        readonly: bool,
        /// Mode of a new cache directory (default 0755; ignored with `from`).
        mode: u32,
        /// Owner of a new cache directory (ignored with `from`).
        uid: u32,
        /// Group of a new cache directory (ignored with `from`).
        gid: u32,
        /// Seed: a new cache directory starts as a copy of `source` in this input's file
        /// system (`from=`), instead of empty.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<CacheSeed>,
    },
    /// A build secret by id (`RUN --mount=type=secret`). Only the id and how it is shown are
    /// part of the definition, never the value: the value reaches the cache key as a keyed
    /// MAC (see `ops::secrets`). When `file` is false the secret is only an environment
    /// variable and the mount's target is unused.
    Secret {
        /// The secret's id (`kiln build --secret id=…`).
        id: String,
        /// Mounted as a file at the target.
        file: bool,
        /// Exposed as this environment variable.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<String>,
        /// Missing → the step fails before it runs (otherwise it runs without it).
        required: bool,
        /// File mode.
        mode: u32,
        /// File owner.
        uid: u32,
        /// File group.
        gid: u32,
    },
    /// An SSH agent by id (`RUN --mount=type=ssh`): a socket at the target that proxies the
    /// agent protocol to the client's agent (`kiln build --ssh`). Only the id and how the
    /// socket is shown are part of the definition; the agent and its keys are not part of the
    /// cache key (BuildKit's rule), so adding a key does not re-run a cached step.
    Ssh {
        /// The agent's id (`kiln build --ssh ID`).
        id: String,
        /// Missing → the step fails before it runs (otherwise it runs without it).
        required: bool,
        /// Socket mode.
        mode: u32,
        /// Socket owner.
        uid: u32,
        /// Socket group.
        gid: u32,
    },
}

/// How concurrent users share a cache mount (`sharing=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheSharing {
    /// Every user mounts the same directory at the same time (the default).
    #[default]
    Shared,
    /// A user that finds the directory in use gets another one of its own.
    Private,
    /// Users take turns: one step at a time holds the directory.
    Locked,
}

/// Where a new cache directory's initial contents come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSeed {
    /// Input index of the vertex providing the file system.
    pub input: usize,
    /// Directory inside that file system.
    pub source: String,
}

/// File operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
#[non_exhaustive]
pub enum FileOp {
    /// COPY/ADD: copy from input `src` into input `dest`.
    Copy(CopyOp),
    /// Files with the given contents at the root of an empty file system (heredoc sources).
    Mkfiles {
        /// (name, content) pairs.
        files: Vec<(String, String)>,
        /// File mode (default 0644).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// `mkdir -p` (WORKDIR) on input 0.
    Mkdir {
        /// Absolute path.
        path: String,
        /// Owner (Dockerfile user syntax), resolved in the destination.
        owner: Option<String>,
    },
}

/// A COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOp {
    /// Input index of the source file system.
    pub src: usize,
    /// Input index of the destination file system (`None`: scratch, for `--link`).
    pub dest: Option<usize>,
    /// Source paths (expanded; may contain wildcards).
    pub sources: Vec<String>,
    /// Destination path (expanded).
    pub dest_path: String,
    /// Working directory for a relative destination.
    pub workdir: String,
    /// `--chown` (expanded, resolved in the destination at run time).
    pub chown: Option<String>,
    /// `--chmod` as octal bits.
    pub chmod: Option<u32>,
    /// Keep the source's owners (copies from another stage without --chown).
    pub keep_owner: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// ADD: unpack local archives.
    pub unpack: bool,
}

/// One vertex.
#[derive(Debug, Clone)]
pub struct Vertex {
    /// The op.
    pub op: Op,
    /// Inputs, by index (always lower than this vertex's index).
    pub inputs: Vec<VertexIdx>,
    /// Human description for progress (`[build 2/4] RUN make`); not part of the digest.
    pub name: String,
    /// Definition digest.
    pub digest: Digest,
}

/// A DAG of vertices in topological order.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    vertices: Vec<Vertex>,
    by_digest: HashMap<Digest, VertexIdx>,
}

/// The canonical encoding of a vertex (what its digest is computed over).
pub fn canonical_encoding(op: &Op, input_digests: &[Digest]) -> Vec<u8> {
    let value = serde_json::json!({
        "v": VERTEX_ENCODING_VERSION,
        "op": op,
        "inputs": input_digests,
    });
    // serde_json's Value maps are BTreeMaps (no preserve_order feature): keys come out sorted.
    value.to_string().into_bytes()
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a vertex (or finds the identical one) and returns its index.
    ///
    /// Inputs must already be in the graph, which keeps the graph acyclic and topologically
    /// ordered by construction.
    pub fn add(&mut self, op: Op, inputs: Vec<VertexIdx>, name: impl Into<String>) -> VertexIdx {
        let input_digests: Vec<Digest> = inputs
            .iter()
            .filter_map(|&i| self.vertices.get(i).map(|v| v.digest))
            .collect();
        debug_assert_eq!(input_digests.len(), inputs.len(), "input not in graph");
        let digest = Digest::of(&canonical_encoding(&op, &input_digests));
        if let Some(&idx) = self.by_digest.get(&digest) {
            return idx;
        }
        let idx = self.vertices.len();
        self.vertices.push(Vertex {
            op,
            inputs,
            name: name.into(),
            digest,
        });
        self.by_digest.insert(digest, idx);
        idx
    }

    /// A vertex.
    pub fn get(&self, idx: VertexIdx) -> Option<&Vertex> {
        self.vertices.get(idx)
    }

    /// All vertices in topological order.
    pub fn vertices(&self) -> &[Vertex] {
        &self.vertices
    }

    /// Number of vertices.
    pub fn len(&self) -> usize {
        self.vertices.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.vertices.is_empty()
    }

    /// The vertices `targets` depend on (themselves included), in topological order.
    pub fn ancestors(&self, targets: &[VertexIdx]) -> Vec<VertexIdx> {
        let mut needed = vec![false; self.vertices.len()];
        let mut stack: Vec<VertexIdx> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if let Some(flag) = needed.get_mut(i)
                && !*flag
            {
                *flag = true;
                if let Some(v) = self.vertices.get(i) {
                    stack.extend(&v.inputs);
                }
            }
        }
        needed
            .iter()
            .enumerate()
            .filter_map(|(i, &n)| n.then_some(i))
            .collect()
    }

    /// The graph as JSON (for `kiln debug dump-graph`).
    pub fn to_json(&self, targets: &[VertexIdx]) -> serde_json::Value {
        let vs: Vec<_> = self
            .vertices
            .iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::json!({
                    "index": i,
                    "digest": v.digest,
                    "name": v.name,
                    "op": v.op,
                    "inputs": v.inputs.iter().filter_map(|&x| self.vertices.get(x).map(|w| w.digest)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let targets: Vec<_> = targets
            .iter()
            .filter_map(|&t| self.vertices.get(t).map(|v| v.digest))
            .collect();
        serde_json::json!({ "vertices": vs, "targets": targets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(cmd: &str) -> Op {
        Op::Exec(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: Network::None,
            mounts: vec![],
            security: Security::Sandbox,
        })
    }

    #[test]
    fn identical_vertices_are_stored_once_and_digest_covers_inputs() {
        let mut g = Graph::new();
        let s = g.add(Op::Source(SourceOp::Scratch), vec![], "scratch");
        let a = g.add(exec("true"), vec![s], "a");
        let b = g.add(exec("true"), vec![s], "b (same op)");
        assert_eq!(a, b);
        let c = g.add(exec("true"), vec![a], "on a");
        assert_ne!(g.get(a).map(|v| v.digest), g.get(c).map(|v| v.digest));
        assert_eq!(g.len(), 3);
    }

    #[test]
    fn canonical_encoding_is_stable() {
        let enc = canonical_encoding(&Op::Source(SourceOp::Scratch), &[]);
        assert_eq!(
            String::from_utf8_lossy(&enc),
            r#"{"inputs":[],"op":{"kind":"source","source":"scratch"},"v":1}"#
        );
    }
}
