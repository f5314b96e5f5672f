//! The image's final file system as the SBOM catalogers see it: a [`FileTree`] over the
//! image's layer directories, read through [`LayerView`] (no mount, no host symlink followed).

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

use kiln_attest::sbom::{EntryKind, FileEntry, FileTree};

use crate::fsview::{Entry, FileKind, FsViewError, LayerView};

/// A [`FileTree`] over a stack of overlay-format layer directories.
#[derive(Debug)]
pub struct LayerTree {
    view: LayerView,
    /// The regular files the last [`FileTree::entries`] walk found, by path: opening one then
    /// starts from the layer that holds it instead of resolving the path through every layer.
    files: Mutex<HashMap<String, Entry>>,
    /// The entries, when they came from per-layer listings ([`LayerTree::from_listings`])
    /// instead of a walk of the merged view; taken by the first [`FileTree::entries`] (a later
    /// call walks).
    listed: Mutex<Option<Vec<FileEntry>>>,
    /// The parent directory the last [`FileTree::open`] of a walked file opened: the catalog
    /// reads files in path order, so the next one is mostly in the same directory.
    last_parent: Mutex<Option<crate::fsview::LastParent>>,
}

impl LayerTree {
    /// The merged view of `view`'s layers.
    pub fn new(view: LayerView) -> Self {
        Self {
            view,
            files: Mutex::new(HashMap::new()),
            listed: Mutex::new(None),
            last_parent: Mutex::new(None),
        }
    }

    /// The tree of `view`'s layers from their listings (one per layer, bottom first; see
    /// [`super::listing`]): the same entries a walk of the merged view finds, without it.
    pub fn from_listings(view: LayerView, listings: &[&super::listing::Listing]) -> Self {
        use super::listing::Kind;
        let merged = super::listing::merge(listings);
        let mut files = HashMap::new();
        let mut listed = Vec::with_capacity(merged.len());
        for (path, (e, layer)) in merged {
            let kind = match e.kind {
                Kind::File => EntryKind::Regular,
                Kind::Dir | Kind::OpaqueDir => EntryKind::Directory,
                Kind::Symlink => EntryKind::Symlink,
                Kind::Other | Kind::Whiteout => EntryKind::Other,
            };
            if kind == EntryKind::Regular {
                files.insert(
                    path.clone(),
                    Entry::file_in_layer(&path, layer, e.size, e.mode),
                );
            }
            listed.push(FileEntry {
                path,
                kind,
                mode: e.mode,
                size: e.size,
            });
        }
        Self {
            view,
            files: Mutex::new(files),
            listed: Mutex::new(Some(listed)),
            last_parent: Mutex::new(None),
        }
    }

    fn walk(
        &self,
        dir: &str,
        out: &mut Vec<FileEntry>,
        files: &mut HashMap<String, Entry>,
    ) -> Result<(), FsViewError> {
        for e in self.view.read_dir(dir)? {
            let m = e.metadata();
            let path = e.path();
            let kind = match m.kind {
                FileKind::File => EntryKind::Regular,
                FileKind::Dir => EntryKind::Directory,
                FileKind::Symlink => EntryKind::Symlink,
                _ => EntryKind::Other,
            };
            out.push(FileEntry {
                path: path.clone(),
                kind,
                mode: m.mode,
                size: if kind == EntryKind::Regular {
                    m.size
                } else {
                    0
                },
            });
            if kind == EntryKind::Directory {
                self.walk(&path, out, files)?;
            } else if kind == EntryKind::Regular {
                files.insert(path, e);
            }
        }
        Ok(())
    }
}

impl LayerTree {
    /// The index (bottom first) of the layer that holds the regular file at `path`, as the last
    /// [`FileTree::entries`] walk found it.
    pub fn layer_of(&self, path: &str) -> Option<usize> {
        self.files.lock().ok()?.get(path).map(Entry::layer)
    }
}

/// Per-file catalog facts kept per layer: a layer directory never changes once written, so
/// what the catalog learned about a file it holds (digests, binary scan) stays true for as long
/// as the layer exists. Kept in the store's SBOM table under `facts:<layer id>` (cleared by
/// prune with the catalogs), except for layers the current build made.
#[derive(Debug)]
pub struct LayerFacts<'a> {
    tree: &'a LayerTree,
    /// Layer id (its directory's name) by layer index.
    ids: Vec<String>,
    known: HashMap<String, std::collections::BTreeMap<String, kiln_attest::sbom::FileFacts>>,
    changed: std::collections::BTreeSet<String>,
    /// Layers whose facts are not kept: made by this build, they are likely never seen again
    /// (a `--no-cache` build, a step whose input changed). Once a later build reuses one, its
    /// facts are learned then.
    transient: std::collections::BTreeSet<String>,
}

/// The store key of a layer's facts.
pub fn facts_key(layer_id: &str) -> String {
    format!("facts:{layer_id}")
}

impl<'a> LayerFacts<'a> {
    /// Facts for `tree`'s layers (`ids` by index), starting from what `load` returns for each
    /// layer id (JSON written by [`LayerFacts::fresh`]); unreadable records are ignored.
    pub fn new(
        tree: &'a LayerTree,
        ids: Vec<String>,
        transient: std::collections::BTreeSet<String>,
        load: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Self {
        let known = ids
            .iter()
            .filter_map(|id| {
                let json = load(id)?;
                Some((id.clone(), serde_json::from_slice(&json).ok()?))
            })
            .collect();
        Self {
            tree,
            ids,
            known,
            changed: Default::default(),
            transient,
        }
    }

    /// Facts about the files of layer `id` known from elsewhere (what a COPY step wrote and
    /// the content digests it knew), given before the catalog: not recorded as learned.
    pub fn seed(
        &mut self,
        id: &str,
        files: impl IntoIterator<Item = (String, kiln_attest::sbom::FileFacts)>,
    ) {
        self.known.entry(id.to_owned()).or_default().extend(files);
    }

    fn layer_id(&self, path: &str) -> Option<&String> {
        self.ids.get(self.tree.layer_of(path)?)
    }

    /// The records of layers that learned something: (store key, JSON).
    pub fn fresh(&self) -> Vec<(String, Vec<u8>)> {
        self.changed
            .iter()
            .filter_map(|id| {
                let json = serde_json::to_vec(self.known.get(id)?).ok()?;
                Some((facts_key(id), json))
            })
            .collect()
    }
}

impl kiln_attest::sbom::FactsCache for LayerFacts<'_> {
    fn get(&self, path: &str) -> Option<kiln_attest::sbom::FileFacts> {
        self.known.get(self.layer_id(path)?)?.get(path).cloned()
    }

    fn put(&mut self, path: &str, facts: kiln_attest::sbom::FileFacts) {
        let Some(id) = self.layer_id(path).cloned() else {
            return;
        };
        if self.transient.contains(&id) {
            return;
        }
        self.known
            .entry(id.clone())
            .or_default()
            .insert(path.to_owned(), facts);
        self.changed.insert(id);
    }
}

fn to_io(e: FsViewError) -> io::Error {
    io::Error::other(e)
}

impl FileTree for LayerTree {
    fn entries(&self) -> io::Result<Vec<FileEntry>> {
        if let Some(listed) = self.listed.lock().ok().and_then(|mut l| l.take()) {
            return Ok(listed);
        }
        let mut out = Vec::new();
        let mut files = HashMap::new();
        self.walk("/", &mut out, &mut files).map_err(to_io)?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        if let Ok(mut f) = self.files.lock() {
            *f = files;
        }
        Ok(out)
    }

    fn open(&self, path: &str) -> io::Result<Box<dyn io::Read + '_>> {
        let walked = self.files.lock().ok().and_then(|f| f.get(path).cloned());
        if let Some(e) = walked {
            let file = match self.last_parent.lock() {
                Ok(mut last) => self.view.open_entry_reusing(&e, &mut last),
                Err(_) => self.view.open_entry(&e),
            };
            return Ok(Box::new(file.map_err(to_io)?));
        }
        let Some(e) = self.view.lookup(path).map_err(to_io)? else {
            return Err(io::Error::new(io::ErrorKind::NotFound, path.to_owned()));
        };
        if e.metadata().kind != FileKind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path} is not a regular file"),
            ));
        }
        Ok(Box::new(self.view.open_entry(&e).map_err(to_io)?))
    }

    fn read_link(&self, path: &str) -> io::Result<String> {
        let Some(e) = self.view.lookup(path).map_err(to_io)? else {
            return Err(io::Error::new(io::ErrorKind::NotFound, path.to_owned()));
        };
        self.view.read_link_entry(&e).map_err(to_io)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Files read in path order reuse their parent directory while it stays the same; a file
    /// in the same directory of another layer, or in another directory, is still read from
    /// where it lies.
    #[test]
    fn files_read_in_order_come_from_their_own_layer_and_directory() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        for (root, dir, name) in [
            (lower.path(), "a", "1"),
            (upper.path(), "a", "2"),
            (lower.path(), "a", "3"),
            (lower.path(), "a/b", "4"),
            (lower.path(), "a", "5"),
            (upper.path(), "c", "6"),
            (lower.path(), "c", "7"),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join(name), format!("{dir}/{name}")).unwrap();
        }
        let tree = LayerTree::new(LayerView::new(vec![
            lower.path().to_owned(),
            upper.path().to_owned(),
        ]));
        let mut read = Vec::new();
        for e in tree.entries().unwrap() {
            if e.kind == EntryKind::Regular {
                let mut s = String::new();
                tree.open(&e.path).unwrap().read_to_string(&mut s).unwrap();
                read.push(s);
            }
        }
        assert_eq!(read, ["a/1", "a/2", "a/3", "a/5", "a/b/4", "c/6", "c/7"]);
    }

    #[test]
    fn upper_layers_and_whiteouts_decide_what_the_tree_holds() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(lower.path().join("etc")).unwrap();
        std::fs::write(lower.path().join("etc/a"), b"lower").unwrap();
        std::fs::write(lower.path().join("etc/gone"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/a", lower.path().join("link")).unwrap();
        std::fs::create_dir_all(upper.path().join("etc")).unwrap();
        std::fs::write(upper.path().join("etc/a"), b"upper").unwrap();
        // A whiteout as a `trusted.overlay.whiteout` file is not portable to every test file
        // system; a 0/0 char device needs root. Use the device when we can.
        let whiteout = rustix::fs::mknodat(
            rustix::fs::CWD,
            upper.path().join("etc/gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .is_ok();
        let tree = LayerTree::new(LayerView::new(vec![
            lower.path().to_owned(),
            upper.path().to_owned(),
        ]));
        let paths: Vec<(String, EntryKind)> = tree
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| (e.path, e.kind))
            .collect();
        let mut want = vec![
            ("/etc".to_owned(), EntryKind::Directory),
            ("/etc/a".to_owned(), EntryKind::Regular),
        ];
        if !whiteout {
            println!("note: no whiteout device (not root); the whiteout case is not covered");
            want.push(("/etc/gone".to_owned(), EntryKind::Regular));
        }
        want.push(("/link".to_owned(), EntryKind::Symlink));
        assert_eq!(paths, want);
        let mut s = String::new();
        tree.open("/etc/a").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "upper");
        // A symlink is never followed, even to a file inside the tree; its target is read.
        assert!(tree.open("/link").is_err());
        assert_eq!(tree.read_link("/link").unwrap(), "/etc/a");
        assert_eq!(
            tree.open("/nope").err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
    }

    /// Random stacks of layers (files, directories, opaque directories, symlinks, fifos and
    /// whiteouts over a small set of paths, so that layers overwrite, delete and hide each
    /// other's entries): the tree from per-layer listings equals the walk of the merged view,
    /// entry for entry and layer for layer.
    #[test]
    fn listings_merge_to_the_merged_view() {
        let root = rustix::process::geteuid().is_root();
        if !root {
            println!(
                "note: not root: no whiteout devices or trusted.* opaque markers; those cases are not covered"
            );
        }
        const PATHS: [&str; 10] = [
            "a", "a/x", "a/x/1", "a/x/2", "a/y", "b", "b/z", "b/z/3", "c", "a-b",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut checked = 0;
        let (mut whiteouts, mut opaque) = (0, 0);
        for _case in 0..150 {
            let dirs: Vec<tempfile::TempDir> =
                (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
            for layer in &dirs {
                for path in PATHS {
                    if next(3) != 0 {
                        continue;
                    }
                    let full = layer.path().join(path);
                    // The parents, as plain directories of this layer.
                    let parent = full.parent().unwrap();
                    if std::fs::create_dir_all(parent).is_err()
                        || std::fs::symlink_metadata(&full).is_ok()
                    {
                        continue;
                    }
                    match next(6) {
                        0 => std::fs::write(&full, path.as_bytes()).unwrap(),
                        1 => std::fs::create_dir(&full).unwrap(),
                        2 => {
                            std::fs::create_dir(&full).unwrap();
                            if root {
                                rustix::fs::setxattr(
                                    &full,
                                    "trusted.overlay.opaque",
                                    b"y",
                                    rustix::fs::XattrFlags::empty(),
                                )
                                .unwrap();
                            }
                        }
                        3 => std::os::unix::fs::symlink("/a/x", &full).unwrap(),
                        4 if root => rustix::fs::mknodat(
                            rustix::fs::CWD,
                            &full,
                            rustix::fs::FileType::CharacterDevice,
                            rustix::fs::Mode::from_raw_mode(0o600),
                            0,
                        )
                        .unwrap(),
                        _ => rustix::fs::mknodat(
                            rustix::fs::CWD,
                            &full,
                            rustix::fs::FileType::Fifo,
                            rustix::fs::Mode::from_raw_mode(0o644),
                            0,
                        )
                        .unwrap(),
                    }
                }
            }
            let layers: Vec<std::path::PathBuf> =
                dirs.iter().map(|d| d.path().to_owned()).collect();
            let walked = LayerTree::new(LayerView::new(layers.clone()));
            let want = walked.entries().unwrap();
            let listings: Vec<super::super::listing::Listing> = layers
                .iter()
                .map(|l| super::super::listing::list(l).unwrap())
                .collect();
            for l in &listings {
                for e in &l.entries {
                    match e.kind {
                        super::super::listing::Kind::Whiteout => whiteouts += 1,
                        super::super::listing::Kind::OpaqueDir => opaque += 1,
                        _ => {}
                    }
                }
            }
            let refs: Vec<&super::super::listing::Listing> = listings.iter().collect();
            let merged = LayerTree::from_listings(LayerView::new(layers.clone()), &refs);
            let got = merged.entries().unwrap();
            let show = |v: &[FileEntry]| {
                v.iter()
                    .map(|e| format!("{} {:?} {:o} {}", e.path, e.kind, e.mode, e.size))
                    .collect::<Vec<_>>()
            };
            assert_eq!(show(&got), show(&want), "listings: {listings:#?}");
            for e in want.iter().filter(|e| e.kind == EntryKind::Regular) {
                assert_eq!(
                    merged.layer_of(&e.path),
                    walked.layer_of(&e.path),
                    "{}",
                    e.path
                );
                let mut s = String::new();
                merged
                    .open(&e.path)
                    .unwrap()
                    .read_to_string(&mut s)
                    .unwrap();
                assert_eq!(s, e.path.trim_start_matches('/'));
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} files compared");
        if root {
            assert!(
                whiteouts > 20 && opaque > 20,
                "{whiteouts} whiteouts, {opaque} opaque"
            );
        }
    }
}
