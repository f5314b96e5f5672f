package kiln.verify_test

import data.kiln.verify

key := "311113a3deb72e4005cba06f2337ba6d193a4840ca5a489115e438f4daa8b7da"

builder := "https://kiln.example.com/builders/ci-1"

predicate(builder_id, deps) := {
	"buildDefinition": {
		"buildType": "https://example.invalid/kiln/build-types/dockerfile/v1",
		"externalParameters": {"frontend": "dockerfile.v0", "configSource": {"uri": "Dockerfile", "name": "Dockerfile", "digest": {"sha256": "00"}}},
		"internalParameters": {},
		"resolvedDependencies": [{"uri": u, "digest": {"sha256": "00"}} | some u in deps],
	},
	"runDetails": {"builder": {"id": builder_id}},
}

good_deps := ["context", "git+https://git.example.com/team-a/app@refs/heads/main"]

bundle(prov, key_ids, signed) := {
	"image": {"reference": "registry.example.com/team-a/app:1", "manifest_digest": "sha256:00", "config": null},
	"signature": {"verified": true, "key_ids": key_ids},
	"provenance": prov,
	"sbom": null,
	"attestations": [{"predicate_type": "https://slsa.dev/provenance/v1", "signed": signed}],
}

test_trusted_build_allowed if {
	count(verify.deny) == 0 with input as bundle(predicate(builder, good_deps), [key], true)
}

test_source_uri_matches_exactly_or_before_at_hash_query if {
	every uri in [
		"git+https://git.example.com/team-a/app",
		"git+https://git.example.com/team-a/app@refs/heads/main",
		"git+https://git.example.com/team-a/app#v1.2",
		"git+https://git.example.com/team-a/app?ref=main",
	] {
		count(verify.deny) == 0 with input as bundle(predicate(builder, [uri]), [key], true)
	}
}

test_source_in_named_context_allowed if {
	base := predicate(builder, ["context"])
	prov := object.union(base, {"buildDefinition": {"externalParameters": {"namedContexts": {"src": "git+https://git.example.com/team-a/app@v1"}}}})
	count(verify.deny) == 0 with input as bundle(prov, [key], true)
}

test_untrusted_builder_denied if {
	verify.deny == {"builder https://evil.example/b is not trusted"} with input as bundle(predicate("https://evil.example/b", good_deps), [key], true)
}

test_fork_source_denied if {
	some msg in verify.deny with input as bundle(predicate(builder, ["git+https://git.example.com/team-a/app-fork@main"]), [key], true)
	startswith(msg, "no source URI of the provenance is trusted")
}

test_unlisted_key_denied if {
	verify.deny == {`no trusted key signed the image (key ids ["ab"])`} with input as bundle(predicate(builder, good_deps), ["ab"], true)
}

test_one_listed_key_is_enough if {
	count(verify.deny) == 0 with input as bundle(predicate(builder, good_deps), ["ab", key], true)
}

test_unsigned_provenance_denied if {
	verify.deny == {"the provenance attestation is not signed"} with input as bundle(predicate(builder, good_deps), [key], false)
}

test_missing_provenance_denied if {
	verify.deny == {"no provenance: cannot check the builder or the source"} with input as bundle(null, [key], true)
}

test_trust_lists_come_from_data if {
	count(verify.deny) == 0 with input as bundle(predicate("https://other/b", ["git+https://other/repo"]), ["k2"], true)
		with data.kiln.config.trusted_builder_ids as ["https://other/b"]
		with data.kiln.config.trusted_source_uris as ["git+https://other/repo"]
		with data.kiln.config.trusted_key_ids as ["k2"]
}
