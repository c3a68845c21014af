"""Benchmarks share the tests' independent formulations (tests/authors_formulation.py) and print
each contestant's dot-product FLOPs at the end of the run (bench/step_flops.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def pytest_terminal_summary(terminalreporter):
    from step_flops import summary_lines

    for line in summary_lines():
        terminalreporter.write_line(line)
