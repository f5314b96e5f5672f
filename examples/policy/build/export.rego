package kiln.export

root_users := {"", "root", "0"}

deny contains "the image must not run as root (add USER)" if {
	user := split(input.image.config.user, ":")[0]
	user in root_users
}

deny contains sprintf("%s %s is under a denied license (%s)", [p.name, p.version, l]) if {
	some p in input.sbom.packages
	some l in p.licenses
	contains(upper(l), "AGPL")
}
