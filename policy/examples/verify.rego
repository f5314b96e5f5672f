# Verify: `kiln verify --policy`, after the signature checks passed.
package kiln.verify

cfg := data.kiln.config

predicate := input.provenance

builder_id := predicate.runDetails.builder.id

deny contains "no provenance: cannot check the builder or the source" if predicate == null

deny contains msg if {
	builder_id
	not builder_id in cfg.trusted_builder_ids
	msg := sprintf("builder %s is not trusted", [builder_id])
}

deny contains "the provenance names no builder" if {
	predicate != null
	not builder_id
}

# Where kiln records sources (docs/provenance.md, as kiln_attest::verify reads them):
# resolvedDependencies[].uri, externalParameters.configSource.uri and the values of
# externalParameters.namedContexts.
source_uris contains dep.uri if some dep in predicate.buildDefinition.resolvedDependencies

source_uris contains predicate.buildDefinition.externalParameters.configSource.uri

source_uris contains uri if some uri in predicate.buildDefinition.externalParameters.namedContexts

# A URI matches a trusted one when equal, or when the trusted one is followed by `@`, `#` or `?`
# (git+https://host/org/repo matches ...repo@refs/heads/main, not ...repo-fork).
uri_matches(uri, trusted) if uri == trusted

uri_matches(uri, trusted) if {
	startswith(uri, trusted)
	substring(uri, count(trusted), 1) in {"@", "#", "?"}
}

trusted_source if {
	some uri in source_uris
	some trusted in cfg.trusted_source_uris
	uri_matches(uri, trusted)
}

deny contains msg if {
	predicate != null
	not trusted_source
	msg := sprintf("no source URI of the provenance is trusted (found %v)", [sort([u | some u in source_uris])])
}

deny contains "the image signature did not verify" if not input.signature.verified

deny contains msg if {
	every k in input.signature.key_ids {
		not k in cfg.trusted_key_ids
	}
	msg := sprintf("no trusted key signed the image (key ids %v)", [input.signature.key_ids])
}

provenance_signed if {
	some a in input.attestations
	a.predicate_type == "https://slsa.dev/provenance/v1"
	a.signed == true
}

deny contains "the provenance attestation is not signed" if not provenance_signed
