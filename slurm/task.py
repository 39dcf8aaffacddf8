"""What every task of a `corolla submit` job runs: one training rank, and the decision to run the job again.

The job comes back by itself (`scontrol requeue`, or Slurm's own requeue of a job whose node failed) after:
- a stop signal (USR2 before the time limit, SIGTERM on preemption): every rank stops after the same step,
  the checkpoint is saved, rank 0 requeues;
- a rank that crashed: its peers' collectives fail, and they requeue;
- a rank that hangs: every rank's watchdog requeues and ends its process.
A restart resumes from the last complete checkpoint. Failures (all but clean stops) count against
cluster.max_restarts; past it, the job ends failed and says so.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from launch.history import RunHistory
from launch.stopping import STOP_FILE, StopSignals
from slurm.environment import SlurmTask, requeue


@dataclass(frozen=True)
class TrainingTask:
    run_dir: str

    def __call__(self) -> None:
        run_dir = Path(self.run_dir)
        # First of all: a signal before the time limit may come while the ranks start, and submitit's own handler
        # would end the job without requeueing it.
        stop = StopSignals(run_dir / STOP_FILE)
        from launch import tracking, worker  # torch, DeepSpeed, megatron: seconds to import, after the handlers

        task = SlurmTask.from_environment()
        os.environ.update(task.rendezvous())
        job = worker.load_job(run_dir)
        failures = RunHistory(run_dir).failures()  # read by every rank before any writes (init is a barrier)
        if failures > job.cluster.max_restarts:
            if task.rank == 0:
                tracking.finish(tracking.recorded_run(run_dir), succeeded=False)
            budget = job.cluster.max_restarts
            print(f"corolla: giving up after {failures} failed restarts (cluster.max_restarts={budget}); see "
                  f"{run_dir / 'history.jsonl'}", file=sys.stderr, flush=True)  # fmt: skip
            sys.exit(1)

        def retry() -> None:
            if failures < job.cluster.max_restarts:
                requeue(task.job_id)

        origin = {"slurm_job": task.job_id, "restart": task.restart_count, "nodes": task.node_list}
        try:
            outcome = worker.main(run_dir, origin=origin, on_stall=retry, stop=stop)
        except Exception:
            retry()
            raise
        # A STOP file is a kill switch: the job ends instead of coming back.
        if outcome == worker.Outcome.stopped and task.rank == 0 and not (run_dir / STOP_FILE).exists():
            requeue(task.job_id)
