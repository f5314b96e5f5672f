package kiln.admission

deny contains msg if {
	some img in input.request.base_images
	msg := img.ref
