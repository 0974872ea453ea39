#!/usr/bin/env bash
# The one-command GPU check (benchmarks/gpu_check.py, docs/performance.md): throughput, one CPL run end to end,
# evaluation + re-ranking at Market and MSMT17 scale; report.json and report.md in --out (default gpu-check/).
#   benchmarks/gpu_check.sh                        # on a GPU, at most ~8 minutes
#   benchmarks/gpu_check.sh --device cpu --tiny    # the same steps at tiny sizes, about a minute on a CPU
# Runs with $PYTHON, else the project's .venv (make install), else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
exec "$python" benchmarks/gpu_check.py "$@"
