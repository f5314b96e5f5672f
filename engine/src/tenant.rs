//! Tenants: every build runs for one. Embedded `kiln build` has a single local tenant; the
//! daemon (later) maps client identities to tenants. The tenant is part of every cache key, so
//! one tenant's cached results are never another's cache hits.

use std::fmt;

/// A tenant name: 1–64 characters of `[a-z0-9._-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(String);

/// A malformed tenant name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid tenant name {0:?}: use 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
)]
pub struct TenantError(String);

impl TenantId {
    /// The single tenant of embedded mode.
    pub fn local() -> Self {
        Self("local".to_owned())
    }

    /// Parses a tenant name.
    pub fn new(name: &str) -> Result<Self, TenantError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(TenantError(name.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_validated() {
        assert!(TenantId::new("team-a.prod_1").is_ok());
        for bad in ["", "-a", "A", "a/b", "a b", &"x".repeat(65)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
    }
}
