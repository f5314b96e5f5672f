# Export: the finished image, its provenance and SBOM, before anything leaves the store.
package kiln.export

# USER as the image config has it; empty means root.
user := input.image.config.user

runs_as_root if user == ""

runs_as_root if user in {"root", "0"}

runs_as_root if startswith(user, "root:")

runs_as_root if startswith(user, "0:")

deny contains msg if {
	runs_as_root
	msg := sprintf("the image runs as root (USER %q): set a non-root USER", [user])
}

# License identifiers in an SPDX expression: split on whitespace and parentheses, drop the
# operators. Any denied identifier denies, even in "MIT OR GPL-3.0-only" (a conservative choice:
# the SBOM does not say which alternative the image uses). The exception after WITH is kept as
# an identifier too, harmless unless it is on the list.
license_ids(expr) := {id |
	some id in split(replace(replace(expr, "(", " "), ")", " "), " ")
	id != ""
	not upper(id) in {"AND", "OR", "WITH"}
}

# A `+` suffix (GPL-3.0+) means "or later".
normalized(id) := concat("", [trim_suffix(id, "+"), "-or-later"]) if endswith(id, "+")

normalized(id) := id if not endswith(id, "+")

denied_licenses := {id | some id in data.kiln.config.denied_licenses}

# Each distinct expression is parsed once (an SBOM repeats a few dozen expressions across
# hundreds of packages); packages are then matched against the denied expressions only.
denied_ids(expr) := {id | some id in license_ids(expr); normalized(id) in denied_licenses}

denied_exprs := {expr: ids |
	some expr in {e | some p in input.sbom.packages; some e in p.licenses}
	ids := denied_ids(expr)
	count(ids) > 0
}

deny contains msg if {
	some p in input.sbom.packages
	some expr in p.licenses
	some id in denied_exprs[expr]
	msg := sprintf("package %s %s (%s) is licensed %q: %s is denied", [p.name, p.version, p.type, expr, id])
}
