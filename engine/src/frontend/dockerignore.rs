//! `.dockerignore` rules, with the semantics of moby/patternmatcher as BuildKit applies them,
//! and Go's `path/filepath.Match` for COPY wildcards.
//!
//! Reading (moby `ignorefile.ReadAll`): a UTF-8 BOM on the first line is dropped; a line whose
//! *first* byte is `#` is a comment (before trimming, so `  #x` is a pattern); lines are trimmed;
//! blank lines are skipped; a leading `!` marks an exception; the pattern is `filepath.Clean`ed
//! and a leading `/` removed.
//!
//! Matching (`MatchesOrParentMatches`): patterns are evaluated in order; a pattern matches a path
//! if it matches the path itself or any of its parent directories; the last matching pattern
//! decides (an exception re-includes). A pattern is compiled like patternmatcher's regexp:
//! `*` is `[^/]*`, `?` is `[^/]`, `**` is any number of components, `[...]` a class, `\` an
//! escape, and every pattern also matches everything below what it matches.

use thiserror::Error;

/// Errors reading `.dockerignore` patterns or wildcards.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DockerIgnoreError {
    /// A line consisting of `!` alone.
    #[error("illegal exclusion pattern: \"!\" (line {line})")]
    IllegalExclusion {
        /// 1-based line number.
        line: usize,
    },
    /// A pattern `filepath.Match` would reject (unclosed class, bad range, trailing escape).
    #[error("syntax error in pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern as cleaned.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Which `.dockerignore` file applies to a Dockerfile: `<Dockerfile>.dockerignore` (next to
/// the Dockerfile, base name only) takes precedence over the context's `.dockerignore`.
/// Returns the candidate names in order of precedence; the first that exists is used.
pub fn context_file_for(dockerfile_name: &str) -> Vec<String> {
    let base = dockerfile_name
        .rsplit('/')
        .next()
        .unwrap_or(dockerfile_name);
    let mut out = Vec::with_capacity(2);
    if !base.is_empty() {
        let dir = &dockerfile_name[..dockerfile_name.len() - base.len()];
        out.push(format!("{dir}{base}.dockerignore"));
    }
    out.push(".dockerignore".to_owned());
    out
}

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    exclusion: bool,
    cleaned: String,
    kind: Kind,
    toks: Vec<Tok>,
}

/// patternmatcher's fast paths; `Regex` is the general case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `*`: `[^/]*`
    Star,
    /// `?`: `[^/]`
    Any,
    /// `[...]`
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**` not at the end: `(.*/)?`
    DoubleStar,
    /// `**` at the end: `.*`
    DoubleStarEnd,
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore` file.
    pub fn parse(text: &str) -> Result<Self, DockerIgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            if raw.starts_with('#') {
                continue;
            }
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let (exclusion, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if exclusion && body.is_empty() {
                return Err(DockerIgnoreError::IllegalExclusion { line: idx + 1 });
            }
            let mut cleaned = clean(body);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            patterns.push(Pattern::compile(exclusion, cleaned)?);
        }
        Ok(Self { patterns })
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// True when `rel_path` (relative to the context; `/` separated) is excluded.
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        let path = normalize_rel(rel_path);
        if path.is_empty() || path == "." {
            return false;
        }
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => path[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for pat in &self.patterns {
            if pat.exclusion != matched {
                continue;
            }
            let mut hit = pat.matches(&path);
            if !hit {
                for i in 0..parents.len() {
                    if pat.matches(&parents[..=i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !pat.exclusion;
            }
        }
        matched
    }

    /// False only when `rel_dir` is excluded and no exception pattern could re-include
    /// anything below it, so a walker may skip the whole directory.
    pub fn may_contain_included(&self, rel_dir: &str) -> bool {
        if !self.is_excluded(rel_dir) {
            return true;
        }
        let dir = normalize_rel(rel_dir);
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| p.could_match_below(&dir))
    }
}

impl Pattern {
    fn compile(exclusion: bool, cleaned: String) -> Result<Self, DockerIgnoreError> {
        let chars: Vec<char> = cleaned.chars().collect();
        let mut toks = Vec::new();
        let mut kind = Kind::Exact;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' if chars.get(i) == Some(&'*') => {
                    let first = i == 1;
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i >= chars.len() {
                        if kind == Kind::Exact {
                            kind = Kind::Prefix;
                        } else {
                            kind = Kind::Regex;
                        }
                        toks.push(Tok::DoubleStarEnd);
                    } else {
                        kind = Kind::Regex;
                        toks.push(Tok::DoubleStar);
                    }
                    if first {
                        kind = Kind::Suffix;
                    }
                }
                '*' => {
                    kind = Kind::Regex;
                    toks.push(Tok::Star);
                }
                '?' => {
                    kind = Kind::Regex;
                    toks.push(Tok::Any);
                }
                '\\' => match chars.get(i) {
                    Some(&n) => {
                        // An escaped character is literal; the exact-string fast path would
                        // compare the backslash itself, so go through the matcher.
                        kind = Kind::Regex;
                        toks.push(Tok::Lit(n));
                        i += 1;
                    }
                    None => toks.push(Tok::Lit('\\')),
                },
                '[' => {
                    kind = Kind::Regex;
                    let (tok, next) = parse_class(&chars, i, &cleaned)?;
                    toks.push(tok);
                    i = next;
                }
                other => toks.push(Tok::Lit(other)),
            }
        }
        Ok(Self {
            exclusion,
            cleaned,
            kind,
            toks,
        })
    }

    fn matches(&self, path: &str) -> bool {
        match self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || (suffix.starts_with('/') && path == &suffix[1..])
            }
            Kind::Regex => {
                let input: Vec<char> = path.chars().collect();
                match_toks(&self.toks, &input, Mode::DirTail)
            }
        }
    }

    /// Could this pattern match some path strictly below `dir`?
    fn could_match_below(&self, dir: &str) -> bool {
        match self.kind {
            Kind::Suffix => true,
            Kind::Exact => {
                self.cleaned.starts_with(&format!("{dir}/")) || self.matches_dir_or_parent(dir)
            }
            Kind::Prefix => {
                let prefix = &self.cleaned[..self.cleaned.len() - 2];
                let below = format!("{dir}/");
                below.starts_with(prefix) || prefix.starts_with(&below)
            }
            Kind::Regex => {
                let input: Vec<char> = format!("{dir}/").chars().collect();
                match_toks(&self.toks, &input, Mode::Prefix)
            }
        }
    }

    fn matches_dir_or_parent(&self, dir: &str) -> bool {
        let parts: Vec<&str> = dir.split('/').collect();
        (0..parts.len()).any(|i| self.matches(&parts[..=i].join("/")))
    }
}

fn parse_class(
    chars: &[char],
    mut i: usize,
    pattern: &str,
) -> Result<(Tok, usize), DockerIgnoreError> {
    let bad = |reason| DockerIgnoreError::BadPattern {
        pattern: pattern.to_owned(),
        reason,
    };
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let read = |i: &mut usize| -> Result<char, DockerIgnoreError> {
        let c = *chars.get(*i).ok_or(bad("unclosed character class"))?;
        *i += 1;
        if c == '\\' {
            let n = *chars.get(*i).ok_or(bad("trailing escape in class"))?;
            *i += 1;
            return Ok(n);
        }
        Ok(c)
    };
    loop {
        match chars.get(i) {
            None => return Err(bad("unclosed character class")),
            Some(']') if !ranges.is_empty() => return Ok((Tok::Class { negated, ranges }, i + 1)),
            Some(']') => return Err(bad("empty character class")),
            Some(_) => {
                let lo = read(&mut i)?;
                let mut hi = lo;
                if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
                    i += 1;
                    hi = read(&mut i)?;
                    if hi < lo {
                        return Err(bad("invalid range in character class"));
                    }
                }
                ranges.push((lo, hi));
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The whole input, optionally followed by `/...` (patternmatcher's `(/.*)?$`).
    DirTail,
    /// The whole input exactly (Go `filepath.Match`).
    Whole,
    /// Some extension of the input (for "could match below").
    Prefix,
}

fn class_has(negated: bool, ranges: &[(char, char)], c: char) -> bool {
    let inside = ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi);
    inside != negated
}

/// Backtracking matcher over tokens; patterns are short, so the cost is bounded in practice.
fn match_toks(toks: &[Tok], input: &[char], mode: Mode) -> bool {
    if mode == Mode::Prefix && input.is_empty() {
        return true;
    }
    let Some((tok, rest)) = toks.split_first() else {
        return match mode {
            Mode::Whole => input.is_empty(),
            Mode::DirTail | Mode::Prefix => input.is_empty() || input[0] == '/',
        };
    };
    match tok {
        Tok::Lit(c) => input.first() == Some(c) && match_toks(rest, &input[1..], mode),
        Tok::Any => input.first().is_some_and(|c| *c != '/') && match_toks(rest, &input[1..], mode),
        Tok::Class { negated, ranges } => {
            input
                .first()
                .is_some_and(|c| *c != '/' && class_has(*negated, ranges, *c))
                && match_toks(rest, &input[1..], mode)
        }
        Tok::Star => {
            for n in 0..=input.len() {
                if match_toks(rest, &input[n..], mode) {
                    return true;
                }
                if n < input.len() && input[n] == '/' {
                    break;
                }
            }
            false
        }
        Tok::DoubleStar => {
            if match_toks(rest, input, mode) {
                return true;
            }
            (0..input.len())
                .filter(|n| input[*n] == '/')
                .any(|n| match_toks(rest, &input[n + 1..], mode))
        }
        Tok::DoubleStarEnd => true,
    }
}

/// Go `path/filepath.Match` on one name (no `/` inside `name` is expected): `*`, `?`,
/// `[...]` with `^` negation and ranges, `\` escapes.
pub fn glob_match(pattern: &str, name: &str) -> Result<bool, DockerIgnoreError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => toks.push(Tok::Star),
            '?' => toks.push(Tok::Any),
            '\\' => {
                let n = *chars.get(i).ok_or(DockerIgnoreError::BadPattern {
                    pattern: pattern.to_owned(),
                    reason: "trailing escape",
                })?;
                toks.push(Tok::Lit(n));
                i += 1;
            }
            '[' => {
                let (tok, next) = parse_class(&chars, i, pattern)?;
                toks.push(tok);
                i = next;
            }
            other => toks.push(Tok::Lit(other)),
        }
    }
    let input: Vec<char> = name.chars().collect();
    Ok(match_toks(&toks, &input, Mode::Whole))
}

/// True when `s` has an unescaped `*`, `?` or `[` (BuildKit's `containsWildcards`).
pub fn contains_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Go `path.Clean`: the shortest equivalent path, lexically.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

fn normalize_rel(path: &str) -> String {
    let c = clean(path);
    let c = c.trim_start_matches('/');
    if c == "." {
        String::new()
    } else {
        c.to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn di(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn comments_blank_lines_and_slash_prefixes() {
        let d = di("# comment\n\n/foo\n./bar/\n  baz  \n  #notacomment\n");
        assert!(d.is_excluded("foo"));
        assert!(d.is_excluded("bar"));
        assert!(d.is_excluded("bar/x"));
        assert!(d.is_excluded("baz"));
        assert!(d.is_excluded("#notacomment"));
        assert!(!d.is_excluded("# comment"));
        assert!(!d.is_excluded("qux"));
    }

    #[test]
    fn a_directory_pattern_excludes_everything_below() {
        let d = di("docs");
        assert!(d.is_excluded("docs/a/b/c.md"));
        assert!(!d.is_excluded("docsx"));
        assert!(!d.may_contain_included("docs"));
    }

    #[test]
    fn exceptions_reinclude_and_later_patterns_win() {
        let d = di("*.md\n!README.md\nREADME-secret.md");
        assert!(d.is_excluded("a.md"));
        assert!(!d.is_excluded("README.md"));
        assert!(d.is_excluded("README-secret.md"));
        let d = di("!README.md\n*.md");
        assert!(d.is_excluded("README.md"));
    }

    #[test]
    fn excluded_dir_with_exception_inside_is_walked() {
        let d = di("foo\n!foo/bar");
        assert!(d.is_excluded("foo"));
        assert!(!d.is_excluded("foo/bar"));
        assert!(!d.is_excluded("foo/bar/baz"));
        assert!(d.is_excluded("foo/other"));
        assert!(d.may_contain_included("foo"));
        assert!(!d.may_contain_included("foo/other"));
        let d = di("*\n!*/keep");
        assert!(d.may_contain_included("a"));
        assert!(!d.is_excluded("a/keep"));
    }

    #[test]
    fn pattern_cases_from_patternmatcher() {
        // (pattern, path, matches) re-derived from moby/patternmatcher's table.
        let cases: &[(&str, &str, bool)] = &[
            ("**", "file", true),
            ("**", "file/", true),
            ("**/", "file", true),
            ("**/", "file/", true),
            ("**", "dir/file", true),
            ("**/", "dir/file", true),
            ("**", "dir/file/", true),
            ("**/", "dir/file/", true),
            ("**/**", "dir/file", true),
            ("**/**", "dir/file/", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/file/", true),
            ("dir/**", "dir/dir2/file", true),
            ("dir/**", "dir/dir2/file/", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/*", "dir/dir2/file/", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file/", true),
            ("**file", "file", true),
            ("**file", "dir/file", true),
            ("**/file", "dir/file", true),
            ("**file", "dir/dir/file", true),
            ("**/file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/file*txt", "dir/dir/file.txt", true),
            ("**/file*.txt", "dir/dir/file.txt", true),
            ("**/file*.txt*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("**/**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcdef", false),
            ("abc.def", "abc.def", true),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abcdef", false),
            ("a\\\\", "a\\", true),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def", true),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a(b)c/def", "a(b)c/xyz", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
        ];
        for (pat, path, want) in cases {
            let d = di(pat);
            let path = path.trim_end_matches('/');
            assert_eq!(d.is_excluded(path), *want, "pattern {pat:?} path {path:?}");
        }
    }

    #[test]
    fn bad_patterns_and_lone_bang_are_errors() {
        assert!(matches!(
            DockerIgnore::parse("ok\n!\n"),
            Err(DockerIgnoreError::IllegalExclusion { line: 2 })
        ));
        assert!(matches!(
            DockerIgnore::parse("[abc"),
            Err(DockerIgnoreError::BadPattern { .. })
        ));
    }

    #[test]
    fn go_filepath_match() {
        assert!(glob_match("*.txt", "a.txt").unwrap());
        assert!(glob_match("*.txt", ".txt").unwrap());
        assert!(!glob_match("*.txt", "a.txt2").unwrap());
        assert!(glob_match("a?c", "abc").unwrap());
        assert!(glob_match("[a-c]x", "bx").unwrap());
        assert!(glob_match("[^a-c]x", "dx").unwrap());
        assert!(glob_match("\\*", "*").unwrap());
        assert!(!glob_match("\\*", "a").unwrap());
        assert!(glob_match("a\\", "a").is_err());
        assert!(contains_wildcards("a/*.go"));
        assert!(!contains_wildcards("a/\\*.go"));
    }

    #[test]
    fn clean_is_go_path_clean() {
        assert_eq!(clean(""), ".");
        assert_eq!(clean("a//b/./c/.."), "a/b");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean("../a"), "../a");
        assert_eq!(clean("a/"), "a");
    }

    #[test]
    fn dockerfile_specific_ignore_file_takes_precedence() {
        assert_eq!(
            context_file_for("Dockerfile"),
            vec![
                "Dockerfile.dockerignore".to_owned(),
                ".dockerignore".to_owned()
            ]
        );
        assert_eq!(
            context_file_for("build/app.Dockerfile"),
            vec![
                "build/app.Dockerfile.dockerignore".to_owned(),
                ".dockerignore".to_owned()
            ]
        );
    }
}
