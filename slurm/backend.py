"""The Slurm backend: a run submitted as Slurm jobs (slurm/submit.py), what Slurm says of them, their logs, and
cancelling them."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import TypeVar

from launch.config.schemas import TrainJob
from launch.jobs.backend import Backend
from launch.jobs.monitor import LABEL_WIDTH, line
from launch.rundir.directory import RunDirectory
from launch.rundir.files import JOBS_FILE, STOP_FILE, SUBMITIT_DIR
from slurm.client import SlurmState, latest_states, out_of_service, slurm_state
from slurm.commands import UNREACHABLE_HINT, SlurmError, run_slurm
from slurm.jobs import excluded_nodes, recorded_jobs, unrecorded_jobs, written_elsewhere
from tokenizer.files import lines_from_end

CANCEL_WAIT_S = 10
T = TypeVar("T")


def _jobs(run: RunDirectory) -> list[str]:
    """The Slurm job ids submitted for this run, oldest first."""
    jobs = recorded_jobs(run.path)
    if not jobs:
        raise ValueError(f"{run.path / JOBS_FILE} lists no Slurm job: submit the run with `corolla submit`")
    return jobs


def last_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a file, read from its end (logs of long runs grow large)."""
    with path.open("rb") as file:
        tail = [line for _, line in islice(lines_from_end(file), count)][::-1]
    return [part for line in tail for part in line.decode(errors="replace").splitlines() or [""]][-count:]


def job_logs(folder: Path, job_id: str) -> list[Path]:
    """submitit's `<job>_<task>_log.out` and `.err` of the job, in its `folder`: by task (2 before 10), each one's
    `.out` first."""
    return sorted(folder.glob(f"{job_id}_*_log.*"), key=lambda path: (_numbers(path), path.suffix != ".out"))


def _numbers(log: Path) -> tuple[int, ...]:
    """<job>_<task>_log.out's numbers (a job array's <job> is <id>_<index>), for an order of numbers, not text."""
    return tuple(int(part) for part in log.stem.split("_") if part.isdigit())


def print_tails(paths: list[Path], lines: int) -> None:
    """The last `lines` of each file, under its name."""
    print("\n\n".join("\n".join([f"==> {path} <==", *(last_lines(path, lines) or ["(empty)"])]) for path in paths))


def rank_logs(run: RunDirectory, job_id: str) -> dict[int, list[Path]]:
    """submitit's `<job>_<rank>_log.out` and `.err` of the run's job, by rank."""
    return logs_by_rank(run.path / SUBMITIT_DIR, job_id)


def logs_by_rank(folder: Path, job_id: str) -> dict[int, list[Path]]:
    """submitit's `<job>_<rank>_log.out` and `.err` of the job, in its `folder`, by rank."""
    logs: dict[int, list[Path]] = {}
    for path in job_logs(folder, job_id):
        rank = path.name.removeprefix(f"{job_id}_").split("_")[0]
        if rank.isdigit() and path.suffix in (".out", ".err"):
            logs.setdefault(int(rank), []).append(path)
    return dict(sorted(logs.items()))


def state_once_ended(job_id: str) -> SlurmState:
    """The job's state when it has ended, or after CANCEL_WAIT_S (it stays COMPLETING while its processes end)."""
    deadline = time.monotonic() + CANCEL_WAIT_S
    state = slurm_state(job_id)
    while state.live and time.monotonic() < deadline:
        time.sleep(0.25)
        state = slurm_state(job_id)
    return state


def waiting_lines(run: RunDirectory, state: SlurmState) -> list[str]:
    """For a job pending on nodes out of service: which, and what ends the wait (nothing, when sinfo cannot say)."""
    if not state.waits_for_nodes_out:
        return []
    try:
        unavailable = out_of_service(state.partition)
    except SlurmError:
        return []
    # Those the run's jobs leave out keep none of them waiting.
    for node in excluded_nodes(run.setting("cluster.exclude", []), run.path):
        unavailable.pop(node, None)
    if not unavailable:
        return []
    nodes = "; ".join(f"{node} {why}" for node, why in sorted(unavailable.items()))
    return [
        line(
            "waiting",
            f"for nodes out of service in partition {state.partition} ({nodes}): the job starts once an admin resumes "
            f"them (sinfo -R); to go on without them, `corolla cancel {shlex.quote(str(run.path))}` and submit the run "
            "on fewer nodes (cluster.nodes) or another partition (cluster.partition): it resumes from its last "
            "checkpoint",
        )
    ]


def _unrecorded(run_dir: Path) -> str:
    """For a run whose submission recorded no job: whether sbatch queued one all the same (its answer lost)."""
    try:
        lost = unrecorded_jobs(run_dir)
    except SlurmError:
        lost = []
    if lost:
        return (
            f"job {lost[-1]}, queued though sbatch's answer was lost (the submission said it failed): `corolla "
            "submit` the run again to record it and follow it here, or `scancel` it"
        )
    return "no Slurm job: its submission did not go through (`corolla submit` said why); submit it again"


_COPY = "a copy of that run, or moved from there"


class SlurmBackend(Backend):
    def start(self, job: TrainJob, dry_run: bool = False) -> None:
        from slurm.submit import submit_training  # the data preparation: seconds to import, status needs none of it

        submit_training(job, dry_run)

    def __init__(self) -> None:
        # Once Slurm's controller did not answer, not asked again: each question waits for it (a sweep has a dozen).
        self.unreachable: SlurmError | None = None

    def _asked(self, question: Callable[[], T]) -> T:
        if self.unreachable is not None:
            raise self.unreachable
        try:
            return question()
        except SlurmError as error:
            if error.hint == UNREACHABLE_HINT:
                self.unreachable = error
            raise

    def _reported(self, jobs: list[str]) -> tuple[SlurmState, SlurmState | None]:
        """What Slurm says of the latest job and, for an elastic run whose latest job waits for the one before to
        end, of that one (else None)."""
        state = self._asked(lambda: slurm_state(jobs[-1]))
        waited_for = len(jobs) > 1 and state.waits_for_another
        return state, self._asked(lambda: slurm_state(jobs[-2])) if waited_for else None

    def state_lines(self, run: RunDirectory) -> list[str]:
        """The latest job; for an elastic run whose latest job waits for the one before to end, that one first."""
        jobs = recorded_jobs(run.path)
        if not jobs:
            return [line("slurm", _unrecorded(run.path))]
        before = f" (latest of {len(jobs)}: {', '.join(jobs[:-1])} before)" if len(jobs) > 1 else ""
        which = f"job {jobs[-1]}{before}"
        try:
            state, current = self._reported(jobs)
        except SlurmError as error:
            return [line("slurm", f"{which}: cannot ask Slurm ({error}): {error.hint}")]
        if (other := written_elsewhere(run.path, state)) is not None:
            which += f" of the run in {other}, not of this directory ({_COPY})"
        latest = line("slurm", f"{which}: {state.state}, {state.summary} (from {state.source})")
        if current is None:
            return [latest, *waiting_lines(run, state)]
        running = f"job {current.job_id}: {current.state}, {current.summary} (from {current.source})"
        return [line("slurm", running), line("", f"next: {latest[LABEL_WIDTH:]}")]

    def state_word(self, run: RunDirectory) -> str:
        """The state of the job state_lines shows first."""
        jobs = recorded_jobs(run.path)
        if not jobs:
            return "no Slurm job"
        try:
            state, current = self._reported(jobs)
        except SlurmError as error:
            return f"job {jobs[-1]}: cannot ask Slurm ({error})"
        if (other := written_elsewhere(run.path, state)) is not None:
            return f"job {jobs[-1]} is the run's in {other}"
        shown = current or state
        return f"{shown.state} (job {shown.job_id})"

    def show_logs(self, run: RunDirectory, rank: int, lines: int) -> None:
        jobs = _jobs(run)
        # The latest job that has started: an elastic run's latest may be its next job, queued behind the running one.
        job_id = next((job_id for job_id in reversed(jobs) if rank_logs(run, job_id)), jobs[-1])
        logs = rank_logs(run, job_id)
        if not logs:
            print(f"Slurm job {job_id} has no logs in {run.path / SUBMITIT_DIR} yet: has it started? (corolla status)")
            return
        if rank != -1 and rank not in logs:
            ranks = ", ".join(str(number) for number in logs)
            raise ValueError(f"rank={rank}: Slurm job {job_id} has logs of ranks {ranks}: choose one of them")
        print_tails(logs[rank] if rank != -1 else [path for paths in logs.values() for path in paths], lines)

    def cancel(self, run: RunDirectory) -> None:
        """Every job of the run that is queued or running, newest first (an elastic run's next job waits for the one
        before it to end, and would start when that one is cancelled). The STOP file goes first: scancel's SIGTERM
        is what preemption sends too, and would otherwise have the job save and requeue itself."""
        jobs = recorded_jobs(run.path)
        try:  # with those queued though sbatch's answer was lost, which the record lacks
            jobs += self._asked(lambda: unrecorded_jobs(run.path))
            states = self._asked(lambda: latest_states(jobs)) if jobs else []
        except SlurmError as error:
            raise RuntimeError(f"cannot ask Slurm about the run's jobs ({error}): {error.hint}") from None
        if not jobs:
            print(f"{run.path} has no Slurm job (its submission did not go through): nothing to cancel")
            return
        live = [state for state in states if state.live]
        for state in live:
            if (other := written_elsewhere(run.path, state)) is not None:
                raise ValueError(
                    f"Slurm job {state.job_id} ({state.state}) trains the run in {other}, not {run.path} ({_COPY}): "
                    f"nothing cancelled; cancel it there (`corolla cancel {shlex.quote(str(other))}`), or `scancel "
                    f"{state.job_id}` if that directory is gone"
                )
        if not live:
            print(f"Slurm job {states[0].job_id} has already ended ({states[0].state}): nothing to cancel")
            return
        (run.path / STOP_FILE).touch()
        for before in live:
            try:
                run_slurm("scancel", before.job_id)
                after = state_once_ended(before.job_id)
            except SlurmError as error:
                raise RuntimeError(f"cannot cancel Slurm job {before.job_id} ({error}): {error.hint}") from None
            print(
                f"cancelled Slurm job {before.job_id} (was {before.state}, {before.summary}); Slurm now says "
                f"{after.state}"
            )
