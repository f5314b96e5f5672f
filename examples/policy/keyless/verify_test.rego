package kiln.keyless_test

release_signer := {
	"san": "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main",
	"san_uris": ["https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"],
	"san_emails": [],
	"issuer": "https://token.actions.githubusercontent.com",
	"extensions": {
		"build_signer_uri": "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main",
		"build_signer_digest": "c7b3dfb335f051e1c86bda4c716fac97df62ad81",
		"source_repository_uri": "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon",
		"source_repository_digest": "c7b3dfb335f051e1c86bda4c716fac97df62ad81",
		"source_repository_ref": "refs/heads/main",
		"runner_environment": "github-hosted",
	},
}

signed_by(id) := {"signature": {"verified": true, "key_ids": ["k"], "identities": [id]}}

with_ext(name, value) := object.union(release_signer, {"extensions": object.union(release_signer.extensions, {name: value})})

test_release_workflow_is_allowed if {
	count(data.kiln.verify.deny) == 0 with input as signed_by(release_signer)
}

test_a_key_signature_is_refused if {
	count(data.kiln.verify.deny) == 1 with input as {"signature": {"verified": true, "key_ids": ["k"], "identities": []}}
}

test_another_workflow_in_the_same_repository_is_refused if {
	some msg in data.kiln.verify.deny with input as signed_by(with_ext("build_signer_uri", "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/other.yml@refs/heads/main"))
	contains(msg, "is not the release workflow")
}

test_a_feature_branch_is_refused if {
	some msg in data.kiln.verify.deny with input as signed_by(with_ext("source_repository_ref", "refs/heads/feature"))
	contains(msg, "source ref refs/heads/feature")
}

test_a_self_hosted_runner_is_refused if {
	some msg in data.kiln.verify.deny with input as signed_by(with_ext("runner_environment", "self-hosted"))
	contains(msg, "self-hosted")
}

test_another_issuer_is_refused if {
	some msg in data.kiln.verify.deny with input as signed_by(object.union(release_signer, {"issuer": "https://gitlab.com"}))
	contains(msg, "OIDC issuer https://gitlab.com")
}

test_a_workflow_from_another_commit_is_refused if {
	some msg in data.kiln.verify.deny with input as signed_by(with_ext("build_signer_digest", "0000"))
	contains(msg, "another commit")
}
