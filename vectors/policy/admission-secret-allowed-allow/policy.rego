package kiln.admission

# Only secrets listed in data.kiln.allowed_secret_ids may be provided or mounted.
deny contains msg if {
	some id in input.request.secrets
	not id in data.kiln.allowed_secret_ids
	msg := sprintf("secret %q is not allowed", [id])
}

deny contains msg if {
	some id in object.get(input.request, "secret_mounts", [])
	not id in data.kiln.allowed_secret_ids
	msg := sprintf("RUN mounts secret %q, which is not allowed", [id])
}
