package kiln.source

# Pin known tags to a digest, like BuildKit's source policy CONVERT.
rewrite := sprintf("%s@%s", [input.source.image.normalized, pin]) if {
	input.source.type == "image"
	input.source.image.digest == null
	pin := data.kiln.pins[input.source.image.normalized]
}

deny contains msg if {
	input.source.type == "image"
	input.source.image.registry != "docker.io"
	msg := sprintf("only Docker Hub images here, not %s", [input.source.image.ref])
}
