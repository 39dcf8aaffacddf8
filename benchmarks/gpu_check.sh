#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py), as the GPU machine runs it: corolla's dependencies that machine lacks,
# installed from .gpu-bundle/ (scripts/gpu-bundle.sh) into a temporary folder, then the check, under 8 minutes on
# one H200. Figures: printed, and in OUT_DIR/gpu_check.json.
#     bash benchmarks/gpu_check.sh OUT_DIR
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}"
python="${PYTHON:-python3}"
compgen -G "$root/.gpu-bundle/*.whl" > /dev/null || { echo "no wheels in $root/.gpu-bundle: run scripts/gpu-bundle.sh" >&2; exit 2; }
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
"$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$root"/.gpu-bundle/*.whl
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DS_ACCELERATOR=cuda
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/nvidia-smi.txt"
exec "$python" "$root/benchmarks/gpu_check.py" "$out"
