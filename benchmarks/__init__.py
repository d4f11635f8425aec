"""Benchmarks for onnxport; run with `make bench`."""
