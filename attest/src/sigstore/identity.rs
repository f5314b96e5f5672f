//! Certificate identity policy ([`Matcher`]) and the identity a verified Fulcio certificate
//! vouches for, as data ([`summary`]) for the `kiln.verify` policy input.

use serde_json::{Map, Value, json};

use super::cert::CertInfo;

/// How a certificate's SAN or OIDC issuer must look.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Exactly this string.
    Exact(String),
    /// A regular expression (Rust `regex` syntax) that must match the **whole** value: kiln
    /// anchors it, so `https://github.com/org/` does not also accept
    /// `https://evil.example/https://github.com/org/...` (cosign's
    /// `--certificate-identity-regexp` is unanchored; write `.*` where a prefix match is
    /// meant).
    Regex {
        /// The expression as the user wrote it.
        pattern: String,
        /// The anchored, compiled expression.
        regex: regex::Regex,
    },
}

impl Matcher {
    /// An anchored regular expression; errors name the pattern. Patterns are bounded (1 KiB
    /// of text, and the `regex` crate's default compiled-size limit).
    pub fn regex(pattern: &str) -> Result<Matcher, String> {
        if pattern.len() > 1024 {
            return Err(format!(
                "regular expression of {} bytes, over the 1024-byte limit",
                pattern.len()
            ));
        }
        let regex = regex::Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("regular expression {pattern:?}: {e}"))?;
        Ok(Matcher::Regex {
            pattern: pattern.to_owned(),
            regex,
        })
    }

    /// Whether `value` satisfies this matcher.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => s == value,
            Matcher::Regex { regex, .. } => regex.is_match(value),
        }
    }
}

/// Displays as the rest of a failure: `is not "x"` or `does not match /re/ as a whole`.
impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Exact(s) => write!(f, "is not {s:?}"),
            Matcher::Regex { pattern, .. } => {
                write!(f, "does not match /{pattern}/ as a whole")
            }
        }
    }
}

/// Names for the Fulcio extensions (OID 1.3.6.1.4.1.57264.1.N, by `N`), as in Fulcio's
/// `docs/oid-info.md`, in snake case. Arcs 1 and 8 are both the OIDC issuer (v1, v2).
const FULCIO_NAMES: &[(u32, &str)] = &[
    (2, "github_workflow_trigger"),
    (3, "github_workflow_sha"),
    (4, "github_workflow_name"),
    (5, "github_workflow_repository"),
    (6, "github_workflow_ref"),
    (9, "build_signer_uri"),
    (10, "build_signer_digest"),
    (11, "runner_environment"),
    (12, "source_repository_uri"),
    (13, "source_repository_digest"),
    (14, "source_repository_ref"),
    (15, "source_repository_identifier"),
    (16, "source_repository_owner_uri"),
    (17, "source_repository_owner_identifier"),
    (18, "build_config_uri"),
    (19, "build_config_digest"),
    (20, "build_trigger"),
    (21, "run_invocation_uri"),
    (22, "source_repository_visibility_at_signing"),
];

/// The identity of a verified certificate, for policy: `san` (the first SAN URI, else
/// email), `san_uris`, `san_emails`, `issuer` (OIDC issuer), and `extensions`: every Fulcio
/// extension by name (unknown arcs as `"1.3.6.1.4.1.57264.1.N"`; values that are not text
/// are left out).
pub fn summary(info: &CertInfo) -> Value {
    let mut extensions = Map::new();
    for ext in &info.fulcio {
        let Some(value) = &ext.value else { continue };
        let name = match ext.arc {
            1 | 8 => continue,
            arc => FULCIO_NAMES.iter().find(|(a, _)| *a == arc).map_or_else(
                || format!("1.3.6.1.4.1.57264.1.{arc}"),
                |(_, n)| (*n).to_owned(),
            ),
        };
        extensions
            .entry(name)
            .or_insert_with(|| Value::String(value.clone()));
    }
    json!({
        "san": info.san_uris.first().or(info.san_emails.first()),
        "san_uris": info.san_uris,
        "san_emails": info.san_emails,
        "issuer": info.oidc_issuer(),
        "extensions": extensions,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sigstore::cert::FulcioExtension;

    #[test]
    fn regex_is_anchored_and_bounded() {
        let m = Matcher::regex("https://github.com/org/.*").unwrap();
        assert!(m.matches("https://github.com/org/repo/.github/workflows/a.yml@refs/heads/main"));
        assert!(!m.matches("https://evil.example/https://github.com/org/x"));
        assert!(
            !Matcher::regex("https://github.com/org/")
                .unwrap()
                .matches("https://github.com/org/x")
        );
        assert!(Matcher::regex("(").unwrap_err().contains("\"(\""));
        assert!(Matcher::regex(&"a".repeat(1025)).is_err());
        assert!(Matcher::Exact("a".into()).matches("a"));
        assert!(!Matcher::Exact("a".into()).matches("ab"));
    }

    #[test]
    fn summary_names_fulcio_extensions() {
        let info = CertInfo {
            not_before: 0,
            not_after: 0,
            subject: Vec::new(),
            issuer: Vec::new(),
            spki: Vec::new(),
            san_uris: vec!["https://github.com/o/r/.github/workflows/w.yml@refs/heads/main".into()],
            san_emails: Vec::new(),
            fulcio: vec![
                FulcioExtension {
                    arc: 8,
                    value: Some("https://token.actions.githubusercontent.com".into()),
                },
                FulcioExtension {
                    arc: 12,
                    value: Some("https://github.com/o/r".into()),
                },
                FulcioExtension {
                    arc: 99,
                    value: Some("x".into()),
                },
                FulcioExtension {
                    arc: 14,
                    value: None,
                },
            ],
            has_sct_list: false,
        };
        let s = summary(&info);
        assert_eq!(s["issuer"], "https://token.actions.githubusercontent.com");
        assert_eq!(s["san"], info.san_uris[0].as_str());
        assert_eq!(
            s["extensions"]["source_repository_uri"],
            "https://github.com/o/r"
        );
        assert_eq!(s["extensions"]["1.3.6.1.4.1.57264.1.99"], "x");
        assert!(s["extensions"].get("source_repository_ref").is_none());
    }
}
