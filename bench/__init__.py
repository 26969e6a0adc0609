"""Benchmarks and reliability measurements; `python -m bench` rewrites docs/BENCHMARKS.md."""
