//! Heredoc detection (`<<EOF`, `<<-EOF`, `<<"EOF"`), as BuildKit's parser does it.

use super::{Heredoc, ParseErrorKind};
use crate::frontend::shell::{EmptyEnv, Lexer};

/// Parses one word of the form `[n]<<[-]NAME`; `None` when it is not a heredoc.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, ParseErrorKind> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(rest) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let lexer = Lexer::new('\\').skip_unset_env(true);
    let bad = |e| ParseErrorKind::HeredocName {
        word: rest.to_string(),
        source: e,
    };
    let words = lexer.process_words(rest, &EmptyEnv).map_err(bad)?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    let raw = lexer
        .raw_quotes(true)
        .process_words(rest, &EmptyEnv)
        .map_err(bad)?;
    let [raw_name] = raw.as_slice() else {
        return Err(ParseErrorKind::HeredocInconsistent {
            word: rest.to_string(),
        });
    };
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    Ok(Some(Heredoc {
        name: name.clone(),
        content: String::new(),
        expand: quotes(name) == quotes(raw_name),
        chomp,
    }))
}

/// Every heredoc named on an instruction line, in order.
pub(super) fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, ParseErrorKind> {
    let lexer = Lexer::new('\\')
        .raw_quotes(true)
        .raw_escapes(true)
        .skip_unset_env(true);
    // BuildKit ignores a lexing error here: the line then names no heredoc.
    let words = lexer.process_words(line, &EmptyEnv).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Removes leading tabs from every line (the `<<-` form).
pub fn chomp_heredoc_content(src: &str) -> String {
    src.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quoted_delimiter_disables_expansion() {
        let h = parse_heredoc("<<\"EOF\"").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("EOF", false, false));
        let h = parse_heredoc("<<-EOT").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("EOT", true, true));
        let h = parse_heredoc("3<<'X'").unwrap().unwrap();
        assert!(!h.expand);
        assert!(parse_heredoc("<<").unwrap().is_none());
        assert!(parse_heredoc("a<<b").unwrap().is_none());
    }

    #[test]
    fn several_heredocs_on_one_line() {
        let docs = heredocs_from_line("RUN <<A cat - <<-\"B\" >out").unwrap();
        let names: Vec<_> = docs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["A", "B"]);
    }

    #[test]
    fn chomp_strips_leading_tabs_per_line() {
        assert_eq!(chomp_heredoc_content("\t\ta\n\tb\n c\n"), "a\nb\n c\n");
    }
}
