//! Image references: `[REGISTRY/]NAME[:TAG][@sha256:…]`, parsed like the distribution
//! reference grammar (lower-case repository path components, tags of at most 128 characters).

use std::fmt;

use super::RegistryError;
use crate::Digest;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API host.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` when the reference names none).
    pub registry: String,
    /// Repository path (`library/busybox`, `team/app`).
    pub repository: String,
    /// Tag (`latest` when neither a tag nor a digest is given).
    pub tag: Option<String>,
    /// Digest, when pinned.
    pub digest: Option<Digest>,
    /// Whether the reference named its registry (`HOST/…`), rather than defaulting to Docker Hub.
    pub explicit_registry: bool,
}

impl Reference {
    /// Parses a reference.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let err = |reason: &str| RegistryError::Reference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| err(&e.to_string()))?),
            ),
            None => (s, None),
        };
        let (registry, path, explicit) = match rest.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), remainder.to_owned(), true)
            }
            _ if rest.contains('/') => (DOCKER_HUB.to_owned(), rest.to_owned(), false),
            _ => (DOCKER_HUB.to_owned(), format!("library/{rest}"), false),
        };
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(err("bad registry host"));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_owned(), Some(t.to_owned())),
            _ => (path, None),
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return Err(err(
                "the repository must be lower-case path components of [a-z0-9._-]",
            ));
        }
        if let Some(t) = &tag
            && (t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            return Err(err("bad tag"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
            explicit_registry: explicit,
        })
    }

    /// The host the API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the manifests endpoint for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository, another digest.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_distribution() {
        let r = Reference::parse("127.0.0.1:5000/team/app:1.0").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert!(r.explicit_registry);
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert!(!r.explicit_registry);
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost:5000/x@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
        assert!(Reference::parse("localhost:5000/UPPER:1").is_err());
        assert!(Reference::parse("localhost:5000/x:bad/tag").is_err());
        assert!(Reference::parse("localhost:5000/x@sha256:zz").is_err());
    }
}
