//! Dockerfile `USER` resolution against the new root's `/etc/passwd` and `/etc/group`.
//!
//! Pure functions over file contents, so the rules are unit-tested without a root file system.
//! The files are read after `pivot_root`, so they are the image's files, never the host's.
//! The rules follow Docker/runc: a numeric uid need not exist in `/etc/passwd`; a name must;
//! the primary group is the explicit group, else the passwd entry's gid, else 0;
//! supplementary groups are the `/etc/group` entries listing the user's name.

/// Why a `USER` value could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// The user part is a name with no `/etc/passwd` entry.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// The group part is a name with no `/etc/group` entry.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// The value is not `name|uid[:group|gid]`.
    #[error("invalid user {0:?}")]
    Invalid(String),
}

/// The ids a step runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the `/etc/group` entries that list the user (as BuildKit).
    pub groups: Vec<u32>,
    /// Home directory from passwd, `/` when unknown.
    pub home: String,
}

/// Resolve `user` (`name|uid[:group|gid]`, empty = root) against file contents (`None` when
/// the file does not exist).
pub fn resolve(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, UserError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    if group_part == Some("") {
        return Err(UserError::Invalid(user.to_owned()));
    }
    let entries: Vec<PasswdEntry<'_>> = passwd.map(parse_passwd).unwrap_or_default();
    let found = match user_part.parse::<u32>() {
        Ok(uid) => entries.iter().find(|e| e.uid == uid),
        Err(_) => entries.iter().find(|e| e.name == user_part),
    };
    let (uid, name, passwd_gid, home) = match (found, user_part.parse::<u32>()) {
        (Some(e), _) => (e.uid, Some(e.name), e.gid, e.home.to_owned()),
        (None, Ok(uid)) => (uid, None, 0, "/".to_owned()),
        (None, Err(_)) => return Err(UserError::UnknownUser(user_part.to_owned())),
    };
    let groups: Vec<GroupEntry<'_>> = group.map(parse_group).unwrap_or_default();
    let gid = match group_part {
        None => passwd_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?,
        },
    };
    // Only the groups that list the user, as BuildKit's executor sets them: the primary gid
    // is not repeated as a supplementary group.
    let mut supplementary = Vec::new();
    if let Some(name) = name {
        for g in groups.iter().filter(|g| g.members.contains(&name)) {
            if !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        groups: supplementary,
        home: if home.is_empty() {
            "/".to_owned()
        } else {
            home
        },
    })
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// `name:pw:uid:gid:gecos:home:shell`; malformed lines are skipped, as libc does.
fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first().filter(|n| !n.is_empty() && !n.starts_with('#'))?,
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).copied().unwrap_or(""),
            })
        })
        .collect()
}

/// `name:pw:gid:member,member`; malformed lines are skipped.
fn parse_group(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first().filter(|n| !n.is_empty() && !n.starts_with('#'))?,
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
                          app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nwheel:x:10:app,other\n";

    #[test]
    fn empty_user_is_root() {
        let u = resolve("", Some(PASSWD), Some(GROUP));
        assert_eq!(
            u,
            Ok(ExecUser {
                uid: 0,
                gid: 0,
                groups: vec![],
                home: "/root".into()
            })
        );
    }

    #[test]
    fn name_resolves_uid_gid_home_and_supplementary_groups() {
        let u = resolve("app", Some(PASSWD), Some(GROUP));
        assert_eq!(
            u,
            Ok(ExecUser {
                uid: 1000,
                gid: 1000,
                groups: vec![10],
                home: "/home/app".into()
            })
        );
    }

    #[test]
    fn numeric_uid_need_not_exist() {
        let u = resolve("4242:77", None, None);
        assert_eq!(
            u,
            Ok(ExecUser {
                uid: 4242,
                gid: 77,
                groups: vec![],
                home: "/".into()
            })
        );
    }

    #[test]
    fn group_by_name_overrides_primary_group() {
        let u = resolve("nobody:wheel", Some(PASSWD), Some(GROUP));
        assert_eq!(u.map(|u| (u.uid, u.gid)), Ok((65534, 10)));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve("ghost", Some(PASSWD), Some(GROUP)),
            Err(UserError::UnknownUser("ghost".into()))
        );
        assert_eq!(
            resolve("app:ghosts", Some(PASSWD), Some(GROUP)),
            Err(UserError::UnknownGroup("ghosts".into()))
        );
        assert_eq!(
            resolve("app:", Some(PASSWD), None),
            Err(UserError::Invalid("app:".into()))
        );
    }
}
