//! A private OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on a free
//! loopback port, its storage in a temporary directory, plain HTTP or TLS with a test CA and
//! htpasswd basic auth; stopped (SIGKILL) when dropped. The package is required (CI installs
//! it with `KILN_DEPS_FULL=1 scripts/deps.sh`): a missing binary is a test failure.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The test user of a TLS registry.
pub const USER: &str = "kiln";
/// The test user's password.
pub const PASSWORD: &str = "s3cret-Pass";

/// A running registry.
pub struct Registry {
    dir: tempfile::TempDir,
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The CA certificate (PEM) of a TLS registry.
    pub ca: Option<PathBuf>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// A plain-HTTP registry without auth.
    pub fn plain() -> Self {
        Self::start(false)
    }

    /// A TLS registry (certificate for 127.0.0.1 from a fresh test CA) with basic auth
    /// ([`USER`], [`PASSWORD`]).
    pub fn tls_auth() -> Self {
        Self::start(true)
    }

    fn start(tls: bool) -> Self {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.is_file(),
            "docker-registry is not installed (KILN_DEPS_FULL=1 scripts/deps.sh installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let storage = d.join("storage");
        fs::create_dir_all(&storage).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        let mut ca = None;
        if tls {
            let c = d.join("ca.pem");
            run(Command::new("openssl")
                .current_dir(d)
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args([
                    "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                ])
                .args(["-subj", "/CN=kiln test CA"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
            run(Command::new("openssl")
                .current_dir(d)
                .args([
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-keyout", "srv.key", "-out", "srv.csr"])
                .args(["-subj", "/CN=127.0.0.1"]));
            fs::write(
                d.join("ext.cnf"),
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            run(Command::new("openssl")
                .current_dir(d)
                .args([
                    "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                ])
                .args(["-CAcreateserial", "-out", "srv.pem", "-days", "2"])
                .args(["-extfile", "ext.cnf"]));
            let ht = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .expect("htpasswd (apache2-utils) is installed");
            assert!(ht.status.success());
            fs::write(d.join("htpasswd"), &ht.stdout).unwrap();
            // skopeo's --cert-dir wants *.crt.
            let certs = d.join("certs");
            fs::create_dir_all(&certs).unwrap();
            fs::copy(&c, certs.join("ca.crt")).unwrap();
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                d.join("srv.pem").display(),
                d.join("srv.key").display(),
                d.join("htpasswd").display()
            ));
            ca = Some(c);
        }
        fs::write(d.join("config.yml"), config).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not start: {}",
                fs::read_to_string(d.join("registry.log")).unwrap_or_default()
            );
            sleep(Duration::from_millis(50));
        }
        Self {
            dir,
            child,
            addr,
            ca,
        }
    }

    /// A docker config directory with `user:password` for this registry (for `DOCKER_CONFIG`).
    pub fn docker_config(&self, user: &str, password: &str) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("docker-config-{}", user.len() + password.len()));
        fs::create_dir_all(&p).unwrap();
        let auth = base64(format!("{user}:{password}").as_bytes());
        fs::write(
            p.join("config.json"),
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.addr),
        )
        .unwrap();
        p
    }

    /// skopeo's directory of trusted CAs for this registry.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The file the registry serves blob `digest` (`sha256:…`) from.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// skopeo arguments to reach this registry (TLS: CA and credentials; else no TLS).
    pub fn skopeo_args(&self) -> Vec<String> {
        if self.ca.is_some() {
            vec![
                format!("--cert-dir={}", self.cert_dir().display()),
                format!("--creds={USER}:{PASSWORD}"),
            ]
        } else {
            vec!["--tls-verify=false".into()]
        }
    }

    /// `skopeo inspect --raw docker://ADDR/NAME` bytes.
    pub fn raw_manifest(&self, name: &str) -> Vec<u8> {
        let out = Command::new("skopeo")
            .arg("inspect")
            .arg("--raw")
            .args(self.skopeo_args())
            .arg(format!("docker://{}/{name}", self.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect --raw: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// sha256 of bytes as `sha256:HEX` (via `sha256sum`, to keep the helper std-only).
pub fn sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    format!("sha256:{}", s.split_whitespace().next().unwrap())
}
