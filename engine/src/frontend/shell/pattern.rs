//! Shell patterns for `${VAR#pat}`, `${VAR%pat}` and `${VAR/pat/repl}`.

use super::ShellError;

/// A shell pattern as BuildKit supports it: `*`, `?`, literals and the escapes `\*`, `\?`,
/// `\\` (`\}` stands for `}`). Bracket expressions are literal, as in BuildKit.
#[derive(Debug)]
pub(super) struct Pattern(Vec<Tok>);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Star,
    Any,
    Lit(char),
}

impl Pattern {
    pub(super) fn parse(src: &str) -> Result<Self, ShellError> {
        let mut toks = Vec::new();
        let mut it = src.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '*' => toks.push(Tok::Star),
                '?' => toks.push(Tok::Any),
                '\\' => {
                    if it.peek() == Some(&'}') {
                        continue;
                    }
                    match it.next() {
                        Some(e @ ('*' | '?' | '\\')) => toks.push(Tok::Lit(e)),
                        other => {
                            return Err(ShellError::InvalidPattern {
                                pattern: src.to_string(),
                                escaped: other.unwrap_or(' '),
                            });
                        }
                    }
                }
                c => toks.push(Tok::Lit(c)),
            }
        }
        Ok(Self(toks))
    }

    /// Whether the whole of `s` matches the pattern.
    fn matches(&self, s: &[char]) -> bool {
        fn go(p: &[Tok], s: &[char]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some((Tok::Star, rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
                Some((Tok::Any, rest)) => !s.is_empty() && go(rest, &s[1..]),
                Some((Tok::Lit(c), rest)) => s.first() == Some(c) && go(rest, &s[1..]),
            }
        }
        go(&self.0, s)
    }

    pub(super) fn trim_prefix(&self, value: &str, greedy: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut ends: Box<dyn Iterator<Item = usize>> = if greedy {
            Box::new((0..=chars.len()).rev())
        } else {
            Box::new(0..=chars.len())
        };
        match ends.find(|&e| self.matches(&chars[..e])) {
            Some(e) => chars[e..].iter().collect(),
            None => value.to_string(),
        }
    }

    pub(super) fn trim_suffix(&self, value: &str, greedy: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut starts: Box<dyn Iterator<Item = usize>> = if greedy {
            Box::new(0..=chars.len())
        } else {
            Box::new((0..=chars.len()).rev())
        };
        match starts.find(|&s| self.matches(&chars[s..])) {
            Some(s) => chars[..s].iter().collect(),
            None => value.to_string(),
        }
    }

    /// Leftmost-longest match starting at or after `from`.
    fn find(&self, chars: &[char], from: usize) -> Option<(usize, usize)> {
        (from..=chars.len()).find_map(|start| {
            (start..=chars.len())
                .rev()
                .find(|&end| self.matches(&chars[start..end]))
                .map(|end| (start, end))
        })
    }

    pub(super) fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut pos = 0;
        let mut last_match_end: Option<usize> = None;
        while let Some((s, e)) = self.find(&chars, pos) {
            // An empty match right after the previous match is skipped (Go's ReplaceAll).
            if s == e && last_match_end == Some(s) {
                if s >= chars.len() {
                    break;
                }
                out.push(chars[s]);
                pos = s + 1;
                continue;
            }
            out.extend(&chars[pos..s]);
            out.push_str(replacement);
            last_match_end = Some(e);
            if !all {
                pos = e;
                break;
            }
            if s == e {
                if e >= chars.len() {
                    pos = e;
                    break;
                }
                out.push(chars[e]);
                pos = e + 1;
            } else {
                pos = e;
            }
        }
        out.extend(chars.get(pos..).unwrap_or_default());
        out
    }
}
