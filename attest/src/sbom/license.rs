//! Which declared licenses are SPDX license identifiers or expressions.
//!
//! The authority for "is an SPDX id" is the SPDX license list (CycloneDX ships it as the enum
//! of `spdx.schema.json`). kiln embeds only the common ids below; a test checks that each one
//! is in that enum. Anything else is free text: it goes to CycloneDX `license.name` and to an
//! SPDX `LicenseRef-`, never to an `id`. Debian's DEP-5 short names and Python's trove
//! classifiers are mapped to SPDX ids where the mapping is exact.

use sha2::{Digest, Sha256};

/// SPDX license ids kiln recognises (a subset of the SPDX license list).
pub(crate) const KNOWN_IDS: &[&str] = &[
    "0BSD",
    "AFL-2.1",
    "AFL-3.0",
    "AGPL-3.0-only",
    "AGPL-3.0-or-later",
    "Apache-1.1",
    "Apache-2.0",
    "APSL-2.0",
    "Artistic-1.0",
    "Artistic-1.0-Perl",
    "Artistic-2.0",
    "BlueOak-1.0.0",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSD-4-Clause",
    "BSD-Source-Code",
    "BSL-1.0",
    "bzip2-1.0.6",
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "CC0-1.0",
    "CDDL-1.0",
    "CDDL-1.1",
    "curl",
    "EPL-1.0",
    "EPL-2.0",
    "EUPL-1.2",
    "FSFAP",
    "FSFUL",
    "FSFULLR",
    "FTL",
    "GFDL-1.2-or-later",
    "GFDL-1.3-only",
    "GFDL-1.3-or-later",
    "GPL-1.0-only",
    "GPL-1.0-or-later",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "HPND",
    "ICU",
    "IJG",
    "ISC",
    "LGPL-2.0-only",
    "LGPL-2.0-or-later",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "Libpng",
    "libtiff",
    "MIT",
    "MIT-0",
    "MIT-CMU",
    "MPL-1.1",
    "MPL-2.0",
    "NCSA",
    "OFL-1.1",
    "OpenSSL",
    "PHP-3.01",
    "PostgreSQL",
    "PSF-2.0",
    "Python-2.0",
    "Ruby",
    "Sleepycat",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Unlicense",
    "UPL-1.0",
    "Vim",
    "W3C",
    "WTFPL",
    "X11",
    "Zlib",
    "ZPL-2.1",
];

/// SPDX license exception ids kiln recognises after `WITH`.
const KNOWN_EXCEPTIONS: &[&str] = &[
    "Autoconf-exception-2.0",
    "Autoconf-exception-3.0",
    "Bison-exception-2.2",
    "Classpath-exception-2.0",
    "GCC-exception-2.0",
    "GCC-exception-3.1",
    "LLVM-exception",
];

/// Exact aliases: Debian DEP-5 short names, deprecated SPDX ids, common spellings.
const ALIASES: &[(&str, &str)] = &[
    ("Apache-2", "Apache-2.0"),
    ("Apache 2.0", "Apache-2.0"),
    ("Apache License 2.0", "Apache-2.0"),
    ("Artistic", "Artistic-1.0-Perl"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("Expat", "MIT"),
    ("GPL-1+", "GPL-1.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-2.0", "GPL-2.0-only"),
    ("GPL-2.0+", "GPL-2.0-or-later"),
    ("GPL-3", "GPL-3.0-only"),
    ("GPL-3+", "GPL-3.0-or-later"),
    ("GPL-3.0", "GPL-3.0-only"),
    ("GPL-3.0+", "GPL-3.0-or-later"),
    ("GPLv2", "GPL-2.0-only"),
    ("GPLv2+", "GPL-2.0-or-later"),
    ("GPLv3", "GPL-3.0-only"),
    ("GPLv3+", "GPL-3.0-or-later"),
    ("LGPL-2", "LGPL-2.0-only"),
    ("LGPL-2+", "LGPL-2.0-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-3", "LGPL-3.0-only"),
    ("LGPL-3+", "LGPL-3.0-or-later"),
    ("LGPL-3.0", "LGPL-3.0-only"),
    ("LGPL-3.0+", "LGPL-3.0-or-later"),
    ("MPL-2", "MPL-2.0"),
    ("Zlib", "Zlib"),
    ("zlib", "Zlib"),
    ("MIT License", "MIT"),
];

/// Python trove classifiers (`License :: OSI Approved :: ...`) with an exact SPDX id.
const CLASSIFIERS: &[(&str, &str)] = &[
    ("Apache Software License", "Apache-2.0"),
    ("BSD License", ""),
    ("GNU General Public License v2 (GPLv2)", "GPL-2.0-only"),
    ("GNU General Public License v3 (GPLv3)", "GPL-3.0-only"),
    (
        "GNU Lesser General Public License v3 (LGPLv3)",
        "LGPL-3.0-only",
    ),
    ("ISC License (ISCL)", "ISC"),
    ("MIT License", "MIT"),
    ("MIT No Attribution License (MIT-0)", "MIT-0"),
    ("Mozilla Public License 2.0 (MPL 2.0)", "MPL-2.0"),
    ("Python Software Foundation License", "PSF-2.0"),
    ("The Unlicense (Unlicense)", "Unlicense"),
    ("zlib/libpng License", "Zlib"),
];

/// Whether `s` is one of the SPDX license ids kiln knows (a subset of the SPDX license list;
/// ids match case-insensitively). An id kiln does not know is written as a name, never an id.
#[must_use]
pub fn is_spdx_license_id(s: &str) -> bool {
    canonical_id(s).is_some()
}

/// The canonical spelling of a known SPDX id.
fn canonical_id(s: &str) -> Option<&'static str> {
    KNOWN_IDS
        .iter()
        .copied()
        .find(|id| id.eq_ignore_ascii_case(s))
}

fn canonical_atom(s: &str) -> Option<String> {
    if let Some(id) = canonical_id(s) {
        return Some(id.to_owned());
    }
    if let Some((_, id)) = ALIASES.iter().find(|(alias, _)| *alias == s) {
        return canonical_id(id).map(str::to_owned);
    }
    None
}

/// Maps a trove classifier's last part (`MIT License`) to an SPDX id, when exact.
pub(crate) fn from_classifier(last: &str) -> Option<&'static str> {
    CLASSIFIERS
        .iter()
        .find(|(c, _)| *c == last)
        .map(|(_, id)| *id)
        .filter(|id| !id.is_empty())
}

/// `raw` as a valid SPDX license expression over known ids (normalised: canonical ids,
/// upper-case operators), or `None` when any part of it is not one.
pub(crate) fn to_expression(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 512 {
        return None;
    }
    if let Some(atom) = canonical_atom(raw) {
        return Some(atom);
    }
    let spaced = raw.replace('(', " ( ").replace(')', " ) ");
    let mut out: Vec<String> = Vec::new();
    let mut depth = 0usize;
    // What may come next: an operand (id or `(`) or an operator (AND/OR/WITH or `)`).
    let mut want_operand = true;
    let mut after_with = false;
    for tok in spaced.split_whitespace() {
        let upper = tok.to_ascii_uppercase();
        if want_operand {
            if tok == "(" {
                depth += 1;
                out.push("(".into());
            } else if after_with {
                let exc = KNOWN_EXCEPTIONS
                    .iter()
                    .find(|e| e.eq_ignore_ascii_case(tok))?;
                out.push((*exc).to_owned());
                after_with = false;
                want_operand = false;
            } else {
                out.push(canonical_atom(tok)?);
                want_operand = false;
            }
        } else if tok == ")" {
            depth = depth.checked_sub(1)?;
            out.push(")".into());
        } else if upper == "AND" || upper == "OR" {
            out.push(upper);
            want_operand = true;
        } else if upper == "WITH" {
            out.push(upper);
            want_operand = true;
            after_with = true;
        } else {
            return None;
        }
    }
    if want_operand || depth != 0 {
        return None;
    }
    Some(out.join(" ").replace("( ", "(").replace(" )", ")"))
}

/// Whether an expression has an operator at its top level or anywhere (needs parentheses
/// when combined).
pub(crate) fn is_compound(expr: &str) -> bool {
    expr.contains(' ')
}

/// A deterministic `LicenseRef-` for free-text license `raw`: a readable prefix plus a hash,
/// so two different texts never share an id.
pub(crate) fn license_ref(raw: &str) -> String {
    let readable: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let hash = hex::encode(Sha256::digest(raw.as_bytes()));
    format!("LicenseRef-{}-{}", readable.trim_matches('-'), &hash[..8])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Every id kiln may put in a CycloneDX `license.id` or an SPDX expression must be in the
    /// SPDX license list as CycloneDX ships it (`spdx.schema.json`'s enum, ids and exceptions).
    #[test]
    fn embedded_ids_are_all_in_the_spdx_license_list() {
        let dir = std::env::var_os("KILN_SHARED_VECTORS").map_or_else(
            || {
                std::path::PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../shared/vectors"
                ))
            },
            std::path::PathBuf::from,
        );
        let Ok(bytes) = std::fs::read(dir.join("cyclonedx/spdx.schema.json")) else {
            println!("skipped: shared vectors not found (set KILN_SHARED_VECTORS)");
            return;
        };
        let schema: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let list: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for id in KNOWN_IDS.iter().chain(KNOWN_EXCEPTIONS) {
            assert!(list.contains(id), "{id} is not in the SPDX license list");
        }
        for (_, id) in ALIASES
            .iter()
            .chain(CLASSIFIERS)
            .filter(|(_, id)| !id.is_empty())
        {
            assert!(
                KNOWN_IDS.contains(id),
                "alias target {id} is not a known id"
            );
        }
    }

    #[test]
    fn expressions_are_normalised_or_refused() {
        assert_eq!(to_expression("mit").as_deref(), Some("MIT"));
        assert_eq!(to_expression("GPL-2+").as_deref(), Some("GPL-2.0-or-later"));
        assert_eq!(
            to_expression("(MIT or Apache-2.0) and BSD-3-clause").as_deref(),
            Some("(MIT OR Apache-2.0) AND BSD-3-Clause")
        );
        assert_eq!(
            to_expression("GPL-2.0-or-later WITH Classpath-exception-2.0").as_deref(),
            Some("GPL-2.0-or-later WITH Classpath-exception-2.0")
        );
        assert_eq!(to_expression("public-domain"), None);
        assert_eq!(to_expression("MIT AND"), None);
        assert_eq!(to_expression("(MIT"), None);
        assert_eq!(to_expression("BSD License"), None);
    }

    #[test]
    fn license_refs_are_valid_spdx_ids() {
        let r = license_ref("Some License, see LICENSE.txt");
        assert!(r.starts_with("LicenseRef-Some-License--see-LICENSE.txt-"));
        assert!(
            r.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        );
    }
}
