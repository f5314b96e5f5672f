//! Helpers for end-to-end tests of the `kiln` binary: run it against a temporary store, build
//! the busybox base image once per test process, read OCI tar outputs and `-o type=local`
//! trees into comparable maps.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The tag the shared busybox base image gets in every store the helpers hand out.
pub const BASE: &str = "kiln-test/busybox";

/// The base image's Dockerfile (the same as `examples/busybox-base/Dockerfile`).
pub const BASE_DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY passwd group /etc/
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["/bin/sh"]
"#;

pub const BASE_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
app:x:1000:1000:app:/home/app:/bin/sh\n";

pub const BASE_GROUP: &str = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n";

/// The kiln binary under test.
pub fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// True when running as root (RUN steps need namespaces and overlayfs). Prints the skip line
/// otherwise, so callers can `if !root_or_skip() { return; }`.
pub fn root_or_skip() -> bool {
    let root = fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !root {
        println!("skipped: needs root");
    }
    root
}

/// True if `tool` is on PATH.
pub fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A kiln store in a temporary directory.
pub struct Kiln {
    dir: tempfile::TempDir,
}

/// What one kiln invocation produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// What a finished command produced.
    pub fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The manifest digest a successful build printed (last stdout line).
    pub fn digest(&self) -> String {
        self.stdout.lines().last().unwrap_or("").trim().to_owned()
    }

    /// Panics with both streams unless the command exited 0.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "kiln failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The JSON progress events (`--progress json`) on stderr.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stderr
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Kiln {
    /// An empty store.
    pub fn empty() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("kiln-root")
                .tempdir()
                .unwrap(),
        }
    }

    /// A store that already holds the busybox base image as [`BASE`]: a copy of the store the
    /// base was built into once for this test process.
    pub fn with_base() -> Self {
        let k = Self::empty();
        let seed = seed_store();
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", seed.display()))
            .arg(k.root())
            .status()
            .unwrap();
        assert!(st.success(), "copying the seed store");
        // The copied lock file is not held by anyone; nothing else to fix up.
        k
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A `kiln --root ROOT` command.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(kiln_bin());
        c.arg("--root").arg(self.root());
        c.env_remove("KILN_ROOT").env_remove("SOURCE_DATE_EPOCH");
        c
    }

    /// Runs `kiln --root ROOT ARGS…` in `cwd`.
    pub fn run<I, S>(&self, cwd: &Path, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Run::from(self.cmd().current_dir(cwd).args(args).output().unwrap())
    }

    /// `kiln build --progress plain ARGS… CONTEXT`.
    pub fn build(&self, context: &Path, args: &[&str]) -> Run {
        let mut c = self.cmd();
        c.current_dir(context)
            .arg("build")
            .arg("--progress=plain")
            .args(args)
            .arg(context);
        Run::from(c.output().unwrap())
    }

    /// Like [`Kiln::build`] with a prepared command (extra env etc.).
    pub fn build_with(&self, context: &Path, args: &[String], f: impl FnOnce(&mut Command)) -> Run {
        let mut c = self.cmd();
        c.current_dir(context).arg("build").args(args).arg(context);
        f(&mut c);
        Run::from(c.output().unwrap())
    }

    /// `kiln images` stdout.
    pub fn images(&self) -> String {
        self.run(self.root(), ["images"]).ok().stdout
    }

    /// `kiln du` stdout.
    pub fn du(&self) -> String {
        self.run(self.root(), ["du"]).ok().stdout
    }

    /// The `cache records` count from `kiln du`.
    pub fn cache_records(&self) -> u64 {
        du_count(&self.du(), "cache records")
    }
}

/// The COUNT column of a `kiln du` row.
pub fn du_count(du: &str, row: &str) -> u64 {
    du.lines()
        .find(|l| l.starts_with(row))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no {row:?} row in kiln du output:\n{du}"))
}

/// Writes the busybox base context (busybox binary, passwd, group, Dockerfile) into `dir`.
pub fn write_base_context(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::copy("/bin/busybox", dir.join("busybox"))
        .expect("/bin/busybox (busybox-static) is installed");
    fs::set_permissions(dir.join("busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("passwd"), BASE_PASSWD).unwrap();
    fs::write(dir.join("group"), BASE_GROUP).unwrap();
    fs::write(dir.join("Dockerfile"), BASE_DOCKERFILE).unwrap();
}

/// The store the base image is built into, once per test process.
fn seed_store() -> &'static Path {
    static SEED: OnceLock<PathBuf> = OnceLock::new();
    SEED.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-seed");
        fs::create_dir_all(&base).unwrap();
        clean_stale(&base);
        let dir = base.join(format!("{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.join("root");
        let ctx = dir.join("ctx");
        write_base_context(&ctx);
        let out = Command::new(kiln_bin())
            .arg("--root")
            .arg(&root)
            .args(["build", "--progress=plain", "-t", BASE])
            .arg(&ctx)
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap();
        let r = Run::from(out);
        assert_eq!(r.code, 0, "building the busybox base failed:\n{}", r.stderr);
        root
    })
}

/// Removes seed stores of test processes that are gone.
fn clean_stale(base: &Path) {
    let Ok(rd) = fs::read_dir(base) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(pid) = name.parse::<u32>()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Copies a directory tree (files, dirs, symlinks), normalizing modes: 0755 for directories
/// and files with any execute bit, 0644 for other files (git checkouts depend on the umask).
pub fn copy_tree(src: &Path, dst: &Path, skip: &dyn Fn(&Path) -> bool) {
    fs::create_dir_all(dst).unwrap();
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).unwrap();
    let mut entries: Vec<_> = fs::read_dir(src).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel = e.path();
        if skip(&rel) {
            continue;
        }
        let to = dst.join(e.file_name());
        let md = fs::symlink_metadata(e.path()).unwrap();
        if md.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else if md.is_dir() {
            copy_tree(&e.path(), &to, skip);
        } else {
            fs::copy(e.path(), &to).unwrap();
            let mode = if md.mode() & 0o111 != 0 { 0o755 } else { 0o644 };
            fs::set_permissions(&to, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

/// One file system entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl Entry {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::File(_) => "file",
            Kind::Dir => "dir",
            Kind::Symlink(_) => "symlink",
            Kind::Other => "other",
        }
    }
}

/// A file system: absolute path ("/a/b") → entry. The root itself is not included.
pub type Tree = BTreeMap<String, Entry>;

/// Walks a directory (`-o type=local` output) into a [`Tree`].
pub fn walk_dir(root: &Path) -> Tree {
    fn go(dir: &Path, prefix: &str, out: &mut Tree) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let path = format!("{prefix}/{}", e.file_name().to_string_lossy());
            let md = fs::symlink_metadata(e.path()).unwrap();
            let ft = md.file_type();
            let kind = if ft.is_symlink() {
                Kind::Symlink(
                    fs::read_link(e.path())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File(fs::read(e.path()).unwrap())
            } else {
                Kind::Other
            };
            let is_dir = kind == Kind::Dir;
            out.insert(
                path.clone(),
                Entry {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: u64::from(md.uid()),
                    gid: u64::from(md.gid()),
                },
            );
            if is_dir {
                go(&e.path(), &path, out);
            }
        }
    }
    let mut out = Tree::new();
    go(root, "", &mut out);
    out
}

/// An image read from an OCI tar (`-o type=oci`).
#[derive(Debug)]
pub struct OciImage {
    /// Every file of the tar by name.
    pub files: BTreeMap<String, Vec<u8>>,
    pub index: serde_json::Value,
    /// The digest of the first manifest in index.json.
    pub manifest_digest: String,
    pub manifest: serde_json::Value,
    pub config: serde_json::Value,
    /// Layer blobs (compressed digest, media type), bottom to top.
    pub layers: Vec<(String, String)>,
}

/// Reads every regular file of a tar by name.
pub fn tar_files(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(fs::File::open(path).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

impl OciImage {
    pub fn read(path: &Path) -> Self {
        let files = tar_files(path);
        let json = |name: &str| -> serde_json::Value {
            let b = files
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing from {}", path.display()));
            serde_json::from_slice(b).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let index = json("index.json");
        let top = &index["manifests"][0];
        let top_digest = top["digest"]
            .as_str()
            .expect("index.json manifests[0].digest")
            .to_owned();
        // With attestations, index.json points at an image index holding the image manifest,
        // the attestation manifest (platform unknown/unknown) and signed referrers.
        let manifest_digest = if top["mediaType"] == "application/vnd.oci.image.index.v1+json" {
            let nested = json(&blob_path(&top_digest));
            let images: Vec<&serde_json::Value> = nested["manifests"]
                .as_array()
                .expect("nested index manifests")
                .iter()
                .filter(|d| d["artifactType"].is_null() && d["platform"]["os"] != "unknown")
                .collect();
            assert_eq!(images.len(), 1, "one image in {nested}");
            images[0]["digest"].as_str().expect("digest").to_owned()
        } else {
            top_digest
        };
        let manifest = json(&blob_path(&manifest_digest));
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .expect("config digest")
            .to_owned();
        let config = json(&blob_path(&config_digest));
        let layers = manifest["layers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| {
                        (
                            l["digest"].as_str().unwrap_or_default().to_owned(),
                            l["mediaType"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            files,
            index,
            manifest_digest,
            manifest,
            config,
            layers,
        }
    }

    /// A blob's bytes.
    pub fn blob(&self, digest: &str) -> &[u8] {
        self.files
            .get(&blob_path(digest))
            .unwrap_or_else(|| panic!("blob {digest} missing"))
    }

    /// The uncompressed tar of a layer.
    pub fn layer_tar(&self, digest: &str, media_type: &str) -> Vec<u8> {
        let raw = self.blob(digest);
        let mut out = Vec::new();
        if media_type.ends_with("gzip") {
            flate2::read::MultiGzDecoder::new(raw)
                .read_to_end(&mut out)
                .unwrap();
        } else if media_type.ends_with("zstd") {
            out = zstd::stream::decode_all(raw).unwrap();
        } else {
            out = raw.to_vec();
        }
        out
    }

    /// The image's file system: every layer applied in order, whiteouts honoured.
    pub fn rootfs(&self) -> Tree {
        let mut tree = Tree::new();
        for (digest, mt) in &self.layers {
            apply_layer(&mut tree, &self.layer_tar(digest, mt));
        }
        tree
    }
}

fn norm(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// Applies one uncompressed layer tar to `tree` (OCI whiteouts: `.wh.NAME`, `.wh..wh..opq`).
pub fn apply_layer(tree: &mut Tree, layer: &[u8]) {
    let mut a = tar::Archive::new(layer);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = norm(&e.path().unwrap().to_string_lossy());
        if path == "/" {
            continue;
        }
        let (dir, base) = path.rsplit_once('/').unwrap();
        if base == ".wh..wh..opq" {
            let prefix = format!("{dir}/");
            tree.retain(|k, _| !k.starts_with(&prefix));
            continue;
        }
        if let Some(name) = base.strip_prefix(".wh.") {
            let victim = format!("{dir}/{name}");
            let prefix = format!("{victim}/");
            tree.retain(|k, _| *k != victim && !k.starts_with(&prefix));
            continue;
        }
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(
                e.link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            ),
            tar::EntryType::Link => {
                let target = norm(&e.link_name().unwrap().unwrap().to_string_lossy());
                tree.get(&target)
                    .map(|t| t.kind.clone())
                    .unwrap_or(Kind::Other)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                Kind::File(data)
            }
            _ => Kind::Other,
        };
        // A non-directory replaces whatever was there, including a directory's contents.
        if kind != Kind::Dir {
            let prefix = format!("{path}/");
            tree.retain(|k, _| !k.starts_with(&prefix));
        }
        tree.insert(
            path,
            Entry {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
            },
        );
    }
}

/// Lists the regular files and directories under `dir` (relative paths), skipping any path
/// component in `skip`.
pub fn list_files(dir: &Path, skip: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (p, _) in walk_dir(dir) {
        if p.split('/').any(|c| skip.contains(&c)) {
            continue;
        }
        out.push(p);
    }
    out
}
