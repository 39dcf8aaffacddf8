"""What every task of a `corolla submit` job runs: one training rank, and the decision to run the job again.

The job comes back by itself (`scontrol requeue`, or Slurm's own requeue of a job whose node failed) after:
- a stop signal (USR2 before the time limit, SIGTERM on preemption): every rank stops after the same step,
  the checkpoint is saved, rank 0 requeues;
- a rank that crashed: its peers' collectives fail, and they requeue;
- a rank that hangs: every rank's watchdog requeues and ends its process.
An elastic run (`cluster.min_nodes`) is not requeued: rank 0 of each start queues the run's next job behind this one,
which takes over whenever and however this one ends, on the nodes that are free then (slurm/executor.py).
A restart resumes from the last complete checkpoint. Failures (all but clean stops) count against
cluster.max_restarts; past it, the job ends failed and says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from launch.history import RunHistory
from launch.stopping import STOP_FILE, StopSignals
from slurm.environment import SlurmTask, requeue
from slurm.executor import cancel_next_jobs, queue_next_job

ENDED = ("finished", "gave_up")  # history events after which no job trains the run until it is submitted again


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
        history = RunHistory(run_dir)
        events = history.events()
        if events and events[-1]["event"] in ENDED:  # an elastic run's next job that its end failed to cancel
            print(f"corolla: {run_dir} has {events[-1]['event']}; nothing to do", file=sys.stderr, flush=True)
            return
        failures, budget = history.failures(), job.cluster.max_restarts  # every rank reads it before any writes
        # to it (joining the process group is a barrier)
        chained = job.cluster.chained

        def give_up() -> None:
            # One rank a node says so (rank 0 may be the one that died); the first to write it is enough.
            history = RunHistory(run_dir)
            events = history.events()
            if task.local_rank == 0 and (not events or events[-1]["event"] != "gave_up"):
                history.record("gave_up", failures=failures, max_restarts=budget)
                tracking.finish(tracking.recorded_run(run_dir), succeeded=False)
            if chained and task.local_rank == 0:
                cancel_next_jobs(run_dir, task.job_id)
            print(f"corolla: giving up after {failures} failed restarts (cluster.max_restarts={budget}); see "
                  f"{run_dir / 'history.jsonl'}", file=sys.stderr, flush=True)  # fmt: skip

        if failures > budget:
            give_up()
            sys.exit(1)
        if chained and task.rank == 0:
            try:
                queue_next_job(job.cluster, run_dir, self, task.job_id)
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:  # train on: this allocation is here
                print(f"corolla: cannot queue the run's next job ({str(error).strip()}): nothing will take over when "
                      f"this job ends; `corolla submit` the run again then", file=sys.stderr, flush=True)  # fmt: skip

        def retry() -> None:
            if failures >= budget:
                give_up()
            elif not chained:  # the next job of a chain takes over when this one ends
                requeue(task.job_id)

        origin = {"slurm_job": task.job_id, "restart": task.restart_count, "nodes": task.node_list}
        try:
            outcome = worker.main(run_dir, origin=origin, on_stall=retry, stop=stop)
        except Exception:
            retry()
            raise
        if task.rank == 0:
            # A STOP file is a kill switch: the job ends instead of coming back.
            come_back = outcome == worker.Outcome.stopped and not (run_dir / STOP_FILE).exists()
            if come_back and not chained:
                requeue(task.job_id)
            elif not come_back and chained:
                cancel_next_jobs(run_dir, task.job_id)
        # The work is done; a stop signal now (the time limit's USR2 may come as the ranks exit, when Python no
        # longer runs handlers) must not kill a task and fail the finished job.
        stop.ignore_from_now_on()
