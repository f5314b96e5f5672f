//! A minimal read-only reader of one table of an SQLite database file held in memory: enough
//! to list the rows of rpm's `Packages` table (`rpmdb.sqlite`), nothing more. It follows the
//! documented file format (<https://www.sqlite.org/fileformat2.html>): the 100-byte header,
//! table b-trees (interior and leaf pages), records, and overflow pages.
//!
//! The file is untrusted (a build wrote it). Every offset is bounds-checked, a page is visited
//! at most once (so a cycle of child or overflow pointers ends), the b-tree depth is capped,
//! and a row's payload is capped. Malformed data is an error naming what was wrong, never a
//! panic. Not read: the write-ahead log (`-wal` file; the caller says when one is present),
//! index b-trees, `WITHOUT ROWID` tables, and text in UTF-16 (rpm writes UTF-8).

use std::collections::HashSet;

/// Deepest table b-tree followed (SQLite's own limit is 20 levels in practice).
const MAX_DEPTH: usize = 40;
/// Largest row payload assembled (rpm header blobs are well under this).
const MAX_PAYLOAD: u64 = 64 << 20;

/// A column value of a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// An SQLite database file in memory.
pub(crate) struct Db<'a> {
    bytes: &'a [u8],
    page_size: usize,
    /// Usable bytes per page (the page size less the reserved bytes at each page's end).
    usable: usize,
}

/// What made a file unreadable.
pub(crate) type Error = String;

impl<'a> Db<'a> {
    /// Checks the header of `bytes`.
    pub(crate) fn open(bytes: &'a [u8]) -> Result<Self, Error> {
        let header = bytes
            .get(..100)
            .ok_or("shorter than the 100-byte SQLite header")?;
        if header.get(..16) != Some(b"SQLite format 3\0".as_slice()) {
            return Err("not an SQLite 3 database (bad magic)".into());
        }
        let raw = u16::from_be_bytes([header[16], header[17]]);
        let page_size = if raw == 1 { 65536 } else { usize::from(raw) };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(format!("invalid page size {raw}"));
        }
        let reserved = usize::from(header[20]);
        let usable = page_size.saturating_sub(reserved);
        if usable < 480 {
            return Err(format!(
                "{reserved} reserved bytes leave too little of a page"
            ));
        }
        let encoding = u32::from_be_bytes([header[56], header[57], header[58], header[59]]);
        if encoding > 1 {
            return Err(format!("text encoding {encoding} (UTF-16) is not read"));
        }
        if !bytes.len().is_multiple_of(page_size) {
            return Err(format!(
                "{} bytes is not a whole number of {page_size}-byte pages",
                bytes.len()
            ));
        }
        Ok(Self {
            bytes,
            page_size,
            usable,
        })
    }

    /// The root page of table `name` (case-insensitive, as SQL names are), from the schema.
    pub(crate) fn table_root(&self, name: &str) -> Result<Option<u32>, Error> {
        let mut root = None;
        self.scan_table(1, &mut |_, row| {
            // sqlite_schema: type, name, tbl_name, rootpage, sql.
            if let (Some(Value::Text(kind)), Some(Value::Text(n)), Some(Value::Integer(page))) =
                (row.first(), row.get(1), row.get(3))
                && kind == "table"
                && n.eq_ignore_ascii_case(name)
            {
                root = u32::try_from(*page).ok();
            }
            Ok(())
        })?;
        Ok(root)
    }

    /// Calls `row` with the rowid and the values of every row of the table b-tree rooted at
    /// page `root`, in rowid order.
    pub(crate) fn scan_table(
        &self,
        root: u32,
        row: &mut dyn FnMut(i64, Vec<Value>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut seen = HashSet::new();
        self.visit(root, 0, &mut seen, row)
    }

    fn page(&self, number: u32) -> Result<&'a [u8], Error> {
        let start = (number as usize)
            .checked_sub(1)
            .and_then(|i| i.checked_mul(self.page_size))
            .ok_or_else(|| format!("page number {number}"))?;
        self.bytes
            .get(start..start + self.page_size)
            .ok_or_else(|| format!("page {number} is past the end of the file"))
    }

    fn visit(
        &self,
        number: u32,
        depth: usize,
        seen: &mut HashSet<u32>,
        row: &mut dyn FnMut(i64, Vec<Value>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(format!("table b-tree deeper than {MAX_DEPTH} levels"));
        }
        if !seen.insert(number) {
            return Err(format!("page {number} is referenced twice"));
        }
        let page = self.page(number)?;
        // Page 1 starts with the file header; its b-tree header follows it.
        let base = if number == 1 { 100 } else { 0 };
        let at = |i: usize| -> Result<u8, Error> {
            page.get(base + i)
                .copied()
                .ok_or_else(|| format!("page {number}: header past its end"))
        };
        let kind = at(0)?;
        let cells = usize::from(u16::from_be_bytes([at(3)?, at(4)?]));
        let (header_len, interior) = match kind {
            0x0d => (8, false),
            0x05 => (12, true),
            other => {
                return Err(format!(
                    "page {number}: type {other:#04x} where a table b-tree page was expected"
                ));
            }
        };
        for i in 0..cells {
            let p = base + header_len + 2 * i;
            let ptr = page
                .get(p..p + 2)
                .ok_or_else(|| format!("page {number}: cell pointer {i} past its end"))?;
            let offset = usize::from(u16::from_be_bytes([ptr[0], ptr[1]]));
            let cell = page
                .get(offset..self.usable.min(page.len()))
                .filter(|c| !c.is_empty() && offset >= base + header_len)
                .ok_or_else(|| format!("page {number}: cell {i} at offset {offset}"))?;
            if interior {
                let child = cell
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| format!("page {number}: cell {i} too short"))?;
                self.visit(child, depth + 1, seen, row)?;
            } else {
                let (rowid, payload) = self.leaf_cell(number, cell, seen)?;
                row(
                    rowid,
                    record(&payload).map_err(|e| format!("row {rowid}: {e}"))?,
                )?;
            }
        }
        if interior {
            let right = u32::from_be_bytes([at(8)?, at(9)?, at(10)?, at(11)?]);
            self.visit(right, depth + 1, seen, row)?;
        }
        Ok(())
    }

    /// A table leaf cell's rowid and whole payload (its overflow pages followed).
    fn leaf_cell(
        &self,
        number: u32,
        cell: &[u8],
        seen: &mut HashSet<u32>,
    ) -> Result<(i64, Vec<u8>), Error> {
        let bad = || format!("page {number}: malformed cell");
        let (size, a) = varint(cell).ok_or_else(bad)?;
        let (rowid, b) = varint(cell.get(a..).ok_or_else(bad)?).ok_or_else(bad)?;
        // Each byte of a payload is on a page of its own visit: no payload is larger than the
        // file, and none is allocated larger.
        if size > MAX_PAYLOAD || size > self.bytes.len() as u64 {
            return Err(format!(
                "page {number}: a {size}-byte row is over the limit"
            ));
        }
        let size = size as usize;
        let body = cell.get(a + b..).ok_or_else(bad)?;
        // How much of the payload is on the page (the file format's formula for table leaves).
        let u = self.usable;
        let x = u - 35;
        let local = if size <= x {
            size
        } else {
            let m = ((u - 12) * 32 / 255) - 23;
            let k = m + ((size - m) % (u - 4));
            if k <= x { k } else { m }
        };
        let mut payload = Vec::with_capacity(size);
        payload.extend_from_slice(body.get(..local).ok_or_else(bad)?);
        if local < size {
            let next = body.get(local..local + 4).ok_or_else(bad)?;
            let mut next = u32::from_be_bytes([next[0], next[1], next[2], next[3]]);
            while payload.len() < size {
                if next == 0 {
                    return Err(format!("row {rowid}: its overflow pages end early"));
                }
                if !seen.insert(next) {
                    return Err(format!(
                        "row {rowid}: overflow page {next} is referenced twice"
                    ));
                }
                let page = self.page(next)?;
                let link = page.get(..4).ok_or_else(bad)?;
                let want = (size - payload.len()).min(u - 4);
                payload.extend_from_slice(page.get(4..4 + want).ok_or_else(bad)?);
                next = u32::from_be_bytes([link[0], link[1], link[2], link[3]]);
            }
        }
        Ok((rowid as i64, payload))
    }
}

/// An SQLite varint (1 to 9 bytes, big-endian) and its length.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let byte = *b.get(i)?;
        if i == 8 {
            return Some(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The values of a record (a row's payload).
fn record(payload: &[u8]) -> Result<Vec<Value>, Error> {
    let (header_len, mut h) = varint(payload).ok_or("record header length")?;
    let header_len = usize::try_from(header_len).map_err(|_| "record header length")?;
    if header_len > payload.len() || header_len < h {
        return Err(format!("record header of {header_len} bytes"));
    }
    let mut body = header_len;
    let mut values = Vec::new();
    while h < header_len {
        let (serial, n) =
            varint(payload.get(h..header_len).unwrap_or_default()).ok_or("record serial type")?;
        h += n;
        let int = |len: usize, body: usize| -> Result<i64, Error> {
            let b = payload
                .get(body..body + len)
                .ok_or("record value past its end")?;
            // Big-endian two's complement of `len` bytes, sign-extended.
            let mut v: i64 = if b.first().is_some_and(|x| x & 0x80 != 0) {
                -1
            } else {
                0
            };
            for x in b {
                v = (v << 8) | i64::from(*x);
            }
            Ok(v)
        };
        let (value, len) = match serial {
            0 => (Value::Null, 0),
            1..=4 => {
                let len = serial as usize;
                (Value::Integer(int(len, body)?), len)
            }
            5 => (Value::Integer(int(6, body)?), 6),
            6 => (Value::Integer(int(8, body)?), 8),
            7 => (Value::Real(f64::from_bits(int(8, body)? as u64)), 8),
            8 => (Value::Integer(0), 0),
            9 => (Value::Integer(1), 0),
            10 | 11 => return Err(format!("reserved serial type {serial}")),
            n => {
                let len = usize::try_from((n - 12) / 2).map_err(|_| "record value length")?;
                let bytes = payload
                    .get(body..body.checked_add(len).ok_or("record value length")?)
                    .ok_or("record value past its end")?;
                if n % 2 == 0 {
                    (Value::Blob(bytes.to_vec()), len)
                } else {
                    (
                        Value::Text(String::from_utf8_lossy(bytes).into_owned()),
                        len,
                    )
                }
            }
        };
        body += len;
        values.push(value);
    }
    Ok(values)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_as_the_file_format_says() {
        assert_eq!(varint(&[0x00]), Some((0, 1)));
        assert_eq!(varint(&[0x7f]), Some((127, 1)));
        assert_eq!(varint(&[0x81, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(varint(&[0x80, 0x80]), None, "truncated");
    }

    #[test]
    fn records_decode_every_serial_type() {
        // Header: length 8, then NULL, int8, int16, 0, 1, text(3), blob(2); body follows.
        let mut p = vec![8, 0, 1, 2, 8, 9, 13 + 2 * 3, 12 + 2 * 2];
        p.extend_from_slice(&[0xff, 0x01, 0x00]);
        p.extend_from_slice(b"abc");
        p.extend_from_slice(&[7, 9]);
        assert_eq!(
            record(&p).unwrap(),
            [
                Value::Null,
                Value::Integer(-1),
                Value::Integer(256),
                Value::Integer(0),
                Value::Integer(1),
                Value::Text("abc".into()),
                Value::Blob(vec![7, 9]),
            ]
        );
        assert!(record(&p[..p.len() - 1]).is_err(), "a value past the end");
        assert!(record(&[9, 0]).is_err(), "a header longer than the record");
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_refused() {
        assert!(Db::open(b"short").is_err());
        assert!(Db::open(&[0u8; 4096]).is_err());
        let mut header = b"SQLite format 3\0".to_vec();
        header.resize(4096, 0);
        header[16] = 0x03; // page size 1000: not a power of two
        header[17] = 0xe8;
        assert!(Db::open(&header).is_err());
    }
}
