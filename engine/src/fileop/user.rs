//! `--chown=user[:group]` (and `USER`) resolution against the view's `/etc/passwd` and
//! `/etc/group`, as BuildKit does it.

use std::io::Read;

use super::FileOpError;
use crate::fsview::{FsViewError, LayerView};

/// Resolves `user[:group]` to ids. Numeric ids pass through; names are looked up in the view's
/// `/etc/passwd` / `/etc/group` (symlinks followed inside the view). Without a group, a named
/// user gets its primary group and a numeric user gets `gid = uid` (BuildKit: `--chown=1000`
/// is `1000:1000`).
pub fn resolve_user(view: &LayerView, user: &str) -> Result<(u32, u32), FileOpError> {
    let bad = || FileOpError::BadUserSpec {
        spec: user.to_owned(),
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() || g.is_some_and(str::is_empty) {
        return Err(bad());
    }
    let (uid, primary) = match u.parse::<u32>() {
        Ok(id) => (id, None),
        Err(_) => {
            let unknown = || FileOpError::UnknownUser { name: u.to_owned() };
            let passwd = read_db(view, "/etc/passwd")?.ok_or_else(unknown)?;
            let (id, gid) = find(&passwd, u)
                .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
                .ok_or_else(unknown)?;
            (id, Some(gid))
        }
    };
    let gid = match g {
        None => primary.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => {
                let unknown = || FileOpError::UnknownGroup { name: g.to_owned() };
                let group = read_db(view, "/etc/group")?.ok_or_else(unknown)?;
                find(&group, g)
                    .and_then(|f| f.get(2)?.parse().ok())
                    .ok_or_else(unknown)?
            }
        },
    };
    Ok((uid, gid))
}

/// Reads a colon-separated database; `None` when it does not exist.
fn read_db(view: &LayerView, path: &str) -> Result<Option<String>, FileOpError> {
    let f = match view.open(path) {
        Ok(f) => f,
        Err(FsViewError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // The image chose this file: only a regular file is read, and only its first 4 MiB (a
    // link to a device such as /dev/zero, or a huge file, must not exhaust the engine).
    let read_err = |source| FileOpError::ReadSource {
        path: path.to_owned(),
        source,
    };
    if !f.metadata().map_err(read_err)?.is_file() {
        return Err(read_err(std::io::Error::other("not a regular file")));
    }
    let mut bytes = Vec::new();
    f.take(4 << 20).read_to_end(&mut bytes).map_err(read_err)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn find<'t>(db: &'t str, name: &str) -> Option<Vec<&'t str>> {
    db.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
}
