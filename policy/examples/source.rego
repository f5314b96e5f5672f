# Source: each source reference (FROM, COPY --from=<image>, ADD <url>), before it resolves.
package kiln.source

# Images only from allow-listed registries (`docker.io` for Docker Hub short names).
deny contains msg if {
	input.source.type == "image"
	not input.source.image.registry in data.kiln.config.allowed_registries
	msg := sprintf("image %s: registry %s is not allowed", [input.source.image.ref, input.source.image.registry])
}

# Tags pinned centrally: a reference listed in data.kiln.config.pins (by its normalized name) is
# rewritten to that digest, like BuildKit's source-policy CONVERT.
rewrite := sprintf("%s@%s", [input.source.image.normalized, digest]) if {
	input.source.type == "image"
	input.source.image.digest == null
	digest := data.kiln.config.pins[input.source.image.normalized]
}
