#!/usr/bin/env bash
# On a CUDA machine, in one go: the kernels' CUDA equivalence tests, the no-host-sync, CUDA-graph and
# side-stream batch tests, the benchmarks (kernels, quantizer step, train step on CUDA), and a profiler
# capture with the GEMM baseline; at most 6 small result files land in OUT_DIR.
#   bash profiles/gpu_run.sh OUT_DIR
set -uo pipefail
out=${1:?usage: bash profiles/gpu_run.sh OUT_DIR}
mkdir -p "$out"
export TRITON_INTERPRET=0 CODAAR_BACKEND=auto PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/gpu.csv"
python -m pytest tests/test_kernel_assign.py tests/test_kernel_soft_usage.py tests/test_kernel_dta_accumulate.py \
    tests/test_kernel_ema_csa_update.py tests/test_quantizer_kernels.py tests/test_gpu_sync.py tests/test_gpu_graph.py \
    tests/test_gpu_batches.py \
    -q -p no:cacheprovider 2>&1 \
    | tee "$out/equivalence.txt"
python -m pytest bench/bench_kernels.py bench/bench_quantizer_step.py "bench/bench_train_step.py::test_train_step" \
    -k "not train_step or cuda" -q -p no:cacheprovider \
    --benchmark-json "$out/bench.json" --benchmark-columns=mean,stddev,rounds --benchmark-group-by=group 2>&1 \
    | tee "$out/bench.txt"
python -m profiles.gpu_profile "$out" 2>&1 | tee "$out/summary.md"
