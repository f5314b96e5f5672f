package kiln.admission

# `not input.tenant` is true when the field is absent: the guard fires and the gate denies.
deny contains "the request names no tenant" if not input.tenant
