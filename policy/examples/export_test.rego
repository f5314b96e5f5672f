package kiln.export_test

import data.kiln.export

image(user, packages) := {
	"tenant": "team-a",
	"image": {"config": {"user": user}},
	"provenance": null,
	"sbom": {"package_count": count(packages), "packages": packages},
	"outputs": [],
}

pkg(name, licenses) := {"name": name, "version": "1.0", "type": "deb", "purl": null, "licenses": licenses}

test_non_root_users_allowed if {
	every user in ["65532", "65532:65532", "app", "app:app", "1000:0", "nobody"] {
		count(export.deny) == 0 with input as image(user, [])
	}
}

test_root_users_denied if {
	every user in ["", "root", "0", "0:0", "root:root", "0:1000"] {
		export.deny == {sprintf("the image runs as root (USER %q): set a non-root USER", [user])} with input as image(user, [])
	}
}

test_allowed_licenses if {
	count(export.deny) == 0 with input as image("app", [
		pkg("a", ["MIT"]),
		pkg("b", ["Apache-2.0 WITH LLVM-exception"]),
		pkg("c", ["GPL-2.0-or-later", "LGPL-3.0-only"]),
		pkg("d", []),
	])
}

test_denied_license_denied if {
	export.deny == {`package readline 1.0 (deb) is licensed "GPL-3.0-only": GPL-3.0-only is denied`} with input as image("app", [pkg("readline", ["GPL-3.0-only"])])
}

test_denied_license_inside_expression_denied if {
	export.deny == {
		`package x 1.0 (deb) is licensed "(MIT OR AGPL-3.0-or-later)": AGPL-3.0-or-later is denied`,
		`package y 1.0 (deb) is licensed "Apache-2.0 AND GPL-3.0+": GPL-3.0+ is denied`,
	} with input as image("app", [pkg("x", ["(MIT OR AGPL-3.0-or-later)"]), pkg("y", ["Apache-2.0 AND GPL-3.0+"])])
}

test_license_list_comes_from_data if {
	count(export.deny) == 0 with input as image("app", [pkg("readline", ["GPL-3.0-only"])])
		with data.kiln.config.denied_licenses as []
}

test_no_sbom_has_no_license_findings if {
	count(export.deny) == 0 with input as object.union(image("app", []), {"sbom": null})
}
