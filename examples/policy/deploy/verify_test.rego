package kiln.deploy_test

signed := {
	"image": {"config": {"user": "app"}},
	"provenance": {"runDetails": {"builder": {"id": "https://example.invalid/kiln/builders/demo"}}},
	"sbom": {"package_count": 1, "packages": []},
}

test_demo_build_is_deployable if {
	count(data.kiln.verify.deny) == 0 with input as signed
}

test_other_builder_is_refused if {
	count(data.kiln.verify.deny) == 1 with input as object.union(signed, {"provenance": {"runDetails": {"builder": {"id": "https://evil.example"}}}})
}

test_missing_provenance_is_refused if {
	"no signed provenance" in data.kiln.verify.deny with input as object.remove(signed, ["provenance"])
}
