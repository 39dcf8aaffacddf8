#!/usr/bin/env bash
# The main job: sets up .venv if needed, then runs `corolla pipeline` (extra arguments are Hydra overrides).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "$root/.venv/bin/corolla" pipeline "$@"
