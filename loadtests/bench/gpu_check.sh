#!/usr/bin/env bash
# GPU check for rankserve, run in one go on a machine with an NVIDIA GPU (from the project root):
#
#   loadtests/bench/gpu_check.sh [OUT_DIR]      # default: $OUT, else loadtests/results/gpu-check-<time>
#
# Prints the GPU (nvidia-smi), reads it through the gateway's NVML collector, lists ONNX
# Runtime's providers and, where the CUDA provider exists (onnxruntime-gpu), benchmarks raw
# ONNX Runtime on the GPU and on the CPU in the same run, then the gateway on the GPU.
# Each step says clearly why it was skipped; the script never fails for a missing GPU,
# driver or provider. Results: OUT_DIR/gpu_check.json and OUT_DIR/nvidia-smi.txt.
# Set GPU_CHECK_ARGS for more options (e.g. "--tensorrt --seconds 2"; see
# `python -m loadtests.bench.gpu_check --help`). Real requests need the KuaiRand folder
# (RANKSERVE_DATA); without it raw ONNX Runtime runs on ids drawn from the model card.
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
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$py" -m loadtests.bench.gpu_check --out "$out" ${GPU_CHECK_ARGS:-}
status=$?
if [ $status -ne 0 ]; then
    echo "gpu_check.py failed with status $status (see the output above)"
fi
exit $status
