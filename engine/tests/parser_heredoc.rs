//! Heredocs behave as in BuildKit's `parser_heredoc_test.go`: bodies, terminators, chomping,
//! quoting (no expansion) and several heredocs per line.
#![allow(clippy::unwrap_used)]

use kiln_engine::frontend::parser::{parse, parse_heredoc};

const DOCKERFILE: &str = "
FROM alpine:3.6

ENV NAME=me

RUN ls

USER <<INVALID
INVALID

RUN <<EMPTY
EMPTY

RUN 3<<EMPTY2
EMPTY2

RUN \"<<NOHEREDOC\"

RUN <<INDENT
\tfoo
\tbar
INDENT

RUN <<-UNINDENT
\tbaz
\tquux
UNINDENT

RUN <<-UNINDENT2
\tbaz
\tquux
\tUNINDENT2

RUN <<-EXPAND
\texpand $NAME
EXPAND

RUN <<-'NOEXPAND'
\tdon't expand $NAME
NOEXPAND

RUN <<COPY
echo hello world
echo foo bar
COPY

RUN <<COMMENT
# internal comment
echo hello world
echo foo bar # trailing comment
COMMENT

RUN --mount=type=cache,target=/foo <<MOUNT
echo hello
MOUNT

COPY <<FILE1 <<FILE2 /dest
content 1
FILE1
content 2
FILE2

COPY <<X <<Y /dest
Y
X
X
Y
\t";

#[test]
fn heredoc_bodies_match_buildkit() {
    // (name, content, expand, chomp) per instruction after FROM.
    let want: Vec<Vec<(&str, &str, bool, bool)>> = vec![
        vec![],
        vec![],
        vec![],
        vec![],
        vec![("EMPTY", "", true, false)],
        vec![("EMPTY2", "", true, false)],
        vec![],
        vec![("INDENT", "\tfoo\n\tbar\n", true, false)],
        vec![("UNINDENT", "\tbaz\n\tquux\n", true, true)],
        vec![("UNINDENT2", "\tbaz\n\tquux\n", true, true)],
        vec![("EXPAND", "\texpand $NAME\n", true, true)],
        vec![("NOEXPAND", "\tdon't expand $NAME\n", false, true)],
        vec![("COPY", "echo hello world\necho foo bar\n", true, false)],
        vec![(
            "COMMENT",
            "# internal comment\necho hello world\necho foo bar # trailing comment\n",
            true,
            false,
        )],
        vec![("MOUNT", "echo hello\n", true, false)],
        vec![
            ("FILE1", "content 1\n", true, false),
            ("FILE2", "content 2\n", true, false),
        ],
        vec![("X", "Y\n", true, false), ("Y", "X\n", true, false)],
    ];
    let ast = parse(DOCKERFILE).unwrap();
    assert_eq!(ast.children.len(), want.len() + 1);
    for (i, want) in want.iter().enumerate() {
        let node = &ast.children[i + 1];
        let got: Vec<_> = node
            .heredocs
            .iter()
            .map(|h| (h.name.as_str(), h.content.as_str(), h.expand, h.chomp))
            .collect();
        assert_eq!(&got, want, "instruction {}: {}", i + 2, node.original);
    }
}

#[test]
fn json_form_never_takes_heredocs() {
    let ast = parse("FROM alpine\nRUN [\"whoami\"]\nRUN [\"<<EOF\"]\nRUN [\"<<'EOF'\"]\n").unwrap();
    assert_eq!(ast.children.len(), 4);
    assert!(ast.children.iter().all(|n| n.heredocs.is_empty()));
}

#[test]
fn heredoc_words_are_recognised_like_buildkit() {
    for src in [
        "<<EOF",
        "<<'EOF'",
        "<<\"EOF\"",
        "<<-EOF",
        "<<-'EOF'",
        "<<-\"EOF\"",
    ] {
        assert_eq!(parse_heredoc(src).unwrap().unwrap().name, "EOF", "{src}");
    }
    for src in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
        assert!(parse_heredoc(src).is_err(), "{src}");
    }
    for src in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF"] {
        assert!(parse_heredoc(src).unwrap().is_none(), "{src}");
    }
}
