#!/usr/bin/env bash
# The whole GPU benchmark in one command, for a lent accelerator: needs only this repo and
# the machine's own packages (torch, torchvision, pydantic, pillow, numpy). Results: one JSON
# file (RESULT, else $OUT/gpu.json, else bench/results/gpu.json). Under 8 minutes on an H200.
#   bash bench/gpu.sh [RESULT.json] [--dry-run]     (PYTHON=.venv/bin/python to pick one)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec timeout 480 "${PYTHON:-python3}" -m bench.gpu "$@"
