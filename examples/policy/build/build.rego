# The demo's build policy (scripts/demo.sh): what a platform team would enforce on every build.

# Base images come from the demo's own namespace (or are pinned by digest).
package kiln.admission

deny contains sprintf("base image %s is neither a kiln-demo/ image nor pinned by digest", [b.ref]) if {
	some b in input.request.base_images
	not startswith(b.repository, "kiln-demo/")
	b.digest == null
}

deny contains "--allow security.insecure is never granted here" if {
	"security.insecure" in input.request.entitlements
}
