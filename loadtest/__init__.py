"""Load generation and benchmarks for smsgw."""
