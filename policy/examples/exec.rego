# Exec: each RUN step, before the build runs any step.
package kiln.exec

cfg := data.kiln.config

deny contains msg if {
	input.step.network == "host"
	not input.tenant in cfg.host_network_tenants
	msg := sprintf("%s: --network=host is not allowed for tenant %s", [input.step.name, input.tenant])
}

deny contains msg if {
	input.step.security == "insecure"
	not input.tenant in cfg.insecure_tenants
	msg := sprintf("%s: --security=insecure is not allowed for tenant %s", [input.step.name, input.tenant])
}

deny contains msg if {
	some m in input.step.mounts
	m.type == "secret"
	not m.id in cfg.allowed_secret_ids
	msg := sprintf("%s: secret mount %q is not an allowed secret id", [input.step.name, object.get(m, "id", "")])
}
