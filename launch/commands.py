"""What each `corolla` command does with its validated job, where it takes more than one stage: the one place a
run's backend (local processes, or Slurm) is chosen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from launch.config.cluster import Scheduler
from launch.config.schemas import (
    CancelJob,
    LogsJob,
    MainJob,
    ReshardJob,
    StatusJob,
    TrackingSyncJob,
    TrainJob,
    VerifyJob,
)
from launch.jobs.backend import Backend
from launch.jobs.local import LocalBackend
from launch.jobs.monitor import compare_rows, is_local_pipeline, pipeline_lines, run_row, runs_lines, status_lines
from launch.rundir.checkpoints import (
    CheckpointError,
    CheckpointRemoved,
    complete_steps,
    dangling_latest,
    hashes_recorded,
    reading,
    step_record,
    verify,
)
from launch.rundir.directory import RunDirectory, runs_in
from launch.rundir.files import (
    CHAIN_FILE,
    CHECKPOINTS,
    IMPORT_FILE,
    JOB_FILE,
    LATEST,
    RUN_FILE,
    TRAIN_DIR,
    VALIDATION_FILE,
)
from launch.rundir.lock import RunLocked, holding
from launch.rundir.run_record import masked, recorded_run
from slurm.backend import SlurmBackend
from slurm.chain import cancel_chain, chain_lines, show_stage_logs, submit_pipeline
from slurm.commands import UNREACHABLE_HINT, SlurmError
from slurm.jobs import live_jobs
from tokenizer.files import first_line


def live_slurm_job(run_dir: Path) -> str | None:
    """A Slurm job of the run that is queued or running: None where there is no Slurm to ask (a run copied off its
    cluster), a RunLocked error where its controller does not answer, as a job of the run may be training it."""
    try:
        return next((state.job_id for state in live_jobs(run_dir)), None)
    except SlurmError as error:
        if error.hint == UNREACHABLE_HINT:
            raise RunLocked(f"cannot ask Slurm whether a job of {run_dir} runs ({error}): {error.hint}") from None
        return None


def backend_of(run: RunDirectory, slurm: SlurmBackend | None = None) -> Backend:
    """The backend of the run's latest launch: Slurm for `corolla submit`, local for `corolla train`."""
    return (slurm or SlurmBackend()) if run.sent_to_slurm else LocalBackend(live_slurm_job)


def train(job: TrainJob, dry_run: bool = False) -> None:
    LocalBackend(live_slurm_job).start(job, dry_run)


def reshard(job: ReshardJob) -> None:
    """The offline reshard, as the run's one writer."""
    from launch.train.reshard import reshard as reshard_checkpoint  # torch: only for this command

    with holding(Path(job.run_dir), live_slurm_job):
        reshard_checkpoint(job)


def submit(job: TrainJob, dry_run: bool = False) -> None:
    SlurmBackend().start(job, dry_run)


def pipeline(job: MainJob, dry_run: bool = False) -> None:
    if job.cluster.scheduler == Scheduler.local:
        from launch.jobs.main_job import run_main_job  # the stages' libraries: seconds to import

        run_main_job(job, dry_run)
    else:
        submit_pipeline(job, dry_run)


def is_chain(run_dir: str) -> bool:
    """A pipeline submitted to Slurm as a chain of stage jobs (slurm/chain.py)."""
    return (Path(run_dir) / CHAIN_FILE).is_file()


def _row(run_dir: Path, slurm: SlurmBackend) -> list[str]:
    """The run's row in the status of a directory of runs; a run damaged in any way says so there, and the rows of
    the others are still shown."""
    try:
        run = RunDirectory.open(str(run_dir))
        return run_row(run, backend_of(run, slurm))
    except (ValueError, OSError) as error:
        return [run_dir.name, f"cannot be read: {first_line(error)}"]
    except (KeyError, TypeError, AttributeError, ArithmeticError) as error:  # a record of another shape
        return [run_dir.name, f"cannot be read: its records are not corolla's ({type(error).__name__}: {error})"]


def show_status(job: StatusJob) -> None:
    lines = []
    run_dir = Path(job.run_dir)
    if is_chain(job.run_dir) or is_local_pipeline(run_dir):  # its stages, then its training run's status
        lines = chain_lines(run_dir) if is_chain(job.run_dir) else pipeline_lines(run_dir)
        if not (run_dir / TRAIN_DIR / JOB_FILE).is_file():  # the training run is not prepared yet
            print("\n".join(lines))
            return
        lines.append("")
        run_dir = run_dir / TRAIN_DIR
    elif runs := runs_in(run_dir):  # a sweep's points
        slurm = SlurmBackend()  # one for every run: once its controller does not answer, it is not asked again
        rows = [_row(run, slurm) for run in runs]
        print("\n".join(runs_lines(run_dir, rows, compare_rows(runs, rows))))
        return
    run = RunDirectory.open(str(run_dir))
    print("\n".join([*lines, *status_lines(run, backend_of(run))]))


def show_logs(job: LogsJob) -> None:
    if is_chain(job.run_dir):
        show_stage_logs(Path(job.run_dir), job.stage, job.lines, job.rank)
        return
    if job.stage:
        raise ValueError(f"stage={job.stage}: {job.run_dir} is not a pipeline submitted to Slurm, it has no stages")
    run = RunDirectory.open(str(_training_of(Path(job.run_dir))))
    backend_of(run).show_logs(run, job.rank, job.lines)


def _training_of(run_dir: Path) -> Path:
    """The run directory a command on `run_dir` means: a local pipeline's training run, where it has one."""
    return run_dir / TRAIN_DIR if is_local_pipeline(run_dir) and (run_dir / TRAIN_DIR / JOB_FILE).is_file() else run_dir


def cancel(job: CancelJob) -> None:
    if is_chain(job.run_dir):
        cancel_chain(Path(job.run_dir))
        return
    run_dir = _training_of(Path(job.run_dir))
    if runs := runs_in(run_dir):  # a sweep's points
        slurm = SlurmBackend()  # one for every run, as for their status
        _each_run(run_dir, runs, "cancelled", lambda run: backend_of(run, slurm).cancel(run))
        return
    run = RunDirectory.open(str(run_dir))
    backend_of(run).cancel(run)


def _each_run(directory: Path, runs: list[Path], done: str, act: Callable[[RunDirectory], None]) -> None:
    """`act` on every run, each in turn whatever the one before said; an error naming those it failed on."""
    failed = []
    for run_dir in runs:
        print(f"{run_dir}:")
        try:
            act(RunDirectory.open(str(run_dir)))
        except (ValueError, RuntimeError, OSError) as error:
            print(f"  not {done}: {first_line(error)}")
            failed.append(run_dir.name)
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(runs)} runs in {directory} not {done} ({', '.join(failed)}): see why above each"
        )


def sync_tracking(job: TrackingSyncJob) -> None:
    """Sends MLflow what it lacks of a run (or all of it, to a new run on another server), as the run's one writer;
    of every run, each to its own MLflow run, for a sweep's directory."""
    if runs := runs_in(Path(job.run_dir)):
        away: dict[str, str] = {}  # a server that did not answer for one run is not waited on again for the next
        _each_run(Path(job.run_dir), runs, "synced", lambda run: _sync(run, job.uri, away))
        return
    _sync(RunDirectory.open(job.run_dir), job.uri)


def _sync(run: RunDirectory, uri: str, away: dict[str, str] | None = None) -> None:
    """Sends MLflow what it lacks of `run`; one of several runs, unless its server is one of those `away` (by URI:
    the run it did not answer for), where one that does not answer now goes."""
    from launch.rundir import outbox, tracking  # MLflow: only for this command

    server = uri or (recorded_run(run.path).tracking_uri if (run.path / RUN_FILE).is_file() else "")
    if away is not None and server in away:
        raise ValueError(f"MLflow at {masked(server)} did not answer for {away[server]}: try again when it answers")
    try:
        with holding(run.path, live_slurm_job):
            state = outbox.sync(run.path, uri or None)
    except ValueError:
        if away is not None and server and not tracking.answers(server):
            away[server] = run.path.name
        raise
    tracked = recorded_run(run.path)
    print(
        f"MLflow run {tracked.run_id} at {masked(tracked.tracking_uri)} holds steps to {state.sent_up_to()} "
        f"and validations to {state.sent_up_to(VALIDATION_FILE)}"
    )


def _checkpoints_to_verify(run_dir: Path) -> tuple[Path, str]:
    """The checkpoints of a run directory, or of a model imported from Hugging Face (its step 0), and what to do when
    they fail."""
    if (run_dir / IMPORT_FILE).is_file():
        return run_dir / CHECKPOINTS, "import the model again into a new run_dir"
    return RunDirectory.open(str(run_dir)).path / CHECKPOINTS, "a start resumes from the newest that verifies"


def _verdict(bad: list[str], hashed: bool) -> str:
    if bad:
        return f"FAILS ({', '.join(bad)})"
    unhashed = "sizes as recorded, bytes unverified (its COMPLETE, of an older corolla, has no hashes)"
    return "verified" if hashed else unhashed


def verify_checkpoints(job: VerifyJob) -> None:
    """Hashes every file of the run's checkpoints (or of one) against COMPLETE; a one-line error if one fails."""
    directory, fix = _checkpoints_to_verify(Path(job.run_dir))
    steps = [job.step] if job.step else complete_steps(directory)
    if not steps:
        raise ValueError(f"{directory} holds no complete checkpoint to verify")
    if job.step:
        step_record(directory, job.step)  # the one asked for must be a complete checkpoint
    failed = []
    for step in steps:
        try:
            with reading(directory, step):  # found there a moment ago
                files, size, bad = verify(directory, step)
                hashed = hashes_recorded(directory, step)
            verdict = f"{files} files, {size / 1e6:,.1f} MB: " + _verdict(bad, hashed)
        except CheckpointError as error:
            if job.step:  # the one asked for: its record or files damaged, or removed meanwhile
                raise
            if isinstance(error, CheckpointRemoved):
                bad, verdict = [], "removed while it was read, by the training that runs: nothing to verify"
            else:
                bad, verdict = [str(error)], f"FAILS ({error})"
        print(f"step {step:>8}: {verdict}")
        failed += [step] * bool(bad)
    pointer = None if job.step else dangling_latest(directory)
    if pointer:
        print(f"{LATEST:>13}: FAILS ({pointer})")
    if failed:
        raise ValueError(
            f"{len(failed)} of {len(steps)} checkpoints fail verification (steps {', '.join(map(str, failed))}): {fix}"
        )
    if pointer:
        raise ValueError(pointer)
