package kiln.exec

deny contains msg if {
	input.step.network == "host"
	not input.tenant in data.kiln.host_network_tenants
	msg := sprintf("%s: --network=host is not allowed for tenant %s", [input.step.name, input.tenant])
}

deny contains msg if {
	input.step.security == "insecure"
	not input.tenant in data.kiln.insecure_tenants
	msg := sprintf("%s: --security=insecure is not allowed for tenant %s", [input.step.name, input.tenant])
}
