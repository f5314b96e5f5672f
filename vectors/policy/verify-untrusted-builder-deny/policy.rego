package kiln.verify

# A URI matches when equal to a trusted one, or a trusted one followed by @, # or ?
# (as kiln_attest::verify does).
matches(uri, trusted) if uri == trusted
matches(uri, trusted) if {
	startswith(uri, trusted)
	substring(uri, count(trusted), 1) in {"@", "#", "?"}
}

ext := input.provenance.buildDefinition.externalParameters

source_uris contains d.uri if some d in input.provenance.buildDefinition.resolvedDependencies
source_uris contains ext.configSource.uri
source_uris contains v if some v in object.get(ext, "namedContexts", {})

deny contains "the provenance names no builder" if not input.provenance.runDetails.builder.id

deny contains msg if {
	id := input.provenance.runDetails.builder.id
	not id in data.kiln.trusted_builder_ids
	msg := sprintf("builder %s is not trusted", [id])
}

deny contains "no source URI of the provenance is trusted" if {
	not any_trusted_source
}

any_trusted_source if {
	some uri in source_uris
	some t in data.kiln.trusted_source_uris
	matches(uri, t)
}

deny contains "the provenance attestation is not signed" if {
	not provenance_signed
}

provenance_signed if {
	some a in input.attestations
	a.predicate_type == "https://slsa.dev/provenance/v1"
	a.signed
}

deny contains "no listed key signed the image" if {
	every k in input.signature.key_ids {
		not k in data.kiln.trusted_key_ids
	}
}
