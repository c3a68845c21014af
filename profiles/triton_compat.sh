#!/usr/bin/env bash
# The kernels under another Triton than the one this project installs (3.9): by default 3.6, the GPU
# image's. Makes (or reuses) a second environment with that Triton beside torch 2.13.0 (the local CPU
# wheel), then on the CPU
#   1. runs the kernel tests and the quantizer-on-kernels test under that Triton's interpreter;
#   2. compiles every production kernel variant for sm_90 with that Triton's own compiler and applies
#      the CI rules of tests/test_kernel_compiled.py (compiles, no spills, shared memory fits, MMA on
#      the tensor-core paths and none on the exact fp32 path); nothing is written.
# Exits non-zero on the first failure. About 6 minutes on 2 idle cores, plus the first install.
#
#   bash profiles/triton_compat.sh                       # triton 3.6.0 in /tmp/venv-triton36
#   TRITON_VERSION=3.5.1 VENV=/tmp/venv-t35 bash profiles/triton_compat.sh
set -euo pipefail

TRITON_VERSION=${TRITON_VERSION:-3.6.0}
VENV=${VENV:-/tmp/venv-triton36}
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# numpy < 2.4: Triton 3.6's interpreter turns one-element arrays into Python ints with int(), which
# numpy 2.4 refuses (Triton 3.9's interpreter squeezes them first). Only the interpreter needs it.
"$VENV/bin/pip" install -q "torch==2.13.0" "triton==$TRITON_VERSION" "numpy<2.4" pytest -e "$ROOT"
"$VENV/bin/python" - "$TRITON_VERSION" <<'EOF'
import sys

import torch
import triton

want = sys.argv[1]
if torch.__version__.split("+")[0] != "2.13.0" or triton.__version__ != want:
    sys.exit(f"triton_compat: expected torch 2.13.0 and triton {want}, got torch {torch.__version__} "
             f"and triton {triton.__version__} (did pip pull another torch?)")
print(f"triton_compat: torch {torch.__version__}, triton {triton.__version__}, python {sys.version.split()[0]}")
EOF

cd "$ROOT"
# tests/conftest.py sets TRITON_INTERPRET=1 on a machine without CUDA. The filter: the numpy
# deprecation Triton 3.6's interpreter triggers on every scalar (see above), thousands of lines.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -W "ignore:Conversion of an array with ndim:DeprecationWarning" \
    tests/test_kernel_assign.py tests/test_kernel_soft_usage.py tests/test_kernel_dta_accumulate.py \
    tests/test_kernel_ema_csa_update.py tests/test_kernel_launch_device.py tests/test_quantizer_kernels.py
"$VENV/bin/python" profiles/compiled.py --check --arch sm_90
echo "triton_compat: triton $TRITON_VERSION passed"
