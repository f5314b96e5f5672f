//! `RUN --mount=...` values, with BuildKit's option set and validation
//! (`instructions/commands_runmount.go`).

use crate::frontend::shell::ShellError;

/// The kind of a `RUN --mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MountType {
    /// A read-only (by default) bind of a stage or the context.
    Bind,
    /// A persistent cache directory.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
    /// A secret file (or environment variable).
    Secret,
    /// An SSH agent socket.
    Ssh,
}

impl MountType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "bind" => Self::Bind,
            "cache" => Self::Cache,
            "tmpfs" => Self::Tmpfs,
            "secret" => Self::Secret,
            "ssh" => Self::Ssh,
            _ => return None,
        })
    }

    /// The name as written in a Dockerfile.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Cache => "cache",
            Self::Tmpfs => "tmpfs",
            Self::Secret => "secret",
            Self::Ssh => "ssh",
        }
    }
}

/// How a cache mount is shared between concurrent builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheSharing {
    /// Used by all concurrently (the default).
    Shared,
    /// A new cache when the existing one is in use.
    Private,
    /// Wait until the other user releases it.
    Locked,
}

/// A parsed `--mount` flag. Values are as written (not yet expanded); fields whose literal
/// value contained `$` are left unset and validated when conversion re-parses [`raw`]
/// with an expander (see [`parse_mount`]).
///
/// [`raw`]: MountFlag::raw
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFlag {
    /// `type=` (default `bind`).
    pub mount_type: MountType,
    /// `target=`, `dst=`, `destination=`.
    pub target: Option<String>,
    /// `source=`, `src=`.
    pub source: Option<String>,
    /// `from=`: a stage or image to mount from.
    pub from: Option<String>,
    /// `ro`/`readonly`/`rw`/`readwrite`, or the type's default (bind, secret, ssh: read-only).
    pub readonly: bool,
    /// `id=`: cache id or secret/ssh id.
    pub id: Option<String>,
    /// `sharing=` (cache only).
    pub sharing: Option<CacheSharing>,
    /// `mode=` in octal (cache, secret, ssh).
    pub mode: Option<u32>,
    /// `uid=` (cache, secret, ssh).
    pub uid: Option<u32>,
    /// `gid=` (cache, secret, ssh).
    pub gid: Option<u32>,
    /// `required` (secret, ssh).
    pub required: bool,
    /// `env=`: expose the secret as this environment variable (secret only).
    pub env: Option<String>,
    /// `size=` in bytes (tmpfs only; units `k`, `m`, `g`, ... are powers of 1024).
    pub size: Option<u64>,
    /// The flag's value as written, for re-parsing after expansion.
    pub raw: String,
}

/// Why a `--mount` value was rejected; messages follow BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// The value is not valid CSV.
    #[error("failed to parse csv mounts: {reason}")]
    Csv {
        /// What is wrong.
        reason: &'static str,
    },
    /// A field without `=` that is not a boolean option.
    #[error("invalid field '{field}' must be a key=value pair")]
    NotKeyValue {
        /// The field.
        field: String,
    },
    /// A key that does not exist.
    #[error("unexpected key '{key}' in '{field}'")]
    UnknownKey {
        /// The key (lower-cased).
        key: String,
        /// The whole field.
        field: String,
    },
    /// A key that the mount type does not take (at the point it appears).
    #[error("unexpected key '{key}' for mount type '{mount_type}'")]
    KeyNotForType {
        /// The key.
        key: String,
        /// The mount type.
        mount_type: &'static str,
    },
    /// `type=` with an unknown type.
    #[error("unsupported mount type {}", crate::frontend::parser::go_quote(value))]
    UnsupportedType {
        /// The value given.
        value: String,
    },
    /// `sharing=` with an unknown mode.
    #[error(
        "unsupported sharing value {}",
        crate::frontend::parser::go_quote(value)
    )]
    UnsupportedSharing {
        /// The value given.
        value: String,
    },
    /// A boolean or size option with a bad value.
    #[error("invalid value for {key}: {value}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
    },
    /// `mode`, `uid` or `gid` that is not a number.
    #[error("invalid value {value} for {key}")]
    InvalidNumber {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
    },
    /// `mode`, `uid` or `gid` on a bind or tmpfs mount.
    #[error("{key} not allowed for \"{mount_type}\" type mounts")]
    FileInfoNotAllowed {
        /// The key.
        key: &'static str,
        /// The mount type.
        mount_type: &'static str,
    },
    /// `sharing` on a mount that is not a cache.
    #[error("invalid cache sharing set for {mount_type} mount")]
    SharingNotAllowed {
        /// The mount type.
        mount_type: &'static str,
    },
    /// `from=` with a variable.
    #[error("'from' doesn't support variable expansion, define alias stage instead")]
    FromVariable,
    /// `from=` on a secret mount.
    #[error("secret mount should not have a from")]
    SecretFrom,
    /// A secret mount naming neither source, target nor id.
    #[error("invalid secret mount. one of source, target required")]
    SecretTarget,
    /// A secret mount with both `source` and `id`.
    #[error("both source and id can't be set")]
    SecretSourceAndId,
    /// The expander failed on a value.
    #[error(transparent)]
    Expand(#[from] ShellError),
}

/// Expands one option value (BuildKit's `SingleWordExpander`).
pub type Expander<'a> = &'a dyn Fn(&str) -> Result<String, ShellError>;

/// Parses a `--mount` value. Without an expander (the instructions stage), values holding
/// `$` are not interpreted yet; with one (conversion), every value is expanded first.
pub fn parse_mount(value: &str, expander: Option<Expander<'_>>) -> Result<MountFlag, MountError> {
    let fields = csv_fields(value)?;
    let mut m = MountFlag {
        mount_type: MountType::Bind,
        target: None,
        source: None,
        from: None,
        readonly: false,
        id: None,
        sharing: None,
        mode: None,
        uid: None,
        gid: None,
        required: false,
        env: None,
        size: None,
        raw: value.to_string(),
    };
    let mut ro_auto = true;
    let mut type_deferred = false;
    for field in fields {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        let secret_or_ssh = matches!(m.mount_type, MountType::Secret | MountType::Ssh);
        let Some(val) = val else {
            match key.as_str() {
                "readonly" | "ro" => m.readonly = true,
                "readwrite" | "rw" => m.readonly = false,
                "required" if secret_or_ssh || type_deferred => m.required = true,
                "required" => {
                    return Err(MountError::KeyNotForType {
                        key,
                        mount_type: m.mount_type.as_str(),
                    });
                }
                _ => return Err(MountError::NotKeyValue { field }),
            }
            if key != "required" {
                ro_auto = false;
            }
            continue;
        };
        let val = match expander {
            Some(expand) => expand(val)?,
            None if key == "from" && has_variable(val) => return Err(MountError::FromVariable),
            None => val.to_string(),
        };
        let deferred = expander.is_none() && val.contains('$');
        let boolean = |v: &str| {
            parse_go_bool(v).ok_or_else(|| MountError::InvalidValue {
                key: key.clone(),
                value: v.to_string(),
            })
        };
        match key.as_str() {
            "type" if deferred => type_deferred = true,
            "type" => {
                m.mount_type = MountType::parse(&val)
                    .ok_or_else(|| MountError::UnsupportedType { value: val.clone() })?;
            }
            "from" => m.from = Some(val),
            "source" | "src" => m.source = Some(val),
            "target" | "dst" | "destination" => m.target = Some(val),
            "id" => m.id = Some(val),
            "readonly" | "ro" | "readwrite" | "rw" => {
                ro_auto = false;
                if !deferred {
                    let b = boolean(&val)?;
                    m.readonly = if matches!(key.as_str(), "readonly" | "ro") {
                        b
                    } else {
                        !b
                    };
                }
            }
            "required" => {
                if !secret_or_ssh && !type_deferred {
                    return Err(MountError::KeyNotForType {
                        key,
                        mount_type: m.mount_type.as_str(),
                    });
                }
                if !deferred {
                    m.required = boolean(&val)?;
                }
            }
            "sharing" if deferred => {}
            "sharing" => {
                m.sharing = Some(match val.to_ascii_lowercase().as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    _ => return Err(MountError::UnsupportedSharing { value: val }),
                });
            }
            "mode" | "uid" | "gid" if deferred => {}
            "mode" => m.mode = Some(parse_u32(&val, 8, "mode")?),
            "uid" => m.uid = Some(parse_u32(&val, 10, "uid")?),
            "gid" => m.gid = Some(parse_u32(&val, 10, "gid")?),
            "size" => {
                if m.mount_type != MountType::Tmpfs && !type_deferred {
                    return Err(MountError::KeyNotForType {
                        key,
                        mount_type: m.mount_type.as_str(),
                    });
                }
                if !deferred {
                    m.size = Some(
                        ram_in_bytes(&val).ok_or(MountError::InvalidValue { key, value: val })?,
                    );
                }
            }
            "env" => {
                if m.mount_type != MountType::Secret && !type_deferred {
                    return Err(MountError::KeyNotForType {
                        key,
                        mount_type: m.mount_type.as_str(),
                    });
                }
                m.env = Some(val);
            }
            _ => return Err(MountError::UnknownKey { key, field }),
        }
    }
    if !type_deferred {
        validate(&mut m, ro_auto)?;
    }
    Ok(m)
}

/// Cross-field rules, once the type is known.
fn validate(m: &mut MountFlag, ro_auto: bool) -> Result<(), MountError> {
    let t = m.mount_type;
    let file_info = matches!(t, MountType::Secret | MountType::Ssh | MountType::Cache);
    for (key, set) in [
        ("mode", m.mode.is_some()),
        ("uid", m.uid.is_some()),
        ("gid", m.gid.is_some()),
    ] {
        if set && !file_info {
            return Err(MountError::FileInfoNotAllowed {
                key,
                mount_type: t.as_str(),
            });
        }
    }
    if ro_auto {
        m.readonly = !matches!(t, MountType::Cache | MountType::Tmpfs);
    }
    if m.sharing.is_some() && t != MountType::Cache {
        return Err(MountError::SharingNotAllowed {
            mount_type: t.as_str(),
        });
    }
    if t == MountType::Secret {
        if m.from.is_some() {
            return Err(MountError::SecretFrom);
        }
        if m.source.is_none() && m.target.is_none() && m.id.is_none() {
            return Err(MountError::SecretTarget);
        }
        if m.source.is_some() && m.id.is_some() {
            return Err(MountError::SecretSourceAndId);
        }
    }
    Ok(())
}

/// `$` followed by anything is a variable reference.
fn has_variable(v: &str) -> bool {
    v.find('$').is_some_and(|i| i + 1 < v.len())
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn parse_u32(v: &str, radix: u32, key: &'static str) -> Result<u32, MountError> {
    let bad = || MountError::InvalidNumber {
        key,
        value: v.to_string(),
    };
    if v.starts_with('+') {
        return Err(bad());
    }
    u32::from_str_radix(v, radix).map_err(|_| bad())
}

/// go-units `RAMInBytes`: `<number>[ ][kKmMgGtTpP][iI][bB]`, binary multiples.
fn ram_in_bytes(v: &str) -> Option<u64> {
    let num_len = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, rest) = v.split_at(num_len);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.contains("..") {
        return None;
    }
    let number: f64 = if num.matches('.').count() > 1 {
        // go-units accepts `1.2.3` syntactically but ParseFloat rejects it.
        return None;
    } else {
        num.parse().ok()?
    };
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let mut chars = rest.chars().peekable();
    let mut mult: f64 = 1.0;
    if let Some(&c) = chars.peek() {
        let power = match c.to_ascii_lowercase() {
            'k' => Some(1),
            'm' => Some(2),
            'g' => Some(3),
            't' => Some(4),
            'p' => Some(5),
            _ => None,
        };
        if let Some(p) = power {
            mult = 1024f64.powi(p);
            chars.next();
        }
    }
    if chars.peek().is_some_and(|c| c.eq_ignore_ascii_case(&'i')) {
        chars.next();
    }
    if chars.peek().is_some_and(|c| c.eq_ignore_ascii_case(&'b')) {
        chars.next();
    }
    if chars.next().is_some() {
        return None;
    }
    let bytes = number * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return None;
    }
    // Truncation toward zero, as go-units' int64 conversion.
    Some(bytes.trunc() as u64)
}

/// One CSV record, as Go's `encoding/csv` reads it (comma-separated, `"` quoting).
fn csv_fields(v: &str) -> Result<Vec<String>, MountError> {
    if v.is_empty() {
        return Err(MountError::Csv { reason: "EOF" });
    }
    let mut fields = Vec::new();
    let mut chars = v.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(MountError::Csv {
                            reason: "extraneous or missing \" in quoted-field",
                        });
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => {
                    return Err(MountError::Csv {
                        reason: "extraneous or missing \" in quoted-field",
                    });
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => {
                        return Err(MountError::Csv {
                            reason: "bare \" in non-quoted-field",
                        });
                    }
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(v: &str) -> Result<MountFlag, MountError> {
        parse_mount(v, None)
    }

    #[test]
    fn every_mount_type_parses_with_its_options() {
        let m =
            p("type=cache,target=/root/.cache,id=go,sharing=locked,mode=0755,uid=1,gid=2").unwrap();
        assert_eq!(m.mount_type, MountType::Cache);
        assert_eq!(m.sharing, Some(CacheSharing::Locked));
        assert_eq!((m.mode, m.uid, m.gid), (Some(0o755), Some(1), Some(2)));
        assert!(!m.readonly);
        let m = p("target=/src,from=build,source=/out,rw").unwrap();
        assert_eq!(m.mount_type, MountType::Bind);
        assert!(!m.readonly);
        assert!(p("type=bind,target=/x").unwrap().readonly);
        let m = p("type=tmpfs,dst=/tmp,size=64m").unwrap();
        assert_eq!(m.size, Some(64 << 20));
        let m = p("type=secret,id=tok,env=TOKEN,required").unwrap();
        assert!(m.required && m.readonly);
        assert_eq!(m.env.as_deref(), Some("TOKEN"));
        let m = p("type=ssh,required=false,ro=true").unwrap();
        assert!(!m.required && m.readonly);
        assert!(
            p("\"type=bind\",\"target=/a,b\"")
                .unwrap()
                .target
                .as_deref()
                == Some("/a,b")
        );
    }

    #[test]
    fn bad_mounts_are_rejected_with_buildkit_messages() {
        let cases = [
            ("type=nfs", "unsupported mount type \"nfs\""),
            (
                "type=bind,mode=0644",
                "mode not allowed for \"bind\" type mounts",
            ),
            (
                "type=cache,sharing=maybe",
                "unsupported sharing value \"maybe\"",
            ),
            (
                "type=bind,sharing=locked",
                "invalid cache sharing set for bind mount",
            ),
            ("type=cache,uid=x", "invalid value x for uid"),
            ("type=cache,mode=9", "invalid value 9 for mode"),
            (
                "type=secret",
                "invalid secret mount. one of source, target required",
            ),
            (
                "type=secret,id=a,from=b",
                "secret mount should not have a from",
            ),
            (
                "type=bind,required",
                "unexpected key 'required' for mount type 'bind'",
            ),
            (
                "type=cache,size=1m",
                "unexpected key 'size' for mount type 'cache'",
            ),
            ("type=tmpfs,size=lots", "invalid value for size: lots"),
            ("target", "invalid field 'target' must be a key=value pair"),
            ("type=bind,bogus=1", "unexpected key 'bogus' in 'bogus=1'"),
            ("ro=maybe", "invalid value for ro: maybe"),
            (
                "from=$STAGE",
                "'from' doesn't support variable expansion, define alias stage instead",
            ),
            ("", "failed to parse csv mounts: EOF"),
        ];
        for (input, want) in cases {
            assert_eq!(p(input).unwrap_err().to_string(), want, "{input}");
        }
    }

    #[test]
    fn variables_are_deferred_until_expansion() {
        let m = p("type=cache,target=$DIR,uid=$UID").unwrap();
        assert_eq!(m.target.as_deref(), Some("$DIR"));
        assert_eq!(m.uid, None);
        let expand = |v: &str| Ok(v.replace("$UID", "1000").replace("$DIR", "/c"));
        let m = parse_mount(&m.raw, Some(&expand)).unwrap();
        assert_eq!((m.uid, m.target.as_deref()), (Some(1000), Some("/c")));
    }
}
