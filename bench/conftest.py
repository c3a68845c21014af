"""Benchmarks share the tests' independent formulations (tests/authors_formulation.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
