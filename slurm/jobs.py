"""The Slurm jobs of a run: their ids in RUN_DIR/slurm-jobs.json, oldest first. `corolla submit` adds the ones it
submits, and an elastic run adds the next job each start queues behind itself (slurm/executor.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from launch.rundir.files import JOBS_FILE, SUBMITIT_DIR
from launch.rundir.history import RunHistory
from slurm.client import SlurmState, latest_states
from slurm.commands import run_slurm
from tokenizer.files import write_atomically


def recorded_jobs(run_dir: Path) -> list[str]:
    """The job ids submitted for the run, oldest first; empty for a local run."""
    record = run_dir / JOBS_FILE
    if not record.is_file():
        return []
    try:
        jobs = json.loads(record.read_text())
    except ValueError:
        jobs = None
    if not isinstance(jobs, list) or not all(isinstance(job, str | int) for job in jobs):
        raise ValueError(f"{record} is not a JSON list of Slurm job ids: fix it, or remove it if the run is local")
    return [str(job) for job in jobs]


def record_job(run_dir: Path, job_id: str) -> None:
    # Replaced whole: `corolla status` and a job's own start read it while it is rewritten.
    write_atomically(run_dir / JOBS_FILE, json.dumps([*recorded_jobs(run_dir), job_id]) + "\n")


# What submitit names the job's pickled task until sbatch answers with the job's id (then `<id>_submitted.pkl`).
UNNAMED_PICKLE = re.compile(r"[0-9a-f]{32}\.pkl")


def record_lost_job(run_dir: Path, job_id: str, script: Path) -> None:
    """Records a job queued though sbatch's answer was lost, and gives it its task: submitit, which took the
    submission for failed, left the task's pickle unnamed, and the job, which waits for `<id>_submitted.pkl`, would
    fail at every start. Its pickle is the last written before its batch `script` (every one of the run's holds the
    same task; one written since is a submission's under way, an elastic run's next job)."""
    folder = run_dir.resolve() / SUBMITIT_DIR
    named = folder / f"{job_id}_submitted.pkl"
    with suppress(OSError):
        written = script.stat().st_mtime
        before = [path for path in folder.glob("*.pkl") if UNNAMED_PICKLE.fullmatch(path.name)]
        before = [path for path in before if path.stat().st_mtime <= written]
        if before and not named.exists():
            max(before, key=lambda path: path.stat().st_mtime).rename(named)
    record_job(run_dir, job_id)


def written_elsewhere(run_dir: Path, state: SlurmState) -> Path | None:
    """The run directory the job writes to, where it is not `run_dir`: this one is a copy of that run, or was moved
    from there, and the job ids it recorded are that run's. Told by the job's output, which goes to its run's submitit
    folder; None where Slurm no longer says where (sacct does not)."""
    if not state.output or state.output == "(null)":
        return None
    folder = Path(state.output).resolve().parent
    return None if folder == (run_dir / SUBMITIT_DIR).resolve() else folder.parent


def excluded_nodes(exclude: Iterable[str], run_dir: Path) -> set[str]:
    """The nodes the run's jobs leave out: `exclude` (cluster.exclude), and those its health checks found unfit."""
    return set(exclude) | RunHistory(run_dir).unfit_nodes()


def jobs_after(run_dir: Path, job_id: str) -> list[str]:
    """The jobs submitted for the run after this one."""
    jobs = recorded_jobs(run_dir)
    return jobs[jobs.index(job_id) + 1 :] if job_id in jobs else []


def live_jobs(run_dir: Path) -> list[SlurmState]:
    """The run's jobs that are queued or running (those its record lacks too: unrecorded_jobs), newest first; a
    SlurmError when Slurm cannot be asked."""
    return [state for state in latest_states([*recorded_jobs(run_dir), *unrecorded_jobs(run_dir)]) if state.live]


def unrecorded_jobs(run_dir: Path) -> list[str]:
    """The run's queued or running jobs that its record lacks (lost_submissions)."""
    return list(lost_submissions(run_dir))


def lost_submissions(run_dir: Path) -> dict[str, Path]:
    """The run's queued or running jobs that its record lacks, with their batch scripts: sbatch's answer lost (a
    controller that timed out after it had queued the job), the job queued all the same. Told by the script, which
    submitit writes in the run's own submitit folder; a SlurmError when Slurm cannot be asked."""
    folder = run_dir.resolve() / SUBMITIT_DIR
    if not folder.is_dir():  # nothing was ever submitted for it: Slurm need not be asked (nor be here)
        return {}
    recorded = set(recorded_jobs(run_dir))
    queued = (row.split("|", 1) for row in run_slurm("squeue", "--me", "--noheader", "--format=%i|%o").splitlines())
    inside = f"{folder}/"
    ours = ((job, script[0]) for job, *script in queued if script and script[0].startswith(inside))
    return {job: Path(script) for job, script in ours if job not in recorded}
