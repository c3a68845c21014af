"""Test-wide settings, applied before any test module imports triton or codaar_kernels.

Without CUDA, Triton kernels run under the interpreter (Triton reads TRITON_INTERPRET when a
kernel is decorated, so it must be set first). The quantizer tests exercise the eager reference
unless a test asks for the Triton path with `codaar_kernels.use_backend("triton")`.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CODAAR_BACKEND", "eager")
sys.path.insert(0, str(Path(__file__).parent))  # helper modules beside the tests (golden_cases, ...)


@pytest.fixture(autouse=True)
def _same_torch_threads_for_every_test():
    """Tests that run a command in this process (`codaar.evaluate ... --threads 1`) change torch's thread
    count, and float32 results depend on it: every test starts with the count the session started with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
