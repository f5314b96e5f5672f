//! The Dockerfile parser: source text → [`Ast`] with line and column numbers, compatible
//! with BuildKit's `frontend/dockerfile/parser` (directives, comments, line continuations,
//! heredocs, JSON forms and each instruction's argument rules).
//!
//! Any instruction word is accepted here; unknown instructions are rejected by
//! [`super::instructions`].

mod dump;
mod heredoc;
mod line_parsers;

pub use dump::{dump, dump_node, go_quote};
pub use heredoc::{chomp_heredoc_content, parse_heredoc};

use crate::frontend::shell::ShellError;

/// The default escape character.
pub const DEFAULT_ESCAPE: char = '\\';

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    /// The parser directives found at the top of the file.
    pub directives: Directives,
    /// One node per instruction, in order.
    pub children: Vec<Node>,
}

/// Parser directives (`# syntax=`, `# escape=`, `# check=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// The escape and line-continuation character: `\` (default) or `` ` ``.
    pub escape: char,
    /// The `syntax` directive's value.
    pub syntax: Option<String>,
    /// The `check` directive's value.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            escape: DEFAULT_ESCAPE,
            syntax: None,
            check: None,
        }
    }
}

/// One instruction as BuildKit's parser sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The instruction word, lower-cased (`run`, `copy`, or any unknown word).
    pub value: String,
    /// The logical line (continuations joined, comments dropped) the node was parsed from.
    pub original: String,
    /// The `--flag[=value]` words before the arguments, quotes processed.
    pub flags: Vec<String>,
    /// 1-based column of each flag in the start line (the instruction's column when the
    /// flag sits on a continuation line).
    pub flag_columns: Vec<usize>,
    /// The arguments, processed per instruction as BuildKit does (BuildKit's `Next` chain).
    pub args: Vec<String>,
    /// The arguments were written as a JSON array.
    pub json: bool,
    /// Heredoc bodies that follow the instruction, in the order they were named.
    pub heredocs: Vec<Heredoc>,
    /// The nested instruction of `ONBUILD`.
    pub sub: Option<Box<Node>>,
    /// 1-based line the instruction starts on.
    pub start_line: usize,
    /// 1-based line the instruction (including heredoc bodies) ends on.
    pub end_line: usize,
    /// 1-based column of the instruction word.
    pub column: usize,
}

/// A heredoc attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The body, line endings included, without the terminator line. Leading tabs are kept
    /// even when `chomp` is set (see [`chomp_heredoc_content`]).
    pub content: String,
    /// Variables in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are removed from the body and the terminator.
    pub chomp: bool,
}

/// Why a Dockerfile could not be parsed, with a message in BuildKit's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// A parser directive appears twice.
    #[error("only one {name} parser directive can be used")]
    DuplicateDirective {
        /// The directive (lower-cased).
        name: String,
    },
    /// `# escape=` with something other than `\` or `` ` ``.
    #[error("invalid escape token '{token}' does not match ` or \\")]
    InvalidEscape {
        /// The value given.
        token: String,
    },
    /// No instruction in the file.
    #[error("file with no instructions")]
    NoInstructions,
    /// `ENV name` / `LABEL name` without a value.
    #[error("{instruction} must have two arguments")]
    TwoArgumentsRequired {
        /// `ENV` or `LABEL`.
        instruction: &'static str,
    },
    /// A word without `=` in the `name=value` form.
    #[error(
        "Syntax error - can't find = in {}. Must be of the form: name=value",
        go_quote(word)
    )]
    MissingEquals {
        /// The offending word.
        word: String,
    },
    /// A JSON array with elements that are not strings.
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    JsonNotStrings,
    /// A heredoc body without its terminator line.
    #[error("unterminated heredoc")]
    UnterminatedHeredoc,
    /// A heredoc delimiter that cannot be lexed.
    #[error("invalid heredoc delimiter {word}: {source}")]
    HeredocName {
        /// The delimiter as written.
        word: String,
        /// The lexer's error.
        source: ShellError,
    },
    /// A physical line longer than BuildKit's scanner allows.
    #[error("dockerfile line greater than max allowed size of {max}")]
    LineTooLong {
        /// The limit in bytes.
        max: usize,
    },
    /// The heredoc delimiter lexes differently with and without quotes.
    #[error("internal lexing of heredoc produced inconsistent results: {word}")]
    HeredocInconsistent {
        /// The delimiter as written.
        word: String,
    },
}

/// A parse error at a position; `Display` gives `line L:C: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}:{column}: {message}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The rendered message (`kind.to_string()`).
    pub message: String,
    /// What went wrong.
    pub kind: ParseErrorKind,
}

impl ParseError {
    fn new(line: usize, column: usize, kind: ParseErrorKind) -> Self {
        Self {
            line: line.max(1),
            column: column.max(1),
            message: kind.to_string(),
            kind,
        }
    }
}

/// Tracks parser directives: only at the top, each at most once.
struct DirectiveState {
    done: bool,
    seen: Vec<String>,
    directives: Directives,
}

impl DirectiveState {
    /// Looks at a line (leading whitespace already removed) for `#name=value`.
    fn check_line(&mut self, line: &str) -> Result<(), ParseErrorKind> {
        if self.done {
            return Ok(());
        }
        let Some((name, value)) = directive_of(line) else {
            self.done = true;
            return Ok(());
        };
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(());
        }
        if self.seen.contains(&name) {
            return Err(ParseErrorKind::DuplicateDirective { name });
        }
        self.seen.push(name.clone());
        match name.as_str() {
            "escape" => match value {
                "\\" => self.directives.escape = '\\',
                "`" => self.directives.escape = '`',
                _ => {
                    return Err(ParseErrorKind::InvalidEscape {
                        token: value.to_string(),
                    });
                }
            },
            "syntax" => self.directives.syntax = Some(value.to_string()),
            _ => self.directives.check = Some(value.to_string()),
        }
        Ok(())
    }
}

/// Go's regexp `\s` class.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{0c}' | '\r' | ' ')
}

/// Matches `#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` as BuildKit does.
fn directive_of(line: &str) -> Option<(&str, &str)> {
    let rest = line
        .strip_prefix('#')?
        .trim_start_matches(char::is_whitespace);
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let after = rest.trim_start_matches(is_re_space).strip_prefix('=')?;
    let value = after.trim_matches(is_re_space);
    if !value.is_empty() {
        return Some((name, value));
    }
    // `.+?` takes one character back from `\s*` when only spaces follow the `=`.
    let last = after.char_indices().last()?;
    Some((name, &after[last.0..]))
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(char::is_whitespace)
        .starts_with('#')
}

/// Removes a trailing escape character (and the blanks after it) that continues the line.
/// An escape preceded by another escape does not continue the line.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (line, true);
    };
    if before.ends_with(escape) {
        return (line, true);
    }
    (before, false)
}

/// The longest physical line BuildKit's scanner accepts (`bufio.MaxScanTokenSize - 1`).
pub const MAX_LINE_BYTES: usize = 65535;

/// Lines with their terminators, like BuildKit's `scanLines`.
struct Lines<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        let end = self.rest.find('\n').map_or(self.rest.len(), |i| i + 1);
        let (line, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(line)
    }
}

/// Parses a Dockerfile.
pub fn parse(src: &str) -> Result<Ast, ParseError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    // BuildKit's scanner refuses over-long lines; checking first bounds all later work.
    if let Some(n) = (Lines { rest: src }).position(|l| trim_newline(l).len() > MAX_LINE_BYTES) {
        return Err(ParseError::new(
            n + 1,
            1,
            ParseErrorKind::LineTooLong {
                max: MAX_LINE_BYTES,
            },
        ));
    }
    let mut lines = Lines { rest: src };
    let mut state = DirectiveState {
        done: false,
        seen: Vec::new(),
        directives: Directives::default(),
    };
    let mut children = Vec::new();
    let mut current_line = 0usize;

    while let Some(raw) = lines.next() {
        let untrimmed = trim_newline(raw);
        let token = untrimmed.trim_start_matches(char::is_whitespace);
        let column = untrimmed[..untrimmed.len() - token.len()].chars().count() + 1;
        state
            .check_line(token)
            .map_err(|k| ParseError::new(current_line + 1, column, k))?;
        let token = if is_comment(token) { "" } else { token };
        current_line += 1;
        let start_line = current_line;
        let escape = state.directives.escape;
        let (first, mut end_of_line) = trim_continuation(token, escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let first_len = first.len();
        let mut line = first.to_string();
        while !end_of_line {
            let Some(raw) = lines.next() else { break };
            let cont = trim_newline(raw);
            state
                .check_line(cont)
                .map_err(|k| ParseError::new(current_line + 1, 1, k))?;
            current_line += 1;
            if is_comment(cont) || cont.trim_start_matches(char::is_whitespace).is_empty() {
                continue;
            }
            let (part, eol) = trim_continuation(cont, escape);
            end_of_line = eol;
            line.push_str(part);
        }

        let at = |kind| ParseError::new(start_line, column, kind);
        let mut node = new_node_from_line(&line, escape).map_err(at)?;
        node.column = column;
        node.flag_columns = node
            .flag_columns
            .iter()
            .map(|&off| {
                if off < first_len {
                    column + line[..off].chars().count()
                } else {
                    column
                }
            })
            .collect();

        if can_contain_heredoc(&node) && line.contains("<<") {
            let docs = heredoc::heredocs_from_line(&line).map_err(at)?;
            for mut doc in docs {
                let mut terminated = false;
                for raw in lines.by_ref() {
                    current_line += 1;
                    let mut candidate = trim_newline(raw);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(raw);
                }
                if !terminated {
                    return Err(ParseError::new(
                        start_line,
                        column,
                        ParseErrorKind::UnterminatedHeredoc,
                    ));
                }
                node.heredocs.push(doc);
            }
        }
        node.start_line = start_line;
        node.end_line = current_line;
        children.push(node);
    }

    if children.is_empty() {
        return Err(ParseError::new(
            current_line,
            1,
            ParseErrorKind::NoInstructions,
        ));
    }
    Ok(Ast {
        directives: state.directives,
        children,
    })
}

/// Builds the node for one logical line; `flag_columns` holds byte offsets into `line`
/// until [`parse`] converts them.
fn new_node_from_line(line: &str, escape: char) -> Result<Node, ParseErrorKind> {
    let split = line_parsers::split_command(line);
    let value = split.cmd.to_lowercase();
    let parsed = line_parsers::parse_args(&value, &split.args, escape)?;
    let sub = match parsed.sub_line {
        Some(sub_line) => Some(Box::new(new_node_from_line(&sub_line, escape)?)),
        None => None,
    };
    Ok(Node {
        value,
        original: line.to_string(),
        flag_columns: split.flags.iter().map(|f| f.offset).collect(),
        flags: split.flags.into_iter().map(|f| f.text).collect(),
        args: parsed.args,
        json: parsed.json,
        heredocs: Vec::new(),
        sub,
        start_line: 0,
        end_line: 0,
        column: 1,
    })
}

/// RUN, COPY and ADD (also as ONBUILD triggers) in shell form may name heredocs.
fn can_contain_heredoc(node: &Node) -> bool {
    let target = match (&node.value[..], &node.sub) {
        ("onbuild", Some(sub)) => sub,
        _ => node,
    };
    matches!(target.value.as_str(), "run" | "copy" | "add") && !target.json
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_read_only_at_the_top() {
        let ast = parse(
            "# syntax=docker/dockerfile:1\n# ESCAPE = `\n# check=skip=all\nFROM a\n# escape=\\\n",
        )
        .unwrap();
        assert_eq!(ast.directives.escape, '`');
        assert_eq!(
            ast.directives.syntax.as_deref(),
            Some("docker/dockerfile:1")
        );
        assert_eq!(ast.directives.check.as_deref(), Some("skip=all"));
    }

    #[test]
    fn duplicate_and_invalid_directives_fail() {
        let e = parse("# escape=`\n# escape=\\\nFROM a\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.message, "only one escape parser directive can be used");
        let e = parse("# escape=x\nFROM a\n").unwrap_err();
        assert!(matches!(e.kind, ParseErrorKind::InvalidEscape { .. }));
    }

    #[test]
    fn heredocs_are_collected_with_lines() {
        let src = "FROM a\nRUN <<EOF cat - <<-'END'\necho $X\nEOF\n\tliteral\n\tEND\nCOPY <<A /dst\nx\nA\n";
        let ast = parse(src).unwrap();
        let run = &ast.children[1];
        assert_eq!((run.start_line, run.end_line), (2, 6));
        assert_eq!(run.heredocs.len(), 2);
        assert_eq!(run.heredocs[0].content, "echo $X\n");
        assert!(run.heredocs[0].expand);
        assert_eq!(run.heredocs[1].content, "\tliteral\n");
        assert!(!run.heredocs[1].expand && run.heredocs[1].chomp);
        let copy = &ast.children[2];
        assert_eq!(copy.heredocs[0].content, "x\n");
        assert_eq!(copy.args, ["<<A", "/dst"]);
    }

    #[test]
    fn unterminated_heredoc_fails_at_instruction() {
        let e = parse("FROM a\n  RUN <<EOF\nabc\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3));
        assert_eq!(e.to_string(), "line 2:3: unterminated heredoc");
    }

    #[test]
    fn json_form_has_no_heredocs() {
        let ast = parse("RUN [\"sh\", \"<<EOF\"]\nFROM x\n").unwrap();
        assert!(ast.children[0].json);
        assert_eq!(ast.children.len(), 2);
    }

    #[test]
    fn flags_and_columns() {
        let ast = parse("FROM a\n  COPY --from=b  --chown=1:1 x y\n").unwrap();
        let c = &ast.children[1];
        assert_eq!(c.column, 3);
        assert_eq!(c.flags, ["--from=b", "--chown=1:1"]);
        assert_eq!(c.flag_columns, [8, 18]);
        assert_eq!(
            dump(&ast).lines().nth(1),
            Some("(copy [\"--from=b\" \"--chown=1:1\"] \"x\" \"y\")")
        );
    }

    #[test]
    fn onbuild_nests_and_keeps_heredocs() {
        let ast = parse("ONBUILD RUN <<X\nhi\nX\n").unwrap();
        let n = &ast.children[0];
        assert_eq!(n.sub.as_ref().unwrap().value, "run");
        assert_eq!(n.heredocs[0].content, "hi\n");
        assert_eq!(dump(&ast), "(onbuild (run \"<<X\"))\n");
    }

    #[test]
    fn over_long_lines_are_refused() {
        let src = format!("FROM a\nLABEL x={}\n", "a".repeat(MAX_LINE_BYTES));
        let e = parse(&src).unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(
            e.message,
            "dockerfile line greater than max allowed size of 65535"
        );
        let ok = format!("FROM a\nLABEL x={}\n", "a".repeat(MAX_LINE_BYTES - 8));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn continuation_skips_comments_and_empty_lines() {
        let ast =
            parse("FROM a\nRUN a \\\n\n  b \\\n# c\n   d\nRUN x \\\n    # y\n    z\n").unwrap();
        assert_eq!(
            dump(&ast),
            "(from \"a\")\n(run \"a   b    d\")\n(run \"x     z\")\n"
        );
        assert_eq!(
            (ast.children[1].start_line, ast.children[1].end_line),
            (2, 6)
        );
    }

    #[test]
    fn crlf_and_bom_are_handled() {
        let ast = parse("\u{feff}FROM a\r\nRUN x \\\r\n  y\r\n").unwrap();
        assert_eq!(dump(&ast), "(from \"a\")\n(run \"x   y\")\n");
    }
}
