//! Alpine: `/lib/apk/db/installed` (`P:` name, `V:` version, `A:` arch, `L:` license,
//! `o:` origin, `m:` maintainer, `F:` directory then `R:` files in it).

use super::{Ctx, limits};
use crate::sbom::SbomError;
use crate::sbom::model::{Package, PackageKind};
use crate::sbom::purl::Purl;

const INSTALLED: &str = "/lib/apk/db/installed";

#[derive(Default)]
struct Entry {
    name: Option<String>,
    version: Option<String>,
    arch: Option<String>,
    license: Option<String>,
    origin: Option<String>,
    maintainer: Option<String>,
    files: Vec<String>,
    dir: String,
}

pub(super) fn catalog(ctx: &mut Ctx<'_>) -> Result<(), SbomError> {
    let Some(text) = ctx.read_text(INSTALLED, limits::DATABASE_BYTES)? else {
        return Ok(());
    };
    let mut entries = Vec::new();
    let mut cur = Entry::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            if cur.name.is_some() || cur.version.is_some() {
                entries.push(std::mem::take(&mut cur));
            }
            cur = Entry::default();
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "P" => cur.name = Some(value.to_owned()),
            "V" => cur.version = Some(value.to_owned()),
            "A" => cur.arch = Some(value.to_owned()),
            "L" => cur.license = Some(value.to_owned()),
            "o" => cur.origin = Some(value.to_owned()),
            "m" => cur.maintainer = Some(value.to_owned()),
            "F" => cur.dir = value.trim_matches('/').to_owned(),
            "R" => {
                let path = if cur.dir.is_empty() {
                    format!("/{value}")
                } else {
                    format!("/{}/{value}", cur.dir)
                };
                cur.files.push(path);
            }
            _ => {}
        }
    }
    if cur.name.is_some() || cur.version.is_some() {
        entries.push(cur);
    }
    if entries.len() > limits::PACKAGES_PER_SOURCE {
        ctx.note(format!(
            "{INSTALLED}: over {} packages, the rest skipped",
            limits::PACKAGES_PER_SOURCE
        ));
        entries.truncate(limits::PACKAGES_PER_SOURCE);
    }
    let (ns, distro_q) = match &ctx.distro {
        Some(d) => (
            d.id.clone(),
            d.version_id.as_ref().map(|v| format!("{}-{v}", d.id)),
        ),
        None => ("alpine".to_owned(), None),
    };
    for e in entries {
        let (Some(name), Some(version)) = (e.name, e.version) else {
            ctx.note(format!("{INSTALLED}: an entry without P: or V:, skipped"));
            continue;
        };
        let purl = Purl::new("apk", &name, &version)
            .namespace([ns.as_str()])
            .qualifier("arch", e.arch.clone())
            .qualifier("distro", distro_q.clone())
            .build();
        let files = ctx.existing_files(e.files);
        ctx.push(Package {
            kind: PackageKind::Apk,
            source: e.origin.filter(|o| *o != name),
            name,
            version,
            purl,
            licenses: e.license.into_iter().filter(|l| !l.is_empty()).collect(),
            files,
            found_in: INSTALLED.to_owned(),
            arch: e.arch,
            supplier: e.maintainer,
        });
    }
    Ok(())
}
