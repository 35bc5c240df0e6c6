#!/usr/bin/env bash
# The GPU check (issue 30; benchmarks/gpu_check.py says what it measures): layer and whole-model timings
# (static / DY-Conv / PAD element and channel / MoE / PAD-MoE; train and eval; fp32 and bf16; eager and
# compiled), a short nccl DDP run over every GPU, and an ONNX export, into docs/results/gpu_check.{json,md}.
#   bash benchmarks/gpu_check.sh          # on a CUDA machine, about 10 minutes on one GPU
#   bash benchmarks/gpu_check.sh --cpu    # the dry run on the CPU (tiny shapes), about 2 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
