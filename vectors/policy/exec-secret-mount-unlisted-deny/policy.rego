package kiln.exec

deny contains msg if {
	some m in input.step.mounts
	m.type == "secret"
	not m.id in data.kiln.allowed_secret_ids
	msg := sprintf("%s: secret %q may not be mounted", [input.step.name, m.id])
}
