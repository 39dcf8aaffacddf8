"""RUN_DIR/tracking.json: how far MLflow holds a run's records, what is still to be sent, and why not; written by
launch/rundir/outbox.py, read by `corolla status` (without MLflow)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launch.rundir.files import METRICS_FILE, MLFLOW_DB, TRACKING_STATE
from launch.rundir.run_record import SQLITE, default_uri, masked, mlflow_command, recorded_run
from tokenizer.files import write_atomically


@dataclass
class TrackingState:
    # series (file name) -> the last step MLflow holds; None: not known here (a run directory from before
    # tracking.json, or one that lost it), asked of MLflow before anything is sent
    sent: dict[str, int] | None = None
    tags: dict[str, str] = field(default_factory=dict)  # to set
    resent: int = 0  # how far (bytes) MLflow was sent RETRAINED_FILE, the records of steps trained anew
    artifacts: list[str] = field(default_factory=list)  # files to log
    status: str | None = None  # to set once the metrics are in: FINISHED, FAILED or KILLED
    error: str | None = None  # why the last attempt failed; None once one succeeds
    failing_since: float | None = None  # time of the first failure in a row

    def sent_up_to(self, series: str = METRICS_FILE) -> int:
        return (self.sent or {}).get(series, 0)


def read_state(run_dir: Path) -> TrackingState:
    """The state as written; none, or one that is not a state corolla wrote, is taken as lost: how far MLflow holds
    the run is then asked of MLflow, and the start's tags and the run's end status are set again as they come."""
    path = run_dir / TRACKING_STATE
    if not path.is_file():
        return TrackingState()
    try:
        return TrackingState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        print(f"corolla: {path} is not a tracking state corolla wrote: taken as lost, MLflow is asked how far it is")
        return TrackingState()


def write_state(run_dir: Path, state: TrackingState) -> None:
    """Whole or not at all: a crash mid-write leaves the previous state."""
    write_atomically(run_dir / TRACKING_STATE, json.dumps(asdict(state), indent=1) + "\n")


# What MLflow says once its store no longer holds the run: an SQLite file damaged, or made anew without it.
STORE_LOST = re.compile(r"file is not a database|database disk image is malformed|Run (with id=)?'?\w+'? not found")


def lost_store_fix(run_dir: Path, error: str | None) -> str | None:
    """When `error` says MLflow's store no longer holds the run, what rebuilds it from the run's own records
    (metrics.jsonl, validation.jsonl) in a new MLflow run; None for any other error, which another try may cure."""
    if not (error and STORE_LOST.search(error)):
        return None
    embedded = default_uri(run_dir)
    if recorded_run(run_dir).tracking_uri == embedded:
        return (
            f"its MLflow store no longer holds the run: move {run_dir / MLFLOW_DB} aside, and `corolla tracking sync "
            f"{run_dir} uri={embedded}` rebuilds it from the run's records"
        )
    return f"its MLflow store no longer holds the run: `corolla tracking sync {run_dir} uri=URI` sends all of it there"


# What MLflow says when its store's filesystem is full: SQLite's words, or the system's.
STORE_FULL = re.compile(r"database or disk is full|No space left on device")


def full_store_fix(run_dir: Path, error: str | None) -> str | None:
    """When `error` says MLflow's store has no room, where to free space; None for any other error."""
    if not (error and STORE_FULL.search(error)):
        return None
    uri = recorded_run(run_dir).tracking_uri
    store = f"its MLflow store {uri.removeprefix(SQLITE)}" if uri.startswith(SQLITE) else "the MLflow server's store"
    return f"no space left on the filesystem of {store}: free some, then `corolla tracking sync {run_dir}` again"


# What MLflow says of a run deleted there (the UI's Delete, `mlflow runs delete`), or of a run of an experiment deleted:
# kept in the store, refused every request, until it is restored.
RUN_DELETED = re.compile(r"must be in the 'active' state\. Current state is deleted")


def deleted_run_fix(run_dir: Path, error: str | None) -> str | None:
    """When `error` says the run was deleted in MLflow, how to restore it; None for any other error."""
    if not (error and RUN_DELETED.search(error)):
        return None
    tracked = recorded_run(run_dir)
    store = f"MLFLOW_TRACKING_URI={shlex.quote(masked(tracked.tracking_uri))}"
    run = mlflow_command("runs", "restore", "--run-id", tracked.run_id)
    experiment = mlflow_command("experiments", "restore", "--experiment-id", tracked.experiment_id)
    return (
        f"its MLflow run {tracked.run_id} was deleted in MLflow: restore it (`{store} {run}`, or `{store} "
        f"{experiment}` where its experiment was deleted), then `corolla tracking sync {run_dir}` sends the rest"
    )


def store_fix(run_dir: Path, error: str | None) -> str | None:
    """What mends MLflow's store after `error`, when `error` says it lost the run, has no room or holds it deleted;
    None for any other error, which another try may cure."""
    return lost_store_fix(run_dir, error) or full_store_fix(run_dir, error) or deleted_run_fix(run_dir, error)


def how_to_send_the_rest(run_dir: Path, error: str | None) -> str:
    """What sends MLflow the records it lacks after `error`."""
    return store_fix(run_dir, error) or f"the next start, or `corolla tracking sync {run_dir}`, sends the rest"
