package kiln.export

deny contains "the image has no SBOM" if input.sbom == null
