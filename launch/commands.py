"""What each `corolla` command does with its validated job, where it takes more than one stage: the one place a
run's backend (local processes, or Slurm) is chosen."""

from __future__ import annotations

from launch.config.schemas import CancelJob, LogsJob, StatusJob, TrainJob
from launch.jobs.backend import Backend
from launch.jobs.local import LocalBackend
from launch.jobs.monitor import status_lines
from launch.rundir.directory import RunDirectory
from launch.rundir.files import JOBS_FILE
from slurm.backend import SlurmBackend


def backend_of(run: RunDirectory) -> Backend:
    """The backend that ran the run: Slurm, when it recorded the run's jobs."""
    return SlurmBackend() if (run.path / JOBS_FILE).is_file() else LocalBackend()


def train(job: TrainJob, dry_run: bool = False) -> None:
    LocalBackend().start(job, dry_run)


def submit(job: TrainJob, dry_run: bool = False) -> None:
    SlurmBackend().start(job, dry_run)


def show_status(job: StatusJob) -> None:
    run = RunDirectory.open(job.run_dir)
    print("\n".join(status_lines(run, backend_of(run))))


def show_logs(job: LogsJob) -> None:
    run = RunDirectory.open(job.run_dir)
    backend_of(run).show_logs(run, job.rank, job.lines)


def cancel(job: CancelJob) -> None:
    run = RunDirectory.open(job.run_dir)
    backend_of(run).cancel(run)
