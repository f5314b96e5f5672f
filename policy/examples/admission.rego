# Admission: the whole build request, after base images resolve and before any step runs.
package kiln.admission

cfg := data.kiln.config

# Every base image must be pinned by the reference itself. `digest` is the digest the reference
# as written pins; `resolved` is what kiln resolved a tag to, which is always set and so says
# nothing about whether the Dockerfile pins its bases.
deny contains msg if {
	some img in input.request.base_images
	img.digest == null
	msg := sprintf("base image %s is not pinned by digest (write it as name@sha256:...)", [img.ref])
}

# Secrets the client provides, and secrets RUN steps mount, must be listed.
deny contains msg if {
	some id in input.request.secrets
	not id in cfg.allowed_secret_ids
	msg := sprintf("secret %q is not an allowed secret id", [id])
}

deny contains msg if {
	some id in object.get(input.request, "secret_mounts", [])
	not id in cfg.allowed_secret_ids
	msg := sprintf("a RUN step mounts secret %q, which is not an allowed secret id", [id])
}
