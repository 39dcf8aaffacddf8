"""`corolla status`: a run's state, read from its run directory (the readers of launch/rundir/) and from the backend
that ran it (Slurm: its jobs; local: nothing more). Light on purpose: it imports no torch, DeepSpeed or MLflow, and
answers at once."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from launch.config.cluster import ClusterConfig
from launch.config.job_file import changes_text, section
from launch.config.schemas import ParallelConfig
from launch.jobs.backend import Backend
from launch.plan.hardware import plural
from launch.plan.policy import configured_layout
from launch.plan.run_plan import planned_layout
from launch.plan.weights import HF_CONFIG_FILE
from launch.rundir.checkpoints import CheckpointError, complete_record, latest_tag
from launch.rundir.directory import RunDirectory, runs_in
from launch.rundir.files import (
    CHECKPOINTS,
    HEALTH_FILE,
    HF_DIR,
    HISTORY_FILE,
    IMPORT_FILE,
    JOB_FILE,
    METRICS_FILE,
    PLAN_FILE,
    REPORT_DIR,
    RUN_FILE,
    SET_ASIDE,
    TOKENIZER_DIR,
    TOKENS_DIR,
    TRAIN_DIR,
    VALIDATION_FILE,
)
from launch.rundir.history import BEFORE_TRAINING, CHANGED_RECORD, RESUMED_FROM, Event, RunHistory, has_ended
from launch.rundir.records import last_records, record_of_step
from launch.rundir.run_record import masked, recorded_run
from launch.rundir.tracking_state import read_state, store_fix
from tokenizer.files import METADATA_FILE, REPORT_FILE
from tokenizer.token_files import MANIFEST_NAME

SPEED_WINDOW = 10  # steps the speed is the median of
PACE_WINDOW = 200  # the last steps of a start the time left is paced by, its validations and checkpoints among them
EVENTS_SHOWN = 20  # the history's last events, which status lists
LABEL_WIDTH = 11


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


def layout_text(run: RunDirectory) -> str:
    """The layout on the configured nodes: as planned, or for a run planned by an older corolla, as configured."""
    try:
        if (run.path / PLAN_FILE).is_file():
            layout = planned_layout(run.path)
        else:
            parallel, cluster = section(run.job, "parallel", ParallelConfig), section(run.job, "cluster", ClusterConfig)
            layout = configured_layout(parallel, cluster)
    except ValueError as error:
        return f"layout unknown ({error})"
    return f"TP {layout.tp} x PP {layout.pp} x DP {layout.dp}"


def run_lines(run: RunDirectory) -> list[str]:
    batch = f"{run.setting('train.global_batch', '?')} sequences x {run.setting('model.seq_length', '?')} tokens a step"
    model = f"{run.setting('model.name', '?')}, {layout_text(run)}, {batch}"
    return [line("run", str(run.path)), line("model", model), line("cluster", str(run.setting("cluster.name", "?")))]


def history_lines(run: RunDirectory) -> list[str]:
    history = RunHistory(run.path)
    events = history.events()
    if not events:
        return [line("history", "no start recorded yet")]
    # Restarts and failures over the run's life, as MLflow's tags count them; a Slurm job's budget counts them in a row
    # from the newest checkpoint (a local run is not restarted).
    restarts = history.restarts()
    budget = run.setting("cluster.max_restarts")
    spent = f" ({history.failures()} of cluster.max_restarts={budget} spent from the newest checkpoint)"
    spent = spent if budget is not None and run.sent_to_slurm else ""
    lines = [line("history", f"{plural(restarts, 'restart')}, {plural(history.crashes(), 'failure')}{spent}")]
    if len(events) > EVENTS_SHOWN:  # a run resumed for weeks has hundreds
        earlier = len(events) - EVENTS_SHOWN
        lines.append(line("", f"{plural(earlier, 'earlier event')} in {run.path / HISTORY_FILE}"))
    shown = events[-EVENTS_SHOWN:]
    return lines + [line("", f"{local_time(event['time'])}  {describe_event(event)}") for event in shown]


def describe_event(event: dict) -> str:
    kind = event["event"]
    if kind == Event.start:
        return _describe_start(event)
    if kind == Event.stopped:
        return f"stopped   at step {event.get('step', '?')} ({event.get('signal', 'train.exit_after')})"
    if kind == Event.finished:
        return f"finished  at step {event.get('step', '?')}"
    if kind == Event.launch:
        changed = event.get(CHANGED_RECORD)
        settings = f", {changes_text(changed)}" if changed else ""
        return f"launch    on {event.get('cluster', '?')}{settings}"
    if kind == Event.diverged:
        ranks = event.get("ranks") or []
        where = f", non-finite gradients on ranks {', '.join(map(str, ranks))}" if ranks else ""
        norm = f", gradient norm {event['grad_norm']}" if "grad_norm" in event else ""
        return f"diverged  at step {event.get('step', '?')}, loss {event.get('loss', '?')}{norm}{where}"
    if kind == Event.no_space:
        return f"no space  {event.get('reason', '')}"
    if kind == Event.refused:
        return f"refused   {event.get('reason', '')}"
    if kind == Event.unfit:
        nodes = "; ".join(f"{node}: {why}" for node, why in event.get("nodes", {}).items())
        outcome = "left out from then on" if event.get("left_out") else "trained on, no other nodes"
        return f"unfit     job {event.get('slurm_job', '?')}: {nodes} ({outcome})"
    if kind == Event.gave_up:
        failures = plural(event.get("failures", 0), "failure")
        return f"gave up   after {failures} (cluster.max_restarts={event.get('max_restarts')})"
    return kind


def _describe_start(event: dict) -> str:
    """Where a start ran and, unless it failed before it trained, on which layout and from which step."""
    if "slurm_job" in event:
        where = f"job {event['slurm_job']} restart {event.get('restart', 0)} on {event.get('nodes', '?')}"
    else:
        where = f"on {event.get('host', '?')}"
    if event.get(BEFORE_TRAINING):
        return f"start     {where}, failed before it trained"
    resumed = event.get(RESUMED_FROM, 0)
    origin = f"resumed from step {resumed}" if resumed else "from scratch"
    layout = f", {event['layout']}" if "layout" in event else ""
    if "resharded_from" in event:
        layout += f" (resharded from {event['resharded_from']})"
    aside = event.get("set_aside")
    if isinstance(aside, list) and aside:
        origin += f" ({plural(len(aside), 'newer checkpoint')} set aside in {CHECKPOINTS}/{SET_ASIDE})"
    return f"start     {where}{layout}, {origin}, {plural(event.get('steps_redone', 0), 'step')} redone"


def whole_setting(run: RunDirectory, key: str) -> int:
    value = run.setting(key, 0)
    if type(value) is not int:
        raise ValueError(
            f"{run.path / JOB_FILE} says {key}={value}, not a whole number: fix it, or launch the run again, which "
            "rewrites it"
        )
    return value


@dataclass(frozen=True)
class Progress:
    """Where a run stands by its metrics: its last step logged and its pace over the steps before it."""

    step: int
    total: int
    loss: float
    tokens_per_second: float | None  # the median of the last steps' (None where they record none)
    window: int  # the steps the speed is the median of
    seconds_per_step: float | None  # the pace, validations and checkpoints included where the records say when
    ended: bool  # the run finished, or ended otherwise (its history says): no time is left

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.step)

    def time_left(self) -> str:
        """The training time left, at this pace (a job that waits in the queue adds its wait)."""
        if self.ended or not self.remaining:
            return "-" if self.remaining else "done"
        return duration(self.remaining * self.seconds_per_step) if self.seconds_per_step else "?"

    def eta(self) -> str | None:
        if self.ended or not self.remaining:
            return None if self.remaining else "done"
        return f"{self.time_left()} of training ({plural(self.remaining, 'step')} left)"


def progress(run: RunDirectory) -> Progress | None:
    """None before a step is logged."""
    paced = last_records(run.path / METRICS_FILE, PACE_WINDOW)
    total = whole_setting(run, "train.steps")
    if not paced:
        return None
    recent = [record for record in paced[-SPEED_WINDOW:] if _positive(record.get("tokens_per_second"))]
    events = RunHistory(run.path).events()
    return Progress(
        step=paced[-1]["step"],
        total=total,
        loss=paced[-1].get("loss", math.nan),
        tokens_per_second=statistics.median(record["tokens_per_second"] for record in recent) if recent else None,
        window=len(recent),
        seconds_per_step=_pace(run, paced, events),
        ended=has_ended(events),
    )


def _positive(value: object) -> bool:
    return type(value) in (int, float) and value > 0  # type: ignore[operator]


def _pace(run: RunDirectory, records: list[dict], events: list[dict]) -> float | None:
    """Seconds a step: the time between the first and last records of the latest start's last steps (its
    validations and checkpoints between them), where records say when they were written; else the median of the
    steps' own seconds (tokens_per_second is batch_size x seq_length / the step's seconds)."""
    starts = [event for event in events if event["event"] == Event.start]
    since = (starts[-1].get(RESUMED_FROM) or 0) if starts else 0  # null: a start recorded for one that never trained
    timed = [record for record in records if record["step"] > since and _positive(record.get("time"))]
    if len(timed) > 1 and timed[-1]["step"] > timed[0]["step"]:
        return (timed[-1]["time"] - timed[0]["time"]) / 1000 / (timed[-1]["step"] - timed[0]["step"])
    seq_length = whole_setting(run, "model.seq_length")
    steps = [
        record["batch_size"] * seq_length / record["tokens_per_second"]
        for record in records[-SPEED_WINDOW:]
        if _positive(record.get("tokens_per_second")) and _positive(record.get("batch_size"))
    ]
    return statistics.median(steps) if steps else None


def progress_lines(run: RunDirectory) -> list[str]:
    current = progress(run)
    if current is None:
        return [line("progress", f"no step logged yet, {whole_setting(run, 'train.steps')} to do")]
    speeds = []
    if current.tokens_per_second is not None:
        window = plural(current.window, "step")
        speeds.append(f"{current.tokens_per_second:,.0f} tokens/s (median of the last {window})")
    if current.seconds_per_step is not None:
        speeds.append(f"{current.seconds_per_step:.2f} s a step")
    eta = current.eta()
    return [
        line("progress", f"step {current.step} of {current.total}, loss {current.loss:.4f}"),
        *([line("speed", ", ".join(speeds))] if speeds else []),
        *([line("eta", eta)] if eta else []),
    ]


@dataclass(frozen=True)
class Validation:
    step: int
    loss: float  # the languages' mean
    languages: int
    bits_per_byte: float | None  # the languages' mean, where recorded


def last_validation(run: RunDirectory) -> Validation | None:
    records = last_records(run.path / VALIDATION_FILE, 1)
    if not records or not records[-1].get("loss"):
        return None
    losses, bpb = records[-1]["loss"], records[-1].get("bpb")
    mean_bpb = statistics.fmean(bpb.values()) if bpb else None
    return Validation(records[-1]["step"], statistics.fmean(losses.values()), len(losses), mean_bpb)


def validation_lines(run: RunDirectory) -> list[str]:
    if (last := last_validation(run)) is None:
        return []
    in_bits = f", {last.bits_per_byte:.4f} bits per byte" if last.bits_per_byte is not None else ""
    mean = f"loss {last.loss:.4f}{in_bits}"
    return [line("validation", f"step {last.step}, {mean} (mean of {plural(last.languages, 'language')})")]


def health_lines(run: RunDirectory) -> list[str]:
    """The last of the recent health checks after a checkpoint that timed a node: the slowest node against the
    fastest rank (a slowdown too small for cluster.health_slowdown shows here first; nodes that failed it are the
    history's)."""
    timed = [
        record
        for record in last_records(run.path / HEALTH_FILE, SPEED_WINDOW)
        if isinstance(record.get("seconds"), dict)
        and record["seconds"]
        and isinstance(record.get("slowdown"), int | float)
    ]
    if not timed:
        return []
    seconds, bound = timed[-1]["seconds"], run.setting("cluster.health_slowdown")
    slowest = max(seconds, key=seconds.__getitem__)
    text = f"slowest node {slowest}, {timed[-1]['slowdown']:.2f}x the fastest rank's self-test time"
    text += f" (cluster.health_slowdown={bound:g})" if isinstance(bound, int | float) else ""
    return [line("health", f"after step {timed[-1]['step']}: {text}")]


def checkpoint_lines(run: RunDirectory) -> list[str]:
    directory = run.path / CHECKPOINTS
    tag = latest_tag(directory)
    if tag is None:
        return [line("checkpoint", "none yet")]
    try:
        step = complete_record(directory, tag)["step"]
    except CheckpointError as error:
        return [line("checkpoint", str(error))]
    return [line("checkpoint", f"step {step}: {directory / tag}")]


def tracking_lines(run: RunDirectory) -> list[str]:
    if not (run.path / RUN_FILE).is_file():
        return [line("mlflow", "no run recorded")]
    try:
        tracked = recorded_run(run.path)
    except (ValueError, TypeError):
        return [line("mlflow", f"{run.path / RUN_FILE} cannot be read")]
    return [line("mlflow", f"run {tracked.run_id} at {masked(tracked.tracking_uri)}"), *tracking_lag_lines(run)]


def tracking_lag_lines(run: RunDirectory) -> list[str]:
    """How far MLflow is behind metrics.jsonl (a record a step), and why (launch/rundir/outbox.py sends in the
    background)."""
    state = read_state(run.path)
    last = last_records(run.path / METRICS_FILE, 1)
    if state.sent is None or not last:
        return []
    behind = max(0, last[0]["step"] - state.sent_up_to())
    pending = [name for name, there in (("tags", state.tags), ("end status", state.status)) if there]
    if not behind and not pending:
        return [line("tracking", f"MLflow holds every step (to {state.sent_up_to()})")]
    lag = f"MLflow holds steps to {state.sent_up_to()}, {plural(behind, 'step')} behind"
    lag += f", {' and '.join(pending)} to send" if pending else ""
    if state.error:
        since = time.strftime("%H:%M:%S", time.localtime(state.failing_since)) if state.failing_since else "?"
        lag += f"; not reached since {since}: {state.error}"
        if fix := store_fix(run.path, state.error):
            lag += f"; {fix}"
    return [line("tracking", lag)]


def status_lines(run: RunDirectory, backend: Backend) -> list[str]:
    return [
        *run_lines(run),
        *backend.state_lines(run),
        *history_lines(run),
        *progress_lines(run),
        *validation_lines(run),
        *health_lines(run),
        *checkpoint_lines(run),
        *tracking_lines(run),
    ]


RUNS_HEADER = ["run", "state", "last event", "step", "loss", "validation", "training left"]
COMPARED_COLUMN = 5  # where the loss of every run at one step goes, after each one's last


def compare_rows(runs: list[Path], rows: list[list[str]]) -> int | None:
    """The last step that every run which logged any has logged, where two or more have, their rows given each one's
    loss there: their losses compare there, where their last losses at different steps do not. A run that cannot be
    read (its row cut short) is not counted."""
    logged = [(run, row) for run, row in zip(runs, rows, strict=True) if len(row) == len(RUNS_HEADER)]
    last = [records[-1]["step"] for run, _ in logged if (records := last_records(run / METRICS_FILE, 1))]
    if len(last) < 2:
        return None
    for run, row in logged:
        compared = record_of_step(run / METRICS_FILE, min(last))
        row.insert(COMPARED_COLUMN, f"{compared['loss']:.4f}" if compared and "loss" in compared else "-")
    return min(last)


def run_row(run: RunDirectory, backend: Backend) -> list[str]:
    """A run's line in the status of a directory of runs: a sweep's point beside the others."""
    events = RunHistory(run.path).events()
    last = events[-1] if events else {"event": "not launched"}
    shown = [
        run.path.name,
        backend.state_word(run),
        str(last["event"]) + (f" at {last['step']}" if "step" in last else ""),
    ]
    try:
        current, validation = progress(run), last_validation(run)
        total = whole_setting(run, "train.steps")
    except ValueError as error:
        return [*shown, str(error)]
    if current is None:
        return [*shown, f"0/{total}"]
    return [
        *shown,
        f"{current.step}/{current.total}",
        f"{current.loss:.4f}",
        f"{validation.loss:.4f} at {validation.step}" if validation else "-",
        current.time_left(),
    ]


def runs_lines(directory: Path, rows: list[list[str]], compared_at: int | None) -> list[str]:
    """The status of a directory of runs (a sweep's): a row a run under RUNS_HEADER (and the loss at `compared_at`),
    each column as wide as its widest cell; a row cut short (a run that cannot be read says why in its last cell)
    leaves the widths be."""
    header = list(RUNS_HEADER)
    if compared_at is not None:
        header.insert(COMPARED_COLUMN, f"loss at {compared_at}")
    table = [header, *rows]
    widths = [
        max(len(row[column]) for row in table if column < len(row) - 1 or len(row) == len(header))
        for column in range(len(header))
    ]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() for row in table]
    heading = line("runs", f"{directory}: {plural(len(rows), 'run')}")
    return [heading, *lines, f"a run's own status: corolla status {directory}/RUN"]


# A local `corolla pipeline`'s stages: their folder in its run directory, the file each writes last, what it is.
PIPELINE_STAGES = (
    (TOKENIZER_DIR, METADATA_FILE, "tokenizer"),
    (REPORT_DIR, REPORT_FILE, "evaluation"),
    (TOKENS_DIR, MANIFEST_NAME, "tokens"),
    (TRAIN_DIR, JOB_FILE, "training"),
    (HF_DIR, HF_CONFIG_FILE, "export"),
)


def is_local_pipeline(run_dir: Path) -> bool:
    """A directory a local `corolla pipeline` writes: a stage's folder, no run of its own, nor an imported model's
    (tokenizer/ too), nor other runs than its training (a Slurm pipeline's has its chain.json)."""
    if (run_dir / JOB_FILE).exists() or (run_dir / IMPORT_FILE).exists():
        return False
    return any((run_dir / folder).is_dir() for folder, _, _ in PIPELINE_STAGES) and all(
        run.name == TRAIN_DIR for run in runs_in(run_dir)
    )


def pipeline_lines(run_dir: Path) -> list[str]:
    """What each stage of a local pipeline left in `run_dir`, by the file it writes last."""
    lines = [line("pipeline", f"{run_dir}: a local `corolla pipeline`, a stage a line (its folder)")]
    for folder, last, stage in PIPELINE_STAGES:
        if (run_dir / folder / last).is_file():
            state = "written" if stage != "training" else "prepared: its status follows"
        else:
            state = "begun, not finished" if (run_dir / folder).is_dir() else "not begun, or made elsewhere"
        lines.append(line(stage, f"{state} ({folder}/)"))
    return lines
