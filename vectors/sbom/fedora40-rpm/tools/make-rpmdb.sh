#!/usr/bin/env bash
# Builds the rpm database of this SBOM fixture with the real rpm (Debian 12's rpm 4.18, `apt-get
# install rpm sqlite3`): packages made with rpmbuild (one with 400 files, so its header spills
# onto overflow pages; 27 in all, so the Packages table has interior pages), recorded with
# `rpm -i --justdb` into an SQLite rpmdb, checkpointed out of WAL mode. From the case's folder:
#
#   tools/make-rpmdb.sh rootfs/usr/lib/sysimage/rpm ../rpmdb-512.sqlite
#
# The second file is the unit tests' and the fuzzer's seed: 11 of the packages (row ids 1, 2,
# 4 to 12), the index tables dropped, on 512-byte pages (an interior page, overflow pages).
set -euo pipefail
out=${1:?usage: make-rpmdb.sh OUT_DIR [SMALL_DB]}
small=${2:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{SPECS,RPMS,BUILD,BUILDROOT,SOURCES,SRPMS,db}
spec() { # name version release epoch arch license nfiles
  local name=$1 version=$2 release=$3 epoch=$4 arch=$5 license=$6 n=$7
  {
    echo "Name: $name"
    echo "Version: $version"
    echo "Release: $release"
    [ -n "$epoch" ] && echo "Epoch: $epoch"
    echo "Summary: kiln rpm fixture package $name"
    echo "License: $license"
    echo "Vendor: Fedora Project"
    echo "BuildArch: $arch"
    echo "%description"
    echo "A package of the kiln SBOM fixture."
    echo "%install"
    echo "mkdir -p %{buildroot}/usr/share/$name"
    echo "for i in \$(seq 1 $n); do echo \"$name \$i\" > %{buildroot}/usr/share/$name/file-\$i.txt; done"
    echo "%files"
    echo "/usr/share/$name"
  } > "$work/SPECS/$name.spec"
  rpmbuild --quiet --define "_topdir $work" --define "_build_id_links none" \
    --define "__os_install_post %{nil}" -bb "$work/SPECS/$name.spec" >/dev/null
}
spec bash 5.2.26 3.fc40 "" x86_64 "GPL-3.0-or-later" 3
spec openssl-libs 3.2.2 3.fc40 1 x86_64 "Apache-2.0" 2
spec tzdata 2024a 5.fc40 "" noarch "LicenseRef-Fedora-Public-Domain" 400
for i in $(seq -w 1 24); do
  spec "fixture-pkg$i" "1.$i" "1.fc40" "" noarch "MIT AND BSD-3-Clause" 2
done
rpm --define "_db_backend sqlite" --dbpath "$work/db" --initdb
rpm --define "_db_backend sqlite" --dbpath "$work/db" -i --justdb --nodeps --noscripts \
  --ignorearch --ignoreos "$work"/RPMS/*/*.rpm
sqlite3 "$work/db/rpmdb.sqlite" 'PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;' >/dev/null
mkdir -p "$out"
cp "$work/db/rpmdb.sqlite" "$out/rpmdb.sqlite"
if [ -n "$small" ]; then
  cp "$work/db/rpmdb.sqlite" "$small"
  drops=$(sqlite3 "$small" "SELECT 'DROP TABLE \"' || name || '\";' FROM sqlite_schema \
    WHERE type = 'table' AND name NOT IN ('Packages', 'sqlite_sequence')")
  sqlite3 "$small" "DELETE FROM Packages WHERE hnum > 12 OR hnum = 3; $drops \
    PRAGMA page_size = 512; VACUUM;"
fi
