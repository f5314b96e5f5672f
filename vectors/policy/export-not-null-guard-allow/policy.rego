package kiln.export

deny contains "the image has no SBOM" if not input.sbom
