package kiln.source_test

import data.kiln.source

image(ref, normalized, registry, digest) := {
	"tenant": "team-a",
	"source": {"type": "image", "image": {
		"ref": ref,
		"normalized": normalized,
		"registry": registry,
		"repository": "x",
		"tag": null,
		"digest": digest,
	}},
}

test_allowed_registry if {
	count(source.deny) == 0 with input as image("golang:1.23", "docker.io/library/golang:1.23", "docker.io", null)
}

test_other_registry_denied if {
	source.deny == {"image quay.io/evil/miner:latest: registry quay.io is not allowed"} with input as image("quay.io/evil/miner:latest", "quay.io/evil/miner:latest", "quay.io", null)
}

test_registry_list_comes_from_data if {
	count(source.deny) == 0 with input as image("quay.io/ok/tool:1", "quay.io/ok/tool:1", "quay.io", null)
		with data.kiln.config.allowed_registries as ["quay.io"]
}

test_http_sources_are_not_registry_checked if {
	count(source.deny) == 0 with input as {"tenant": "t", "source": {"type": "http", "url": "https://example.com/x", "checksum": null}}
}

test_pinned_tag_rewritten if {
	source.rewrite == "docker.io/library/alpine:3.20@sha256:9eb908302b2f0669713ef2246088951e9478d232331951dfebb427fba5610b18" with input as image("alpine:3.20", "docker.io/library/alpine:3.20", "docker.io", null)
}

test_unpinned_tag_not_rewritten if {
	not source.rewrite with input as image("golang:1.23", "docker.io/library/golang:1.23", "docker.io", null)
}

test_reference_with_digest_not_rewritten if {
	not source.rewrite with input as image(
		"alpine:3.20@sha256:3333333333333333333333333333333333333333333333333333333333333333",
		"docker.io/library/alpine:3.20",
		"docker.io",
		"sha256:3333333333333333333333333333333333333333333333333333333333333333",
	)
}
