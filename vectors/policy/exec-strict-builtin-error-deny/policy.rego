package kiln.exec

deny contains "too many retries" if {
	to_number(input.step.command[2]) > 3
}
