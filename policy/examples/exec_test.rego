package kiln.exec_test

import data.kiln.exec

step(tenant, network, security, mounts) := {
	"tenant": tenant,
	"entitlements": [],
	"step": {
		"stage": "build",
		"name": "[build 2/3] RUN make",
		"command": ["/bin/sh", "-c", "make"],
		"network": network,
		"security": security,
		"user": "",
		"workdir": "/src",
		"env_names": [],
		"mounts": mounts,
	},
}

test_sandboxed_step_allowed if {
	count(exec.deny) == 0 with input as step("team-a", "none", "sandbox", [])
}

test_host_network_denied if {
	exec.deny == {"[build 2/3] RUN make: --network=host is not allowed for tenant team-a"} with input as step("team-a", "host", "sandbox", [])
}

test_host_network_allowed_for_listed_tenant if {
	count(exec.deny) == 0 with input as step("infra", "host", "sandbox", [])
}

test_insecure_denied_even_for_infra if {
	exec.deny == {"[build 2/3] RUN make: --security=insecure is not allowed for tenant infra"} with input as step("infra", "none", "insecure", [])
}

test_insecure_allowed_when_data_lists_tenant if {
	count(exec.deny) == 0 with input as step("infra", "none", "insecure", [])
		with data.kiln.config.insecure_tenants as ["infra"]
}

test_listed_secret_mount_allowed if {
	count(exec.deny) == 0 with input as step("team-a", "none", "sandbox", [
		{"type": "secret", "target": "/root/.npmrc", "id": "npm_token"},
		{"type": "cache", "target": "/root/.cache", "id": "cache"},
	])
}

test_unlisted_secret_mount_denied if {
	exec.deny == {"[build 2/3] RUN make: secret mount \"aws\" is not an allowed secret id"} with input as step("team-a", "none", "sandbox", [{"type": "secret", "target": "/run/secrets/aws", "id": "aws"}])
}

test_every_violation_reported if {
	count(exec.deny) == 3 with input as step("team-a", "host", "insecure", [{"type": "secret", "target": "/s", "id": "aws"}])
}
