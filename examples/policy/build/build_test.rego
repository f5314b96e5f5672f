package kiln.demo_test

test_unpinned_foreign_base_is_denied if {
	count(data.kiln.admission.deny) == 1 with input as {"request": {"entitlements": [], "base_images": [{"ref": "alpine:3.20", "repository": "library/alpine", "digest": null}]}}
}

test_demo_base_is_admitted if {
	count(data.kiln.admission.deny) == 0 with input as {"request": {"entitlements": [], "base_images": [{"ref": "kiln-demo/busybox:latest", "repository": "kiln-demo/busybox", "digest": null}]}}
}

test_root_image_is_denied if {
	count(data.kiln.export.deny) == 1 with input as {"image": {"config": {"user": "0:0"}}, "sbom": null}
}

test_app_user_is_exported if {
	count(data.kiln.export.deny) == 0 with input as {"image": {"config": {"user": "app"}}, "sbom": {"packages": [{"name": "busybox", "version": "1.35.0", "licenses": ["GPL-2.0-only"]}]}}
}

test_host_network_is_denied if {
	count(data.kiln.exec.deny) == 1 with input as {"step": {"network": "host", "security": "sandbox"}}
}
