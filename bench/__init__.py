"""Benchmarks (pytest-benchmark): `python -m pytest bench/<file>.py`; helpers import as `bench.<module>`."""
