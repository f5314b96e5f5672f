package kiln.admission

# A base image is pinned when the reference as written pins a digest: `resolved` is always set
# (kiln resolved the tag), so it says nothing about what the Dockerfile pinned.
deny contains msg if {
	some img in input.request.base_images
	img.digest == null
	msg := sprintf("base image %s is not pinned by digest", [img.ref])
}
