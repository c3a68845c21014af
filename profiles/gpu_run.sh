#!/usr/bin/env bash
# On a CUDA machine, in one go: install the project offline, the kernels' CUDA equivalence tests, the
# no-host-sync, CUDA-graph and side-stream batch tests, the benchmarks (kernels, quantizer step, train
# step on CUDA), a profiler capture with the GEMM baseline, and the trainer's end-to-end step at the
# paper's sizes four ways (eager, --compile, --cuda-graph, --bf16), each with its step time, data wait
# and MFU. Small result files land in OUT_DIR (train_step.md: the four runs).
#   bash profiles/gpu_run.sh OUT_DIR
#   bash profiles/gpu_run.sh --dry-run OUT_DIR   # every step on the CPU at tiny sizes (CI runs it)
#
# The GPU image (Python 3.12, torch 2.11, triton 3.6) has no PyAV and no nvtx package, and nothing can
# be installed into it from outside: the project installs with --no-deps --no-index (or, where pip
# cannot build it, runs from the source tree), and every step whose tools are missing says so and
# is skipped, never stops the script. Wheels brought along in $WHEELS (pure Python, 64 MiB at most)
# are installed first, offline. Environment: PYTHON (python3), STEPS (train steps per run, 30),
# WORK (scratch folder for the data set and the runs, a fresh temporary one).
set -uo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out=${1:?usage: bash profiles/gpu_run.sh [--dry-run] OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-30}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/codaar-gpu-run.XXXXXX")}
export PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME COMMAND...: run it, log it, remember a failure, carry on
    local name=$1
    shift
    echo "== $name: $*"
    "$@"
    local status=$?
    [ "$status" -eq 0 ] || { echo "== $name failed (exit $status)"; failed+=("$name"); }
}

has_module() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

# ------------------------------------------------------------------------------------ install
if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
    step wheels "$PYTHON" -m pip install -q --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl
fi
install=(-m pip install -q --no-deps --no-build-isolation --no-index -e .)
if [ "$dry" = 1 ]; then install+=(--dry-run); fi  # rehearsed: pip builds the metadata, installs nothing
if ! "$PYTHON" "${install[@]}"; then
    # no setuptools to build with: run from the tree, `codaar_kernels` being the kernels/ folder
    echo "== install: pip could not install the project; running it from $ROOT"
    mkdir -p "$WORK/path" && ln -sfn "$ROOT/kernels" "$WORK/path/codaar_kernels"
    export PYTHONPATH="$ROOT:$WORK/path${PYTHONPATH:+:$PYTHONPATH}"
fi
step import "$PYTHON" -c "import codaar, codaar_kernels, torch; from codaar.runtime.profiling import nvtx_backend; \
print('codaar', codaar.__file__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available(), \
'| nvtx ranges:', nvtx_backend())"
missing=$(for m in numpy safetensors tqdm filelock triton pytest pytest_benchmark nvtx av matplotlib; do
    has_module "$m" || printf '%s ' "$m"; done)
echo "== modules missing here (each step that needs one is skipped): ${missing:-none}"

# ----------------------------------------------------------------------- tests and benchmarks
if [ "$dry" = 1 ]; then
    export CODAAR_COMPILE_BACKEND=aot_eager  # Inductor's C++ build takes minutes on a CPU: Dynamo's graphs only
    collect=(--collect-only)  # the files, imports and markers of every test and benchmark, none run
    echo "gpu.csv: dry run on $(uname -m), no GPU queried" > "$out/gpu.csv"
else
    export TRITON_INTERPRET=0 CODAAR_BACKEND=auto
    collect=()
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/gpu.csv" \
        || failed+=(nvidia-smi)
fi
if has_module pytest; then
    step equivalence "$PYTHON" -m pytest tests/test_kernel_assign.py tests/test_kernel_soft_usage.py \
        tests/test_kernel_dta_accumulate.py tests/test_kernel_ema_csa_update.py tests/test_quantizer_kernels.py \
        tests/test_gpu_sync.py tests/test_gpu_graph.py tests/test_gpu_batches.py \
        -q -p no:cacheprovider "${collect[@]}" > "$out/equivalence.txt" 2>&1
    tail -n 3 "$out/equivalence.txt"
else
    echo "== equivalence: skipped (no pytest here)"
fi
if has_module pytest_benchmark; then
    step bench "$PYTHON" -m pytest bench/bench_kernels.py bench/bench_quantizer_step.py \
        "bench/bench_train_step.py::test_train_step" -k "not train_step or cuda" -q -p no:cacheprovider \
        "${collect[@]}" --benchmark-json "$out/bench.json" --benchmark-columns=mean,stddev,rounds \
        --benchmark-group-by=group > "$out/bench.txt" 2>&1
    tail -n 3 "$out/bench.txt"
else
    echo "== bench: skipped (no pytest-benchmark here)"
fi
if [ "$dry" = 1 ]; then
    step profile "$PYTHON" -c "import profiles.gpu_profile"  # imports only: it needs a GPU
else
    step profile "$PYTHON" -m profiles.gpu_profile "$out" > "$out/summary.md" 2>&1
fi

# ------------------------------------------------ the trainer's step at the paper's sizes, four ways
# The paper's features (video 7x7x512 maps, text 10x768), batch 80, the default 71 M model; the data
# set is written once (a few epochs' worth of clips) and read by all four runs.
if [ "$dry" = 1 ]; then
    data_flags=(--preset default --num-pretrain 40 --num-train 8 --num-val 8 --num-test 8)
    size=(--batch-size 20 --dim 16 --num-codes 16 --temporal-ffn-dim 32 --text-lstm-dim 8 --cpc-context-dim 16
          --projection-dim 16 --video-hidden-channels 8 --video-projection-channels 8)
    STEPS=2
    LOG_EVERY=1
else
    LOG_EVERY=5
    data_flags=(--preset paper --num-pretrain 400 --num-train 8 --num-val 8 --num-test 8)
    size=()
fi
step data "$PYTHON" -m codaar.data synth "$WORK/data" "${data_flags[@]}" --no-progress --overwrite
report="$out/train_step.md"
echo "# The training step, $STEPS steps per run ($([ "$dry" = 1 ] && echo "dry run: CPU, tiny sizes" \
    || echo "paper sizes"))" > "$report"
for mode in eager compile cuda-graph bf16; do
    flags=()
    case $mode in
        compile) flags=(--compile) ;;
        cuda-graph) flags=(--cuda-graph) ;;
        bf16) flags=(--bf16) ;;
    esac
    # a log point every 5th step (1st in the dry run): each metrics line is the mean of its window
    args=(--data "$WORK/data" --out "$WORK/run-$mode" --max-steps "$STEPS" --log-every "$LOG_EVERY"
          --checkpoint-every 1000000
          --keep-checkpoints 1 --no-progress "${size[@]}" "${flags[@]}")
    if [ "$dry" = 1 ] && { [ "$mode" = cuda-graph ] || [ "$mode" = bf16 ]; }; then
        # CUDA-only settings: their command line is checked as the GPU run reads it, the step runs without them
        step "$mode-settings" "$PYTHON" -c "import sys; from codaar.train.config import parse_config; \
parse_config(sys.argv[1:])" "${args[@]}"
        args=("${args[@]:0:${#args[@]}-1}" --device cpu)
    fi
    step "train-$mode" "$PYTHON" -m codaar.train "${args[@]}" > "$WORK/train-$mode.log" 2>&1
    tail -n 4 "$WORK/train-$mode.log"
    step "summary-$mode" "$PYTHON" - "$mode" "$WORK/run-$mode/metrics.jsonl" "$WORK/train-$mode.log" \
        >> "$report" <<'EOF'
import json
import re
import statistics
import sys

mode, metrics, log = sys.argv[1:4]
records = [json.loads(line) for line in open(metrics) if line.strip()]
later = records[len(records) // 3:] or records  # the first steps compile, capture, warm up
timing = sorted({key for r in later for key in r if re.search(r"wait|_ms$|clips|mfu|flop", key)})
print(f"\n## {mode}: {records[-1]['step']} steps, {len(records)} log points; means over the log points at "
      f"steps {later[0]['step']}-{later[-1]['step']}\n")
for key in timing:
    values = [r[key] for r in later if isinstance(r.get(key), (int, float))]
    if values:
        print(f"- {key}: {statistics.fmean(values):.4g}")
print(f"- loss at the last step: {records[-1]['loss']:.5g}")
print("\n```\n" + "".join(open(log).readlines()[-12:]) + "```")
EOF
    rm -rf "$WORK/run-$mode"  # an 858 MB checkpoint per run at the paper's sizes
done
cat "$report"

if [ "${#failed[@]}" -gt 0 ]; then
    echo "gpu_run: failed steps: ${failed[*]}"
    exit 1
fi
echo "gpu_run: every step passed$([ "$dry" = 1 ] && echo " (dry run)")"
