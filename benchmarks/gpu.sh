#!/usr/bin/env bash
# The engine benchmark on a lent GPU: a 10,000-node FedAvg round against the device's fp32 matmul
# rate measured in the same run. Run from the repository root on the GPU machine:
#   bash benchmarks/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks}"
PY="${PYTHON:-.venv/bin/python}"
test -x "$PY" || PY=python3
export MURMURA_DATA="${MURMURA_DATA:-$(pwd)/../shared/datasets/fashion-mnist}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" benchmarks/gpu.py --nodes 10000 --json "$OUT/results_gpu.json"
