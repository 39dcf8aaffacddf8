"""MLflow: one run per training run, however many times it is launched; the only module that talks to MLflow.

The launcher opens the run before any process starts and records it in RUN_DIR/run.json (tracking URI, run id);
a later launch of the same run directory continues that MLflow run. Everything after that (metrics, tags, the end
status) goes through launch/rundir/outbox.py, which calls the senders below from a thread and retries: each request
fails fast here (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _TIMEOUT), so that a server that is away costs a retry, not minutes.
"""

from __future__ import annotations

import errno
import http.client
import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
import uuid
from contextlib import closing, suppress
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse, urlsplit, urlunsplit

from omegaconf import OmegaConf

from launch import compat
from launch.config.job_file import job_config, job_settings
from launch.rundir.files import JOB_FILE, MLFLOW_ARTIFACTS, RUN_CREATION, RUN_FILE
from launch.rundir.run_record import (
    SQLITE,
    TrackedRun,
    default_uri,
    masked,
    masked_setting,
    mlflow_command,
    record_run,
    recorded_run,
)
from tokenizer.files import is_no_space, staging_area, user_cache, write_atomically

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

STEP_METRICS = {
    "loss": "train_loss",
    "lr": "lr",
    "grad_norm": "grad_norm",
    "batch_size": "batch_size",
    "tokens_per_second": "tokens_per_second",
}
# Validation: the mean over languages, and each language as val_loss/<language>; the same in bits per byte.
VALIDATION_METRIC, BITS_PER_BYTE_METRIC = "val_loss", "val_bpb"
# The health check after a checkpoint: the slowest node's self-test time against the fastest rank's.
HEALTH_METRIC = "health_slowdown"
LAUNCHES_TAG = "corolla.launches"  # how many times the run was launched (corolla train or submit), restarts aside
CHANGED_TAG = "corolla.changed_at_launch"  # .N: the settings launch N changed (the params are the first launch's)
# The step the latest launch that trained steps anew, with other figures than MLflow held, resumed from: the steps
# after it MLflow holds twice (or more), the new last.
RETRAINED_TAG = "corolla.retrained_after_step"
CREATION_TAG = "corolla.creation"  # RUN_CREATION's token: which launch created the run
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# MLflow prints a server's run URL as it ends a run, the URI's credentials in it (into a Slurm job's log on rank 0).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def safe_message(error: Exception) -> str:
    """An MLflow failure in one line, credentials masked: its first line that says what failed."""
    lines = compat.telling_lines(error)
    return masked(f"{type(error).__name__}: {lines[0] if lines else ''}"[:300])


def _git_revision() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        )
        return result.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def open_run(run_dir: Path, experiment: str, job: object, tags: dict[str, str], uri: str | None = None) -> TrackedRun:
    """The run recorded in run_dir (continued: nothing asked of MLflow) or a new one with params and tags."""
    if (run_dir / RUN_FILE).is_file():
        (run_dir / RUN_CREATION).unlink(missing_ok=True)  # a launch killed as it finished creating the run left it
        tracked = recorded_run(run_dir)
        if uri and _absolute(uri) != tracked.tracking_uri:
            print(
                f"corolla: {run_dir} is tracked at {masked(tracked.tracking_uri)} (its {RUN_FILE}), not at "
                f"tracking.uri={masked(uri)}: `corolla tracking sync {run_dir} uri={masked(uri)}` moves it there"
            )
        return tracked
    return create_run(run_dir, experiment, job, tags, uri)


def _absolute(uri: str) -> str:
    """A relative SQLite URI as SQLAlchemy reads it, relative to where the command runs; any other URI as it is."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        return f"{SQLITE}{Path(uri.removeprefix(SQLITE)).resolve()}"
    return uri


def _client(uri: str) -> MlflowClient:
    # MLflow is imported here, not above: every rank imports this module (the sender's names), and only a sender talks
    # to MLflow (rank 0's in a Slurm job, none in a local run's ranks); the import costs a rank two seconds.
    from mlflow.tracking import MlflowClient

    compat.quiet_mlflow_store()
    return MlflowClient(uri)


def run_name(run_dir: Path) -> str:
    """The run directory's name; a sweep's point's (train.lr=0.001) with its sweep's, which another sweep's shares."""
    path = run_dir.resolve()
    return f"{path.parent.name}/{path.name}" if "=" in path.name else path.name


def create_run(run_dir: Path, experiment: str, job: object, tags: dict[str, str], uri: str | None) -> TrackedRun:
    """A new MLflow run with the job's parameters, recorded in RUN_DIR/run.json as the run's. A launch stopped while
    it did so leaves no second run in MLflow, nor a store that cannot be opened."""
    run_dir.mkdir(parents=True, exist_ok=True)
    uri = _absolute(uri) if uri else default_uri(run_dir)  # run.json names it relative to the run directory only there
    artifacts = None  # a server decides where its artifacts go
    if uri.startswith(SQLITE):
        _create_store(store := Path(uri.removeprefix(SQLITE)))
        # Beside the store (the embedded one's: in the run directory), not MLflow's default: ./mlruns, wherever the
        # command runs.
        artifacts = (store.parent / MLFLOW_ARTIFACTS).as_uri()
    try:
        return _new_run(run_dir, experiment, job, tags, uri, artifacts)
    except Exception as error:  # whatever MLflow raises, in one line (a run it made meanwhile: the next launch deletes)
        if type(error) is ValueError or (isinstance(error, OSError) and error.errno):  # corolla's, the filesystem's
            raise
        if _disk_full(error):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), uri.removeprefix(SQLITE)) from None
        fix = _creation_fix(error)
        raise ValueError(f"MLflow at {masked(uri)} did not create the run ({safe_message(error)}): {fix}") from None


def _creation_fix(error: Exception) -> str:
    if isinstance(error, ImportError):
        return (
            f"install the database driver it lacks (the Python package of {error.name}) into this environment, or "
            "give another tracking.uri"
        )
    return "when its store answers (an SQLite file another process holds locked?), run the same command again"


def _new_run(
    run_dir: Path, experiment: str, job: object, tags: dict[str, str], uri: str, artifacts: str | None
) -> TrackedRun:
    """create_run's requests to MLflow, and run.json once it made the run."""
    from mlflow.entities import Param

    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None and found.lifecycle_stage == "deleted":  # MLflow keeps it, and refuses it a run
        restore = mlflow_command("experiments", "restore", "--experiment-id", found.experiment_id)
        raise ValueError(
            f"tracking.experiment={experiment} was deleted in MLflow at {masked(uri)}: restore it "
            f"(`MLFLOW_TRACKING_URI={shlex.quote(masked(uri))} {restore}`), or give another tracking.experiment"
        )
    experiment_id = found.experiment_id if found else client.create_experiment(experiment, artifact_location=artifacts)
    _delete_unrecorded(client, run_dir, experiment_id)
    creation = uuid.uuid4().hex
    write_atomically(run_dir / RUN_CREATION, creation + "\n")
    all_tags = {"git_revision": _git_revision(), "host": socket.gethostname(), LAUNCHES_TAG: "1", **tags}
    all_tags[CREATION_TAG] = creation
    run = client.create_run(experiment_id, tags=all_tags, run_name=run_name(run_dir))
    params = sorted(job_settings(job).items())
    client.log_batch(run.info.run_id, params=[Param(k, masked_setting(k, v)[:6000]) for k, v in params])
    tracked = TrackedRun(uri, run.info.run_id, experiment_id)
    record_run(run_dir, tracked)
    (run_dir / RUN_CREATION).unlink()
    return tracked


def _create_store(path: Path) -> None:
    """An SQLite store that is not there yet (the embedded one, or one the URI names), built whole in a staging area
    and then linked to `path`: MLflow makes its schema in a series of migrations, and a launch killed among them, or a
    disk that fills, would leave a database no later launch can open; the staging area goes, whatever happened. (The
    name is new each time: MLflow keeps a store open per URI.) An OSError naming the store when its disk is full."""
    if path.exists():
        return
    try:
        with staging_area(path) as area:
            building = area / f"{uuid.uuid4().hex}.db"
            if (empty := _empty_store()) is None:
                _migrated(building, path)
            else:
                try:
                    _copied(empty, building, path)
                except sqlite3.DatabaseError:  # the cache's copy damaged: this store migrated, the copy made again
                    empty.unlink(missing_ok=True)
                    building.unlink(missing_ok=True)
                    _migrated(building, path)
            with suppress(FileExistsError):  # made meanwhile by a launch of another run: kept, not replaced
                os.link(building, path)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise
        raise ValueError(
            f"MLflow store {path} cannot be made ({error.strerror}): give tracking.uri an SQLite file in a folder "
            "corolla can write, or no tracking.uri for the run directory's own store"
        ) from None


def _migrated(building: Path, named: Path) -> None:
    """MLflow's schema made in the new SQLite file `building`; an OSError naming the store (`named`) when the disk
    fills."""
    try:
        _client(f"{SQLITE}{building.resolve()}")  # creates the database and its tables
    except Exception as error:
        if _disk_full(error):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(named)) from None
        raise


def _copied(empty: Path, building: Path, named: Path) -> None:
    """`empty` copied to `building`, its Default experiment's artifacts beside the store (`named`) as corolla's are,
    not where the copied store was made."""
    try:
        shutil.copyfile(empty, building)
        with closing(sqlite3.connect(building)) as store, store:
            artifacts = (named.parent / MLFLOW_ARTIFACTS).as_uri()
            store.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (artifacts,))
    except (OSError, sqlite3.Error) as error:
        if is_no_space(error) if isinstance(error, OSError) else _disk_full(error):  # said of the store
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(named)) from None
        raise


def _empty_store() -> Path | None:
    """A store with MLflow's schema and nothing else, made once per MLflow version in the user's cache: a new store is
    a copy of it, where MLflow's migrations take seconds. None where the cache cannot hold it."""
    from mlflow.version import VERSION

    empty = user_cache("mlflow") / f"empty-store-{VERSION}.db"
    if empty.is_file():
        return empty
    try:
        with staging_area(empty) as area:
            building = area / f"{uuid.uuid4().hex}.db"  # a name of its own: MLflow keeps a store open per URI
            _migrated(building, empty)
            with suppress(FileExistsError):
                os.link(building, empty)
    except Exception:  # a cache that cannot hold it: a read-only home, SQLite's locks over NFS
        return None
    return empty


def _disk_full(error: BaseException | None) -> bool:
    """SQLite's "database or disk is full", however deep MLflow and SQLAlchemy wrap it."""
    while error is not None:
        if isinstance(error, sqlite3.Error) and error.sqlite_errorcode == sqlite3.SQLITE_FULL:
            return True
        error = error.__cause__ or error.__context__
    return False


def _delete_unrecorded(client: MlflowClient, run_dir: Path, experiment_id: str) -> None:
    """The run a launch killed after creating it, before run.json named it, is deleted: the run directory has one."""
    path = run_dir / RUN_CREATION
    if not path.is_file():
        return
    query = f"tags.`{CREATION_TAG}` = '{path.read_text().strip()}'"
    for run in client.search_runs([experiment_id], filter_string=query):
        client.delete_run(run.info.run_id)


def check_reachable(uri: str) -> None:
    """A tracking server answers, or a one-line error before anything starts."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{_without_credentials(uri).rstrip('/')}/health", timeout=10) as response:
            response.read()
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise ValueError(
            f"tracking.uri={masked(uri)} cannot be reached ({masked(str(getattr(error, 'reason', error)))}): start "
            "the MLflow server or fix the URI (no uri: the embedded store in the run directory)"
        ) from None


def answers(uri: str) -> bool:
    try:
        check_reachable(uri)
    except ValueError:
        return False
    return True


def _without_credentials(uri: str) -> str:
    """The URI without its user and password, which urllib would take for part of the host (MLflow's requests sends
    them as Basic authentication; a server's /health asks for none)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def log_artifact(tracked: TrackedRun, path: Path) -> None:
    """Logs a file (a job file with its secrets masked, as in the params); not where the embedded store's artifact
    folder went with a run directory that was moved (MLflow keeps its absolute path, and would recreate the old
    directory)."""
    client = _client(tracked.tracking_uri)
    destination = client.get_run(tracked.run_id).info.artifact_uri
    if destination.startswith("file:") and not Path(urlparse(destination).path).parents[2].is_dir():
        return
    if path.name != JOB_FILE:
        client.log_artifact(tracked.run_id, str(path))
        return
    with tempfile.TemporaryDirectory() as folder:  # the job as its params say it: its secrets masked
        shared = Path(folder) / JOB_FILE
        shared.write_text(OmegaConf.to_yaml(_masked_tree(OmegaConf.to_container(job_config(path)))))
        client.log_artifact(tracked.run_id, str(shared))


def _masked_tree(tree: dict, prefix: str = "") -> dict:
    return {key: _masked_value(f"{prefix}{key}", value) for key, value in tree.items()}


def _masked_value(name: str, value: object) -> object:
    """A job file's value as masked_setting masks it (a number or a switch kept as such, unless it is a secret)."""
    if isinstance(value, dict):
        return _masked_tree(value, name + ".")
    if isinstance(value, list):
        return [_masked_value(name, item) for item in value]
    text = masked_setting(name, str(value))
    return value if text == str(value) else text


def log_records(tracked: TrackedRun, records: list[tuple[int, int | None, dict[str, float]]]) -> None:
    """(step, time in ms or None for now, {metric: value}) records, in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(name, value, at or now, step) for step, at, values in records for name, value in values.items()]
    _client(tracked.tracking_uri).log_batch(tracked.run_id, metrics=metrics)


def last_step(tracked: TrackedRun, metric: str) -> int:
    """The last step of `metric` the run holds (0: none): MLflow keeps each metric's latest (its highest step) with
    the run, so that this is one request, not the metric's whole history (a request per 25,000 steps)."""
    data = _client(tracked.tracking_uri).get_run(tracked.run_id).data.to_proto()
    return next((entry.step for entry in data.metrics if entry.key == metric), 0)


def set_tags(tracked: TrackedRun, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    _client(tracked.tracking_uri).log_batch(tracked.run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def run_status(tracked: TrackedRun) -> str:
    return _client(tracked.tracking_uri).get_run(tracked.run_id).info.status


def set_status(tracked: TrackedRun, status: str) -> None:
    """RUNNING; or FINISHED, FAILED, KILLED (stopped by a person, to be resumed: a later launch makes it RUNNING)."""
    client = _client(tracked.tracking_uri)
    if status == "RUNNING":
        client.update_run(tracked.run_id, status=status)
    else:
        client.set_terminated(tracked.run_id, status)


def ui_command(tracked: TrackedRun) -> str:
    """The command that shows the run: this environment's `mlflow ui` on the run's store, quoted for a shell."""
    return mlflow_command("ui", "--backend-store-uri", masked(tracked.tracking_uri))
