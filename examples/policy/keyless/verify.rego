# A deploy gate for artifacts signed keylessly by one release workflow: `kiln verify` with
# --certificate-identity-regexp and this policy. The certificate's chain, SCTs, log entries and
# timestamps have verified before this runs; the policy pins *which* workflow signed, from the
# Fulcio certificate extensions (input.signature.identities, `kiln policy schema verify`).
#
# data.json pins sigstore-conformance's public test beacon workflow, whose signed bundles the
# tests verify; a real deployment pins its own repository, workflow file and refs.
package kiln.verify

release := data.release

deny contains "not signed by a keyless (Fulcio) identity: the release workflow must sign" if {
	count(input.signature.identities) == 0
}

deny contains msg if {
	some id in input.signature.identities
	some problem in problems(id)
	msg := sprintf("signer %v: %v", [id.san, problem])
}

ext(id, name) := object.get(id.extensions, name, "")

problems(id) := {p |
	some check in checks(id)
	not check.ok
	p := check.msg
}

checks(id) := [
	{
		"ok": id.issuer == release.issuer,
		"msg": sprintf("OIDC issuer %v is not %v", [id.issuer, release.issuer]),
	},
	{
		# The workflow file that ran (build signer), with its ref: the exact release workflow.
		"ok": ext(id, "build_signer_uri") == release.workflow,
		"msg": sprintf("workflow %v is not the release workflow %v", [ext(id, "build_signer_uri"), release.workflow]),
	},
	{
		"ok": ext(id, "source_repository_uri") == release.repository,
		"msg": sprintf("source repository %v is not %v", [ext(id, "source_repository_uri"), release.repository]),
	},
	{
		"ok": ext(id, "source_repository_ref") in release.refs,
		"msg": sprintf("source ref %v is not one of %v", [ext(id, "source_repository_ref"), release.refs]),
	},
	{
		# Self-hosted runners are whatever their owner made them; release on hosted ones.
		"ok": ext(id, "runner_environment") == "github-hosted",
		"msg": sprintf("runner environment %v is not github-hosted", [ext(id, "runner_environment")]),
	},
	{
		# The workflow file's own commit is the source commit: no workflow from another branch.
		"ok": ext(id, "build_signer_digest") == ext(id, "source_repository_digest"),
		"msg": "the workflow ran from another commit than the source it built",
	},
]
