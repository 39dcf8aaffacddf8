"""An existing run directory, opened for reading: its path and the job it was launched with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from launch.config.cluster import Scheduler
from launch.config.compose import pasted
from launch.config.job_file import job_config, read_job
from launch.config.schemas import TrainJob
from launch.rundir.files import IMPORT_FILE, JOB_FILE, JOBS_FILE


@dataclass(frozen=True)
class RunDirectory:
    path: Path
    job: DictConfig  # as written: a job from an older corolla or by hand may lack keys

    @classmethod
    def open(cls, run_dir: str) -> RunDirectory:
        """The run in `run_dir`; a ValueError when it is not a corolla run directory."""
        path = Path(run_dir).expanduser()
        hint = "pass the run directory that `corolla train` or `corolla submit` printed"
        if not path.is_dir():
            raise ValueError(f"run_dir={run_dir} is not a directory: {hint}")
        check_not_imported(path)
        if not (path / JOB_FILE).is_file():
            if runs := runs_in(path):
                raise ValueError(
                    f"run_dir={run_dir} {holds_runs(runs)}: name one, such as {runs[0]}; `corolla status` and "
                    "`corolla cancel` also take the whole directory"
                )
            raise ValueError(f"run_dir={run_dir} is not a corolla run directory (it has no {JOB_FILE}): {hint}")
        return cls(path, job_config(path / JOB_FILE))

    def setting(self, key: str, default: object = None) -> object:
        return OmegaConf.select(self.job, key, default=default)

    @property
    def sent_to_slurm(self) -> bool:
        """Whether its latest launch was `corolla submit` (a submission sbatch refused records no job), not `corolla
        train`, also on a run whose earlier jobs went to Slurm. A job.yaml of an older corolla, without the
        scheduler: whether the run recorded Slurm jobs."""
        scheduler = self.setting("cluster.scheduler")
        return scheduler == Scheduler.slurm.value or (scheduler is None and (self.path / JOBS_FILE).is_file())

    def train_job(self) -> TrainJob:
        """The job, typed and validated."""
        return read_job(self.path / JOB_FILE)


def check_not_imported(run_dir: Path) -> None:
    """A model imported from Hugging Face is trained from, never in: a one-line ValueError for one."""
    if (run_dir / IMPORT_FILE).is_file():
        raise ValueError(
            f"run_dir={run_dir} holds a model imported from Hugging Face, not a training run (any layout reads it as "
            f"it is): train from it with {pasted('init_from', str(run_dir))} run_dir=NEW"
        )


def runs_in(directory: Path) -> list[Path]:
    """The run directories directly in `directory` (a sweep's points, `RUN_DIR/<swept values>`), by name; none when
    it is a run itself. A folder this user cannot read is passed over (what else is there is listed)."""
    directory = directory.expanduser()
    if _is_run(directory):
        return []
    try:
        children = list(directory.iterdir())
    except OSError:  # not a directory, or not one this user reads
        return []
    return sorted(child for child in children if _is_run(child))


def _is_run(path: Path) -> bool:
    try:
        return (path / JOB_FILE).is_file()
    except OSError:
        return False


def holds_runs(runs: list[Path]) -> str:
    """What a directory of runs is, where one run was asked for."""
    count = f"{len(runs)} runs" if len(runs) > 1 else "1 run"
    return f"holds {count} (a sweep's points, or a pipeline's training run), it is not one"
