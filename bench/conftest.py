"""Benchmarks share the tests' independent formulations (tests/authors_formulation.py) and print
each contestant's dot-product FLOPs at the end of the run (bench/step_flops.py). The fixture
`flush_denormals` runs a benchmark with denormals flushed to zero, as the trainer runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from bench.step_flops import summary_lines


def flushes_denormals() -> bool:
    """Whether this thread flushes denormals to zero now. torch sets the mode but cannot report it
    (`torch.set_flush_denormal` returns whether the CPU supports it), so the arithmetic is asked:
    2**-140 is a float32 denormal, which a flushing thread reads or computes as 0."""
    return torch.tensor(2.0**-140, dtype=torch.float32).mul(1.0).item() == 0.0


@contextlib.contextmanager
def flushed_denormals() -> Iterator[None]:
    """Denormals flushed inside, and afterwards the mode this thread had before."""
    previous = flushes_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


@pytest.fixture
def flush_denormals() -> Iterator[None]:
    """Flush denormals during one benchmark, as the trainer does (the authors' tiny init makes them,
    and they slow every contestant alike), and restore the previous mode after it."""
    with flushed_denormals():
        yield


def pytest_terminal_summary(terminalreporter):
    for line in summary_lines():
        terminalreporter.write_line(line)
