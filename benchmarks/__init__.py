"""Benchmark scripts (run as files, e.g. `python benchmarks/throughput.py`; see README.md)."""
