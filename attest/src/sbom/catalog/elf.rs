//! Just enough ELF to find a section by name: header, section headers, section names. Every
//! offset is checked against the buffer; nothing is trusted.

/// `SHT_NOBITS`: a section with no bytes in the file (`.bss`).
const SHT_NOBITS: u32 = 8;

/// A parsed ELF file over its bytes.
pub(crate) struct Elf<'a> {
    bytes: &'a [u8],
    /// (name, type, offset, size) of each section.
    sections: Vec<(String, u32, u64, u64)>,
}

impl<'a> Elf<'a> {
    /// Parses the section table. The error says why the bytes are not a usable ELF file.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, &'static str> {
        if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
            return Err("no ELF magic");
        }
        let is64 = match bytes.get(4) {
            Some(1) => false,
            Some(2) => true,
            _ => return Err("unknown ELF class"),
        };
        let le = match bytes.get(5) {
            Some(1) => true,
            Some(2) => false,
            _ => return Err("unknown ELF byte order"),
        };
        let r = Reader { bytes, le };
        let (shoff, shentsize, shnum, shstrndx) = if is64 {
            (r.u64(0x28)?, r.u16(0x3a)?, r.u16(0x3c)?, r.u16(0x3e)?)
        } else {
            (
                u64::from(r.u32(0x20)?),
                r.u16(0x2e)?,
                r.u16(0x30)?,
                r.u16(0x32)?,
            )
        };
        if shoff == 0 || shnum == 0 {
            return Ok(Self {
                bytes,
                sections: Vec::new(),
            });
        }
        let mut raw = Vec::with_capacity(usize::from(shnum));
        for i in 0..u64::from(shnum) {
            let base = shoff
                .checked_add(i * u64::from(shentsize))
                .and_then(|b| usize::try_from(b).ok())
                .ok_or("section header offset overflows")?;
            let (name, ty, off, size) = if is64 {
                (
                    r.u32(base)?,
                    r.u32(base + 4)?,
                    r.u64(base + 0x18)?,
                    r.u64(base + 0x20)?,
                )
            } else {
                (
                    r.u32(base)?,
                    r.u32(base + 4)?,
                    u64::from(r.u32(base + 0x10)?),
                    u64::from(r.u32(base + 0x14)?),
                )
            };
            raw.push((name, ty, off, size));
        }
        let strtab = raw
            .get(usize::from(shstrndx))
            .and_then(|&(_, _, off, size)| slice(bytes, off, size))
            .ok_or("section name table out of bounds")?;
        let sections = raw
            .into_iter()
            .map(|(name, ty, off, size)| {
                let name = usize::try_from(name)
                    .ok()
                    .and_then(|n| strtab.get(n..))
                    .and_then(|s| s.split(|b| *b == 0).next())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .unwrap_or_default();
                (name, ty, off, size)
            })
            .collect();
        Ok(Self { bytes, sections })
    }

    /// The bytes of the first section called `name` (none for `SHT_NOBITS` or out of bounds).
    pub(crate) fn section(&self, name: &str) -> Option<&'a [u8]> {
        self.sections
            .iter()
            .find(|(n, ty, _, _)| n == name && *ty != SHT_NOBITS)
            .and_then(|&(_, _, off, size)| slice(self.bytes, off, size))
    }
}

fn slice(bytes: &[u8], off: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    bytes.get(start..end)
}

struct Reader<'a> {
    bytes: &'a [u8],
    le: bool,
}

impl Reader<'_> {
    fn array<const N: usize>(&self, at: usize) -> Result<[u8; N], &'static str> {
        let end = at.checked_add(N).ok_or("offset overflows")?;
        self.bytes
            .get(at..end)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or("truncated ELF header")
    }
    fn u16(&self, at: usize) -> Result<u16, &'static str> {
        let a = self.array(at)?;
        Ok(if self.le {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        })
    }
    fn u32(&self, at: usize) -> Result<u32, &'static str> {
        let a = self.array(at)?;
        Ok(if self.le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    }
    fn u64(&self, at: usize) -> Result<u64, &'static str> {
        let a = self.array(at)?;
        Ok(if self.le {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Elf;

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(Elf::parse(b"").is_err());
        assert!(Elf::parse(b"\x7fELF\x02\x01").is_err());
        let mut b = b"\x7fELF\x02\x01".to_vec();
        b.resize(64, 0xff);
        assert!(Elf::parse(&b).is_err());
    }
}
