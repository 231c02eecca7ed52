#!/usr/bin/env bash
# make gpu-check OUT=dir: the memory planner's GPU checks (python -m bench.gpu_check) from a plain
# checkout, without building a venv: on a GPU node whose python already has torch (>= 2.5) and the
# scientific stack, the wheels in .wheels/ (make gpu-wheels, on a machine with internet) of what
# that python lacks are installed into a temporary folder for this run only.
#
#   scripts/gpu-check.sh OUT [--smoke] [--device auto|cuda|cpu] [--only 1,3]
#
# PYTHON picks the interpreter (default python3). Exit codes are the module's: 0 every target met,
# 1 a target missed, 2 a usage or installation problem, 3 no CUDA device (one line, nothing run).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ $1 == -* ]]; then
  echo "usage: scripts/gpu-check.sh OUT [--smoke] [--device auto|cuda|cpu] [--only 1,3]" >&2
  exit 2
fi
out=$1
shift
py=${PYTHON:-python3}
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "gpu-check: $py cannot import torch; run it with a python that has torch >= 2.5 (PYTHON=/path/to/python)" >&2
  exit 2
fi
site=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")
trap 'rm -rf "$site"' EXIT
if [ -d .wheels ]; then
  mapfile -t need < <("$py" scripts/wheels_needed.py .wheels)
  if [ ${#need[@]} -gt 0 ]; then
    echo "gpu-check: installing ${need[*]} from .wheels/ for this run" >&2
    "$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
      --find-links .wheels --target "$site" "${need[@]}"
  fi
fi
rc=0
PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" "$py" -m bench.gpu_check --out "$out" "$@" || rc=$?
exit "$rc"
