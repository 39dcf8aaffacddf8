"""MLflow: one run per training run, however many times it is launched; the only module that talks to MLflow.

The launcher opens the run before any process starts and records it in RUN_DIR/run.json (tracking URI, run id);
a later launch of the same run directory continues that MLflow run. Rank 0 logs each optimizer step; steps that a
resumed launch redoes (those after the last checkpoint) are already in the history and are not logged twice.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from launch.rundir.files import MLFLOW_ARTIFACTS, MLFLOW_DB, RUN_FILE
from launch.rundir.run_record import TrackedRun, record_run, recorded_run

STEP_METRICS = {
    "loss": "train_loss",
    "lr": "lr",
    "grad_norm": "grad_norm",
    "batch_size": "batch_size",
    "tokens_per_second": "tokens_per_second",
}
# Validation: the mean over languages, and each language as val_loss/<language>.
VALIDATION_METRIC = "val_loss"


def default_uri(run_dir: Path) -> str:
    """The embedded store: an SQLite file inside the run directory."""
    return f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = str(value)
    return flat


def _git_revision() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        )
        return result.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def open_run(run_dir: Path, experiment: str, job: object, tags: dict[str, str], uri: str | None = None) -> TrackedRun:
    """The run recorded in run_dir (continued, tagged with the restart) or a new one with params and tags."""
    if (run_dir / RUN_FILE).is_file():
        tracked = recorded_run(run_dir)
        client = MlflowClient(tracked.tracking_uri)
        restarts = int(client.get_run(tracked.run_id).data.tags.get("corolla.launches", "1"))
        client.set_tag(tracked.run_id, "corolla.launches", str(restarts + 1))
        client.update_run(tracked.run_id, status="RUNNING")
        return tracked
    # The embedded store keeps artifacts beside it; a server decides where its artifacts go.
    artifacts = None if uri else (run_dir / MLFLOW_ARTIFACTS).resolve().as_uri()
    uri = uri or default_uri(run_dir)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment, artifact_location=artifacts)
    all_tags = {"git_revision": _git_revision(), "host": socket.gethostname(), "corolla.launches": "1", **tags}
    run = client.create_run(experiment_id, tags=all_tags, run_name=run_dir.resolve().name)
    params = _flatten(OmegaConf.to_container(OmegaConf.structured(job), enum_to_str=True))
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in sorted(params.items())])
    tracked = TrackedRun(uri, run.info.run_id, experiment_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_run(run_dir, tracked)
    return tracked


def check_reachable(uri: str) -> None:
    """A tracking server answers, or a one-line error before anything starts."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
            response.read()
    except (OSError, ValueError) as error:
        raise ValueError(
            f"tracking.uri={uri} cannot be reached ({getattr(error, 'reason', error)}): start the MLflow server "
            "or fix the URI (no uri: the embedded store in the run directory)"
        ) from None


def tag_restart(run_dir: Path, restarts: int, failures: int) -> None:
    tracked = recorded_run(run_dir)
    client = MlflowClient(tracked.tracking_uri)
    client.set_tag(tracked.run_id, "corolla.restarts", str(restarts))
    client.set_tag(tracked.run_id, "corolla.failures", str(failures))
    client.update_run(tracked.run_id, status="RUNNING")


def tag_layout(run_dir: Path, layout: str, resharded_from: str | None = None) -> None:
    """The layout a start trains with; `corolla.resharded_from` names the last one it changed from."""
    tracked = recorded_run(run_dir)
    client = MlflowClient(tracked.tracking_uri)
    client.set_tag(tracked.run_id, "layout", layout)
    if resharded_from:
        client.set_tag(tracked.run_id, "corolla.resharded_from", resharded_from)


def log_artifact(tracked: TrackedRun, path: Path) -> None:
    MlflowClient(tracked.tracking_uri).log_artifact(tracked.run_id, str(path))


def finish(tracked: TrackedRun, status: str) -> None:
    """FINISHED, FAILED, or KILLED: stopped by a person, to be resumed (a later launch makes it RUNNING again)."""
    MlflowClient(tracked.tracking_uri).set_terminated(tracked.run_id, status)


class StepLogger:
    """Rank 0's metric logger; skips the steps the history already holds (a resumed launch redoes them)."""

    def __init__(self, run_dir: Path) -> None:
        self.tracked = recorded_run(run_dir)
        self.client = MlflowClient(self.tracked.tracking_uri)
        self.logged_up_to = {series: self._last_step(series) for series in ("train_loss", VALIDATION_METRIC)}

    def _last_step(self, series: str) -> int:
        return max((metric.step for metric in self.client.get_metric_history(self.tracked.run_id, series)), default=0)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        named = {STEP_METRICS[key]: value for key, value in values.items() if key in STEP_METRICS}
        self._log("train_loss", step, named)

    def log_validation(self, step: int, losses: dict[str, float]) -> None:
        per_language = {f"{VALIDATION_METRIC}/{language}": loss for language, loss in losses.items()}
        self._log(VALIDATION_METRIC, step, {VALIDATION_METRIC: sum(losses.values()) / len(losses), **per_language})

    def _log(self, series: str, step: int, values: dict[str, float]) -> None:
        if step <= self.logged_up_to[series]:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, value in values.items()]
        self.client.log_batch(self.tracked.run_id, metrics=metrics)
        self.logged_up_to[series] = step


def ui_command(tracked: TrackedRun) -> str:
    return f".venv/bin/mlflow ui --backend-store-uri {shlex.quote(tracked.tracking_uri)}"
