//! `kiln build --secret`: buildx's syntax (`id=ID,src=PATH`, `source=`, `id=ID,env=VAR`,
//! `type=file|env`), parsed when the command line is; the values are read only when the
//! build starts and kept in memory.

use std::path::PathBuf;

use kiln_engine::ops::secrets::Secrets;

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file on the client.
    File(PathBuf),
    /// An environment variable of kiln's own environment.
    Env(String),
}

/// One `--secret` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The id a Dockerfile names (`RUN --mount=type=secret,id=…`).
    pub id: String,
    /// The value's source.
    pub source: SecretSource,
}

/// Parses one `--secret` value (buildx's `parseSecret`): comma-separated `key=value` fields
/// `type`, `id`, `src`/`source`, `env`. Without `src` and `env` the value is the environment
/// variable named like the id.
pub fn parse_secret(s: &str) -> Result<SecretSpec, String> {
    let (mut typ, mut id, mut src, mut env) = (None, None, None, None);
    for field in s.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!("invalid field '{field}' must be a key=value pair"));
        };
        match key.to_ascii_lowercase().as_str() {
            "type" if value == "file" || value == "env" => typ = Some(value.to_owned()),
            "type" => return Err(format!("unsupported secret type {value:?}")),
            "id" => id = Some(value.to_owned()),
            "src" | "source" => src = Some(value.to_owned()),
            "env" => env = Some(value.to_owned()),
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    let id = id
        .filter(|i| !i.is_empty())
        .ok_or_else(|| format!("{s:?}: the secret needs an id (id=ID)"))?;
    let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
    let (src, env) = (nonempty(src), nonempty(env));
    let source = match (typ.as_deref(), src, env) {
        (_, Some(_), Some(_)) => {
            return Err(format!("{s:?}: give either src= or env=, not both"));
        }
        (Some("env"), Some(var), None) | (Some("env") | None, None, Some(var)) => {
            SecretSource::Env(var)
        }
        (Some("file"), None, Some(_)) => {
            return Err(format!("{s:?}: type=file needs src=PATH"));
        }
        (Some("file") | None, Some(path), None) => SecretSource::File(path.into()),
        (Some("file"), None, None) => SecretSource::File(id.clone().into()),
        (_, None, None) => SecretSource::Env(id.clone()),
        _ => return Err(format!("{s:?}: unsupported secret type")),
    };
    Ok(SecretSpec { id, source })
}

/// The largest value accepted (BuildKit's limit: 500 KiB).
pub const MAX_SECRET_SIZE: usize = 500 * 1024;

/// Reads every secret's value. A missing file or unset variable is the user's mistake: the
/// message names the id and the source (never a value).
pub fn load(specs: &[SecretSpec]) -> Result<Secrets, String> {
    let mut secrets = Secrets::new();
    for (id, value) in values(specs)? {
        secrets.insert(id, value);
    }
    Ok(secrets)
}

/// [`load`]'s values, by id (for `kiln build --addr`, which sends them when the daemon asks).
pub fn values(specs: &[SecretSpec]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for s in specs {
        let value = match &s.source {
            SecretSource::File(p) => std::fs::read(p)
                .map_err(|e| format!("--secret id={}: reading {}: {e}", s.id, p.display()))?,
            SecretSource::Env(var) => std::env::var_os(var)
                .map(std::os::unix::ffi::OsStringExt::into_vec)
                .ok_or_else(|| {
                    format!(
                        "--secret id={}: the environment variable {var} is not set",
                        s.id
                    )
                })?,
        };
        if value.len() > MAX_SECRET_SIZE {
            return Err(format!(
                "--secret id={}: the value has {} bytes; at most {MAX_SECRET_SIZE} are allowed",
                s.id,
                value.len()
            ));
        }
        out.push((s.id.clone(), value));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(id: &str, p: &str) -> SecretSpec {
        SecretSpec {
            id: id.into(),
            source: SecretSource::File(p.into()),
        }
    }

    fn env(id: &str, v: &str) -> SecretSpec {
        SecretSpec {
            id: id.into(),
            source: SecretSource::Env(v.into()),
        }
    }

    #[test]
    fn secret_flags_parse_as_buildx_does() {
        assert_eq!(parse_secret("id=a,src=/p").unwrap(), file("a", "/p"));
        assert_eq!(parse_secret("id=a,source=/p").unwrap(), file("a", "/p"));
        assert_eq!(
            parse_secret("type=file,id=a,src=/p").unwrap(),
            file("a", "/p")
        );
        assert_eq!(parse_secret("id=a,env=V").unwrap(), env("a", "V"));
        assert_eq!(parse_secret("type=env,id=a,env=V").unwrap(), env("a", "V"));
        assert_eq!(parse_secret("type=env,id=a,src=V").unwrap(), env("a", "V"));
        assert_eq!(parse_secret("id=TOKEN").unwrap(), env("TOKEN", "TOKEN"));
        assert_eq!(parse_secret("ID=a,SRC=/p").unwrap(), file("a", "/p"));
    }

    #[test]
    fn malformed_secret_flags_are_refused() {
        for bad in [
            "",
            "src=/p",
            "id=,src=/p",
            "id=a,src",
            "id=a,src=/p,env=V",
            "id=a,type=ssh,src=/p",
            "id=a,colour=red",
            "type=file,id=a,env=V",
        ] {
            assert!(parse_secret(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn values_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, b"file-value").unwrap();
        let secrets = load(&[SecretSpec {
            id: "f".into(),
            source: SecretSource::File(p),
        }])
        .unwrap();
        assert_eq!(secrets.get("f").unwrap().expose(), b"file-value");
        assert!(load(&[file("g", "/nonexistent/kiln-secret")]).is_err());
        std::fs::write(dir.path().join("big"), vec![b'x'; MAX_SECRET_SIZE + 1]).unwrap();
        assert!(load(&[file("big", &dir.path().join("big").display().to_string())]).is_err());
        assert!(load(&[env("h", "KILN_TEST_SURELY_UNSET_VARIABLE")]).is_err());
    }
}
