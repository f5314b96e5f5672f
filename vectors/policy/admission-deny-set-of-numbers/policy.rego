package kiln.admission

deny contains img.index if {
	some img in input.request.stages
}
