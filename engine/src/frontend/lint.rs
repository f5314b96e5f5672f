//! Plan-time checks that warn (never fail), as BuildKit's linter does. For now one rule:
//! `SecretsUsedInArgOrEnv`.

use crate::frontend::instructions::{Dockerfile, Instruction};

/// The words that make an ARG or ENV name look like a secret (BuildKit's deny tokens).
const SECRET_WORDS: &[&str] = &[
    "apikey",
    "auth",
    "credential",
    "credentials",
    "key",
    "password",
    "pword",
    "passwd",
    "secret",
    "token",
];

/// Words that make a name harmless even if it has a secret word (`PUBLIC_KEY`).
const ALLOWED_WORDS: &[&str] = &["public"];

/// BuildKit's rule: a name is secret-like when one of its `_`-separated words is, ignoring
/// case, a secret word, and none is an allowed word (`(?i)(?:_|^)(?:token|…)(?:_|$)`).
pub fn is_secret_name(name: &str) -> bool {
    let has = |list: &[&str]| {
        name.split('_')
            .any(|w| list.iter().any(|s| w.eq_ignore_ascii_case(s)))
    };
    !has(ALLOWED_WORDS) && has(SECRET_WORDS)
}

/// `SecretsUsedInArgOrEnv` for every ARG and ENV of every stage, in line order, worded as
/// BuildKit prints it.
pub fn secrets_used_in_arg_or_env(df: &Dockerfile) -> Vec<String> {
    let mut out = Vec::new();
    for stage in &df.stages {
        for ins in &stage.instructions {
            let (kind, names): (&str, Vec<&str>) = match &ins.inner {
                Instruction::Arg(decls) => ("ARG", decls.iter().map(|a| a.name.as_str()).collect()),
                Instruction::Env(pairs) => ("ENV", pairs.iter().map(|(k, _)| k.as_str()).collect()),
                _ => continue,
            };
            for name in names.into_iter().filter(|n| is_secret_name(n)) {
                out.push(format!(
                    "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data ({kind} {name:?}) (line {})",
                    ins.line
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_made_of_secret_words_are_flagged() {
        for name in [
            "API_TOKEN",
            "token",
            "DB_PASSWORD",
            "aws_secret_access_key",
            "GITHUB_AUTH",
            "MY_APIKEY",
            "Credentials",
            "SSH_KEY_PATH",
        ] {
            assert!(is_secret_name(name), "{name} should be flagged");
        }
    }

    #[test]
    fn other_names_and_the_allow_list_are_not() {
        for name in [
            "PUBLIC_KEY",
            "public_token",
            "TOKENIZER",
            "KEYBOARD",
            "AUTHOR",
            "PASSWORDLESS",
            "VERSION",
            "PATH",
            "monkey",
        ] {
            assert!(!is_secret_name(name), "{name} should not be flagged");
        }
    }
}
