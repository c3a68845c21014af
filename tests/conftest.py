"""Test-wide settings, applied before any test module imports triton or codaar_kernels.

This is the one place that decides how the Triton kernels run in the tests: compiled on a CUDA
machine (TRITON_INTERPRET=0, whatever the environment said, so a plain `python -m pytest` there
never runs the interpreter), under the Triton interpreter on the CPU otherwise. Triton reads
TRITON_INTERPRET when a kernel is decorated, so it is set here, first. The kernels then take
their tensors on `codaar_kernels.utilities.triton_device()`. The quantizer tests exercise the eager
reference unless a test asks for the Triton path with `codaar_kernels.use_backend("triton")`.
Tests that need a CUDA device carry the `gpu` marker and are skipped without one.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
os.environ["TRITON_INTERPRET"] = "0" if CUDA else "1"
os.environ.setdefault("CODAAR_BACKEND", "eager")


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _same_torch_threads_for_every_test():
    """Tests that run a command in this process (`codaar.evaluate ... --threads 1`) change torch's thread
    count, and float32 results depend on it: every test starts with the count the session started with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
