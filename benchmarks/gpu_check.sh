#!/usr/bin/env bash
# medxai's CUDA / mixed-precision paths in one run, and the GPU table of docs/benchmarks.md.
#
#   bash benchmarks/gpu_check.sh                        # on the GPU (about 3-6 minutes)
#   bash benchmarks/gpu_check.sh --device cpu --quick   # the same checks on the CPU, small
#
# Checks segment, batch, explain, a few training steps and a MONAI zoo bundle's sliding window
# on the device; prints images/s, the model-bound ratio and peak GPU memory (see
# benchmarks/gpu_check.py). Exit status 1 when a check fails. PYTHON picks the interpreter
# (default: the checkout's .venv, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$here/gpu_check.py" "$@"
