package kiln.source

deny contains msg if {
	input.source.type == "image"
	not input.source.image.registry in data.kiln.allowed_registries
	msg := sprintf("registry %s is not allowed (image %s)", [input.source.image.registry, input.source.image.ref])
}
