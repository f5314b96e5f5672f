package kiln.exec

# 10^10 iterations: far beyond any bound; the evaluation timer stops it.
deny contains msg if {
	n := count([x |
		some i in numbers.range(1, 100000)
		some j in numbers.range(1, 100000)
		x := i * j
	])
	n < 0
	msg := "unreachable"
}
