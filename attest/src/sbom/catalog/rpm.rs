//! RPM: detected, not read. The rpm database is SQLite (`rpmdb.sqlite`), Berkeley DB
//! (`Packages`) or NDB (`Packages.db`), holding binary rpm header blobs; reading it needs an
//! SQLite reader and a header parser that kiln does not have yet. Rather than report an
//! image with no rpm packages, the SBOM says the database is there and was not catalogued.

use super::Ctx;

/// Where rpm keeps its database, per backend.
const DATABASES: &[&str] = &[
    "/usr/lib/sysimage/rpm/rpmdb.sqlite",
    "/var/lib/rpm/rpmdb.sqlite",
    "/var/lib/rpm/Packages",
    "/var/lib/rpm/Packages.db",
];

pub(super) fn catalog(ctx: &mut Ctx<'_>) {
    for db in DATABASES {
        if ctx.entry(db).is_some() {
            ctx.note(format!(
                "{db}: rpm database present but not catalogued (kiln cannot read rpm databases yet: \
                 no SQLite/BDB reader or rpm header parser); rpm packages are missing from this SBOM"
            ));
        }
    }
}
