"""Checkpoints: a stopped run resumes exactly; a crash mid-save leaves the previous checkpoint as `latest`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_training import SHORT_RUN

from launch.cli import main
from launch.rundir.files import LATEST, RUN_FILE
from launch.train.faults import CRASH_DURING_SAVE

# Dropout on everywhere: resuming must restore every rank's RNG states, not only weights and optimizer.
RUN = [
    *SHORT_RUN,
    "train.steps=6",
    "train.checkpoint_interval=2",
    "model.hidden_dropout=0.1",
    "model.attention_dropout=0.1",
]
# Tensor and data parallel: dropout masks come from the tensor-parallel RNG and from each rank's own.
TP_DP = ["parallel.tp=2", "parallel.dp=2"]


def train(run_dir: Path, tokens: Path, *overrides: str) -> int:
    return main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, *overrides])


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records}


@pytest.fixture(scope="module")
def uninterrupted(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    assert train(run_dir, tokens) == 0
    return losses(run_dir)


def test_a_stopped_parallel_run_resumes_bit_identically(tokens: Path, tmp_path: Path) -> None:
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert train(whole, tokens, *TP_DP) == 0
    assert train(stopped, tokens, *TP_DP, "train.exit_after=3") == 0
    assert sorted(losses(stopped)) == [1, 2, 3]
    assert (stopped / "checkpoints" / LATEST).read_text().strip() == "step-00000003"
    assert train(stopped, tokens, *TP_DP) == 0
    assert losses(stopped) == losses(whole)  # steps 4-6 included: same data order, dropout masks and optimizer


def test_a_crash_during_a_save_keeps_the_previous_checkpoint(
    tokens: Path,
    uninterrupted,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setenv(CRASH_DURING_SAVE, "4")
    assert train(run_dir, tokens) == 2  # rank 0 died after writing step 4's files, before marking it complete
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / LATEST).read_text().strip() == "step-00000002"
    assert (checkpoints / "step-00000004").is_dir() and not (checkpoints / "step-00000004" / "COMPLETE").exists()
    run_record = (run_dir / RUN_FILE).read_text()
    monkeypatch.delenv(CRASH_DURING_SAVE)
    assert train(run_dir, tokens) == 0
    resumed = {step: loss for step, loss in losses(run_dir).items() if step > 2}
    assert resumed == {step: uninterrupted[step] for step in range(3, 7)}
    # One MLflow run across both launches, one value per step: steps 3-4, redone after the crash, are not repeated.
    assert (run_dir / RUN_FILE).read_text() == run_record
    tracked = json.loads(run_record)
    client = MlflowClient(tracked["tracking_uri"])
    history = client.get_metric_history(tracked["run_id"], "train_loss")
    assert sorted(metric.step for metric in history) == [1, 2, 3, 4, 5, 6]
    assert {metric.step: metric.value for metric in history} == pytest.approx(uninterrupted, abs=1e-6)
    run = client.get_run(tracked["run_id"])
    assert run.data.tags["corolla.launches"] == "2" and run.info.status == "FINISHED"
    assert run.data.params["model.attention_dropout"] == "0.1" and run.data.tags["layout"] == "tp1-pp1-dp1"
    assert {artifact.path for artifact in client.list_artifacts(tracked["run_id"])} == {"job.yaml", "metadata.json"}


def test_a_damaged_checkpoint_is_named_and_left_alone(capsys, tokens: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert train(run_dir, tokens, "train.exit_after=2") == 0
    capsys.readouterr()
    shard = next((run_dir / "checkpoints" / "step-00000002").glob("model-*.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    before = {path: path.stat().st_mtime_ns for path in (run_dir / "checkpoints").rglob("*")}
    assert train(run_dir, tokens) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("corolla: error: checkpoint file") and "truncated" in err and "\n" not in err
    assert {path: path.stat().st_mtime_ns for path in (run_dir / "checkpoints").rglob("*")} == before


def test_validation_leaves_training_as_it_would_be_without(tokens: Path, uninterrupted, tmp_path: Path) -> None:
    # Validating after every step runs forward passes between steps; dropout masks must not shift because of them.
    run_dir = tmp_path / "run"
    assert train(run_dir, tokens, "train.eval_interval=1") == 0
    assert losses(run_dir) == uninterrupted
    steps = [json.loads(line)["step"] for line in (run_dir / "validation.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
