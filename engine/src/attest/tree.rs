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
}

impl LayerTree {
    /// The merged view of `view`'s layers.
    pub fn new(view: LayerView) -> Self {
        Self {
            view,
            files: Mutex::new(HashMap::new()),
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

fn to_io(e: FsViewError) -> io::Error {
    io::Error::other(e)
}

impl FileTree for LayerTree {
    fn entries(&self) -> io::Result<Vec<FileEntry>> {
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
            return Ok(Box::new(self.view.open_entry(&e).map_err(to_io)?));
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
}
