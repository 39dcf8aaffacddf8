"""The local backend: every rank of a run as a process on this machine, started by torchrun (which picks a free
port), watched until they end; `corolla train`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from launch.config.cluster import Scheduler
from launch.config.schemas import TrainJob
from launch.jobs.backend import Backend
from launch.rundir.checkpoints import latest_step
from launch.rundir.directory import RunDirectory
from launch.rundir.files import CHECKPOINTS, JOBS_FILE


def run_ranks(run_dir: Path, world_size: int) -> int:
    """Runs the run's ranks here and waits; returns the exit status (non-zero if any rank failed)."""
    threads = max(1, (os.cpu_count() or 1) // world_size)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}"]
    return subprocess.run([*torchrun, "-m", "launch.train.worker", str(run_dir)], env=env, check=False).returncode


def _not_here(run: RunDirectory, command: str) -> ValueError:
    return ValueError(
        f"{run.path} is a local run (no {JOBS_FILE}): `corolla {command}` is for runs sent to Slurm with "
        "`corolla submit`; a local run's ranks print to the terminal of `corolla train`"
    )


class LocalBackend(Backend):
    def start(self, job: TrainJob, dry_run: bool = False) -> None:
        # Here rather than above: the data preparation and MLflow take seconds to import, status and logs need neither.
        from launch.jobs.prepare import prepare_run
        from launch.rundir import tracking

        if job.cluster.scheduler != Scheduler.local:
            raise ValueError(f"cluster={job.cluster.name} is a Slurm cluster: submit to it with `corolla submit`")
        run_dir = Path(job.run_dir)
        resume_step = latest_step(run_dir / CHECKPOINTS)
        if resume_step and resume_step >= job.train.steps:
            print(f"{run_dir} is already trained to step {resume_step} of {job.train.steps}: nothing to do")
            return
        prepared = prepare_run(job, dry_run)
        plan = prepared.plan
        layout = plan.layout
        if dry_run:
            print(
                f"dry run: the job is valid; it would train {job.model.name} here on {layout.world_size} processes, "
                f"{layout.name}, ZeRO-{plan.zero_stage}, pipeline stages from layers {list(plan.stage_bounds[:-1])}"
            )
            return
        if resume_step:
            print(f"{run_dir} holds a checkpoint at step {resume_step}: resuming from it")
        print(f"training {job.model.name} on {layout.tp} x {layout.pp} x {layout.dp} (TP x PP x DP) ranks in {run_dir}")
        status = run_ranks(run_dir, layout.world_size)
        tracked = prepared.tracked
        if status:
            tracking.finish(tracked, succeeded=False)
            raise RuntimeError(f"training failed (a rank exited with status {status}): see its log above")
        print(
            f"done: checkpoints in {run_dir / CHECKPOINTS}; MLflow run {tracked.run_id}: {tracking.ui_command(tracked)}"
        )

    def state_lines(self, run: RunDirectory) -> list[str]:
        return []

    def show_logs(self, run: RunDirectory, rank: int, lines: int) -> None:
        raise _not_here(run, "logs")

    def cancel(self, run: RunDirectory) -> None:
        raise _not_here(run, "cancel")
