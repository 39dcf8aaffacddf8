#!/usr/bin/env bash
# The test suite: sets up .venv and Debian's Slurm if needed, checks style, runs every test on three workers (extra
# arguments go to pytest). The Slurm tests start a cluster on this machine (slurm/testcluster.py) and stop it after.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
bash "$root/scripts/setup-slurm.sh"
cd "$root"
"$root/.venv/bin/ruff" check .
"$root/.venv/bin/ruff" format --check .
# Three workers on CI's two cores: the one that takes every test that starts a Slurm cluster (conftest.py) mostly
# waits on its jobs, and two left a third of the cores idle. Each takes whole modules, their fixtures built once.
exec "$root/.venv/bin/python" -m pytest -n "${COROLLA_TEST_WORKERS:-3}" "$@"
