# The demo's deploy policy: what `kiln verify --policy` checks once the signatures hold.
package kiln.verify

deny contains sprintf("built by %v, not by the demo builder", [object.get(input.provenance, ["runDetails", "builder", "id"], "nobody")]) if {
	object.get(input.provenance, ["runDetails", "builder", "id"], "") != data.deploy.builder_id
}

deny contains "no signed provenance" if not input.provenance

deny contains "no signed SBOM" if not input.sbom

deny contains "the image runs as root" if {
	input.image.config.user in {"", "root", "0"}
}
