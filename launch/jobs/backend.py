"""What starts, watches and cancels a run: the interface both backends (local processes, Slurm) implement."""

from __future__ import annotations

from abc import ABC, abstractmethod

from launch.config.schemas import TrainJob
from launch.rundir.directory import RunDirectory


class Backend(ABC):
    @abstractmethod
    def start(self, job: TrainJob, dry_run: bool = False) -> None:
        """Validates the job, prepares its run directory and starts it (a dry run: validates and says what it
        would start)."""

    @abstractmethod
    def state_lines(self, run: RunDirectory) -> list[str]:
        """What the backend knows of the run's jobs, as `corolla status` lines (none when it knows nothing more
        than the run directory)."""

    @abstractmethod
    def state_word(self, run: RunDirectory) -> str:
        """The run's state in a few words, for its row among other runs (`corolla status` of a sweep)."""

    @abstractmethod
    def show_logs(self, run: RunDirectory, rank: int, lines: int) -> None:
        """The last `lines` lines of the log of every rank, or of `rank`."""

    @abstractmethod
    def cancel(self, run: RunDirectory) -> None:
        """Stops every job of the run that is queued or running."""
