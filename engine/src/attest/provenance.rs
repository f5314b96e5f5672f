//! The provenance's data, gathered from one build: what was asked (request), what it was
//! made from (graph sources by digest, the context's digest), and how each step was confined
//! (the sandbox's records).

use std::collections::{BTreeMap, BTreeSet};

use kiln_attest::slsa::{ProvenanceInput, ResourceDescriptor, SandboxFacts, StepRecord};

use crate::Digest;
use crate::builder::{BuildRequest, ContextSource};
use crate::graph::{ExecMountKind, Graph, Network, Op, Security, SourceOp, VertexIdx};

/// The frontend kiln records (BuildKit's name for the Dockerfile frontend).
pub const FRONTEND: &str = "dockerfile.v0";

/// What the builder knows once the build is solved and assembled.
#[derive(Debug)]
pub struct BuildFacts<'a> {
    /// The request.
    pub req: &'a BuildRequest,
    /// The graph.
    pub graph: &'a Graph,
    /// The target vertex.
    pub target: VertexIdx,
    /// The Dockerfile as given, and its sha256.
    pub dockerfile: (String, Digest),
    /// Content digests (after `.dockerignore`) of the build context (`context`) and of the
    /// named directory contexts, by name.
    pub context_digests: BTreeMap<String, Digest>,
    /// The confinement of each step that ran in this build, by vertex.
    pub confinements: &'a BTreeMap<VertexIdx, kiln_sandbox::Confinement>,
    /// Build id.
    pub invocation_id: String,
    /// Start and end, seconds since the epoch.
    pub started: u64,
    /// End.
    pub finished: u64,
    /// The snapshotter that ran the steps.
    pub snapshotter: &'a str,
    /// `runDetails.builder.id`.
    pub builder_id: &'a str,
}

fn sha256(d: &Digest) -> BTreeMap<String, String> {
    [("sha256".to_owned(), d.hex().to_owned())].into()
}

fn resource(uri: String, digest: &Digest) -> ResourceDescriptor {
    ResourceDescriptor {
        uri,
        digest: sha256(digest),
        name: None,
        media_type: None,
        annotations: BTreeMap::new(),
    }
}

/// `pkg:docker/<name>@<tag>?platform=linux%2Famd64`, as BuildKit names base images.
fn image_uri(name: &str) -> String {
    let (repo, tag) = match name.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
        Some((r, t)) => (r, t),
        None => (name, "latest"),
    };
    format!(
        "pkg:docker/{repo}@{tag}?platform={}%2F{}",
        crate::oci::media::HOST_OS,
        crate::oci::media::HOST_ARCHITECTURE
    )
}

/// The provenance input of a build.
pub fn input(f: &BuildFacts<'_>) -> ProvenanceInput {
    let req = f.req;
    let ancestors = f.graph.ancestors(&[f.target]);
    let mut deps: BTreeMap<String, ResourceDescriptor> = BTreeMap::new();
    let mut secret_ids = BTreeSet::new();
    let mut ssh_ids = BTreeSet::new();
    let mut steps = Vec::new();
    for idx in &ancestors {
        let Some(v) = f.graph.get(*idx) else { continue };
        match &v.op {
            Op::Source(SourceOp::Image { name, manifest }) => {
                let shown = if name.is_empty() {
                    manifest.to_string()
                } else {
                    name.clone()
                };
                let mut r = resource(image_uri(&shown), manifest);
                r.name = Some(shown);
                r.media_type = Some(crate::oci::media::OCI_MANIFEST.into());
                deps.insert(format!("image {manifest}"), r);
            }
            Op::Source(SourceOp::Http { url, checksum, .. }) => {
                deps.insert(format!("http {url}"), resource(url.clone(), checksum));
            }
            Op::Exec(e) => {
                for m in &e.mounts {
                    match &m.kind {
                        ExecMountKind::Secret { id, .. } => {
                            secret_ids.insert(id.clone());
                        }
                        ExecMountKind::Ssh { id, .. } => {
                            ssh_ids.insert(id.clone());
                        }
                        _ => {}
                    }
                }
                steps.push(StepRecord {
                    id: v.digest.to_string(),
                    name: v.name.clone(),
                    cached: !f.confinements.contains_key(idx),
                    network: match e.network {
                        Network::None => "none".into(),
                        Network::Host => "host".into(),
                    },
                    security: match e.security {
                        Security::Sandbox => "sandbox".into(),
                        Security::Insecure => "insecure".into(),
                    },
                    confinement: f
                        .confinements
                        .get(idx)
                        .and_then(|c| serde_json::to_value(c).ok()),
                });
            }
            _ => {}
        }
    }
    for (name, d) in &f.context_digests {
        // `context` is the main build context; a named directory context is `context:<name>`.
        let uri = if name == "context" {
            "context".to_owned()
        } else {
            format!("context:{name}")
        };
        let mut r = resource(uri.clone(), d);
        r.name = Some(name.clone());
        deps.insert(uri, r);
    }
    let mut named_contexts = BTreeMap::new();
    for (name, src) in &req.build_contexts {
        let shown = match src {
            ContextSource::Dir(d) => format!("dir:{}", d.display()),
            ContextSource::OciLayout { path, digest } => match digest {
                Some(d) => format!("oci-layout://{}@{d}", path.display()),
                None => format!("oci-layout://{}", path.display()),
            },
            ContextSource::DockerArchive(p) => format!("docker-archive:{}", p.display()),
        };
        named_contexts.insert(name.clone(), shown);
    }
    let seccomp = kiln_sandbox::seccomp::SeccompProfile::Default;
    let features = kiln_sandbox::probe();
    ProvenanceInput {
        builder_id: f.builder_id.to_owned(),
        invocation_id: f.invocation_id.clone(),
        started_on: crate::oci::types::rfc3339_from_epoch(f.started),
        finished_on: crate::oci::types::rfc3339_from_epoch(f.finished),
        frontend: FRONTEND.into(),
        dockerfile: {
            let mut r = resource(f.dockerfile.0.clone(), &f.dockerfile.1);
            r.name = Some("Dockerfile".into());
            r
        },
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        platforms: vec![format!(
            "{}/{}",
            crate::oci::media::HOST_OS,
            crate::oci::media::HOST_ARCHITECTURE
        )],
        secret_ids: secret_ids.into_iter().collect(),
        ssh_ids: ssh_ids.into_iter().collect(),
        named_contexts,
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        sandbox: SandboxFacts {
            landlock_abi: (features.landlock_abi > 0).then_some(features.landlock_abi),
            seccomp_profile_digest: Some(Digest::of(seccomp.data().as_bytes()).to_string()),
            userns: req
                .userns
                .map(|m| format!("{}:{}:{}", m.host_uid, m.host_gid, m.size)),
            snapshotter: f.snapshotter.to_owned(),
        },
        steps,
        policy_decisions: Vec::new(),
        resolved_dependencies: deps.into_values().collect(),
        byproducts: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_are_named_as_buildkit_names_them() {
        assert_eq!(
            image_uri("busybox"),
            "pkg:docker/busybox@latest?platform=linux%2Famd64"
        );
        assert_eq!(
            image_uri("localhost:5000/app:1.2"),
            "pkg:docker/localhost:5000/app@1.2?platform=linux%2Famd64"
        );
        assert_eq!(
            image_uri("localhost:5000/app"),
            "pkg:docker/localhost:5000/app@latest?platform=linux%2Famd64"
        );
    }
}
