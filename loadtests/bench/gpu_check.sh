#!/usr/bin/env bash
# GPU check for rankserve, run in one go on a machine with an NVIDIA GPU (from the project root):
#
#   loadtests/bench/gpu_check.sh [OUT_DIR]      # default: $OUT, else loadtests/results/gpu-check-<time>
#
# Prints the GPU (nvidia-smi), then runs the staged check (loadtests/bench/gpu_check.py:
# environment, CUDA smoke, parity per precision, raw ONNX Runtime, sessions, the gateway),
# which writes OUT_DIR/gpu_check.json after every stage and keeps its own deadline. Each
# stage says why it was skipped or failed; the script never fails for a missing GPU.
# GPU_CHECK_ARGS adds options (e.g. "--cpu-dry-run", "--deadline-s 300"; see
# `python -m loadtests.bench.gpu_check --help`). CUDA_MODULE_LOADING defaults to LAZY.
set -u

out="${1:-${OUT:-loadtests/results/gpu-check-$(date -u +%Y%m%d-%H%M%S)}}"
mkdir -p "$out"
if [ -n "${PYTHON:-}" ]; then py="$PYTHON"
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3
fi

echo "== GPU (nvidia-smi)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw \
        --format=csv 2>&1 | tee "$out/nvidia-smi.txt"
else
    echo "no GPU: nvidia-smi not found" | tee "$out/nvidia-smi.txt"
fi

echo "== rankserve GPU check ($py)"
# shellcheck disable=SC2086  # GPU_CHECK_ARGS is a list of options
CUDA_MODULE_LOADING="${CUDA_MODULE_LOADING:-LAZY}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$py" -m loadtests.bench.gpu_check --out "$out" ${GPU_CHECK_ARGS:-}
status=$?
if [ $status -ne 0 ]; then
    echo "gpu_check.py failed with status $status (see the output above)"
fi
exit $status
