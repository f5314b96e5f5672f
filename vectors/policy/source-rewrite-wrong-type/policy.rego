package kiln.source

deny contains "never" if false

rewrite := {"ref": input.source.image.normalized}
