#!/usr/bin/env bash
# The test suite: sets up .venv and Debian's Slurm if needed, checks style, runs every test on two workers (extra
# arguments go to pytest). The Slurm tests start a cluster on this machine (slurm/testcluster.py) and stop it after.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
bash "$root/scripts/setup-slurm.sh"
cd "$root"
"$root/.venv/bin/ruff" check .
"$root/.venv/bin/ruff" format --check .
# Two workers (CI's cores); each takes whole modules, and one every module that starts a Slurm cluster (conftest.py).
exec "$root/.venv/bin/python" -m pytest -n "${COROLLA_TEST_WORKERS:-2}" "$@"
