#!/usr/bin/env bash
# ESFT's GPU checks and benchmarks in one run (about 5 minutes on one H100/H200): the CUDA-marked tests, the
# training invariants on CUDA and ESFT vs FFT step time at two sizes (bench/gpu_check.py). Prints JSON lines.
#   bash bench/gpu.sh             # on a machine with a CUDA device
#   bash bench/gpu.sh --dry-run   # the same scripts on the CPU at tiny sizes (CI runs this so it does not rot)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY="${PYTHON:-$(command -v python || command -v python3)}"
if [[ "${1:-}" == "--dry-run" ]]; then
  "$PY" bench/gpu_check.py --cpu --quick
  exit 0
fi
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/esft/test_cuda.py
"$PY" bench/gpu_check.py
"$PY" bench/gpu_check.py --hidden 2048 --layers 12 --seq 2048 --batch 4
