package kiln.admission_test

import data.kiln.admission

pinned := {
	"ref": "golang:1.23@sha256:1111111111111111111111111111111111111111111111111111111111111111",
	"normalized": "docker.io/library/golang:1.23@sha256:1111111111111111111111111111111111111111111111111111111111111111",
	"registry": "docker.io",
	"repository": "library/golang",
	"tag": "1.23",
	"digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
	"resolved": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
}

# Written by tag: kiln resolved it (resolved is set), but the reference pins nothing.
by_tag := {
	"ref": "alpine:3.20",
	"normalized": "docker.io/library/alpine:3.20",
	"registry": "docker.io",
	"repository": "library/alpine",
	"tag": "3.20",
	"digest": null,
	"resolved": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
}

request(bases, secrets, mounts) := {
	"tenant": "team-a",
	"request": {
		"frontend": "dockerfile.v0",
		"base_images": bases,
		"secrets": secrets,
		"secret_mounts": mounts,
		"entitlements": [],
	},
}

test_pinned_bases_allowed if {
	count(admission.deny) == 0 with input as request([pinned], [], [])
}

test_scratch_only_allowed if {
	count(admission.deny) == 0 with input as request([], [], [])
}

test_tag_only_base_denied if {
	admission.deny == {"base image alpine:3.20 is not pinned by digest (write it as name@sha256:...)"} with input as request([pinned, by_tag], [], [])
}

test_listed_secret_allowed if {
	count(admission.deny) == 0 with input as request([pinned], ["npm_token"], ["npm_token"])
}

test_unlisted_secret_denied if {
	admission.deny == {
		"secret \"aws_credentials\" is not an allowed secret id",
		"a RUN step mounts secret \"aws_credentials\", which is not an allowed secret id",
	} with input as request([pinned], ["aws_credentials"], ["aws_credentials"])
}

test_secret_list_comes_from_data if {
	count(admission.deny) == 0 with input as request([pinned], ["aws_credentials"], [])
		with data.kiln.config.allowed_secret_ids as ["aws_credentials"]
}
