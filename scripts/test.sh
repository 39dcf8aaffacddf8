#!/usr/bin/env bash
# The test suite: sets up .venv if needed, checks style, runs every test (extra arguments go to pytest).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
"$root/.venv/bin/ruff" check .
"$root/.venv/bin/ruff" format --check .
exec "$root/.venv/bin/python" -m pytest "$@"
