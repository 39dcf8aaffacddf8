"""The local backend: every rank as a process on this machine, started by torchrun (which picks a free port)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_local(run_dir: Path, world_size: int) -> int:
    """Runs the job's ranks here and waits; returns the exit status (non-zero if any rank failed)."""
    threads = max(1, (os.cpu_count() or 1) // world_size)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
        "-m", "launch.worker", str(run_dir),
    ]  # fmt: skip
    return subprocess.run(command, env=env, check=False).returncode
