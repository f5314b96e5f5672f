//! `kiln build --ssh`: buildx's syntax (`default`, `ID`, `ID=SOCKET`), parsed when the command
//! line is; the sockets are checked when the build starts. Only agent sockets are accepted:
//! kiln never reads a private key.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use kiln_engine::ops::ssh::SshAgents;

/// One `--ssh` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    /// The id a Dockerfile names (`RUN --mount=type=ssh,id=…`).
    pub id: String,
    /// The agent's socket; `None`: kiln's `$SSH_AUTH_SOCK`.
    pub socket: Option<PathBuf>,
}

/// Parses one `--ssh` value: `ID` (the agent at `$SSH_AUTH_SOCK`) or `ID=PATH`.
pub fn parse_ssh(s: &str) -> Result<SshSpec, String> {
    let (id, path) = match s.split_once('=') {
        Some((id, path)) => (id, Some(path)),
        None => (s, None),
    };
    if id.is_empty() || id.contains(',') {
        return Err(format!("{s:?}: expected ID or ID=SOCKET"));
    }
    let socket = match path {
        None => None,
        Some("") => return Err(format!("{s:?}: the socket path is empty")),
        Some(p) if p.contains(',') => {
            return Err(format!(
                "{s:?}: one agent socket per id is supported (ID=SOCKET)"
            ));
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    Ok(SshSpec {
        id: id.to_owned(),
        socket,
    })
}

/// Resolves every `--ssh` flag to an agent socket: `$SSH_AUTH_SOCK` when none is given. A
/// path that is not a unix socket (a key file, BuildKit's in-process agent form) is refused.
pub fn load(specs: &[SshSpec]) -> Result<SshAgents, String> {
    let mut agents = SshAgents::new();
    for s in specs {
        let path = match &s.socket {
            Some(p) => p.clone(),
            None => std::env::var_os("SSH_AUTH_SOCK")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| {
                    format!(
                        "--ssh {}: SSH_AUTH_SOCK is not set; start ssh-agent or pass --ssh {}=SOCKET",
                        s.id, s.id
                    )
                })?,
        };
        let md = std::fs::metadata(&path)
            .map_err(|e| format!("--ssh {}: {}: {e}", s.id, path.display()))?;
        if !md.file_type().is_socket() {
            return Err(format!(
                "--ssh {}={}: not an agent socket; --ssh ID=KEYFILE is not supported yet; start \
                 ssh-agent and ssh-add the key, then pass its socket",
                s.id,
                path.display()
            ));
        }
        agents.insert(s.id.clone(), path);
    }
    Ok(agents)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ssh_flags_parse_as_buildx_does() {
        assert_eq!(
            parse_ssh("default").unwrap(),
            SshSpec {
                id: "default".into(),
                socket: None
            }
        );
        assert_eq!(
            parse_ssh("deploy=/run/agent.sock").unwrap(),
            SshSpec {
                id: "deploy".into(),
                socket: Some("/run/agent.sock".into())
            }
        );
        assert!(parse_ssh("").is_err());
        assert!(parse_ssh("=/x").is_err());
        assert!(parse_ssh("a=").is_err());
        assert!(parse_ssh("a=/k1,/k2").is_err());
    }

    #[test]
    fn a_key_file_is_refused_with_the_way_forward() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        let err = load(&[SshSpec {
            id: "default".into(),
            socket: Some(key),
        }])
        .unwrap_err();
        assert!(
            err.contains("--ssh ID=KEYFILE is not supported yet"),
            "{err}"
        );
        assert!(!err.contains("BEGIN"), "{err}");
    }

    #[test]
    fn a_socket_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let agents = load(&[SshSpec {
            id: "x".into(),
            socket: Some(sock.clone()),
        }])
        .unwrap();
        assert_eq!(agents.get("x"), Some(sock.as_path()));
    }
}
