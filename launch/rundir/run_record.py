"""RUN_DIR/run.json: which MLflow run the run directory's run is (tracking URI, run id), read without MLflow."""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from launch.rundir.files import MLFLOW_DB, RUN_FILE
from tokenizer.files import write_atomically

_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")
# A name that says its value is a secret: HF_TOKEN, WANDB_API_KEY, MLFLOW_TRACKING_PASSWORD, a URI's ?token= or ?sig=.
_SECRET_NAME = r"[\w.-]*(?:token|secret|password|passwd|pass|key|credentials?|auth|signature|sig)"
_SECRET = re.compile(_SECRET_NAME, re.IGNORECASE)
_SHARING = (
    "give the secrets in your environment instead (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
    "MLFLOW_TRACKING_TOKEN; a token the job reads, such as HF_TOKEN), which its jobs inherit and corolla never "
    "records, in a new run directory: this one keeps those it has recorded"
)
_ASSIGNED_SECRET = re.compile(rf"\b({_SECRET_NAME})=(\"[^\"]*\"|'[^']*'|[^\s&;'\",\]]+)", re.IGNORECASE)


def masked(text: str) -> str:
    """`text` with the user and password of every URI in it replaced, and every value given to a secret's name
    (`?token=...`, `export HF_TOKEN=...`): what corolla prints or records of a URI or a shell line."""
    return _ASSIGNED_SECRET.sub(r"\1=***", _CREDENTIALS.sub(r"\1***@", text))


def masked_setting(name: str, value: str) -> str:
    """A setting as corolla prints it or records it outside the run directory: *** for one whose name says it is a
    secret (`cluster.env.HF_TOKEN`), any other masked."""
    return "***" if value and _SECRET.fullmatch(name.rpartition(".")[2]) else masked(value)


def keep_private(directory: Path, settings: dict[str, str]) -> None:
    """`directory` made readable by its owner alone, whatever the umask, where `settings` (by dotted name) hold a
    secret that it keeps in plain text; said when that changes its mode, or cannot."""
    secrets = [name for name, value in settings.items() if masked_setting(name, value) != value]
    mode = directory.stat().st_mode & 0o777
    if not secrets or not mode & 0o077:
        return
    said = f"{directory} keeps {', '.join(secrets)} in plain text"
    try:
        directory.chmod(mode & 0o700)
        problem = "its filesystem keeps modes of its own" if directory.stat().st_mode & 0o077 else None
    except OSError as error:
        problem = error.strerror
    if problem:
        print(f"{said}, and could not be made private ({problem}): whoever can read it can read them")
    else:
        print(f"{said}: made readable by you alone (chmod go-rwx); to share a run, {_SHARING}")


def recorded_uri(run_dir: Path) -> dict[str, str]:
    """The tracking URI its run.json records, by a name keep_private says (none where there is no run.json it reads):
    a launch that no longer gives the password keeps the run it opened with it."""
    try:
        return {"run.json's tracking_uri": recorded_run(run_dir).tracking_uri}
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class TrackedRun:
    tracking_uri: str
    run_id: str
    experiment_id: str


SQLITE = "sqlite:///"


def mlflow_command(*arguments: str) -> str:
    """A command of this environment's `mlflow`, quoted for a shell."""
    return shlex.join([str(Path(sys.executable).with_name("mlflow")), *arguments])


def default_uri(run_dir: Path) -> str:
    """The embedded store: an SQLite file inside the run directory."""
    return f"{SQLITE}{(run_dir / MLFLOW_DB).resolve()}"


def recorded_run(run_dir: Path) -> TrackedRun:
    """The MLflow run that RUN_DIR/run.json names; a store inside the run directory is found wherever it now is."""
    path = run_dir / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except ValueError:
        record = None
    return tracked_run(run_dir, record, path)


def tracked_run(run_dir: Path, record: object, source: Path) -> TrackedRun:
    """The MLflow run that `record` (read from `source`: run.json, or the history's copy of it) names, resolved as
    recorded_run says; a one-line ValueError when it is not one corolla wrote."""
    try:
        tracked = TrackedRun(**record) if isinstance(record, dict) else None
    except TypeError:
        tracked = None
    if tracked is None or not all(isinstance(value, str) and value for value in asdict(tracked).values()):
        raise ValueError(
            f"{source} is not the record of an MLflow run that corolla wrote: restore its tracking_uri, run_id and "
            f"experiment_id (those of the MLflow run named {run_dir.resolve().name})"
        )
    uri = tracked.tracking_uri
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):  # relative: to the run directory
        return replace(tracked, tracking_uri=f"{SQLITE}{(run_dir / uri.removeprefix(SQLITE)).resolve()}")
    return tracked


def as_recorded(run_dir: Path, tracked: TrackedRun) -> dict[str, str]:
    """What run.json holds: a store inside the run directory named relative to it, so that the directory can be
    moved."""
    record = asdict(tracked)
    if tracked.tracking_uri.startswith(SQLITE + "/"):
        path = Path(tracked.tracking_uri.removeprefix(SQLITE))
        if path.is_relative_to(run_dir.resolve()):
            record["tracking_uri"] = SQLITE + str(path.relative_to(run_dir.resolve()))
    return record


def record_run(run_dir: Path, tracked: TrackedRun) -> None:
    keep_private(run_dir, {"tracking.uri": tracked.tracking_uri})
    write_atomically(run_dir / RUN_FILE, json.dumps(as_recorded(run_dir, tracked), indent=2) + "\n")
