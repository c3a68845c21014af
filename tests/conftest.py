"""Test-wide settings, applied before any test module imports triton or codaar_kernels.

Without CUDA, Triton kernels run under the interpreter (Triton reads TRITON_INTERPRET when a
kernel is decorated, so it must be set first). The quantizer tests exercise the eager reference
unless a test asks for the Triton path with `codaar_kernels.use_backend("triton")`.
"""

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CODAAR_BACKEND", "eager")
sys.path.insert(0, str(Path(__file__).parent))  # helper modules beside the tests (golden_cases, ...)
