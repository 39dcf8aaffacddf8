#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh installs on the GPU machine (CPython 3.12, manylinux x86_64, no network), at the
# versions requirements.lock pins, into .gpu-bundle/ (git-ignored; it travels with the repository). Only what that
# machine lacks of what the check imports: its image has torch, transformers, numpy, einops, msgpack, ninja, psutil,
# py-cpuinfo, tqdm, PyYAML and packaging. deepspeed and antlr4-python3-runtime come as source only: built here into
# wheels (pure Python). Safe to run twice: wheels already there are kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$root/.gpu-bundle"
python="$root/.venv/bin/python"
[[ -x "$python" ]] || bash "$root/scripts/setup.sh"
BINARY=(megatron-core pydantic pydantic_core annotated-types typing-inspection typing_extensions hjson omegaconf)
SOURCE=(deepspeed antlr4-python3-runtime)
pinned() { grep -i "^$1==" "$root/requirements.lock" || { echo "gpu-bundle: $1 is not pinned in requirements.lock" >&2; exit 1; }; }
mkdir -p "$bundle"
quiet=(--quiet --disable-pip-version-check)
for package in "${BINARY[@]}"; do
    "$python" -m pip download "${quiet[@]}" --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$bundle" "$(pinned "$package")" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
done
for package in "${SOURCE[@]}"; do
    name="$(pinned "$package")"
    wheel_name="$(echo "${name%%==*}" | tr - _)-${name##*==}-py3-none-any.whl"
    [[ -f "$bundle/$wheel_name" ]] || DS_BUILD_OPS=0 "$python" -m pip wheel "${quiet[@]}" --no-deps --no-build-isolation \
        -w "$bundle" "$name" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
done
echo "$(ls "$bundle"/*.whl | wc -l) wheels, $(du -sh "$bundle" | cut -f1) in $bundle"
