package kiln.admission

# conftest style: messages are objects with a `msg` (other keys are ignored by kiln).
deny contains {"msg": msg, "details": {"entitlement": e}} if {
	some e in input.request.entitlements
	not input.tenant in data.kiln.entitlements[e]
	msg := sprintf("tenant %s may not request --allow=%s", [input.tenant, e])
}

deny contains {"msg": "builds must use the cache"} if input.request.no_cache
