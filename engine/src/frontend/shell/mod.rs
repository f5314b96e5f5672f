//! Shell-style word expansion with BuildKit's semantics (`frontend/dockerfile/shell/lex.go`).
//!
//! [`Lexer::process_word`] expands one word (quotes removed, variables substituted, escapes
//! resolved); [`Lexer::process_words`] additionally splits the result into words the way a
//! shell would split unquoted expansions. Supported forms: `$VAR`, `${VAR}`, `${VAR:-x}`,
//! `${VAR-x}`, `${VAR:+x}`, `${VAR+x}`, `${VAR:?msg}`, `${VAR?msg}`, `${VAR#pat}`,
//! `${VAR##pat}`, `${VAR%pat}`, `${VAR%%pat}`, `${VAR/pat/repl}` and `${VAR//pat/repl}`.
//! Positional and special parameters (`$1`, `$@`, `$#`, ...) are never set.

mod pattern;

use std::collections::BTreeMap;

use pattern::Pattern;

/// A source of variable values for expansion.
pub trait Env {
    /// The value of `name`, or `None` when it is not set (set-but-empty is `Some("")`).
    fn get(&self, name: &str) -> Option<String>;
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl Env for [(String, String)] {
    /// The last pair with that name wins.
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

impl Env for Vec<(String, String)> {
    /// The last pair with that name wins.
    fn get(&self, name: &str) -> Option<String> {
        Env::get(self.as_slice(), name)
    }
}

/// An environment with no variables set.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyEnv;

impl Env for EmptyEnv {
    fn get(&self, _name: &str) -> Option<String> {
        None
    }
}

/// Why a word could not be expanded; messages follow BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShellError {
    /// A `'` without its closing quote.
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    /// A `"` without its closing quote.
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    /// The word ended while looking for `stop` (e.g. the `/` of `${a/b/c}`).
    #[error("unexpected end of statement while looking for matching {stop}")]
    UnexpectedEnd {
        /// The character that was expected.
        stop: char,
    },
    /// `${` without its `}`.
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// `${a/b` without the second `/`.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// `${}`, `${:x}`, `${{x}` and the like.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// A modifier BuildKit does not support, such as `${a:=b}`.
    #[error("unsupported modifier ({modifier}) in substitution")]
    UnsupportedModifier {
        /// The modifier as written.
        modifier: String,
    },
    /// `${name?message}` / `${name:?message}` with the variable unset (or empty).
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The message given in the word, or BuildKit's default.
        message: String,
    },
    /// A pattern in `${a#pat}` or `${a/pat/r}` with an invalid escape.
    #[error("invalid pattern ({pattern}) in substitution: invalid escape '\\{escaped}'")]
    InvalidPattern {
        /// The pattern as written.
        pattern: String,
        /// The escaped character that is not allowed.
        escaped: char,
    },
}

/// BuildKit's shell lexer: expands words with a configurable escape character.
#[derive(Debug, Clone)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
}

impl Lexer {
    /// A lexer using `escape` (`\` or `` ` ``) as the escape character.
    pub fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// Keep quote characters in the output (used to detect quoted heredoc delimiters).
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape characters in the output.
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset variables as written instead of expanding them to "".
    pub fn skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Treat quotes as ordinary characters (only `$` and escapes are special).
    pub fn skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// Expands `word` as one word: quotes removed, variables substituted.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ShellError> {
        let mut sw = ShellWord::new(self, word, env);
        let (result, _) = sw.process_stop_on(None, self.raw_escapes)?;
        Ok(result)
    }

    /// Expands `word` and splits it into words; quoted parts are never split.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        let mut sw = ShellWord::new(self, word, env);
        let (_, words) = sw.process_stop_on(None, self.raw_escapes)?;
        Ok(words)
    }
}

/// Accumulates split words; quoted text is added raw so it is never split.
#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct ShellWord<'a> {
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn Env,
    opts: &'a Lexer,
}

impl<'a> ShellWord<'a> {
    fn new(opts: &'a Lexer, word: &str, env: &'a dyn Env) -> Self {
        Self {
            chars: word.chars().collect(),
            pos: 0,
            env,
            opts,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Processes until `stop` (consumed) or the end of input when `stop` is `None`.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            let special = match ch {
                '$' => true,
                '\'' | '"' => !self.opts.skip_process_quotes,
                _ => false,
            };
            if special {
                let tmp = match ch {
                    '\'' => self.process_single_quote()?,
                    '"' => self.process_double_quote()?,
                    _ => self.process_dollar()?,
                };
                result.push_str(&tmp);
                if ch == '$' {
                    words.add_string(&tmp);
                } else {
                    words.add_raw_string(&tmp);
                }
                continue;
            }
            self.pos += 1;
            if ch == self.opts.escape {
                if raw_escapes {
                    words.add_raw_char(ch);
                    result.push(ch);
                }
                match self.next() {
                    None => break,
                    Some(esc) => {
                        words.add_raw_char(esc);
                        result.push(esc);
                    }
                }
            } else {
                words.add_char(ch);
                result.push(ch);
            }
        }
        if let Some(stop) = stop {
            return Err(ShellError::UnexpectedEnd { stop });
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Result<String, ShellError> {
        let mut result = String::new();
        let open = self.next();
        if self.opts.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(ShellError::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.opts.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ShellError> {
        let mut result = String::new();
        let open = self.next();
        if self.opts.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(ShellError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.pos += 1;
                    if self.opts.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    result.push_str(&v);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.opts.escape {
                        if self.opts.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // An escape at the very end is dropped.
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.opts.escape => {
                                self.pos += 1;
                                ch = n;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.env.get(name)
    }

    fn process_dollar(&mut self) -> Result<String, ShellError> {
        self.pos += 1; // '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.opts.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1; // '{'
        match self.peek() {
            None => return Err(ShellError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ShellError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        let first = self.next();
        match first {
            Some('}') => Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.opts.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(c @ (':' | '+' | '-' | '?' | '#' | '%')) => {
                let mut modifier = c.to_string();
                let mut op = Some(c);
                let null_is_unset = c == ':';
                if null_is_unset {
                    op = self.next();
                    modifier.extend(op);
                }
                let raw = matches!(op, Some('#' | '%'));
                if null_is_unset && raw {
                    return Err(ShellError::UnsupportedModifier { modifier });
                }
                let word = match self.process_stop_on(Some('}'), raw) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        return Err(if self.peek().is_none() {
                            ShellError::MissingBrace
                        } else {
                            e
                        });
                    }
                };
                let value = self.lookup(&name);
                if self.opts.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let unset_or_null = match &value {
                    None => true,
                    Some(v) => null_is_unset && v.is_empty(),
                };
                match op {
                    Some('-') => Ok(if unset_or_null {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    Some('+') => Ok(if unset_or_null { String::new() } else { word }),
                    Some('?') => match value {
                        None => Err(ShellError::Required {
                            name,
                            message: non_empty_or(word, "is not allowed to be unset"),
                        }),
                        Some(v) if null_is_unset && v.is_empty() => Err(ShellError::Required {
                            name,
                            message: non_empty_or(word, "is not allowed to be empty"),
                        }),
                        Some(v) => Ok(v),
                    },
                    Some(op @ ('#' | '%')) => {
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        let pat = Pattern::parse(&pattern)?;
                        let value = value.unwrap_or_default();
                        Ok(if op == '#' {
                            pat.trim_prefix(&value, greedy)
                        } else {
                            pat.trim_suffix(&value, greedy)
                        })
                    }
                    _ => Err(ShellError::UnsupportedModifier { modifier }),
                }
            }
            Some('/') => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.pos += 1;
                }
                let pattern = match self.process_stop_on(Some('/'), true) {
                    Ok((p, _)) => p,
                    Err(e) => {
                        return Err(if self.peek().is_none() {
                            ShellError::MissingSlash
                        } else {
                            e
                        });
                    }
                };
                let replacement = match self.process_stop_on(Some('}'), true) {
                    Ok((r, _)) => r,
                    Err(e) => {
                        return Err(if self.peek().is_none() {
                            ShellError::MissingBrace
                        } else {
                            e
                        });
                    }
                };
                let Some(value) = self.lookup(&name) else {
                    if self.opts.skip_unset_env {
                        return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                    }
                    return Ok(String::new());
                };
                let pat = Pattern::parse(&pattern)?;
                Ok(pat.replace(&value, &replacement, replace_all))
            }
            other => Err(ShellError::UnsupportedModifier {
                modifier: other.map(String::from).unwrap_or_default(),
            }),
        }
    }

    /// Reads a variable name: letters, digits and `_`; a run of digits (positional
    /// parameter) or one special parameter character.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }
}

fn non_empty_or(word: String, default: &str) -> String {
    if word.is_empty() {
        default.to_string()
    } else {
        word
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("A", "foo/bar/baz"), ("E", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn w(s: &str) -> Result<String, ShellError> {
        Lexer::new('\\').process_word(s, &env())
    }

    #[test]
    fn pattern_trims_like_bash() {
        assert_eq!(w("${A#*/}").unwrap(), "bar/baz");
        assert_eq!(w("${A##*/}").unwrap(), "baz");
        assert_eq!(w("${A%/*}").unwrap(), "foo/bar");
        assert_eq!(w("${A%%/*}").unwrap(), "foo");
        assert_eq!(w("${A#x}").unwrap(), "foo/bar/baz");
        assert_eq!(w("${A%?az}").unwrap(), "foo/bar/");
    }

    #[test]
    fn pattern_replaces_first_or_all() {
        assert_eq!(w("${A/o/0}").unwrap(), "f0o/bar/baz");
        assert_eq!(w("${A//o/0}").unwrap(), "f00/bar/baz");
        assert_eq!(w("${A/b*/X}").unwrap(), "foo/X");
        // As in BuildKit, only `\*`, `\?` and `\\` are valid escapes in a pattern.
        assert!(matches!(
            w("${A/\\//-}"),
            Err(ShellError::InvalidPattern { .. })
        ));
        assert_eq!(w("${A//a/}").unwrap(), "foo/br/bz");
        assert_eq!(w("${NOPE/a/b}").unwrap(), "");
    }

    #[test]
    fn required_variables_fail_with_message() {
        assert_eq!(w("${NOPE?custom}").unwrap_err().to_string(), "NOPE: custom");
        assert_eq!(
            w("${E:?}").unwrap_err().to_string(),
            "E: is not allowed to be empty"
        );
        assert!(matches!(
            w("${A:#x}"),
            Err(ShellError::UnsupportedModifier { .. })
        ));
    }

    #[test]
    fn backtick_escape_and_skip_unset() {
        let l = Lexer::new('`');
        assert_eq!(l.process_word("a`$A", &env()).unwrap(), "a$A");
        assert_eq!(l.process_word("a\\b", &env()).unwrap(), "a\\b");
        let keep = Lexer::new('\\').skip_unset_env(true);
        assert_eq!(
            keep.process_word("$X ${Y} ${Z:-d}", &env()).unwrap(),
            "$X ${Y} ${Z:-d}"
        );
    }

    #[test]
    fn vec_env_last_wins() {
        let v = vec![
            ("K".to_string(), "1".to_string()),
            ("K".to_string(), "2".to_string()),
        ];
        assert_eq!(Lexer::new('\\').process_word("$K", &v).unwrap(), "2");
    }
}
