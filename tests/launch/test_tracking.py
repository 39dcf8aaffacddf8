"""Tracking never holds training: with its MLflow server gone, a run trains on and says how far tracking lags; once
the server is back, `corolla tracking sync` sends the rest, in order, no step twice. A run tracked in its embedded
store can be sent whole to a server later; a URI's credentials are never printed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient
from test_training import SHORT_RUN
from tracking_server import MlflowServer

from conftest import REPO_ROOT, train_job
from launch.cli import main
from launch.config.compose import compose_job
from launch.rundir import tracking
from launch.rundir.history import RunHistory
from launch.rundir.records import read_jsonl
from launch.rundir.run_record import recorded_run
from launch.train.faults import STEP_SECONDS
from model.config import ModelConfig
from slurm.testcluster import wait_for


def corolla(*arguments: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "launch.cli", *arguments]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def steps_logged(run_dir: Path, metric: str = "train_loss") -> list[int]:
    tracked = recorded_run(run_dir)
    return sorted(entry.step for entry in MlflowClient(tracked.tracking_uri).get_metric_history(tracked.run_id, metric))


def test_a_local_run_is_in_mlflow_as_it_trains_sent_by_corolla_train_not_by_its_ranks(tokens, tmp_path) -> None:
    # The ranks write the run's files; `corolla train`, which waits on them anyway, sends MLflow what they write.
    run_dir = tmp_path / "run"
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "train.steps=12", "parallel.dp=2"]
    command = [sys.executable, "-m", "launch.cli", *train]
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, STEP_SECONDS: "1"}, text=True)
    store = run_dir / "mlflow.db"

    def sent_while_training() -> bool:
        events = RunHistory(run_dir).events()
        return bool(events) and events[-1]["event"] == "start" and store.is_file() and len(steps_logged(run_dir)) >= 2

    try:
        assert wait_for(sent_while_training, timeout=300, interval=0.5)
        torchrun_and_ranks = psutil.Process(launcher.pid).children(recursive=True)
        assert len(torchrun_and_ranks) == 3
        assert not [file for child in torchrun_and_ranks for file in child.open_files() if file.path == str(store)]
        assert launcher.wait(timeout=300) == 0
    finally:
        launcher.kill()
    assert steps_logged(run_dir) == list(range(1, 13))
    tracked = recorded_run(run_dir)
    assert MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).info.status == "FINISHED"


def test_a_run_trains_on_while_its_server_is_away_and_a_sync_sends_the_rest_once(tokens: Path, tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    run_dir = tmp_path / "run"
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "train.checkpoint_interval=2"]
    try:
        uri = server.start()
        assert main([*train, "train.steps=2", f"tracking.uri={uri}"]) == 0
        server.kill()

        away = corolla(*train, "train.steps=6", f"tracking.uri={uri}")
        assert away.returncode == 0, away.stderr[-3000:]
        assert "corolla tracking sync" in away.stdout
        assert [record["step"] for record in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
        state = json.loads((run_dir / "tracking.json").read_text())
        assert state["sent"]["metrics.jsonl"] == 2 and state["status"] == "FINISHED" and state["error"]
        status = corolla("status", str(run_dir)).stdout
        assert "MLflow holds steps to 2, 4 steps behind, tags and end status to send; not reached since" in status
        # Its directory synced whole, as a sweep's, with a copy of the run beside it tracked at the same server: the
        # server is waited on for the first, not again for the second.
        shutil.copytree(run_dir, tmp_path / "the copy")
        both = corolla("tracking", "sync", str(tmp_path))
        assert both.returncode == 2 and "1 of 2" not in both.stderr and "2 of 2 runs" in both.stderr
        assert both.stdout.startswith(f"{run_dir}:\n  not synced: MLflow did not take the run's records")
        # What MLflow held stays said, where a failed sync wrote it unknown: a launch compares its steps with it.
        assert json.loads((run_dir / "tracking.json").read_text())["sent"]["metrics.jsonl"] == 2
        said = f"{tmp_path / 'the copy'}:\n  not synced: MLflow at {uri} did not answer for run: try again when it "
        assert said in both.stdout
        shutil.rmtree(tmp_path / "the copy")

        server.start()
        synced = corolla("tracking", "sync", str(run_dir))
        assert synced.returncode == 0, synced.stderr
        assert synced.stdout.strip().endswith("holds steps to 6 and validations to 6")
        assert steps_logged(run_dir) == [1, 2, 3, 4, 5, 6]
        tracked = recorded_run(run_dir)
        run = MlflowClient(tracked.tracking_uri).get_run(tracked.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["corolla.launches"] == "2"
        assert "tracking   MLflow holds every step (to 6)" in corolla("status", str(run_dir)).stdout
    finally:
        server.kill()


def test_a_moved_run_directory_keeps_its_mlflow_run_and_is_sent_whole_to_a_server_later(
    tokens, tmp_path, capsys
) -> None:
    first, moved = tmp_path / "first", tmp_path / "elsewhere" / "run"
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={first}", *SHORT_RUN, "train.exit_after=2"]) == 0
    run_id = recorded_run(first).run_id
    moved.parent.mkdir()
    first.rename(moved)
    # Its tracking state garbled too: taken as lost, MLflow asked how far it is, no step sent twice.
    (moved / "tracking.json").write_text("xx garbage")
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={moved}", *SHORT_RUN]) == 0
    assert "tracking.json is not a tracking state corolla wrote: taken as lost" in capsys.readouterr().out
    assert recorded_run(moved).run_id == run_id and steps_logged(moved) == [1, 2, 3, 4]
    assert not first.exists()

    # The same run, tracked in its embedded store so far, sent to a server: with the other runs of its directory (a
    # sweep's points), one of which has no MLflow run to send, and is said to be passed over.
    embedded = recorded_run(moved)
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")
    launched_only = moved.parent / "launched-only"
    launched_only.mkdir()
    (launched_only / "job.yaml").write_text((moved / "job.yaml").read_text())
    capsys.readouterr()
    try:
        # With a password in its URI, which run.json then keeps: the run directory is made readable by its owner alone.
        uri = server.start().replace("http://", "http://corolla:s3cret@")
        moved.chmod(0o755)
        assert main(["tracking", "sync", str(moved.parent), f"uri={uri}"]) == 2
        said = capsys.readouterr()
        assert said.err == (
            f"corolla: error: 1 of 2 runs in {moved.parent} not synced (launched-only): see why above each\n"
        )
        assert said.out.startswith(f"{launched_only}:\n  not synced: {launched_only} records no MLflow run (run.json)")
        assert f"\n{moved}:\n{moved} keeps tracking.uri in plain text: made readable by you alone" in said.out
        assert "\nMLflow run " in said.out and "s3cret" not in said.out
        assert moved.stat().st_mode & 0o777 == 0o700 and not (launched_only / "tracking.json").exists()
        sent = recorded_run(moved)
        assert sent.tracking_uri == uri and sent.run_id != embedded.run_id
        assert steps_logged(moved) == [1, 2, 3, 4]
        assert steps_logged(moved, "val_loss") == [4]
        run = MlflowClient(uri).get_run(sent.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["corolla.moved_from"] == f"{embedded.tracking_uri} run {embedded.run_id}"
        # Opened to the group by hand, and trained on by a job that gives no password: run.json still keeps it.
        moved.chmod(0o755)
        assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={moved}", *SHORT_RUN, "train.steps=5"]) == 0
        out = capsys.readouterr().out
        assert f"{moved} keeps run.json's tracking_uri in plain text: made readable by you alone" in out
        assert "in a new run directory: this one keeps those it has recorded\n" in out
        assert moved.stat().st_mode & 0o777 == 0o700 and steps_logged(moved) == [1, 2, 3, 4, 5]
    finally:
        server.kill()


def test_a_launch_that_stops_after_its_exit_after_steps_says_so_and_is_not_left_running(tokens, tmp_path, capsys):
    """It said 'done' halfway through, and MLflow showed the run RUNNING with nothing training it."""
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={tmp_path / 'run'}", *SHORT_RUN, "train.exit_after=2"]
    assert main(train) == 0
    said = capsys.readouterr().out
    assert "stopped at step 2 of 4, as train.exit_after=2 asks (the same command again goes on): " in said
    tracked = recorded_run(tmp_path / "run")
    assert MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).info.status == "KILLED"
    assert main(["status", str(tmp_path / "run")]) == 0
    assert "stopped   at step 2 (train.exit_after)" in capsys.readouterr().out  # it said (?)
    assert main(train) == 0 and "\ndone: checkpoints in" in capsys.readouterr().out
    assert MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).info.status == "FINISHED"


def test_a_run_whose_run_json_was_lost_goes_on_in_its_own_mlflow_run(tokens, tmp_path, capsys) -> None:
    """run.json deleted by hand, or left out of a copy, from a run that has trained, its directory moved too: the next
    launch writes it back from the history, so the run goes on in the same MLflow run, no step logged twice (it made a
    second run, sent every step again, and left the first RUNNING)."""
    first, moved = tmp_path / "first", tmp_path / "elsewhere" / "run"
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={first}", *SHORT_RUN, "train.exit_after=2"]) == 0
    tracked = recorded_run(first)
    moved.parent.mkdir()
    first.rename(moved)
    (moved / "run.json").unlink()
    capsys.readouterr()
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={moved}", *SHORT_RUN]) == 0
    restored = f"{moved / 'run.json'} was missing: written back from history.jsonl (MLflow run {tracked.run_id})"
    assert restored in capsys.readouterr().out
    assert recorded_run(moved).run_id == tracked.run_id and steps_logged(moved) == [1, 2, 3, 4]
    client = MlflowClient(recorded_run(moved).tracking_uri)
    assert [run.info.status for run in client.search_runs([tracked.experiment_id])] == ["FINISHED"]


def test_the_health_checks_after_checkpoints_go_to_mlflow_as_the_slowest_nodes_slowdown(tokens, tmp_path) -> None:
    # Written by a cluster run's ranks after each checkpoint (tests/slurm/test_submit.py); here, by hand, to a local
    # run's directory: a check that timed no node (every rank failed, or had no room) has no slowdown to send.
    run_dir = tmp_path / "run"
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN]) == 0
    checks = [
        {"step": 2, "seconds": {"n1": 0.0100, "n2": 0.0103}, "slowdown": 1.03},
        {"step": 3, "seconds": {}},
        {"step": 4, "seconds": {"n1": 0.0100, "n2": 0.0121}, "slowdown": 1.21},
    ]
    (run_dir / "health.jsonl").write_text("".join(json.dumps(check) + "\n" for check in checks))
    assert main(["tracking", "sync", str(run_dir)]) == 0
    tracked = recorded_run(run_dir)
    history = MlflowClient(tracked.tracking_uri).get_metric_history(tracked.run_id, tracking.HEALTH_METRIC)
    assert {entry.step: entry.value for entry in history} == {2: 1.03, 4: 1.21}
    assert json.loads((run_dir / "tracking.json").read_text())["sent"]["health.jsonl"] == 4
    assert main(["tracking", "sync", str(run_dir)]) == 0  # nothing twice
    assert len(MlflowClient(tracked.tracking_uri).get_metric_history(tracked.run_id, tracking.HEALTH_METRIC)) == 2


def test_a_damaged_embedded_store_is_rebuilt_from_the_runs_records_as_the_error_says(tokens, tmp_path, capsys) -> None:
    # SQLite on a shared filesystem is easily damaged: training goes on, and what MLflow held is in the run's records.
    run_dir = tmp_path / "run"
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN]) == 0
    first_run = recorded_run(run_dir).run_id
    (run_dir / "mlflow.db").write_bytes(b"\0" * 4096)
    capsys.readouterr()
    assert main(["tracking", "sync", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "file is not a database" in err and "its MLflow store no longer holds the run: move" in err
    command = err.split("`")[1].split()  # corolla tracking sync RUN_DIR uri=sqlite:///RUN_DIR/mlflow.db
    assert command[:3] == ["corolla", "tracking", "sync"] and command[-1] == f"uri=sqlite:///{run_dir}/mlflow.db"
    (run_dir / "mlflow.db").rename(run_dir / "mlflow.db.damaged")
    rebuilt = corolla(*command[1:])  # as the user runs it: this process's MLflow keeps its engine on the old file
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    tracked = recorded_run(run_dir)
    assert tracked.run_id != first_run and json.loads((run_dir / "run.json").read_text())["tracking_uri"] == (
        "sqlite:///mlflow.db"
    )
    # Read in another process, as `mlflow ui` would: this one's MLflow still holds the damaged file open.
    read = (
        "import json, sys; from mlflow.tracking import MlflowClient; c = MlflowClient(sys.argv[1]); r = sys.argv[2];"
        "print(json.dumps([[m.step for m in c.get_metric_history(r, k)] for k in ('train_loss', 'val_loss')]"
        " + [c.get_run(r).info.status, c.get_run(r).info.artifact_uri]))"
    )
    held = subprocess.run([sys.executable, "-c", read, tracked.tracking_uri, tracked.run_id], capture_output=True)
    train_steps, validation_steps, status, artifacts = json.loads(held.stdout)
    assert train_steps == [1, 2, 3, 4] and validation_steps == [4] and status == "FINISHED"
    assert artifacts.startswith((run_dir / "mlartifacts").as_uri())


def test_a_run_whose_launcher_was_killed_outright_is_told_to_mlflow_whole_by_a_sync(tokens, tmp_path) -> None:
    """The ranks stop with a checkpoint (torchrun ends with its parent, and stops them), but the launcher that sends
    MLflow their records and the end is gone: a sync sends the rest, and the stop. Also for a run whose earlier jobs
    went to Slurm, which was taken as a Slurm run's stop, followed by a requeue."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "slurm-jobs.json").write_text('["41"]\n')
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "train.steps=30"]
    command = [sys.executable, "-m", "launch.cli", *train, "parallel.dp=2"]
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, STEP_SECONDS: "1"})
    try:
        assert wait_for(lambda: len(read_jsonl(run_dir / "metrics.jsonl")) >= 2, timeout=300, interval=0.2)
    finally:
        launcher.kill()
        launcher.wait()
    assert wait_for(lambda: RunHistory(run_dir).events()[-1]["event"] == "stopped", timeout=120, interval=0.5)
    # torchrun ends too: once it hung for hours at its interpreter's exit, on threads tailing its ranks' output.
    assert wait_for(lambda: not torchruns_of(run_dir), timeout=60, interval=0.5), torchruns_of(run_dir)
    stopped = RunHistory(run_dir).events()[-1]["step"]
    tracked = recorded_run(run_dir)
    assert MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).info.status == "RUNNING"
    assert main(["tracking", "sync", str(run_dir)]) == 0
    assert MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).info.status == "KILLED"
    assert steps_logged(run_dir) == list(range(1, stopped + 1))


def torchruns_of(run_dir: Path) -> list[int]:
    """The torchrun processes running the ranks of run_dir."""
    running = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "torch.distributed.run" in " ".join(command) and str(run_dir) in command:
            running.append(process.pid)
    return running


def created_unrecorded(run_dir: Path) -> bool:
    """The launch has created its MLflow run in the embedded store, and run.json does not name it yet."""
    if (run_dir / "run.json").exists() or not (run_dir / "run-creation").exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{run_dir / 'mlflow.db'}?mode=ro", uri=True, timeout=0)) as store:
            return store.execute("SELECT count(*) FROM runs").fetchone()[0] > 0
    except sqlite3.Error:  # not there yet, or being written
        return False


@pytest.mark.parametrize(
    "reached",
    [lambda run_dir: any(run_dir.glob(".mlflow.db.staging-*/*.db")), created_unrecorded],
    ids=["building-the-store", "run-created-not-recorded"],
)
def test_a_launch_killed_while_it_creates_the_mlflow_run_leaves_one_run_and_a_store_that_opens(
    tokens: Path, tmp_path: Path, reached
) -> None:
    run_dir = tmp_path / "run"
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "train.steps=1"]
    command = [sys.executable, "-m", "launch.cli", *train]
    killed = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: reached(run_dir), timeout=120, interval=0.002)
    finally:
        killed.kill()
        killed.wait()
    assert main(train) == 0
    tracked = recorded_run(run_dir)
    runs = MlflowClient(tracked.tracking_uri).search_runs([tracked.experiment_id])
    assert [run.info.run_id for run in runs] == [tracked.run_id] and runs[0].info.status == "FINISHED"
    assert not [path.name for path in run_dir.iterdir() if path.name.startswith(".") or path.name == "run-creation"]


def test_credentials_in_a_tracking_uri_are_never_printed(capsys, tokens: Path, tmp_path: Path) -> None:
    secret_uri = "http://alice:s3cret@127.0.0.1:9"  # the discard port: nothing answers
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={tmp_path / 'run'}"]
    assert main([*train, f"tracking.uri={secret_uri}"]) == 2
    err = capsys.readouterr().err
    assert "tracking.uri=http://***@127.0.0.1:9 cannot be reached" in err and "s3cret" not in err


def test_a_server_whose_uri_holds_credentials_is_reached_and_they_are_never_printed(capsys, tokens, tmp_path) -> None:
    # urllib took `alice:s3cret@127.0.0.1` for the host: the server checked never answered (or the port was the
    # password, and a traceback printed it); MLflow sends them as Basic authentication.
    server = MlflowServer(tmp_path)
    try:
        secret_uri = server.start().replace("http://", "http://alice:s3cret@")
        train = ["train", f"data.tokens_dir={tokens}", f"run_dir={tmp_path / 'run'}", *SHORT_RUN]
        assert main([*train, f"tracking.uri={secret_uri}"]) == 0
        assert steps_logged(tmp_path / "run") == [1, 2, 3, 4]
        # The run's job.yaml, which MLflow keeps as an artifact, as its params say it.
        job = MlflowClient(server.uri).download_artifacts(recorded_run(tmp_path / "run").run_id, "job.yaml", tmp_path)
        assert f"uri: http://***@127.0.0.1:{server.port}" in Path(job).read_text()
    finally:
        server.kill()
    assert "s3cret" not in "".join(capsys.readouterr())
    assert main([*train, f"run_dir={tmp_path / 'other'}", "tracking.uri=http://alice:s3cret@127.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and err.count("\n") == 1
    assert err.startswith("corolla: error: tracking.uri=http://***@127.0.0.1 cannot be reached (")


# A cluster's secrets, as a research group gives them: tokens in its environment and in its setup lines.
CLUSTER_SECRETS = [
    "cluster=testcluster",
    "cluster.nodes=1",
    "cluster.tasks_per_node=1",
    "+cluster.env.HF_TOKEN=hf_s3cret",
    "cluster.setup=['export WANDB_API_KEY=wb_s3cret']",
]


def test_a_clusters_secrets_are_masked_in_mlflow_params_and_in_a_relaunchs_changed_settings(
    tokens, tmp_path, capsys
) -> None:
    run_dir = tmp_path / "run"
    job = [f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN]
    assert main(["train", *job, "train.exit_after=2"]) == 0
    capsys.readouterr()
    assert main(["submit", "--dry-run", *job, *CLUSTER_SECRETS]) == 0
    changes = capsys.readouterr().out.splitlines()[0]
    assert "cluster.setup [] -> ['export WANDB_API_KEY=***']" in changes, changes
    assert "cluster.env.HF_TOKEN unset -> ***" in changes and "s3cret" not in changes

    _, slurm_job = compose_job("submit", [*job, f"run_dir={tmp_path / 'slurm'}", *CLUSTER_SECRETS])
    tracked = tracking.create_run(tmp_path / "slurm", "corolla", slurm_job, {}, None)
    params = MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).data.params
    assert params["cluster.env.HF_TOKEN"] == "***" and params["cluster.env.OMP_NUM_THREADS"] == "1"
    assert params["cluster.setup"] == "['export WANDB_API_KEY=***']"
    # A token in a URI's query is masked as its user and password are.
    assert main(["train", *job, f"run_dir={tmp_path / 'other'}", "tracking.uri='http://127.0.0.1:9/?token=t0k3n'"]) == 2
    assert "tracking.uri=http://127.0.0.1:9/?token=*** cannot be reached" in capsys.readouterr().err


def test_a_run_deleted_in_mlflow_trains_on_and_the_error_says_how_to_restore_it(tokens, tmp_path, capsys) -> None:
    # Deleted in the UI (MLflow keeps it, refusing every request): "the next start sends the rest" would never come.
    run_dir = tmp_path / "run"
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN]
    assert main([*train, "train.exit_after=2"]) == 0
    tracked = recorded_run(run_dir)
    MlflowClient(tracked.tracking_uri).delete_run(tracked.run_id)
    capsys.readouterr()
    assert main(train) == 0
    out = capsys.readouterr().out
    assert f"its MLflow run {tracked.run_id} was deleted in MLflow: restore it" in out and "next start" not in out
    assert "was deleted in MLflow: restore it" in corolla("status", str(run_dir)).stdout
    synced = corolla("tracking", "sync", str(run_dir))
    assert synced.returncode == 2 and "try again when it answers" not in synced.stderr
    restore = synced.stderr.split("`")[1]  # MLFLOW_TRACKING_URI=URI .venv/bin/mlflow runs restore --run-id ID
    assert subprocess.run(restore, shell=True, capture_output=True).returncode == 0
    assert main(["tracking", "sync", str(run_dir)]) == 0
    assert steps_logged(run_dir) == [1, 2, 3, 4]
    assert MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).info.status == "FINISHED"


def test_a_new_run_in_an_experiment_deleted_in_mlflow_is_refused_in_one_line_naming_the_restore(
    tokens, tmp_path, capsys, monkeypatch
) -> None:
    # A shared store whose experiment someone deleted in the UI: MLflow keeps it by name, and refuses it a new run.
    monkeypatch.chdir(tmp_path)  # a database URI's artifacts go to ./mlruns
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    train = ["train", f"data.tokens_dir={tokens}", *SHORT_RUN, "train.steps=1", f"tracking.uri={store}"]
    assert main([*train, f"run_dir={tmp_path / 'first'}"]) == 0
    client = MlflowClient(store)
    client.delete_experiment(client.get_experiment_by_name("corolla").experiment_id)
    capsys.readouterr()
    second = [*train, f"run_dir={tmp_path / 'second'}"]
    assert main(second) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("corolla: error: tracking.experiment=corolla was deleted in MLflow at") and "\n" not in err
    assert subprocess.run(err.split("`")[1], shell=True, capture_output=True).returncode == 0  # mlflow ... restore
    assert main(second) == 0
    assert client.get_run(recorded_run(tmp_path / "second").run_id).info.status == "FINISHED"


def test_a_store_that_fails_as_a_new_run_is_created_is_said_in_one_line_and_the_same_command_then_goes_on(
    tokens, tmp_path
) -> None:
    # An SQLite store another process holds locked (a long `mlflow gc`, a sqlite3 shell), then free again.
    store = tmp_path / "shared.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()  # made
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={tmp_path / 'run'}", *SHORT_RUN, "train.steps=1"]
    train.append(f"tracking.uri=sqlite:///{store}")
    with closing(sqlite3.connect(store, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        locked = corolla(*train, cwd=tmp_path)  # a database URI's artifacts go to ./mlruns
    assert locked.returncode == 2 and "Traceback" not in locked.stderr, locked.stderr[-2000:]
    assert locked.stderr.strip() == (
        f"corolla: error: MLflow at sqlite:///{store} did not create the run (OperationalError: (sqlite3."
        "OperationalError) database is locked): when its store answers (an SQLite file another process holds "
        "locked?), run the same command again"
    )
    again = corolla(*train, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    tracked = recorded_run(tmp_path / "run")
    runs = MlflowClient(tracked.tracking_uri).search_runs([tracked.experiment_id])
    assert [run.info.run_id for run in runs] == [tracked.run_id] and runs[0].info.status == "FINISHED"


def test_a_database_uri_whose_driver_is_not_installed_is_said_in_one_line(tokens, tmp_path, capsys) -> None:
    uri = "postgresql://alice:s3cret@127.0.0.1:9/mlflow"  # psycopg is not in this environment
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={tmp_path / 'run'}", f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "corolla: error: MLflow at postgresql://***@127.0.0.1:9/mlflow did not create the run (ModuleNotFoundError: "
        "No module named 'psycopg'): install the database driver it lacks (the Python package of psycopg) into this "
        "environment, or give another tracking.uri"
    )


def test_an_sqlite_store_in_a_folder_that_cannot_hold_one_is_named_in_one_line(tokens, tmp_path, capsys) -> None:
    """/proc takes no new file, as a folder without write permission does not for a user who is not root: the line
    named the temporary folder corolla builds a store in, and gave no fix."""
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={tmp_path / 'run'}", "tracking.uri=sqlite:////proc/x.db"]
    assert main(train) == 2
    assert capsys.readouterr().err.strip() == (
        "corolla: error: MLflow store /proc/x.db cannot be made (No such file or directory): give tracking.uri an "
        "SQLite file in a folder corolla can write, or no tracking.uri for the run directory's own store"
    )


def test_a_relative_sqlite_uri_is_the_store_where_the_command_runs_for_every_later_launch(tokens, tmp_path) -> None:
    # sqlite:///shared.db names ./shared.db; run.json holds relative URIs as the run directory's own.
    run_dir = tmp_path / "runs" / "run"
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "tracking.uri=sqlite:///shared.db"]
    first = corolla(*train, "train.exit_after=2", cwd=tmp_path)
    assert first.returncode == 0 and "MLflow has not taken" not in first.stdout, first.stdout[-2000:]
    assert recorded_run(run_dir).tracking_uri == f"sqlite:///{tmp_path / 'shared.db'}"
    resumed = corolla(*train, cwd=tmp_path / "runs")  # from elsewhere: the run keeps its store
    assert resumed.returncode == 0 and "MLflow has not taken" not in resumed.stdout, resumed.stdout[-2000:]
    assert steps_logged(run_dir) == [1, 2, 3, 4] and not (run_dir / "shared.db").exists()
    # Its artifacts beside the store, not in MLflow's ./mlruns of wherever the first command ran.
    assert list((tmp_path / "mlartifacts").rglob("job.yaml")) and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("field", ["run_id", "experiment_id"])
def test_a_run_json_without_its_run_id_is_named_with_the_fix_not_taken_as_a_tracking_outage(
    tokens, tmp_path, capsys, field
) -> None:
    run_dir = tmp_path / "run"
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN]
    assert main([*train, "train.exit_after=2"]) == 0
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, field: None}))
    capsys.readouterr()
    assert main(train) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"corolla: error: {run_dir / 'run.json'} is not the record of an MLflow run that corolla wrote: restore its "
        "tracking_uri, run_id and experiment_id (those of the MLflow run named run)"
    )
    assert "run.json cannot be read" in corolla("status", str(run_dir)).stdout
    (run_dir / "run.json").write_text(json.dumps(record))
    assert main(train) == 0 and steps_logged(run_dir) == [1, 2, 3, 4]


def test_a_resume_given_another_tracking_uri_says_where_the_run_is_tracked_and_how_to_move_it(
    tokens, tmp_path, capsys
) -> None:
    # The run keeps its MLflow run (run.json); the URI given is not silently dropped.
    run_dir, other = tmp_path / "run", f"sqlite:///{tmp_path / 'other.db'}"
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN]
    assert main([*train, "train.exit_after=2"]) == 0
    embedded = recorded_run(run_dir)
    capsys.readouterr()
    assert main([*train, f"tracking.uri={other}"]) == 0
    assert (
        f"corolla: {run_dir} is tracked at {embedded.tracking_uri} (its run.json), not at tracking.uri={other}: "
        f"`corolla tracking sync {run_dir} uri={other}` moves it there"
    ) in capsys.readouterr().out
    assert recorded_run(run_dir) == embedded and steps_logged(run_dir) == [1, 2, 3, 4]


def test_a_new_store_is_a_copy_of_an_empty_one_kept_in_the_cache_or_made_whole_without_one(tmp_path, monkeypatch):
    """MLflow makes an SQLite store's schema in a series of migrations, seconds a run; corolla makes it once per MLflow
    version in the user's cache and copies it. A cache that cannot be written costs the migrations, nothing more."""
    monkeypatch.setenv("COROLLA_CACHE", str(tmp_path / "cache"))
    job = train_job(ModelConfig())
    first = tracking.create_run(tmp_path / "a", "corolla", job, {}, None)
    second = tracking.create_run(tmp_path / "b", "corolla", job, {}, None)
    assert [path.name for path in (tmp_path / "cache" / "mlflow").iterdir()] == [f"empty-store-{mlflow.__version__}.db"]
    for tracked, run_dir in ((first, tmp_path / "a"), (second, tmp_path / "b")):  # not where the empty one was made
        default = MlflowClient(tracked.tracking_uri).get_experiment("0")
        assert default.artifact_location == (run_dir / "mlartifacts").as_uri()
    empty = tmp_path / "cache" / "mlflow" / f"empty-store-{mlflow.__version__}.db"
    empty.write_bytes(b"not a database")  # damaged: it failed every new store until removed by hand
    damaged = tracking.create_run(tmp_path / "d", "corolla", job, {}, None)
    assert MlflowClient(damaged.tracking_uri).get_run(damaged.run_id).info.status == "RUNNING"
    tracking.create_run(tmp_path / "e", "corolla", job, {}, None)
    assert sqlite3.connect(empty).execute("SELECT COUNT(*) FROM experiments").fetchone() == (1,)  # made again
    (tmp_path / "unwritable").write_text("a file where the cache would go")
    monkeypatch.setenv("COROLLA_CACHE", str(tmp_path / "unwritable"))
    third = tracking.create_run(tmp_path / "c", "corolla", job, {}, None)
    for tracked in (first, second, third):
        assert MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).data.tags["corolla.launches"] == "1"
