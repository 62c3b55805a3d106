"""Benchmarks: figures printed and written to bench/results.json, never pass/fail tests."""
