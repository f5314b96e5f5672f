//! RPM: the SQLite rpm database (`rpmdb.sqlite`, rpm ≥ 4.16: Fedora ≥ 33, RHEL ≥ 9), its
//! `Packages` table of rpm header blobs. Each header gives the name, epoch, version, release,
//! arch, license, vendor, source rpm and the files the package owns (`DIRNAMES`,
//! `BASENAMES`, `DIRINDEXES`).
//!
//! Not read, and said so in the SBOM's notes: the Berkeley DB (`Packages`, RHEL ≤ 8) and NDB
//! (`Packages.db`, SUSE) backends, and pages still in a write-ahead log (`rpmdb.sqlite-wal`)
//! that rpm has not checkpointed into the database file.

use super::{Ctx, limits, sqlite};
use crate::sbom::SbomError;
use crate::sbom::model::{Package, PackageKind};
use crate::sbom::purl::Purl;

/// The SQLite databases, newest location first.
const SQLITE: &[&str] = &[
    "/usr/lib/sysimage/rpm/rpmdb.sqlite",
    "/var/lib/rpm/rpmdb.sqlite",
];
/// The backends not read.
const OTHER: &[(&str, &str)] = &[
    ("/var/lib/rpm/Packages", "Berkeley DB"),
    ("/var/lib/rpm/Packages.db", "NDB"),
];
/// Largest rpm database read.
const DATABASE_BYTES: u64 = 256 << 20;

pub(super) fn catalog(ctx: &mut Ctx<'_>) -> Result<(), SbomError> {
    for (db, backend) in OTHER {
        if ctx.entry(db).is_some() {
            ctx.note(format!(
                "{db}: a {backend} rpm database, not catalogued (kiln reads the SQLite \
                 backend only); its rpm packages are missing from this SBOM"
            ));
        }
    }
    // Where both exist, one is a symlink to the other (Fedora links /var/lib/rpm): read the
    // first regular file.
    for db in SQLITE {
        if ctx.entry(db).is_none() {
            continue;
        }
        let Some(bytes) = ctx.read(db, DATABASE_BYTES)? else {
            continue;
        };
        let wal = format!("{db}-wal");
        if ctx.entry(&wal).is_some_and(|e| e.size > 0) {
            ctx.note(format!(
                "{wal}: a write-ahead log not checkpointed into the database; packages \
                 recorded only there are missing from this SBOM"
            ));
        }
        match headers(&bytes) {
            Ok(mut blobs) => {
                if blobs.len() > limits::PACKAGES_PER_SOURCE {
                    ctx.note(format!(
                        "{db}: over {} packages, the rest skipped",
                        limits::PACKAGES_PER_SOURCE
                    ));
                    blobs.truncate(limits::PACKAGES_PER_SOURCE);
                }
                packages(ctx, db, &blobs);
            }
            Err(e) => ctx.note(format!("{db}: not catalogued: {e}")),
        }
        return Ok(());
    }
    Ok(())
}

/// The header blobs of the `Packages` table, in rowid order.
fn headers(bytes: &[u8]) -> Result<Vec<(i64, Vec<u8>)>, String> {
    let db = sqlite::Db::open(bytes)?;
    let root = db
        .table_root("Packages")?
        .ok_or("no Packages table (not an rpm database)")?;
    let mut out = Vec::new();
    db.scan_table(root, &mut |rowid, values| {
        // Packages (hnum INTEGER PRIMARY KEY, blob BLOB): hnum is the rowid.
        // One past the limit is kept, so the caller can say the rest was skipped.
        if let Some(sqlite::Value::Blob(b)) = values.into_iter().nth(1)
            && out.len() <= limits::PACKAGES_PER_SOURCE
        {
            out.push((rowid, b));
        }
        Ok(())
    })?;
    Ok(out)
}

fn packages(ctx: &mut Ctx<'_>, db: &str, blobs: &[(i64, Vec<u8>)]) {
    let (ns, distro_q) = match &ctx.distro {
        Some(d) => (
            Some(d.id.clone()),
            d.version_id.as_ref().map(|v| format!("{}-{v}", d.id)),
        ),
        None => (None, None),
    };
    for (rowid, blob) in blobs {
        let h = match Header::parse(blob) {
            Ok(h) => h,
            Err(e) => {
                ctx.note(format!("{db}: package {rowid}: {e}, skipped"));
                continue;
            }
        };
        let (Some(name), Some(version), Some(release)) = (
            h.string(tag::NAME),
            h.string(tag::VERSION),
            h.string(tag::RELEASE),
        ) else {
            ctx.note(format!(
                "{db}: package {rowid}: no name, version or release, skipped"
            ));
            continue;
        };
        // rpm's gpg-pubkey entries are keys imported into the database, not packages.
        if name == "gpg-pubkey" {
            continue;
        }
        let epoch = h.int32(tag::EPOCH).first().copied();
        let arch = h.string(tag::ARCH);
        let evr = format!("{version}-{release}");
        let purl = Purl::new("rpm", &name, &evr)
            .namespace(ns.as_deref())
            .qualifier("arch", arch.clone())
            .qualifier("epoch", epoch.map(|e| e.to_string()))
            .qualifier("upstream", h.string(tag::SOURCERPM))
            .qualifier("distro", distro_q.clone())
            .build();
        let files = ctx.existing_files(h.files());
        ctx.push(Package {
            kind: PackageKind::Rpm,
            source: h.string(tag::SOURCERPM),
            version: match epoch {
                Some(e) => format!("{e}:{evr}"),
                None => evr.clone(),
            },
            name,
            purl,
            licenses: h.string(tag::LICENSE).into_iter().collect(),
            files,
            found_in: db.to_owned(),
            arch,
            supplier: h.string(tag::VENDOR),
        });
    }
}

/// The header tags read.
mod tag {
    pub(super) const NAME: u32 = 1000;
    pub(super) const VERSION: u32 = 1001;
    pub(super) const RELEASE: u32 = 1002;
    pub(super) const EPOCH: u32 = 1003;
    pub(super) const VENDOR: u32 = 1011;
    pub(super) const LICENSE: u32 = 1014;
    pub(super) const ARCH: u32 = 1022;
    pub(super) const OLDFILENAMES: u32 = 1027;
    pub(super) const SOURCERPM: u32 = 1044;
    pub(super) const DIRINDEXES: u32 = 1116;
    pub(super) const BASENAMES: u32 = 1117;
    pub(super) const DIRNAMES: u32 = 1118;
}

/// Entry types (rpm's `rpmTagType`).
const INT32: u32 = 4;
const STRING: u32 = 6;
const STRING_ARRAY: u32 = 8;
const I18NSTRING: u32 = 9;

/// Most index entries in one header (rpm's own limit is 0xffff).
const MAX_ENTRIES: usize = 0xffff;

/// An rpm header blob as the database stores it: a count of index entries, the size of the
/// data store, the entries (tag, type, offset, count; 16 bytes each, big-endian), the store.
struct Header<'a> {
    entries: Vec<(u32, u32, usize, usize)>,
    data: &'a [u8],
}

impl<'a> Header<'a> {
    fn parse(blob: &'a [u8]) -> Result<Self, String> {
        let word = |at: usize| -> Result<u32, String> {
            blob.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| "a truncated header".to_owned())
        };
        let count = word(0)? as usize;
        let size = word(4)? as usize;
        if count > MAX_ENTRIES {
            return Err(format!("{count} header entries"));
        }
        let start = 8 + 16 * count;
        let data = blob
            .get(start..)
            .and_then(|d| d.get(..size))
            .ok_or("a header whose data store is past its end")?;
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let at = 8 + 16 * i;
            entries.push((
                word(at)?,
                word(at + 4)?,
                word(at + 8)? as usize,
                word(at + 12)? as usize,
            ));
        }
        Ok(Self { entries, data })
    }

    fn entry(&self, wanted: u32) -> Option<(u32, usize, usize)> {
        self.entries
            .iter()
            .find(|(t, ..)| *t == wanted)
            .map(|&(_, ty, offset, count)| (ty, offset, count))
    }

    /// The strings of a string, string array or i18n string entry (at most `count`, each
    /// NUL-terminated inside the store).
    fn strings(&self, wanted: u32) -> Vec<String> {
        let Some((ty, offset, count)) = self.entry(wanted) else {
            return Vec::new();
        };
        let count = match ty {
            STRING => 1,
            STRING_ARRAY | I18NSTRING => count,
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        let mut at = offset;
        for _ in 0..count {
            let Some(rest) = self.data.get(at..) else {
                break;
            };
            let Some(end) = rest.iter().position(|b| *b == 0) else {
                break;
            };
            out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
            at += end + 1;
        }
        out
    }

    fn string(&self, wanted: u32) -> Option<String> {
        self.strings(wanted)
            .into_iter()
            .next()
            .filter(|s| !s.is_empty())
    }

    fn int32(&self, wanted: u32) -> Vec<u32> {
        match self.entry(wanted) {
            Some((INT32, offset, count)) => (0..count)
                .map_while(|i| {
                    let at = offset.checked_add(i.checked_mul(4)?)?;
                    let b = self.data.get(at..at + 4)?;
                    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The paths the package owns: each base name joined to its directory, or the old
    /// single list of file names.
    fn files(&self) -> Vec<String> {
        let bases = self.strings(tag::BASENAMES);
        if bases.is_empty() {
            return self.strings(tag::OLDFILENAMES);
        }
        let dirs = self.strings(tag::DIRNAMES);
        let index = self.int32(tag::DIRINDEXES);
        bases
            .iter()
            .zip(index)
            .filter_map(|(base, i)| Some(format!("{}{base}", dirs.get(i as usize)?)))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A real rpm database (rpm 4.18) of 11 packages on 512-byte pages: a table b-tree with an
    /// interior page, and every header on overflow pages.
    const SMALL: &[u8] = include_bytes!("../../../../vectors/sbom/rpmdb-512.sqlite");

    #[test]
    fn a_database_on_small_pages_gives_every_header() {
        let rows = headers(SMALL).unwrap();
        // Row ids and names as `rpm -qa --qf '%{DBINSTANCE} %{NAME}'` lists them for the
        // fixture this was cut from (fedora40-rpm: the same rows but tzdata, 3, and 13 up).
        let got: Vec<(i64, String)> = rows
            .iter()
            .map(|(id, blob)| (*id, Header::parse(blob).unwrap().string(tag::NAME).unwrap()))
            .collect();
        let mut want = vec![(1, "openssl-libs".to_owned()), (2, "bash".to_owned())];
        want.extend((4..=12).map(|i| (i, format!("fixture-pkg{:02}", 28 - i))));
        assert_eq!(got, want);
        let ssl = Header::parse(&rows[0].1).unwrap();
        assert_eq!(ssl.int32(tag::EPOCH), [1]);
        assert_eq!(
            ssl.files(),
            [
                "/usr/share/openssl-libs",
                "/usr/share/openssl-libs/file-1.txt",
                "/usr/share/openssl-libs/file-2.txt"
            ]
        );
    }

    #[test]
    fn damaged_databases_are_errors_not_panics() {
        // Cut at every page boundary and in between.
        for len in (0..SMALL.len()).step_by(97) {
            let _ = headers(&SMALL[..len]);
        }
        // Every byte of the first pages flipped in turn.
        for i in 0..SMALL.len().min(4096) {
            let mut bad = SMALL.to_vec();
            bad[i] ^= 0xff;
            let _ = headers(&bad);
        }
        // A page that names itself as its own child is caught, not followed forever.
        let db = sqlite::Db::open(SMALL).unwrap();
        let root = db.table_root("Packages").unwrap().unwrap();
        let mut looped = SMALL.to_vec();
        let start = (root as usize - 1) * 512;
        assert_eq!(looped[start], 0x05, "the root is an interior page");
        looped[start + 8..start + 12].copy_from_slice(&root.to_be_bytes());
        let err = headers(&looped).unwrap_err();
        assert!(err.contains("referenced twice"), "{err}");
    }

    #[test]
    fn a_malformed_header_is_refused() {
        assert!(Header::parse(&[]).is_err());
        assert!(
            Header::parse(&[0, 0, 0, 1, 0, 0, 0, 0]).is_err(),
            "an entry past the end"
        );
        assert!(
            Header::parse(&[0, 1, 0, 0, 0, 0, 0, 0]).is_err(),
            "too many entries"
        );
        // One string entry whose string is not terminated: no value, no panic.
        let mut h = vec![0, 0, 0, 1, 0, 0, 0, 3];
        h.extend_from_slice(&1000u32.to_be_bytes());
        h.extend_from_slice(&STRING.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&1u32.to_be_bytes());
        h.extend_from_slice(b"abc");
        assert_eq!(Header::parse(&h).unwrap().string(tag::NAME), None);
    }
}
