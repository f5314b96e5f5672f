package kiln.admission

pinned_count := count([i | some i in input.request.base_images; i.digest != null])
