//! Per-instruction argument parsing, as BuildKit's `line_parsers.go` and `split_command.go`.

use super::ParseErrorKind;

/// What a line parser makes of an instruction's arguments.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    /// The argument chain (BuildKit's `Next` nodes).
    pub args: Vec<String>,
    /// The arguments were a JSON array.
    pub json: bool,
    /// ONBUILD's nested instruction line.
    pub sub_line: Option<String>,
}

/// Go's `unicode.IsSpace`, which for `char` is the Unicode White_Space property.
pub(super) fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// BuildKit's `[\t\v\f\r ]` separator class.
fn is_sep(c: char) -> bool {
    matches!(c, '\t' | '\u{0b}' | '\u{0c}' | '\r' | ' ')
}

/// Splits on the first run of `[\t\v\f\r ]+` (Go's `regexp.Split(s, 2)`).
fn split_once_sep(s: &str) -> (&str, Option<&str>) {
    match s.find(is_sep) {
        None => (s, None),
        Some(i) => {
            let rest = s[i..].trim_start_matches(is_sep);
            (&s[..i], Some(rest))
        }
    }
}

/// A flag and its byte offset in the text given to [`split_command`].
pub(super) struct Flag {
    pub text: String,
    pub offset: usize,
}

/// The instruction word (as written), its `--flags` and the remaining argument text.
pub(super) struct Split {
    pub cmd: String,
    pub flags: Vec<Flag>,
    pub args: String,
}

/// Splits a logical line into command, flags and arguments.
pub(super) fn split_command(line: &str) -> Split {
    let lead = line.len() - line.trim_start_matches(is_space).len();
    let trimmed = line.trim_matches(is_space);
    let (cmd, rest) = split_once_sep(trimmed);
    let mut flags = Vec::new();
    let mut args = "";
    if let Some(rest) = rest {
        let rest_off = lead + (trimmed.len() - rest.len());
        let (remaining, fl) = extract_builder_flags(rest);
        args = remaining;
        flags = fl
            .into_iter()
            .map(|(text, off)| Flag {
                text,
                offset: rest_off + off,
            })
            .collect();
    }
    Split {
        cmd: cmd.to_string(),
        flags,
        args: args.trim_matches(is_space).to_string(),
    }
}

#[derive(PartialEq, Clone, Copy)]
enum Phase {
    Spaces,
    Word,
    Quote,
}

/// Takes the leading `--flag[=value]` words off `line` (quotes and `\` processed inside
/// them); a bare `--` ends the flags.
fn extract_builder_flags(line: &str) -> (&str, Vec<(String, usize)>) {
    let bytes = line.as_bytes();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word: Vec<u8> = Vec::new();
    let mut word_start = 0;
    let mut quote = 0u8;
    let mut blank_ok = false;
    let mut pos = 0;
    let finish = |w: &[u8]| String::from_utf8_lossy(w).into_owned();
    while pos <= bytes.len() {
        let ch = bytes.get(pos).copied().unwrap_or(0);
        if phase == Phase::Spaces {
            if pos == bytes.len() {
                break;
            }
            if byte_space(ch) {
                pos += 1;
                continue;
            }
            if ch != b'-' || bytes.get(pos + 1) != Some(&b'-') {
                return (&line[pos..], words);
            }
            phase = Phase::Word;
            word_start = pos;
        }
        if pos == bytes.len() {
            if word != b"--" && (blank_ok || !word.is_empty()) {
                words.push((finish(&word), word_start));
            }
            break;
        }
        if phase == Phase::Word {
            if byte_space(ch) {
                phase = Phase::Spaces;
                if word == b"--" {
                    return (&line[pos..], words);
                }
                if blank_ok || !word.is_empty() {
                    words.push((finish(&word), word_start));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == b'\'' || ch == b'"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            let mut c = ch;
            if c == b'\\' {
                if pos + 1 == bytes.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                c = bytes[pos];
            }
            word.push(c);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        let mut c = ch;
        if c == b'\\' {
            if pos + 1 == bytes.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            c = bytes[pos];
        }
        word.push(c);
        pos += 1;
    }
    ("", words)
}

/// ASCII whitespace as Go's `unicode.IsSpace` sees it. BuildKit also treats the bytes 0x85
/// and 0xA0 as spaces here (it converts bytes to runes); we do not, so a flag can never be
/// cut inside a UTF-8 sequence.
fn byte_space(b: u8) -> bool {
    b < 0x80 && is_space(char::from(b))
}

/// Dispatches on the (lower-cased) instruction, like BuildKit's dispatch table.
pub(super) fn parse_args(cmd: &str, rest: &str, escape: char) -> Result<Parsed, ParseErrorKind> {
    match cmd {
        "add" | "copy" | "volume" => parse_maybe_json_to_list(rest),
        "arg" => Ok(words_parsed(parse_words(rest, escape))),
        "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(rest),
        "env" => parse_name_val(rest, "ENV", escape),
        "label" => parse_name_val(rest, "LABEL", escape),
        "expose" | "from" => Ok(words_parsed(split_whitespace(rest))),
        "healthcheck" => parse_health_config(rest),
        "maintainer" | "stopsignal" | "user" | "workdir" => Ok(words_parsed(
            (!rest.is_empty())
                .then(|| rest.to_string())
                .into_iter()
                .collect(),
        )),
        "onbuild" => Ok(Parsed {
            sub_line: (!rest.is_empty()).then(|| rest.to_string()),
            ..Parsed::default()
        }),
        // Unknown instructions are kept (with one empty argument, as BuildKit's
        // parseIgnore); the instructions stage rejects them.
        _ => Ok(words_parsed(vec![String::new()])),
    }
}

fn words_parsed(args: Vec<String>) -> Parsed {
    Parsed {
        args,
        ..Parsed::default()
    }
}

/// Go's `regexp.MustCompile("[\t\v\f\r ]+").Split(rest, -1)` for a non-empty `rest`.
fn split_whitespace(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(is_sep)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Splits into words keeping quotes and escapes (they are processed later).
pub(super) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= chars.len() {
        let mut ch = chars.get(pos).copied().unwrap_or('\0');
        if phase == Phase::Spaces {
            if pos == chars.len() {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if pos == chars.len() {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

/// ENV/LABEL: `name=value ...`, or the legacy `name value` form (value is the rest).
fn parse_name_val(rest: &str, key: &'static str, escape: char) -> Result<Parsed, ParseErrorKind> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Parsed::default());
    };
    if !first.contains('=') {
        let (name, value) = split_once_sep(rest);
        let Some(value) = value else {
            return Err(ParseErrorKind::TwoArgumentsRequired { instruction: key });
        };
        return Ok(words_parsed(vec![
            name.to_string(),
            value.to_string(),
            String::new(),
        ]));
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((k, v)) = word.split_once('=') else {
            return Err(ParseErrorKind::MissingEquals { word });
        };
        args.extend([k.to_string(), v.to_string(), "=".to_string()]);
    }
    Ok(words_parsed(args))
}

/// Outcome of trying to read the arguments as a JSON array.
enum Json {
    Strings(Vec<String>),
    NotJson,
}

fn parse_json(rest: &str) -> Result<Json, ParseErrorKind> {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return Ok(Json::NotJson);
    }
    // Like Go's json.Decoder: the first value counts, whatever follows it.
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
    let Some(Ok(serde_json::Value::Array(items))) = stream.next() else {
        return Ok(Json::NotJson);
    };
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(ParseErrorKind::JsonNotStrings),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Json::Strings)
}

fn parse_maybe_json(rest: &str) -> Result<Parsed, ParseErrorKind> {
    if rest.is_empty() {
        return Ok(Parsed::default());
    }
    Ok(match parse_json(rest)? {
        Json::Strings(args) => Parsed {
            args,
            json: true,
            sub_line: None,
        },
        Json::NotJson => words_parsed(vec![rest.to_string()]),
    })
}

fn parse_maybe_json_to_list(rest: &str) -> Result<Parsed, ParseErrorKind> {
    Ok(match parse_json(rest)? {
        Json::Strings(args) => Parsed {
            args,
            json: true,
            sub_line: None,
        },
        Json::NotJson => words_parsed(split_whitespace(rest)),
    })
}

/// HEALTHCHECK: a type word (`CMD`, `NONE`, ...) then a maybe-JSON command.
fn parse_health_config(rest: &str) -> Result<Parsed, ParseErrorKind> {
    let sep = rest.find(is_space).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Parsed::default());
    }
    let after = rest[sep..].trim_start_matches(is_space);
    let cmd = parse_maybe_json(after)?;
    let mut args = vec![rest[..sep].to_string()];
    args.extend(cmd.args);
    Ok(Parsed {
        args,
        json: cmd.json,
        sub_line: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_taken_off_the_front() {
        let s = split_command("COPY --from=a --chown=\"x y\" -- --src dst");
        assert_eq!(s.cmd, "COPY");
        let f: Vec<_> = s.flags.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(f, ["--from=a", "--chown=x y"]);
        assert_eq!(s.flags[0].offset, 5);
        assert_eq!(s.args, "--src dst");
    }

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(
            parse_words(r#"a="b c" d\ e 'f\'"#, '\\'),
            [r#"a="b c""#, r"d\ e", r"'f\'"]
        );
    }

    #[test]
    fn json_trailing_text_is_ignored_and_non_strings_rejected() {
        let p = parse_maybe_json(r#"["a"] trailing"#).unwrap();
        assert!(p.json);
        assert_eq!(p.args, ["a"]);
        assert!(matches!(
            parse_maybe_json(r#"["a", 1]"#),
            Err(ParseErrorKind::JsonNotStrings)
        ));
        assert!(!parse_maybe_json("[oops").unwrap().json);
    }
}
