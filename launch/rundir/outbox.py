"""Tracking that never holds training: what a run tells MLflow goes through its run directory first.

Rank 0 writes step and validation records to metrics.jsonl and validation.jsonl, and each start and end to the
run's history; RUN_DIR/tracking.json says how far MLflow holds each series (`sent`), the tags and the end status
still to be set, and the last failure to reach it. A sender thread follows those files and sends what is new, in
order and in batches, with each start's tags and the run's end status, and retries with backoff: a slow server or
one that is away makes tracking lag, never a step wait. It runs on rank 0 on a cluster, and in `corolla train`
while its local ranks train (a rank then spends no time on MLflow). What a launch leaves unsent goes at the next
start, or with `corolla tracking sync RUN_DIR`. A record carries the time it was written as its MLflow timestamp, so
a batch sent twice (a reply lost after the server stored it) is stored once. A resumed launch that trains steps MLflow
holds with other figures (another train.lr after `latest` was pointed back) queues their records in retrained.jsonl,
sent in turn (`resent`, how far): MLflow, whose histories are never rewritten, then holds both, the new last.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launch.config.job_file import read_job
from launch.rundir import tracking
from launch.rundir.directory import RunDirectory
from launch.rundir.files import (
    HEALTH_FILE,
    JOB_FILE,
    METRICS_FILE,
    RETRAINED_FILE,
    RUN_FILE,
    TRACKING_STATE,
    VALIDATION_FILE,
)
from launch.rundir.history import ENDED, Event, RunHistory, crashes, launches, restarts
from launch.rundir.records import append_record, last_records, offset_after, step_record
from launch.rundir.run_record import masked, recorded_run
from launch.rundir.tracking_state import (
    TrackingState,
    how_to_send_the_rest,
    read_state,
    store_fix,
    write_state,
)

BATCH_RECORDS = 100  # records a request; MLflow takes up to 1,000 metrics a batch
UNSENT_RECORDS = 10 * BATCH_RECORDS  # the most records of a series a look at its file takes
RETRY_S = (1, 2, 5, 10, 30)  # waits after failures in a row; the last repeats
POLL_S = 2.0  # how often the sender looks for new records, tags and an end status
CLOSE_TIMEOUT_S = 20.0  # what the end of a launch waits for MLflow to take the rest; then it is sent later


def _keep(run_dir: Path, state: TrackingState) -> None:
    """tracking.json, where it can be written: on a full disk the state lives on in memory until it can."""
    with contextlib.suppress(OSError):
        write_state(run_dir, state)


def _step_metrics(record: dict) -> dict[str, float]:
    return {name: record[key] for key, name in tracking.STEP_METRICS.items() if key in record}


def _validation_metrics(record: dict) -> dict[str, float]:
    metrics = {}
    for key, name in (("loss", tracking.VALIDATION_METRIC), ("bpb", tracking.BITS_PER_BYTE_METRIC)):
        values = record.get(key) or {}
        metrics.update({f"{name}/{language}": value for language, value in values.items()})
        if values:
            metrics[name] = sum(values.values()) / len(values)
    return metrics


def _health_metrics(record: dict) -> dict[str, float]:
    return {tracking.HEALTH_METRIC: record["slowdown"]} if "slowdown" in record else {}


SERIES: dict[str, Callable[[dict], dict[str, float]]] = {
    METRICS_FILE: _step_metrics,
    VALIDATION_FILE: _validation_metrics,
    HEALTH_FILE: _health_metrics,
}
# The metric of each series whose last step in MLflow says how far the series was sent
SERIES_METRIC = {
    METRICS_FILE: tracking.STEP_METRICS["loss"],
    VALIDATION_FILE: tracking.VALIDATION_METRIC,
    HEALTH_FILE: tracking.HEALTH_METRIC,
}


# (series, the last step sent) -> the records after it, in step order, UNSENT_RECORDS at most: asked again until none
Unsent = Callable[[str, int], list[dict]]


class _Tail:
    """A series file as the sender follows it, by where its first record MLflow lacks starts: found from the file's
    end at the first look, and again once the file was replaced (a resumed launch drops the steps it redoes,
    records.keep_steps_up_to); each look reads on from there, UNSENT_RECORDS at most, all that the sender holds
    however long MLflow is away."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inode = self.offset = 0

    def unsent(self, after: int) -> list[dict]:
        if not self.path.is_file():
            return []
        by_step: dict[int, dict] = {}
        with self.path.open("rb") as file:
            inode = os.fstat(file.fileno()).st_ino
            if inode != self.inode:
                self.inode, self.offset = inode, offset_after(file, after)
            file.seek(self.offset)
            for line in file:
                if not line.endswith(b"\n") or len(by_step) == UNSENT_RECORDS:
                    break  # a line still being written waits for the next look
                record = step_record(line)
                if record is not None and record["step"] > after:
                    by_step[record["step"]] = record
                elif not by_step:
                    self.offset += len(line)  # sent, or cut short by a crash mid-write: not read again
        return [by_step[step] for step in sorted(by_step)]


def read_unsent(run_dir: Path) -> Unsent:
    """The run's series files, followed from a first look at their ends."""
    tails = {series: _Tail(run_dir / series) for series in SERIES}
    return lambda series, after: tails[series].unsent(after)


def start_tags(events: list[dict]) -> dict[str, str]:
    """MLflow's tags for the last of `events`, a start: its layout and the one it resharded from, and after the first
    start the restarts and crashes so far."""
    start = events[-1]
    tags = {"layout": start["layout"]}
    if "resharded_from" in start:
        tags["corolla.resharded_from"] = start["resharded_from"]
    starts = sum(1 for event in events if event["event"] == Event.start)
    if starts > 1:  # not a launch's only start
        tags |= {"corolla.restarts": str(restarts(events)), "corolla.failures": str(crashes(events))}
    return tags


def from_history(events: list[dict], seen: int) -> tuple[dict[str, str], str | None]:
    """What the events after the first `seen` tell MLflow: each start's tags, and the end status of a run that ended."""
    tags, status = {}, None
    for index in range(seen, len(events)):
        if events[index]["event"] == Event.start:
            tags |= start_tags(events[: index + 1])
        elif events[index]["event"] in ENDED:
            status = END_STATUS[events[index]["event"]]
    return tags, status


def send_pending(run_dir: Path, state: TrackingState, unsent: Unsent, guard: threading.Lock | None = None) -> None:
    """Every unsent record, those of steps trained anew, then the tags, then the status; `state` (and tracking.json)
    follow what got through. Raises what MLflow raised, once the state says how far it got."""
    guard = guard or threading.Lock()
    tracked = recorded_run(run_dir)
    asked = state.sent is None
    if asked:
        last = {series: tracking.last_step(tracked, metric) for series, metric in SERIES_METRIC.items()}
        with guard:
            state.sent = last
    for series, metrics_of in SERIES.items():
        while records := unsent(series, state.sent_up_to(series)):
            for start in range(0, len(records), BATCH_RECORDS):
                batch = records[start : start + BATCH_RECORDS]
                sent = [(record["step"], record.get("time"), metrics_of(record)) for record in batch]
                tracking.log_records(tracked, sent)
                with guard:
                    state.sent = {**state.sent, series: batch[-1]["step"]}
                    _keep(run_dir, state)
    while retrained := retrained_after(run_dir, state.resent):
        entries, end = retrained
        if entries:
            tracking.log_records(tracked, [(entry.step, entry.time, entry.metrics) for entry in entries])
        with guard:
            state.resent = end
            state.tags |= {tracking.RETRAINED_TAG: str(entries[-1].after)} if entries else {}
            _keep(run_dir, state)
    with guard:
        tags, artifacts, status = dict(state.tags), list(state.artifacts), state.status
    if tags:
        tracking.set_tags(tracked, tags)
    for path in artifacts:
        if Path(path).is_file():
            tracking.log_artifact(tracked, Path(path))
    if status:
        tracking.set_status(tracked, status)
    with guard:
        if asked or tags or artifacts or status or state.error:  # else tracking.json says all there is already
            state.tags = {name: value for name, value in state.tags.items() if tags.get(name) != value}
            state.artifacts = [path for path in state.artifacts if path not in artifacts]
            state.status = None if state.status == status else state.status
            state.error = state.failing_since = None
            _keep(run_dir, state)


@dataclass(frozen=True)
class Retrained:
    """A record of RETRAINED_FILE: a step a launch that resumed from step `after` trained anew, its figures as its
    series sends them."""

    step: int
    time: int | None
    metrics: dict[str, float]
    after: int


def retrained_after(run_dir: Path, offset: int) -> tuple[list[Retrained], int] | None:
    """RETRAINED_FILE's records after byte `offset`, a batch at most, and where the next starts; None where there is
    none (a line still being written waits, one cut short by a crash is passed over)."""
    path = run_dir / RETRAINED_FILE
    size = path.stat().st_size if path.is_file() else offset
    if size == offset:
        return None
    offset = 0 if size < offset else offset  # cut or made anew: sent again, MLflow keeps one of each
    entries, end = [], offset
    with path.open("rb") as file:
        file.seek(offset)
        for line in file:
            if not line.endswith(b"\n") or len(entries) == BATCH_RECORDS:
                break
            end += len(line)
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):  # one corolla did not write
                entry = json.loads(line)
                record, metrics_of = entry["record"], SERIES[entry["series"]]
                entries.append(
                    Retrained(int(record["step"]), record.get("time"), metrics_of(record), int(entry["after"]))
                )
    return (entries, end) if end > offset else None


def resend(run_dir: Path, series: str, record: dict, after: int) -> None:
    """Queues `record`, of a step a launch that resumed from step `after` trained anew, to be sent to MLflow again."""
    append_record(run_dir / RETRAINED_FILE, {"series": series, "after": after, "record": record})


def _failed(run_dir: Path, state: TrackingState, error: Exception, guard: threading.Lock) -> None:
    with guard:
        state.error = tracking.safe_message(error)
        state.failing_since = state.failing_since or time.time()
        _keep(run_dir, state)


def update(
    run_dir: Path, tags: dict[str, str] | None = None, status: str | None = None, artifacts: list[Path] = ()
) -> bool:
    """From a launcher (no sender running): queue tags, files and a status and try to send them, with the metrics
    still unsent, once. False, with one line said, if MLflow did not take them: they go at the next start or sync."""
    state = read_state(run_dir)
    state.tags.update(tags or {})
    state.artifacts.extend(str(path.resolve()) for path in artifacts if str(path.resolve()) not in state.artifacts)
    state.status = status or state.status
    _keep(run_dir, state)
    try:
        send_pending(run_dir, state, read_unsent(run_dir))
    except Exception as error:  # whatever MLflow raises, the run goes on and says so
        _failed(run_dir, state, error, threading.Lock())
        print(
            f"corolla: MLflow did not take it ({state.error}); kept in {run_dir / TRACKING_STATE}: "
            + how_to_send_the_rest(run_dir, state.error),
            flush=True,
        )
        return False
    return True


END_STATUS = {
    Event.finished: "FINISHED",
    Event.diverged: "FAILED",
    Event.no_space: "FAILED",
    Event.gave_up: "FAILED",
    Event.refused: "FAILED",
    Event.stopped: "KILLED",
}


def sync(run_dir: Path, uri: str | None = None, status: str | None = None) -> TrackingState:
    """Sends what MLflow lacks of the run, after its last step of each series, and how it ended where no one said (or
    `status`, what the caller knows it ended as); with `uri`, everything, to a new run there, which the run directory
    continues from then on. A one-line ValueError if MLflow does not take it, or the run has none."""
    if not (run_dir / RUN_FILE).is_file():
        raise ValueError(
            f"{run_dir} records no MLflow run ({RUN_FILE}): its launch did not open one, or the file was lost; "
            "launching it again (corolla train or submit) opens it, or takes up the one its history names"
        )
    if uri:
        _move(run_dir, uri)
    state = read_state(run_dir)
    known, state.sent = state.sent, None  # asked of MLflow: a store that lost the run (or steps of it) says so here
    try:
        state.status = status or state.status or _untold_end(run_dir)
        send_pending(run_dir, state, read_unsent(run_dir))
    except Exception as error:  # whatever MLflow raises: said in one line, the state kept for the next try
        state.sent = state.sent if state.sent is not None else known  # what a launch compares its steps with
        _failed(run_dir, state, error, threading.Lock())
        fix = store_fix(run_dir, str(error)) or "try again when it answers"
        raise ValueError(f"MLflow did not take the run's records ({state.error}): {fix}") from None
    return state


def _untold_end(run_dir: Path) -> str | None:
    """The end a local run's history records that MLflow, which still has the run RUNNING, was not told: its launcher
    (which tells it) was killed. Nothing else is inferred: a Slurm run's stop is followed by a requeue, and a last
    start with no end may still be training."""
    events = RunHistory(run_dir).events()
    if RunDirectory.open(str(run_dir)).sent_to_slurm or not events or events[-1]["event"] not in END_STATUS:
        return None
    return END_STATUS[events[-1]["event"]] if tracking.run_status(recorded_run(run_dir)) == "RUNNING" else None


def _move(run_dir: Path, uri: str) -> None:
    tracking.check_reachable(uri)
    job = read_job(run_dir / JOB_FILE)
    old = recorded_run(run_dir)
    tags = {"corolla.moved_from": f"{masked(old.tracking_uri)} run {old.run_id}"}
    tracking.create_run(run_dir, job.tracking.experiment, job, tags, uri)
    events = RunHistory(run_dir).events()
    status = END_STATUS.get(events[-1]["event"]) if events else None
    tags = {tracking.LAUNCHES_TAG: str(len(launches(events)))}
    # The new run takes each step's last record alone: the records of steps trained anew are in them already.
    retrained = run_dir / RETRAINED_FILE
    resent = retrained.stat().st_size if retrained.is_file() else 0
    moved = TrackingState(sent={}, tags=tags, artifacts=[str(run_dir / JOB_FILE)], resent=resent)
    moved.status = status
    write_state(run_dir, moved)


class Sender:
    """A background thread that follows a run directory and sends MLflow what is new (module docstring): on rank 0 on
    a cluster, in `corolla train` while its local ranks train. `set()` queues a status the run's files do not say,
    `close()` at the end waits a bounded time for the sender to catch up."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.state = read_state(run_dir)
        self.history_seen = len(RunHistory(run_dir).events())  # what came before is not this launch's to tell
        self.guard = threading.Lock()
        self.wake = threading.Event()
        self.closing = False
        self.unsent = read_unsent(run_dir)
        self.thread = threading.Thread(target=self._run, name="corolla-tracking", daemon=True)
        self.thread.start()

    def set(self, status: str) -> None:
        with self.guard:
            self.state.status = status
            _keep(self.run_dir, self.state)
        self.wake.set()

    def caught_up(self) -> bool:
        with self.guard:
            pending = self.state.tags or self.state.status
        last = {series: last_records(self.run_dir / series, 1) for series in SERIES}
        return (
            not pending
            and not retrained_after(self.run_dir, self.state.resent)
            and not any(ends and ends[0]["step"] > self.state.sent_up_to(series) for series, ends in last.items())
        )

    def _take_history(self) -> None:
        events = RunHistory(self.run_dir).events()
        tags, status = from_history(events, self.history_seen)
        self.history_seen = len(events)
        if tags or status:
            with self.guard:
                self.state.tags.update(tags)
                self.state.status = status or self.state.status
                _keep(self.run_dir, self.state)

    def _run(self) -> None:
        failures = 0
        while True:
            self.wake.wait(RETRY_S[min(failures, len(RETRY_S) - 1)] if failures else POLL_S)
            self.wake.clear()
            last_attempt = self.closing
            try:
                self._take_history()
                send_pending(self.run_dir, self.state, self.unsent, self.guard)
                failures = 0
            except Exception as error:  # a tracking failure must never reach training
                _failed(self.run_dir, self.state, error, self.guard)
                failures += 1
            if last_attempt:
                return

    def close(self) -> None:
        """Sends what is left, for at most CLOSE_TIMEOUT_S; what MLflow has not taken by then stays for the next
        start or a sync, and one line says so."""
        self.closing = True
        self.wake.set()
        self.thread.join(CLOSE_TIMEOUT_S)
        if self.thread.is_alive():
            # Still waiting on MLflow: held from writing tracking.json once this launch has let go of the run.
            self.guard.acquire()
        elif self.caught_up():
            return
        print(
            f"corolla: MLflow has not taken every record yet ({self.state.error or 'slow'}): "
            + how_to_send_the_rest(self.run_dir, self.state.error),
            flush=True,
        )
