#!/usr/bin/env bash
# The GPU path checked and measured on a CUDA machine in one command (bench/gpu_check.py says
# what it runs). A machine that reaches no registry gets what the project needs beside its own
# torch from wheels in .whl (`make gpu-wheels` downloads them where pip works, for
# GPU_PYTHON_VERSION); they go to a folder of their own, ahead of the machine's packages.
#   bench/gpu_check.sh [OUT_DIR] [gpu_check.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
shift || true
python=${PYTHON:-python3}
site=${GPU_CHECK_SITE:-/tmp/polycoder-gpu-site}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$python" bench/gpu_check.py --out "$out/gpu-check.json" "$@" 2>&1 | tee "$out/gpu-check.log"
