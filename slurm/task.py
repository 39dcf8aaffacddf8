"""What every task of a `corolla submit` job runs: one training rank, and the decision what follows it.

The job comes back by itself (`scontrol requeue`, or Slurm's own requeue of a job whose node failed) after:
- a stop signal (USR2 before the time limit, SIGTERM on preemption): every rank stops after the same step,
  the checkpoint is saved, rank 0 requeues;
- a rank that crashed: its peers' collectives fail, and they requeue (ranks that all died outright, as NCCL's
  watchdog takes them down, leave it to the batch script: after_step);
- a rank that hangs: every rank's watchdog requeues and ends its process; so it does when the time limit is near
  and the ranks have not stopped (launch/train/stopping.py): Slurm never requeues a job it ended at its limit;
- a node its health check finds unfit (launch/train/health.py), before the start trains or after a checkpoint: a
  job that leaves it out takes over, queued behind this one, which ends.
An elastic run (`cluster.min_nodes`) is not requeued: rank 0 of each start queues the run's next job behind this one,
which takes over whenever and however this one ends, on the nodes that are free then (slurm/executor.py).
A restart resumes from the last complete checkpoint. Failures (all but clean stops) in a row without a newer checkpoint
count against cluster.max_restarts; past it, the job ends failed and says so. What follows a start is `after_start`,
`after` and `after_failure`: pure functions of the run's history, how the start ended and the budget.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from launch.config.cluster import ClusterConfig
from launch.rundir.checkpoints import first_candidate
from launch.rundir.files import CHECKPOINTS, HISTORY_FILE, JOB_FILE, STOP_FILE
from launch.rundir.history import BEFORE_TRAINING, RESUMED_FROM, Event, RunHistory, failures, has_ended
from launch.train.stopping import ENDED_EXIT, REFUSED_EXIT, StopSignals
from slurm.client import was_cancelled
from slurm.commands import UNREACHABLE_HINT, requeue
from slurm.environment import SlurmTask
from slurm.executor import cancel_next_jobs, queue_next_job, replace_job, usable_nodes


class Next(Enum):
    train = "train"
    nothing = "nothing"  # the run has finished or given up: an elastic run's next job that its end did not cancel
    requeue = "requeue"  # Slurm runs this job again
    next_job = "next_job"  # an elastic run: the job queued behind this one takes over
    give_up = "give_up"  # a failure past the restart budget
    end = "end"  # finished, diverged, out of space, or stopped by the STOP file or scancel
    replaced = "replaced"  # unfit nodes: the job queued behind this one, without them, takes over


def after_start(events: list[dict], budget: int, resumable: int | None) -> Next:
    """Whether a start trains, given the history it finds and the step it resumes from (`resumable`; None: none):
    not past the budget, which a start before it whose batch script died with its node could not judge."""
    if has_ended(events):
        return Next.nothing
    return Next.give_up if failures([*events, start_at(resumable)]) > budget else Next.train


def start_at(resumable: int | None) -> dict:
    """A start's line as failures() reads it, where its ranks did not write one: it resumes from `resumable`."""
    return {"event": Event.start, RESUMED_FROM: resumable}


def resumable_step(run_dir: Path) -> int | None:
    """The step a start would resume from now; None where there is none, or the storage does not say (a checkpoint
    removed as it is read, EIO): then no progress is seen."""
    with suppress(OSError):
        return first_candidate(run_dir / CHECKPOINTS)
    return None


def after(ending: Event, chained: bool, kill_switch: bool = False) -> Next:
    """What follows a start that ended as `ending`, given whether the run is a chain of jobs and whether a STOP file is
    there. A diverged run would diverge again from the same checkpoint, one out of space would fill its disk again:
    they end. One that found unfit nodes has given way to a job without them."""
    if ending == Event.unfit:
        return Next.replaced
    if ending == Event.stopped and not kill_switch:
        return Next.next_job if chained else Next.requeue
    return Next.end


def after_failure(spent: int, budget: int, chained: bool) -> Next:
    """What follows a start that failed (a crash, a dead node, a hung rank), `spent` failures counted with its own."""
    if spent > budget:
        return Next.give_up
    return Next.next_job if chained else Next.requeue


@dataclass(frozen=True)
class JobStart:
    """One start of the run in this job's task: the history it found before any rank wrote to it, the restart budget,
    whether the run is a chain of jobs; and what it does about how it ended."""

    run_dir: Path
    task: SlurmTask
    events: list[dict]
    budget: int
    chained: bool

    def follow(self, decision: Next, spent: int = 0) -> None:
        if decision == Next.give_up:
            self.give_up(spent)
        elif decision == Next.requeue:
            self.requeue()
        elif decision == Next.end and self.chained:
            cancel_next_jobs(self.run_dir, self.task.job_id)

    def requeue(self) -> None:
        """Slurm runs the job again; a controller that does not answer is waited for (commands.requeue), and one that
        never does leaves the run stopped at its last checkpoint."""
        problem = requeue(self.task.job_id)
        if problem is not None and problem.hint == UNREACHABLE_HINT:
            print(
                f"corolla: job {self.task.job_id} is not requeued ({problem}): the run stops at its last checkpoint; "
                f"`corolla submit` it again once `sinfo` answers",
                file=sys.stderr,
                flush=True,
            )

    def failed(self) -> None:
        """A start that failed, recorded first if its ranks never got to (set-up, a checkpoint's load): such a start
        would fail so again at every restart, which must spend the budget as any other failure does. Rank 0 records
        it, and so does a rank that gives up (rank 0 may be dead, or may come too late: it leaves an ended run alone).
        Not where the run has ended meanwhile: a rank without a GPU of its own refuses alone (refused), and its peers,
        waiting for it, fail on their rendezvous's timeout (train.hang_timeout_s) if srun has not killed them first."""
        events = RunHistory(self.run_dir).events()
        if has_ended(events):
            return
        spent = self.spent(events)
        decision = after_failure(spent, self.budget, self.chained)
        if self.task.rank == 0 or (decision == Next.give_up and self.task.local_rank == 0):
            record_unrecorded_start(self.run_dir, self.task, resumable_step(self.run_dir))
        self.follow(decision, spent)

    def spent(self, events: list[dict]) -> int:
        """The failures that count against the budget, this start's among them: the history `events` to this start's
        line (one standing in for it where its ranks never got to write it), then the start that would follow it,
        which says whether this one saved a newer checkpoint before it failed."""
        own, resumable = own_start(events, self.task), resumable_step(self.run_dir)
        so_far = events[: own + 1] if own is not None else [*self.events, start_at(resumable)]
        return failures([*so_far, start_at(resumable)])

    def give_up(self, spent: int) -> None:
        from launch.rundir import outbox

        # One rank a node says so (rank 0 may be the one that died); the first to write it is enough.
        history = RunHistory(self.run_dir)
        latest = history.events()
        if self.task.local_rank == 0 and (not latest or latest[-1]["event"] != Event.gave_up):
            history.record(Event.gave_up, failures=spent, max_restarts=self.budget)
            outbox.update(self.run_dir, status=outbox.END_STATUS[Event.gave_up])
        if self.chained and self.task.local_rank == 0:
            cancel_next_jobs(self.run_dir, self.task.job_id)
        print(
            f"corolla: giving up after {spent} failures since the newest checkpoint "
            f"(cluster.max_restarts={self.budget}); see {self.run_dir / HISTORY_FILE}",
            file=sys.stderr,
            flush=True,
        )


def start_origin(task: SlurmTask) -> dict[str, object]:
    """Where a start ran, as its history record says it: the job, its restart and its nodes (own_start reads them)."""
    return {"slurm_job": task.job_id, "restart": task.restart_count, "nodes": task.node_list}


def own_start(events: list[dict], task: SlurmTask) -> int | None:
    """Where in the history this start of the job recorded itself; None if it never got that far."""
    own = [
        index
        for index, event in enumerate(events)
        if event["event"] == Event.start
        and str(event.get("slurm_job")) == task.job_id
        and event.get("restart") == task.restart_count
    ]
    return own[-1] if own else None


def record_unrecorded_start(run_dir: Path, task: SlurmTask, resumable: int | None) -> None:
    """This start in the history, as one that failed before it trained from `resumable`, unless its rank 0 recorded
    it."""
    history = RunHistory(run_dir)
    if own_start(history.events(), task) is None:
        history.record(Event.start, **start_origin(task), **{BEFORE_TRAINING: True, RESUMED_FROM: resumable})


def after_step(run_dir: Path, status: int, env: Mapping[str, str] = os.environ) -> None:
    """The batch script's last word, once the ranks' srun has ended with `status`. A rank that fails in Python asks
    for the restart itself (JobStart.failed), and a requeue ends the batch script before this runs; but ranks that die
    outright ask nothing, and on GPUs one rank's death takes every other down so: NCCL's watchdog ends a process whose
    collective fails or times out without running any more Python (TORCH_NCCL_ASYNC_ERROR_HANDLING). What a rank
    would have asked is asked here, unless the step succeeded, was refused (REFUSED_EXIT), ended the run (ENDED_EXIT:
    diverged, or out of space, which the history may have had no room to say) or the run has ended."""
    if status == 0:
        return
    events = RunHistory(run_dir).events()
    if events and events[-1]["event"] == Event.refused:
        _refused(run_dir, env)
        return
    if status in (REFUSED_EXIT, *ENDED_EXIT.values()) or has_ended(events):
        return
    from launch.config.job_file import read_job

    task, cluster = SlurmTask.from_environment(env), read_job(run_dir / JOB_FILE).cluster
    print(
        f"corolla: the ranks of job {task.job_id} ended (srun's exit status {status}) and the run goes on: what "
        "follows is decided here too, as ranks that die outright decide nothing",
        file=sys.stderr,
        flush=True,
    )
    started = own_start(events, task)
    found = events if started is None else events[:started]
    JobStart(run_dir, task, found, cluster.max_restarts, cluster.chained).failed()


def _refused(run_dir: Path, env: Mapping[str, str]) -> None:
    """A refused start's end: said to MLflow, which no rank that sends it lived to say, and an elastic run's next job,
    which the start queued as it began, cancelled: it would find nothing to do but hold its nodes a while."""
    from launch.config.job_file import read_job
    from launch.rundir import outbox

    outbox.update(run_dir, status=outbox.END_STATUS[Event.refused])
    if read_job(run_dir / JOB_FILE).cluster.chained:
        cancel_next_jobs(run_dir, SlurmTask.from_environment(env).job_id)


@dataclass(frozen=True)
class TrainingTask:
    run_dir: str

    def __call__(self) -> None:
        run_dir = Path(self.run_dir)
        # First of all: a signal before the time limit may come while the ranks start, and submitit's own handler
        # would end the job without requeueing it.
        stop = StopSignals(run_dir / STOP_FILE)
        task = SlurmTask.from_environment()
        # torch, DeepSpeed, megatron: seconds to import, after the handlers.
        from launch.compat import exit_skipping_teardown, import_training_libraries

        import_training_libraries(first_on_node=task.local_rank == 0)
        from launch.config.job_file import read_job

        os.environ.update(task.rendezvous())
        job = read_job(run_dir / JOB_FILE)
        stop.watch_time_limit(job.cluster.signal_delay_s, job.cluster.stop_window_s)
        # Every rank reads the history before any writes to it (joining the process group is a barrier).
        start = JobStart(run_dir, task, RunHistory(run_dir).events(), job.cluster.max_restarts, job.cluster.chained)
        if not self._begins(start, job.cluster):
            return
        outcome = self._train(start, job.cluster, stop)
        # The work is done; a stop signal now (the time limit's USR2 may come as the ranks exit, when Python no
        # longer runs handlers) must not kill a task and fail the finished job. A run that diverged or filled its
        # disk fails it, as Slurm's accounting and its mail (`mail-type=FAIL`) then say.
        stop.ignore_from_now_on()
        exit_skipping_teardown(ENDED_EXIT.get(outcome, 0))

    def _begins(self, start: JobStart, cluster: ClusterConfig) -> bool:
        """Whether the start trains: not when the run has ended, nor past its budget (it gives up, and the task
        fails). An elastic run's first rank queues the run's next job first."""
        resumable = resumable_step(start.run_dir)
        decision = after_start(start.events, start.budget, resumable)
        if decision == Next.nothing:
            print(
                f"corolla: {start.run_dir} has {start.events[-1]['event']}; nothing to do", file=sys.stderr, flush=True
            )
            return False
        if decision == Next.give_up:
            start.give_up(failures([*start.events, start_at(resumable)]))
            sys.exit(1)
        if start.chained and start.task.rank == 0:
            self._queue_next(cluster, start.run_dir, start.task)
        return True

    def _train(self, start: JobStart, cluster: ClusterConfig, stop: StopSignals) -> Event:
        """This task's rank, and on rank 0 what follows how it ended (returned); a rank that failed or hung asks for a
        restart (or gives up) from every rank, since rank 0 may be the one that died."""
        from launch.train import worker
        from launch.train.health import HealthCheck

        task, run_dir = start.task, start.run_dir
        health = None
        if cluster.health_slowdown:
            give_way = functools.partial(self._give_way, cluster, run_dir, task, set())
            health = HealthCheck(task.node_name, cluster.health_slowdown, give_way)
        try:
            # A task that sees one GPU was given it: the job asked for a GPU a rank on every node.
            outcome = worker.main(
                run_dir, origin=start_origin(task), on_stall=start.failed, stop=stop, health=health, gpu_per_task=True
            )
        except Exception:
            start.failed()
            raise
        if task.rank == 0:
            # The STOP file (`corolla cancel`), or a user's own scancel: its SIGTERM stopped the ranks as a preemption's
            # does, and a requeue would undo the cancel.
            kill_switch = (run_dir / STOP_FILE).exists() or (outcome == Event.stopped and was_cancelled(task.job_id))
            start.follow(after(outcome, start.chained, kill_switch=kill_switch))
        return outcome

    def _give_way(
        self, cluster: ClusterConfig, run_dir: Path, task: SlurmTask, trained_on: set[str], unfit: dict[str, str]
    ) -> bool:
        """Rank 0, when the health check found `unfit` nodes: whether a job that leaves them out was queued to take
        over (not when the partition would keep too few nodes for the run, nor when Slurm refuses it). `trained_on`:
        the nodes this start trains on for want of others, which a check after a checkpoint finds again without a
        word (what Slurm refused is said, and tried again, at every check)."""
        needed = cluster.min_nodes if cluster.chained else cluster.nodes
        try:
            enough = usable_nodes(cluster, run_dir, frozenset(unfit)) >= needed
            replacement = replace_job(cluster, run_dir, self, task.job_id, frozenset(unfit)) if enough else None
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            return _trains_on(run_dir, task, unfit, f"no job without them could be queued ({str(error).strip()})")
        if replacement is None:
            if set(unfit) <= trained_on:
                return False
            trained_on.update(unfit)
            return _trains_on(run_dir, task, unfit, f"the partition has no other nodes for the run's {needed}")
        _record_unfit(run_dir, task, unfit, left_out=True)
        print(f"corolla: unfit: {_reasons(unfit)}; job {replacement}, which leaves them out, takes over", flush=True)
        return True

    def _queue_next(self, cluster: ClusterConfig, run_dir: Path, task: SlurmTask) -> None:
        try:
            queue_next_job(cluster, run_dir, self, task.job_id)
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:  # train on: this allocation is here
            print(
                f"corolla: cannot queue the run's next job ({str(error).strip()}): nothing will take over when this "
                "job ends; `corolla submit` the run again then",
                file=sys.stderr,
                flush=True,
            )


def _reasons(unfit: dict[str, str]) -> str:
    return "; ".join(f"{node}: {why}" for node, why in unfit.items())


def _record_unfit(run_dir: Path, task: SlurmTask, unfit: dict[str, str], left_out: bool) -> None:
    """The verdict in the history; a run directory that takes no record now is said, not raised: every rank waits
    for rank 0's decision."""
    try:
        RunHistory(run_dir).record(Event.unfit, nodes=unfit, left_out=left_out, slurm_job=task.job_id)
    except OSError as error:
        print(
            f"corolla: cannot record the unfit nodes in {run_dir / HISTORY_FILE} ({error})", file=sys.stderr, flush=True
        )


def _trains_on(run_dir: Path, task: SlurmTask, unfit: dict[str, str], problem: str) -> bool:
    _record_unfit(run_dir, task, unfit, left_out=False)
    print(f"corolla: unfit: {_reasons(unfit)}; {problem}: training on them", file=sys.stderr, flush=True)
    return False


if __name__ == "__main__":  # the batch script, after srun: python -m slurm.task RUN_DIR STATUS
    # Ends with srun's status, the batch script's last: Slurm's state of the job (FAILED, COMPLETED) stays srun's.
    after_step(Path(sys.argv[1]), int(sys.argv[2]))
    sys.exit(int(sys.argv[2]))
