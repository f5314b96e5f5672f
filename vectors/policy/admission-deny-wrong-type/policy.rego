package kiln.admission

deny := count(input.request.base_images)
