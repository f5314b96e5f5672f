package kiln.export

# A license expression is split on AND/OR/WITH and parentheses; any denied identifier denies
# (conservative: "MIT OR GPL-3.0-only" denies although MIT could be chosen).
ids(expr) := {t |
	some t in regex.split(`[\s()]+`, expr)
	t != ""
	not t in {"AND", "OR", "WITH"}
}

deny contains {"msg": msg} if {
	some p in input.sbom.packages
	some expr in p.licenses
	some id in ids(expr)
	id in data.kiln.denied_licenses
	msg := sprintf("package %s %s: license %s is denied", [p.name, p.version, id])
}
