#!/usr/bin/env bash
# Creates .venv/ with corolla and its pinned dependencies; a no-op when they are already installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.corolla-installed"
wanted="$(cat "$root/pyproject.toml" "$root/requirements.lock" | sha256sum | cut -d' ' -f1)"
if [[ -x "$venv/bin/corolla" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    exit 0
fi
python="$(command -v python3.11 || command -v python3)"
echo "setting up $venv (pinned dependencies, once) ..." >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
# torch==2.13.0 is pinned in requirements.lock: the CPU wheel here, the CUDA build on a GPU cluster.
# (This machine's pip config names local package folders that may be absent; its warnings about them are noise.)
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$root/requirements.lock" -e "$root[test]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$wanted" > "$stamp"
