"""plsc-demo: build a small real dataset from installed fonts, train, evaluate, export."""
