//! `COPY` and `ADD`: sources (context, stages, images, heredocs, pinned URLs) and flags.

use super::dispatch::{St, expand, from_vertex};
use super::{ConvertError, Converter};
use crate::Digest;
use crate::frontend::instructions::{CopyArgs, Instruction, Located};
use crate::graph::{CopyOp, FileOp, Op, SourceOp};

pub(super) fn copy(
    c: &mut Converter<'_>,
    st: &mut St,
    ins: &Located<Instruction>,
    name: String,
    a: &CopyArgs,
    is_add: bool,
) -> Result<(), ConvertError> {
    let at = |m: String| ConvertError::at(ins.line, ins.column, m);
    let verb = if is_add { "ADD" } else { "COPY" };
    let mut sources = Vec::new();
    for s in &a.sources {
        let s = expand(c, st, s, ins)?;
        if is_add && is_git_source(&s) {
            return Err(at(format!(
                "ADD {s}: git sources are not supported by kiln; add the checkout to the build \
                 context or pass it with --build-context NAME=DIR"
            )));
        }
        if !is_add && is_http_source(&s) {
            return Err(at(format!(
                "COPY {s}: source can't be a URL for COPY (use ADD --checksum=sha256:… <url>)"
            )));
        }
        sources.push(s);
    }
    if is_add && sources.iter().any(|s| is_http_source(s)) {
        return add_url(c, st, ins, name, a, sources);
    }
    let from = a
        .from
        .as_deref()
        .map(|f| expand(c, st, f, ins))
        .transpose()?;
    let (src_vertex, from_stage) = match &from {
        None => (c.context_vertex(), false),
        Some(f) => (from_vertex(c, st, f, ins.line)?, true),
    };
    let dest = expand(c, st, &a.dest, ins)?;
    let (chown, chmod) = owner_and_mode(c, st, a, ins)?;
    if a.checksum.is_some() {
        return Err(at(
            "ADD --checksum is only valid with a remote source".into()
        ));
    }
    let mut excludes = Vec::new();
    for e in &a.exclude {
        excludes.push(expand(c, st, e, ins)?);
    }
    let workdir = if st.image.workdir.is_empty() {
        "/".to_owned()
    } else {
        st.image.workdir.clone()
    };
    // Heredoc sources become files in a scratch layer, copied like context files.
    let (src_vertex, sources) = if a.heredoc_sources.is_empty() {
        (src_vertex, sources)
    } else {
        let mut files = Vec::new();
        for h in &a.heredoc_sources {
            let content = if h.expand {
                expand(c, st, &h.content, ins)?
            } else {
                h.content.clone()
            };
            files.push((h.name.clone(), content));
        }
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        let v = c.graph.add(
            Op::File(FileOp::Mkfiles { files, mode: None }),
            vec![],
            format!("{name} (heredoc)"),
        );
        (v, names)
    };
    let copy = CopyOp {
        src: 1,
        dest: if a.link { None } else { Some(0) },
        sources: sources.clone(),
        dest_path: dest.clone(),
        workdir,
        chown,
        chmod,
        keep_owner: from_stage && a.chown.is_none(),
        parents: a.parents,
        excludes,
        unpack: is_add && !from_stage && a.unpack.unwrap_or(true),
    };
    let shown = format!("{verb} {} {dest}", sources.join(" "));
    add_copy(c, st, copy, a.link, src_vertex, name);
    st.image.layer(shown);
    Ok(())
}

/// `http://` or `https://` (BuildKit's `isHTTPSource`), and not a git repository.
fn is_http_source(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && !is_git_source(s)
}

/// A git repository reference BuildKit would clone: `git@host:…`, `git://…`, `ssh://…`, or an
/// http(s) URL whose path ends in `.git` (optionally followed by `#ref`).
fn is_git_source(s: &str) -> bool {
    if s.starts_with("git@") || s.starts_with("git://") || s.starts_with("ssh://") {
        return true;
    }
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return false;
    };
    let before_fragment = rest.split('#').next().unwrap_or(rest);
    let path = before_fragment.split('?').next().unwrap_or(before_fragment);
    path.trim_end_matches('/').ends_with(".git")
}

/// The file name an http source gets, by BuildKit's Dockerfile rule (`dockerfile2llb`):
/// `path.Base` of the URL's decoded path, or `__unnamed__` when that is `.` or `/`.
/// `None` when the path's percent-encoding is invalid or decodes to something that cannot
/// be a file name.
fn url_filename(uri: &ureq::http::Uri) -> Option<String> {
    let raw = uri.path().as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let path = String::from_utf8(decoded).ok()?;
    if path.contains('\0') {
        return None;
    }
    // Go's path.Base: trailing slashes are dropped, then the last element; "" → "."; all
    // slashes → "/".
    let trimmed = path.trim_end_matches('/');
    let base = if trimmed.is_empty() {
        if path.is_empty() { "." } else { "/" }
    } else {
        trimmed.rsplit('/').next().unwrap_or(trimmed)
    };
    Some(match base {
        "." | "/" | ".." => "__unnamed__".to_owned(),
        b => b.to_owned(),
    })
}

/// `ADD [--checksum=sha256:…] [--chown] [--chmod] [--link] <http(s) url> <dest>`: the file
/// becomes an [`SourceOp::Http`] vertex (downloaded by the engine, pinned by the checksum),
/// copied into the stage like a context file. Remote files are never unpacked (BuildKit).
fn add_url(
    c: &mut Converter<'_>,
    st: &mut St,
    ins: &Located<Instruction>,
    name: String,
    a: &CopyArgs,
    sources: Vec<String>,
) -> Result<(), ConvertError> {
    let at = |m: String| ConvertError::at(ins.line, ins.column, m);
    let url = match sources.as_slice() {
        [one] => one.clone(),
        _ => {
            let listed = sources.join(" ");
            return Err(at(if a.checksum.is_some() {
                format!("ADD {listed}: checksum can't be specified for multiple sources")
            } else {
                format!(
                    "ADD {listed}: a URL must be the only source (kiln requires ADD <url> to be \
                     pinned with --checksum=sha256:…, which names one file)"
                )
            }));
        }
    };
    let Some(checksum) = a.checksum.as_deref() else {
        return Err(at(format!(
            "ADD {url} requires --checksum=sha256:… so the download is pinned (kiln refuses \
             unpinned remote sources; BuildKit does not)"
        )));
    };
    let checksum = expand(c, st, checksum, ins)?;
    let checksum: Digest = checksum.parse().map_err(|e: crate::digest::DigestError| {
        at(match e {
            crate::digest::DigestError::Algorithm(_) => format!(
                "ADD --checksum={checksum}: unsupported digest algorithm (kiln pins downloads \
                 with sha256:<64 lowercase hex digits>)"
            ),
            crate::digest::DigestError::Malformed(_) => format!(
                "ADD --checksum={checksum}: malformed digest; expected sha256:<64 lowercase \
                 hex digits>"
            ),
        })
    })?;
    if a.from.is_some() {
        return Err(at(format!(
            "ADD --from cannot be used with a URL source ({url})"
        )));
    }
    if a.unpack == Some(true) {
        return Err(at(format!(
            "ADD --unpack=true {url}: kiln does not unpack remote archives; ADD the file and \
             extract it in a RUN step"
        )));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e: ureq::http::uri::InvalidUri| at(format!("ADD {url}: invalid URL: {e}")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(at(format!("ADD {url}: invalid URL: no host")));
    }
    let filename = url_filename(&uri).ok_or_else(|| {
        at(format!(
            "ADD {url}: invalid URL: bad percent-encoding in the path"
        ))
    })?;
    let dest = expand(c, st, &a.dest, ins)?;
    let (chown, chmod) = owner_and_mode(c, st, a, ins)?;
    let workdir = if st.image.workdir.is_empty() {
        "/".to_owned()
    } else {
        st.image.workdir.clone()
    };
    let src_vertex = c.graph.add(
        Op::Source(SourceOp::Http {
            url: url.clone(),
            checksum,
            filename: filename.clone(),
        }),
        vec![],
        format!("{name} (download)"),
    );
    let copy = CopyOp {
        src: 1,
        dest: if a.link { None } else { Some(0) },
        sources: vec![filename],
        dest_path: dest.clone(),
        workdir,
        chown,
        chmod,
        keep_owner: false,
        parents: false,
        excludes: Vec::new(),
        unpack: false,
    };
    add_copy(c, st, copy, a.link, src_vertex, name);
    st.image.layer(format!("ADD {url} {dest}"));
    Ok(())
}

/// `--chown` (expanded) and `--chmod` (expanded, octal, at most 07777).
fn owner_and_mode(
    c: &Converter<'_>,
    st: &St,
    a: &CopyArgs,
    ins: &Located<Instruction>,
) -> Result<(Option<String>, Option<u32>), ConvertError> {
    let chown = a
        .chown
        .as_deref()
        .map(|x| expand(c, st, x, ins))
        .transpose()?;
    let chmod = match a
        .chmod
        .as_deref()
        .map(|x| expand(c, st, x, ins))
        .transpose()?
    {
        Some(m) => Some(
            u32::from_str_radix(&m, 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .ok_or_else(|| {
                    ConvertError::at(
                        ins.line,
                        ins.column,
                        format!("invalid chmod parameter: {m}"),
                    )
                })?,
        ),
        None => None,
    };
    Ok((chown, chmod))
}

/// Adds a copy vertex: onto the stage's file system, or for `--link` into scratch merged on
/// top (so the copied layer does not depend on what is below it).
fn add_copy(
    c: &mut Converter<'_>,
    st: &mut St,
    copy: CopyOp,
    link: bool,
    src_vertex: crate::graph::VertexIdx,
    name: String,
) {
    if link {
        let scratch = c.scratch_vertex();
        let copied = c.graph.add(
            Op::File(FileOp::Copy(copy)),
            vec![scratch, src_vertex],
            name.clone(),
        );
        st.vertex = c
            .graph
            .add(Op::Merge, vec![st.vertex, copied], format!("{name} (link)"));
    } else {
        st.vertex = c.graph.add(
            Op::File(FileOp::Copy(copy)),
            vec![st.vertex, src_vertex],
            name,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn url_file_names_follow_buildkit() {
        let f = |u: &str| url_filename(&u.parse().unwrap());
        assert_eq!(
            f("https://example.com/a/b.tar.gz").as_deref(),
            Some("b.tar.gz")
        );
        assert_eq!(f("https://example.com/a/dir/").as_deref(), Some("dir"));
        assert_eq!(f("https://example.com/").as_deref(), Some("__unnamed__"));
        assert_eq!(f("https://example.com").as_deref(), Some("__unnamed__"));
        assert_eq!(f("https://example.com/x?y=/z#w").as_deref(), Some("x"));
        assert_eq!(
            f("https://example.com/a%20b.txt").as_deref(),
            Some("a b.txt")
        );
        assert_eq!(f("https://example.com/a%2Fb").as_deref(), Some("b"));
        assert_eq!(f("https://example.com/%zz"), None);
        assert_eq!(f("https://example.com/a%00b"), None);
    }

    #[test]
    fn git_sources_are_recognised() {
        assert!(is_git_source("git@github.com:org/repo.git"));
        assert!(is_git_source("https://github.com/org/repo.git"));
        assert!(is_git_source("https://github.com/org/repo.git#v1"));
        assert!(is_git_source("git://host/repo"));
        assert!(!is_git_source("https://example.com/file.tar.gz"));
        assert!(is_http_source("https://example.com/file.git.tar"));
        assert!(!is_http_source("https://example.com/r.git"));
        assert!(!is_http_source("file.txt"));
    }
}
