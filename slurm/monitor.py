"""`corolla status | logs | cancel RUN_DIR`: a run's state, read from its run directory and, for a submitted run,
from Slurm (scontrol while the job is queued or running, sacct once it has ended).

The run directory's files are written elsewhere: job.yaml (launch/launcher.py), metrics.jsonl and validation.jsonl
(launch/worker.py), history.jsonl (launch/history.py), checkpoints/ (launch/checkpoint.py), run.json
(launch/tracking.py), slurm-jobs.json (slurm/jobs.py) and the submitit folder slurm/ (slurm/executor.py). Their
names are repeated here rather than imported: those modules pull in torch, DeepSpeed or MLflow, and these commands
must answer at once.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf

from launch.history import RunHistory
from launch.run_files import (
    CHECKPOINTS,
    COMPLETE,
    JOB_FILE,
    JOBS_FILE,
    LATEST,
    METRICS_FILE,
    RUN_FILE,
    SUBMITIT_DIR,
    VALIDATION_FILE,
)
from slurm.jobs import recorded_jobs

SPEED_WINDOW = 10  # steps the speed and the ETA are the median of
SLURM_TIMEOUT_S = 30
CANCEL_WAIT_S = 10
# Job states after which Slurm will not run the job again by itself (a requeued job is PENDING, not one of these).
ENDED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "REVOKED", "TIMEOUT"}  # fmt: skip
LABEL_WIDTH = 11


@dataclass
class StatusJob:
    run_dir: str = MISSING


@dataclass
class LogsJob:
    run_dir: str = MISSING
    rank: int = -1  # -1: every rank
    lines: int = 50


@dataclass
class CancelJob:
    run_dir: str = MISSING


class SlurmError(RuntimeError):
    """A Slurm command that is missing, timed out or failed; the message names it and what it said."""


# The run directory


@dataclass(frozen=True)
class RunDirectory:
    path: Path
    job: DictConfig

    @classmethod
    def open(cls, run_dir: str) -> RunDirectory:
        """The run in `run_dir`; a ValueError when it is not a corolla run directory."""
        path = Path(run_dir).expanduser()
        hint = "pass the run directory that `corolla train` or `corolla submit` printed"
        if not path.is_dir():
            raise ValueError(f"run_dir={run_dir} is not a directory: {hint}")
        if not (path / JOB_FILE).is_file():
            raise ValueError(f"run_dir={run_dir} is not a corolla run directory (it has no {JOB_FILE}): {hint}")
        try:
            job = OmegaConf.load(path / JOB_FILE)
        except (OSError, yaml.YAMLError) as error:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{path / JOB_FILE} cannot be read ({first_line}): restore it from MLflow") from None
        if not isinstance(job, DictConfig):
            raise ValueError(f"{path / JOB_FILE} is not a corolla job: restore it from MLflow")
        return cls(path, job)

    def setting(self, key: str, default: object = None) -> object:
        return OmegaConf.select(self.job, key, default=default)

    def slurm_jobs(self, command: str) -> list[str]:
        """The Slurm job ids submitted for this run, oldest first; a one-line error for a local run."""
        jobs = recorded_jobs(self.path)
        if not jobs:
            raise ValueError(
                f"{self.path} is a local run (no {JOBS_FILE}): `corolla {command}` is for runs sent to Slurm with "
                "`corolla submit`; a local run's ranks print to the terminal of `corolla train`"
            )
        return jobs


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a line cut short by a crash mid-write is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def last_record_per_step(path: Path) -> list[dict]:
    """A restarted run appends the steps it redoes again: the last record of each step wins. Sorted by step."""
    by_step = {record["step"]: record for record in read_jsonl(path) if "step" in record}
    return [by_step[step] for step in sorted(by_step)]


# Slurm


def run_slurm(*command: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command[0]} did not answer within {SLURM_TIMEOUT_S} s") from None
    if result.returncode:
        said = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        raise SlurmError(f"{command[0]}: {said[-1] if said else f'exit status {result.returncode}'}")
    return result.stdout


def controller_record(job_id: str) -> dict[str, str] | None:
    """`scontrol show job` as a dict, None when the controller no longer knows the job (ended > MinJobAge ago)."""
    try:
        output = run_slurm("scontrol", "show", "job", job_id)
    except SlurmError as error:
        if "Invalid job id" in str(error):
            return None
        raise
    fields = (token.partition("=") for token in output.split())
    return {key: value for key, separator, value in fields if separator}


def accounting_record(job_id: str) -> dict[str, str] | None:
    """sacct's record of the job's allocation (its latest run when it was requeued), None when sacct lacks it."""
    names = ["State", "ExitCode", "Elapsed", "Start", "End", "NodeList"]
    output = run_slurm("sacct", "-j", job_id, "-X", "-n", "-P", "-o", ",".join(names))
    lines = output.strip().splitlines()
    return dict(zip(names, lines[-1].split("|"), strict=False)) if lines else None


def has_ended(state: str) -> bool:
    return state.split()[0] in ENDED_STATES if state else False


@dataclass(frozen=True)
class SlurmState:
    job_id: str
    state: str  # as Slurm says it: RUNNING, PENDING, "CANCELLED by 0", ...
    live: bool  # queued or running: scancel applies
    summary: str  # the rest, in words
    source: str  # scontrol, sacct, or why neither answered


def slurm_state(job_id: str) -> SlurmState:
    """What Slurm says of the job; a SlurmError when the controller cannot be asked."""
    record = controller_record(job_id)
    if record is not None and not has_ended(record.setdefault("JobState", "UNKNOWN")):
        return SlurmState(job_id, record["JobState"], True, live_summary(record), "scontrol")
    try:
        accounted = accounting_record(job_id)
        sacct_problem = "" if accounted else "sacct has no record of it"
    except SlurmError as error:
        accounted, sacct_problem = None, f"sacct unavailable ({error})"
    # Accounting lags the controller by a moment: a job just ended can still be RUNNING there.
    if accounted is not None and (has_ended(accounted["State"]) or record is None):
        return SlurmState(job_id, accounted["State"], False, accounted_summary(accounted), "sacct")
    if record is not None:
        source = f"scontrol; {sacct_problem}" if sacct_problem else "scontrol; sacct has not caught up"
        return SlurmState(job_id, record["JobState"], False, ended_summary(record), source)
    return SlurmState(job_id, "UNKNOWN", False, "the controller no longer knows the job", sacct_problem)


def latest_states(jobs: list[str]) -> list[SlurmState]:
    """What Slurm says of a run's latest jobs, newest first: only they can be live, an elastic run's running job and
    the next one, queued behind it."""
    return [slurm_state(job_id) for job_id in reversed(jobs[-2:])]


def live_summary(record: dict[str, str]) -> str:
    parts = []
    if record.get("NodeList") not in (None, "", "(null)"):
        parts.append(f"on {record['NodeList']}")
    if record.get("Reason") not in (None, "", "None"):
        parts.append(f"reason {record['Reason']}")
    parts.append(f"run time {record.get('RunTime', '?')} of {record.get('TimeLimit', '?')}")
    parts.append(f"restarts {record.get('Restarts', '?')}")
    return ", ".join(parts)


def ended_summary(record: dict[str, str]) -> str:
    return (
        f"exit code {record.get('ExitCode', '?')}, ran {record.get('RunTime', '?')} on {record.get('NodeList', '?')}, "
        f"ended {record.get('EndTime', '?')}, restarts {record.get('Restarts', '?')}"
    )


def accounted_summary(record: dict[str, str]) -> str:
    return (
        f"exit code {record['ExitCode']}, ran {record['Elapsed']} on {record['NodeList']}, "
        f"started {record['Start']}, ended {record['End']}"
    )


# Formatting


def line(label: str, text: str) -> str:
    return f"{label:<{LABEL_WIDTH}}{text}"


def local_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# corolla status


def run_lines(run: RunDirectory) -> list[str]:
    tp, pp = int(run.setting("parallel.tp", 1)), int(run.setting("parallel.pp", 1))
    dp = int(run.setting("parallel.dp", 0)) or data_parallel_of_cluster(run, tp * pp)
    batch = f"{run.setting('train.global_batch', '?')} sequences x {run.setting('model.seq_length', '?')} tokens a step"
    model = f"{run.setting('model.name', '?')}, TP {tp} x PP {pp} x DP {dp}, {batch}"
    return [line("run", str(run.path)), line("model", model), line("cluster", str(run.setting("cluster.name", "?")))]


def data_parallel_of_cluster(run: RunDirectory, model_parallel: int) -> int:
    """parallel.dp=0 takes what the world size leaves: 1 locally, nodes x ranks per node / (TP x PP) on Slurm."""
    if run.setting("cluster.scheduler") != "slurm":
        return 1
    ranks_per_node = int(run.setting("cluster.gpus_per_node", 0) or run.setting("cluster.tasks_per_node", 0))
    return max(1, int(run.setting("cluster.nodes", 1)) * ranks_per_node // model_parallel)


def slurm_lines(run: RunDirectory) -> list[str]:
    """The latest job; for an elastic run whose latest job waits for the one before to end, that one first."""
    jobs = recorded_jobs(run.path)
    if not jobs:
        return []
    which = f"job {jobs[-1]}" + (f" (latest of {len(jobs)}: {', '.join(jobs[:-1])} before)" if len(jobs) > 1 else "")
    try:
        state = slurm_state(jobs[-1])
        current = slurm_state(jobs[-2]) if len(jobs) > 1 and waits_for_another(state) else None
    except SlurmError as error:
        return [line("slurm", f"{which}: cannot ask Slurm ({error}): run this on a login node of the cluster")]
    latest = line("slurm", f"{which}: {state.state}, {state.summary} (from {state.source})")
    if current is None:
        return [latest]
    return [line("slurm", f"job {current.job_id}: {current.state}, {current.summary} (from {current.source})"),
            line("", f"next: {latest[LABEL_WIDTH:]}")]  # fmt: skip


def waits_for_another(state: SlurmState) -> bool:
    return state.live and "reason Dependency" in state.summary


def history_lines(run: RunDirectory) -> list[str]:
    history = RunHistory(run.path)
    events = history.events()
    if not events:
        return [line("history", "no start recorded yet")]
    restarts = max(0, len(history.starts()) - 1)
    budget = run.setting("cluster.max_restarts")
    limit = f" (cluster.max_restarts={budget})" if budget is not None else ""
    lines = [line("history", f"{plural(restarts, 'restart')}, {plural(history.failures(), 'failure')}{limit}")]
    return lines + [line("", f"{local_time(event['time'])}  {describe_event(event)}") for event in events]


def describe_event(event: dict) -> str:
    kind = event["event"]
    if kind == "start":
        if "slurm_job" in event:
            where = f"job {event['slurm_job']} restart {event.get('restart', 0)} on {event.get('nodes', '?')}"
        else:
            where = f"on {event.get('host', '?')}"
        resumed = event.get("resumed_from_step", 0)
        origin = f"resumed from step {resumed}" if resumed else "from scratch"
        layout = f", {event['layout']}" if "layout" in event else ""
        if "resharded_from" in event:
            layout += f" (resharded from {event['resharded_from']})"
        return f"start     {where}{layout}, {origin}, {plural(event.get('steps_redone', 0), 'step')} redone"
    if kind == "stopped":
        return f"stopped   at step {event.get('step', '?')} ({event.get('signal', '?')})"
    if kind == "finished":
        return f"finished  at step {event.get('step', '?')}"
    if kind == "launch":
        return f"launch    on {event.get('cluster', '?')}"
    if kind == "gave_up":
        failures = plural(event.get("failures", 0), "failure")
        return f"gave up   after {failures} (cluster.max_restarts={event.get('max_restarts')})"
    return kind


def progress_lines(run: RunDirectory) -> list[str]:
    steps = last_record_per_step(run.path / METRICS_FILE)
    total = int(run.setting("train.steps", 0))
    if not steps:
        return [line("progress", f"no step logged yet, {total} to do")]
    last = steps[-1]
    lines = [line("progress", f"step {last['step']} of {total}, loss {last['loss']:.4f}")]
    recent = steps[-SPEED_WINDOW:]
    tokens_per_second = statistics.median(record["tokens_per_second"] for record in recent)
    seq_length = int(run.setting("model.seq_length", 0))
    # tokens_per_second is batch_size x seq_length / the step's seconds.
    seconds_per_step = statistics.median(
        record["batch_size"] * seq_length / record["tokens_per_second"] for record in recent
    )
    lines.append(
        line("speed", f"{tokens_per_second:,.0f} tokens/s, {seconds_per_step:.2f} s a step "
                      f"(median of the last {plural(len(recent), 'step')})")
    )  # fmt: skip
    remaining = max(0, total - last["step"])
    eta = f"{duration(remaining * seconds_per_step)} ({plural(remaining, 'step')} left)" if remaining else "done"
    return [*lines, line("eta", eta)]


def validation_lines(run: RunDirectory) -> list[str]:
    records = last_record_per_step(run.path / VALIDATION_FILE)
    if not records or not records[-1].get("loss"):
        return []
    step, losses = records[-1]["step"], records[-1]["loss"]
    mean = statistics.fmean(losses.values())
    return [line("validation", f"step {step}, loss {mean:.4f} (mean of {plural(len(losses), 'language')})")]


def checkpoint_lines(run: RunDirectory) -> list[str]:
    directory = run.path / CHECKPOINTS
    pointer = directory / LATEST
    if not pointer.is_file():
        return [line("checkpoint", "none yet")]
    tag = pointer.read_text().strip()
    try:
        step = json.loads((directory / tag / COMPLETE).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return [line("checkpoint", f"{pointer} names {tag}, which is not a complete checkpoint")]
    return [line("checkpoint", f"step {step}: {directory / tag}")]


def tracking_lines(run: RunDirectory) -> list[str]:
    record = run.path / RUN_FILE
    if not record.is_file():
        return [line("mlflow", "no run recorded")]
    try:
        tracked = json.loads(record.read_text())
        return [line("mlflow", f"run {tracked['run_id']} at {tracked['tracking_uri']}")]
    except (ValueError, KeyError, TypeError):
        return [line("mlflow", f"{record} cannot be read")]


def status_lines(run: RunDirectory) -> list[str]:
    return [
        *run_lines(run), *slurm_lines(run), *history_lines(run), *progress_lines(run), *validation_lines(run),
        *checkpoint_lines(run), *tracking_lines(run),
    ]  # fmt: skip


def show_status(job: StatusJob) -> None:
    print("\n".join(status_lines(RunDirectory.open(job.run_dir))))


# corolla logs


def last_lines(path: Path, count: int, block_size: int = 1 << 16) -> list[str]:
    """The last `count` lines of a file, read from its end (logs of long runs grow large)."""
    with path.open("rb") as file:
        position = file.seek(0, os.SEEK_END)
        tail = b""
        while position > 0 and tail.count(b"\n") <= count:
            size = min(block_size, position)
            position -= size
            file.seek(position)
            tail = file.read(size) + tail
    return tail.decode(errors="replace").splitlines()[-count:]


def rank_logs(run: RunDirectory, job_id: str) -> dict[int, list[Path]]:
    """submitit's `<job>_<rank>_log.out` and `.err` of the job, by rank."""
    logs: dict[int, list[Path]] = {}
    for path in sorted((run.path / SUBMITIT_DIR).glob(f"{job_id}_*_log.*")):
        rank = path.name.removeprefix(f"{job_id}_").split("_")[0]
        if rank.isdigit() and path.suffix in (".out", ".err"):
            logs.setdefault(int(rank), []).append(path)
    return {rank: sorted(paths, key=lambda path: path.suffix != ".out") for rank, paths in sorted(logs.items())}


def show_logs(job: LogsJob) -> None:
    if job.lines < 1 or job.rank < -1:
        raise ValueError(f"lines={job.lines} rank={job.rank}: lines must be at least 1, rank -1 (all) or a rank")
    run = RunDirectory.open(job.run_dir)
    jobs = run.slurm_jobs("logs")
    # The latest job that has started: an elastic run's latest may be its next job, queued behind the running one.
    job_id = next((job_id for job_id in reversed(jobs) if rank_logs(run, job_id)), jobs[-1])
    logs = rank_logs(run, job_id)
    if not logs:
        print(f"Slurm job {job_id} has no logs in {run.path / SUBMITIT_DIR} yet: has it started? (corolla status)")
        return
    if job.rank != -1 and job.rank not in logs:
        ranks = ", ".join(str(rank) for rank in logs)
        raise ValueError(f"rank={job.rank}: Slurm job {job_id} has logs of ranks {ranks}: choose one of them")
    paths = logs[job.rank] if job.rank != -1 else [path for paths in logs.values() for path in paths]
    sections = []
    for path in paths:
        text = last_lines(path, job.lines)
        sections.append("\n".join([f"==> {path} <==", *(text or ["(empty)"])]))
    print("\n\n".join(sections))


# corolla cancel


def cancel(job: CancelJob) -> None:
    """Every job of the run that is queued or running, newest first (an elastic run's next job waits for the one
    before it to end, and would start when that one is cancelled)."""
    run = RunDirectory.open(job.run_dir)
    jobs = run.slurm_jobs("cancel")
    hint = "run this on a login node of the cluster"
    try:
        states = latest_states(jobs)
    except SlurmError as error:
        raise RuntimeError(f"cannot ask Slurm about job {jobs[-1]} ({error}): {hint}") from None
    live = [state for state in states if state.live]
    if not live:
        print(f"Slurm job {states[0].job_id} has already ended ({states[0].state}): nothing to cancel")
        return
    for before in live:
        try:
            run_slurm("scancel", before.job_id)
            after = state_once_ended(before.job_id)
        except SlurmError as error:
            raise RuntimeError(f"cannot cancel Slurm job {before.job_id} ({error}): {hint}") from None
        print(f"cancelled Slurm job {before.job_id} (was {before.state}, {before.summary}); Slurm now says "
              f"{after.state}")  # fmt: skip


def state_once_ended(job_id: str) -> SlurmState:
    """The job's state when it has ended, or after CANCEL_WAIT_S (it stays COMPLETING while its processes end)."""
    deadline = time.monotonic() + CANCEL_WAIT_S
    state = slurm_state(job_id)
    while state.live and time.monotonic() < deadline:
        time.sleep(0.25)
        state = slurm_state(job_id)
    return state
