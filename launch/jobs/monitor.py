"""`corolla status`: a run's state, read from its run directory (the readers of launch/rundir/) and from the backend
that ran it (Slurm: its jobs; local: nothing more). Light on purpose: it imports no torch, DeepSpeed or MLflow, and
answers at once."""

from __future__ import annotations

import statistics
import time
from datetime import datetime

from launch.config.cluster import ClusterConfig
from launch.config.job_file import changes_text, section
from launch.config.schemas import ParallelConfig
from launch.jobs.backend import Backend
from launch.plan.policy import configured_layout
from launch.plan.run_plan import planned_layout
from launch.rundir.checkpoints import CheckpointError, complete_record, latest_tag
from launch.rundir.directory import RunDirectory
from launch.rundir.files import (
    CHECKPOINTS,
    HEALTH_FILE,
    HISTORY_FILE,
    JOB_FILE,
    METRICS_FILE,
    PLAN_FILE,
    RUN_FILE,
    SET_ASIDE,
    VALIDATION_FILE,
)
from launch.rundir.history import BEFORE_TRAINING, CHANGED_RECORD, Event, RunHistory
from launch.rundir.records import last_records
from launch.rundir.run_record import masked, recorded_run
from launch.rundir.tracking_state import read_state, store_fix

SPEED_WINDOW = 10  # steps the speed and the ETA are the median of
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


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


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
    # Restarts and failures over the run's life, as MLflow's tags count them; the budget counts since the last launch.
    restarts = max(0, len(history.starts()) - 1)
    budget = run.setting("cluster.max_restarts")
    spent = f" ({history.failures()} of cluster.max_restarts={budget} spent since the last launch)"
    spent = spent if budget is not None else ""
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
        return f"diverged  at step {event.get('step', '?')}, loss {event.get('loss', '?')}{where}"
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
    resumed = event.get("resumed_from_step", 0)
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


def progress_lines(run: RunDirectory) -> list[str]:
    recent = last_records(run.path / METRICS_FILE, SPEED_WINDOW)
    total = whole_setting(run, "train.steps")
    if not recent:
        return [line("progress", f"no step logged yet, {total} to do")]
    last = recent[-1]
    lines = [line("progress", f"step {last['step']} of {total}, loss {last['loss']:.4f}")]
    tokens_per_second = statistics.median(record["tokens_per_second"] for record in recent)
    seq_length = whole_setting(run, "model.seq_length")
    # tokens_per_second is batch_size x seq_length / the step's seconds.
    seconds_per_step = statistics.median(
        record["batch_size"] * seq_length / record["tokens_per_second"] for record in recent
    )
    speed = f"{tokens_per_second:,.0f} tokens/s, {seconds_per_step:.2f} s a step"
    lines.append(line("speed", f"{speed} (median of the last {plural(len(recent), 'step')})"))
    remaining = max(0, total - last["step"])
    # The training time left, at this speed: a job that waits in the queue adds its wait.
    eta = (
        f"{duration(remaining * seconds_per_step)} of training ({plural(remaining, 'step')} left)"
        if remaining
        else "done"
    )
    return [*lines, line("eta", eta)]


def validation_lines(run: RunDirectory) -> list[str]:
    records = last_records(run.path / VALIDATION_FILE, 1)
    if not records or not records[-1].get("loss"):
        return []
    step, losses, bpb = records[-1]["step"], records[-1]["loss"], records[-1].get("bpb")
    in_bits = f", {statistics.fmean(bpb.values()):.4f} bits per byte" if bpb else ""
    mean = f"loss {statistics.fmean(losses.values()):.4f}{in_bits}"
    return [line("validation", f"step {step}, {mean} (mean of {plural(len(losses), 'language')})")]


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
