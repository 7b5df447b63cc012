"""Benchmarks: `python -m droughtwatch_tests.benchmarks.ingest` is what `make bench` runs."""
