"""RUN_DIR/run.json: which MLflow run the run directory's run is (tracking URI, run id), read without MLflow."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from launch.rundir.files import RUN_FILE


@dataclass(frozen=True)
class TrackedRun:
    tracking_uri: str
    run_id: str
    experiment_id: str


def recorded_run(run_dir: Path) -> TrackedRun:
    """The MLflow run that RUN_DIR/run.json names."""
    return TrackedRun(**json.loads((run_dir / RUN_FILE).read_text()))


def record_run(run_dir: Path, tracked: TrackedRun) -> None:
    (run_dir / RUN_FILE).write_text(json.dumps(asdict(tracked), indent=2) + "\n")
