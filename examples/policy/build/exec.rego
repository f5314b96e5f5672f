package kiln.exec

deny contains "steps get no host network" if input.step.network == "host"

deny contains "steps stay in the sandbox" if input.step.security == "insecure"
