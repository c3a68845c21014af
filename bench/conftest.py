"""Benchmarks share the tests' independent formulations (tests/authors_formulation.py) and print
each contestant's dot-product FLOPs at the end of the run (bench/step_flops.py)."""

from bench.step_flops import summary_lines


def pytest_terminal_summary(terminalreporter):
    for line in summary_lines():
        terminalreporter.write_line(line)
