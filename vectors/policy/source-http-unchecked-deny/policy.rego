package kiln.source

# `checksum` is null when ADD has no --checksum; `not input.source.checksum` would NOT fire
# for null (only false or undefined), so test for a string.
has_checksum if is_string(input.source.checksum)

deny contains msg if {
	input.source.type == "http"
	not has_checksum
	msg := sprintf("ADD %s has no --checksum", [input.source.url])
}

deny contains msg if {
	input.source.type == "http"
	not startswith(input.source.url, "https://")
	msg := sprintf("ADD %s is not https", [input.source.url])
}
