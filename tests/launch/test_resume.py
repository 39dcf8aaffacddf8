"""Checkpoints: a stopped run resumes exactly; a crash mid-save leaves the previous checkpoint as `latest`."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from run_copies import stopped_copy
from test_training import SHORT_RUN

from launch.cli import main
from launch.rundir.checkpoints import CheckpointError, latest_step, newest_intact, point_latest, set_aside_newer
from launch.rundir.files import COMPLETE, LATEST, RUN_FILE
from launch.rundir.history import RunHistory
from launch.rundir.records import read_jsonl
from launch.rundir.run_record import recorded_run
from launch.train.faults import CRASH_DURING_SAVE, HUGE_GRADIENTS_AT_STEP, NAN_AT_STEP

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
def uninterrupted_run(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints at steps 2, 4 and 6, all kept: the tests that start from a stopped run copy it (run_copies.py)."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    assert train(run_dir, tokens, "train.keep_checkpoints=3") == 0
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run: Path) -> dict[int, float]:
    return losses(uninterrupted_run)


def test_a_parallel_run_stopped_by_a_non_finite_step_then_on_request_resumes_bit_identically(
    capfd, tokens: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setenv(NAN_AT_STEP, "3")
    assert train(run_dir, tokens, *TP_DP) == 2
    err = capfd.readouterr().err
    assert "corolla: error: step 3: loss nan" in err and "stopped without saving it" in err
    assert "training stopped at step 3: its loss or gradients are not finite" in err
    assert (run_dir / "checkpoints" / LATEST).read_text().strip() == "step-00000002"
    assert [event["event"] for event in RunHistory(run_dir).events()][-1] == "diverged"
    tracked = asdict(recorded_run(run_dir))
    assert MlflowClient(tracked["tracking_uri"]).get_run(tracked["run_id"]).info.status == "FAILED"
    monkeypatch.delenv(NAN_AT_STEP)
    assert train(run_dir, tokens, *TP_DP) == 0  # step 3 trained again, from step 2's weights
    assert RunHistory(run_dir).starts()[-1]["resumed_from_step"] == 2
    whole = tmp_path / "whole"
    assert train(whole, tokens, *TP_DP) == 0
    assert losses(run_dir) == losses(whole)  # steps 4-6 included: same data order, dropout masks and optimizer


def test_gradients_whose_norm_overflows_with_a_finite_loss_are_said_to_be_so(
    capfd, tokens: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every gradient finite, and the loss, their norm past a float: not a "non-finite loss", as it was called."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv(HUGE_GRADIENTS_AT_STEP, "3")
    assert train(run_dir, tokens) == 2
    err = capfd.readouterr().err
    assert "corolla: error: step 3: loss " in err and ", gradient norm inf (gradients too large for their norm" in err
    diverged = RunHistory(run_dir).events()[-1]
    assert diverged["event"] == "diverged" and diverged["grad_norm"] == "inf" and math.isfinite(float(diverged["loss"]))
    assert main(["status", str(run_dir)]) == 0
    assert f"diverged  at step 3, loss {diverged['loss']}, gradient norm inf" in capfd.readouterr().out


def test_a_crash_during_a_save_keeps_the_previous_checkpoint_and_validation_leaves_training_as_it_was(
    tokens: Path,
    uninterrupted,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Validating after every step runs forward passes between steps; dropout masks must not shift because of them.
    run_dir, validated = tmp_path / "run", "train.eval_interval=1"
    monkeypatch.setenv(CRASH_DURING_SAVE, "4")
    assert train(run_dir, tokens, validated) == 2  # rank 0 died after writing step 4's files, before marking it done
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / LATEST).read_text().strip() == "step-00000002"
    assert (checkpoints / "step-00000004").is_dir() and not (checkpoints / "step-00000004" / "COMPLETE").exists()
    run_record = (run_dir / RUN_FILE).read_text()
    with (run_dir / "history.jsonl").open("a") as history:
        history.write('{"event": "stopped", "ti')  # as if it had died mid-line there too: passed over
    monkeypatch.delenv(CRASH_DURING_SAVE)
    assert train(run_dir, tokens, validated) == 0
    assert losses(run_dir) == uninterrupted  # steps 3-6 trained again after the crash
    steps = [json.loads(line)["step"] for line in (run_dir / "validation.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # One MLflow run across both launches, one value per step: steps 3-4, redone after the crash, are not repeated.
    assert (run_dir / RUN_FILE).read_text() == run_record
    tracked = asdict(recorded_run(run_dir))
    client = MlflowClient(tracked["tracking_uri"])
    history = client.get_metric_history(tracked["run_id"], "train_loss")
    assert sorted(metric.step for metric in history) == [1, 2, 3, 4, 5, 6]
    assert {metric.step: metric.value for metric in history} == pytest.approx(uninterrupted, abs=1e-6)
    run = client.get_run(tracked["run_id"])
    assert run.data.tags["corolla.launches"] == "2" and run.info.status == "FINISHED"
    # The second launch's start was the user's, no restart: corolla restarts no local run.
    assert run.data.tags["corolla.failures"] == "1" and run.data.tags["corolla.restarts"] == "0"
    # metrics.jsonl too holds each step once: the relaunch replaced the records of the steps it redid.
    assert [record["step"] for record in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert run.data.params["model.attention_dropout"] == "0.1" and run.data.tags["layout"] == "tp1-pp1-dp1"
    assert {artifact.path for artifact in client.list_artifacts(tracked["run_id"])} == {"job.yaml", "metadata.json"}


def test_a_damaged_checkpoint_is_named_and_left_alone(capsys, tokens: Path, uninterrupted_run, tmp_path) -> None:
    run_dir = stopped_copy(uninterrupted_run, tmp_path / "run", 2)
    shard = next((run_dir / "checkpoints" / "step-00000002").glob("model-*.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    before = {path: path.stat().st_mtime_ns for path in (run_dir / "checkpoints").rglob("*")}
    assert train(run_dir, tokens) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("corolla: error: checkpoint file") and "truncated" in err and "\n" not in err
    assert {path: path.stat().st_mtime_ns for path in (run_dir / "checkpoints").rglob("*")} == before


def test_verify_does_not_call_a_checkpoint_whose_record_has_no_hashes_verified(capsys, uninterrupted_run, tmp_path):
    """A corolla before checksums recorded each file's size only in COMPLETE: nothing says its bytes are intact."""
    checkpoints = stopped_copy(uninterrupted_run, tmp_path / "run", 2) / "checkpoints"
    record = json.loads((checkpoints / "step-00000002" / COMPLETE).read_text())
    record["files"] = {name: entry["bytes"] for name, entry in record["files"].items()}
    (checkpoints / "step-00000002" / COMPLETE).write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["checkpoint", "verify", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.endswith(": sizes as recorded, bytes unverified (its COMPLETE, of an older corolla, has no hashes)\n")
    assert "verified\n" not in out
    # A reshard of it recorded the files it kept with no hash at all, a record no start could read: the checkpoint was
    # passed over. They are hashed as they are now.
    assert main(["checkpoint", "reshard", f"run_dir={tmp_path / 'run'}", "tp=2"]) == 0
    assert newest_intact(checkpoints) == 2


def flip_bytes(path: Path, offset_share: float = 0.6, count: int = 16) -> None:
    """Changes `count` bytes inside the file, its size kept: what a failing disk or a bad copy does."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * offset_share)
    data[start : start + count] = bytes(255 - byte for byte in data[start : start + count])
    path.write_bytes(bytes(data))


def test_a_checkpoint_whose_bytes_changed_is_passed_over_for_the_newest_that_verifies(
    capfd, tokens: Path, uninterrupted_run: Path, uninterrupted, tmp_path: Path
) -> None:
    run_dir = stopped_copy(uninterrupted_run, tmp_path / "run", 4)  # checkpoints at steps 2 and 4
    damaged = next((run_dir / "checkpoints" / "step-00000004").glob("model-*.pt"))
    flip_bytes(damaged)
    damaged_bytes = damaged.read_bytes()
    capfd.readouterr()
    assert main(["checkpoint", "verify", str(run_dir)]) == 2
    out, err = capfd.readouterr()
    assert "step        2: " in out and out.count("verified") == 1 and "model-tp00of01-pp00of01.pt changed" in out
    assert "1 of 2 checkpoints fail verification (steps 4)" in err
    assert main(["checkpoint", "verify", str(run_dir), "step=99"]) == 2
    assert capfd.readouterr().err.endswith("has no complete checkpoint of step 99: choose one of 2, 4\n")
    # Neither exported nor resharded: each says which file changed, and what to do instead.
    damage = f"checkpoint {damaged.parent} fails its checksums ({damaged.name} changed since written)"
    assert main(["export", "hf", f"run_dir={run_dir}", f"output_dir={run_dir.parent / 'hf'}", "step=4"]) == 2
    assert capfd.readouterr().err.strip().endswith(f"{damage}: export another with step=N (complete: 2)")
    assert main(["checkpoint", "reshard", f"run_dir={run_dir}", "step=4", "tp=2"]) == 2
    assert capfd.readouterr().err.strip().endswith(f"{damage}: reshard another with step=N (complete: 2)")
    assert damaged.read_bytes() == damaged_bytes and not (run_dir.parent / "hf").exists()
    assert train(run_dir, tokens) == 0
    passed_over = "step-00000004 (model-tp00of01-pp00of01.pt changed since written) fails its checksums"
    assert passed_over in capfd.readouterr().out
    events = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert events[-2]["resumed_from_step"] == 2  # the last start: resumed from the checkpoint that verified
    assert losses(run_dir) == uninterrupted  # steps 3-6 trained again from step 2's state
    assert main(["checkpoint", "verify", str(run_dir)]) == 0
    # The damaged checkpoint was set aside before step 4 was saved again, not overwritten: its bytes are all there.
    aside = run_dir / "checkpoints" / "set-aside" / "step-00000004"
    assert events[-2]["set_aside"] == [str(aside)]
    assert (aside / damaged.name).read_bytes() == damaged_bytes and (aside / COMPLETE).is_file()
    assert (run_dir / "checkpoints" / "step-00000004" / damaged.name).read_bytes() != damaged_bytes
    capfd.readouterr()
    assert main(["status", str(run_dir)]) == 0
    assert "resumed from step 2 (1 newer checkpoint set aside in checkpoints/set-aside)" in capfd.readouterr().out


def test_checkpoints_newer_than_the_one_resumed_from_are_set_aside_never_overwritten(uninterrupted_run, tmp_path):
    checkpoints = stopped_copy(uninterrupted_run, tmp_path / "run", 6) / "checkpoints"  # steps 2, 4 and 6
    (checkpoints / LATEST).write_text("step-00000002\n")  # pointed back past 4 and 6, as a roll-back does
    aside = checkpoints / "set-aside"
    assert set_aside_newer(checkpoints, 2) == [str(aside / "step-00000004"), str(aside / "step-00000006")]
    assert newest_intact(checkpoints) == 2 and not (checkpoints / "step-00000004").exists()
    shutil.copytree(aside / "step-00000004", checkpoints / "step-00000004")  # saved again, then damaged again
    (checkpoints / LATEST).write_text("step-00000004\n")
    assert set_aside_newer(checkpoints, 2) == [str(aside / "step-00000004.2")]  # beside the first, not over it
    assert (checkpoints / LATEST).read_text() == "step-00000002\n"
    assert sorted(path.name for path in aside.iterdir()) == ["step-00000004", "step-00000004.2", "step-00000006"]


def test_a_users_own_folders_beside_the_checkpoints_are_neither_resumed_from_nor_removed(
    tokens: Path, uninterrupted_run: Path, uninterrupted, tmp_path: Path
) -> None:
    """A copy kept by hand (`step-00000004.bak`, complete) and a folder of notes (`step-best`) were taken for
    checkpoints: the copy for the newest, its step unreadable, and the folder for a save cut off, which the next
    save removed."""
    run_dir = stopped_copy(uninterrupted_run, tmp_path / "run", 4)  # checkpoints at steps 2 and 4
    checkpoints = run_dir / "checkpoints"
    shutil.copytree(checkpoints / "step-00000004", checkpoints / "step-00000004.bak")
    (checkpoints / "step-best").mkdir()
    (checkpoints / "step-best" / "why.txt").write_text("the lowest validation loss so far\n")
    assert train(run_dir, tokens, "train.keep_checkpoints=1") == 0
    assert RunHistory(run_dir).starts()[-1]["resumed_from_step"] == 4 and losses(run_dir) == uninterrupted
    kept = sorted(path.name for path in checkpoints.iterdir() if path.is_dir())
    assert kept == ["step-00000004.bak", "step-00000006", "step-best"]
    assert (checkpoints / "step-best" / "why.txt").is_file()


def test_a_save_cut_off_between_its_record_and_latest_is_resumed_from(
    capfd, tokens: Path, uninterrupted_run: Path, uninterrupted, tmp_path: Path
) -> None:
    """A kill after a checkpoint's COMPLETE and before `latest` names it leaves a complete checkpoint, which is
    resumed from rather than set aside as a roll-back's would be; so is a first checkpoint cut off before any
    `latest`."""
    run_dir = stopped_copy(uninterrupted_run, tmp_path / "run", 4)  # checkpoints at steps 2 and 4
    checkpoints = run_dir / "checkpoints"
    record = (checkpoints / "step-00000004" / COMPLETE).stat()
    point_latest(checkpoints, "step-00000002")  # as step 2's save wrote it, before step 4's record
    os.utime(checkpoints / LATEST, ns=(record.st_atime_ns, record.st_mtime_ns - 10**9))
    (checkpoints / ".latest.12345.tmp").write_text("step-000")  # what the killed write of `latest` left
    (checkpoints / LATEST).rename(tmp_path / "latest")
    assert newest_intact(checkpoints) == 4  # no `latest` yet
    (tmp_path / "latest").rename(checkpoints / LATEST)
    assert newest_intact(checkpoints) == 4
    assert latest_step(checkpoints) == 4  # what status, export and reshard take too
    capfd.readouterr()
    assert train(run_dir, tokens) == 0
    assert "resumed from" in capfd.readouterr().out
    start = RunHistory(run_dir).starts()[-1]
    assert start["resumed_from_step"] == 4 and "set_aside" not in start
    assert losses(run_dir) == uninterrupted and not list(checkpoints.glob(".latest.*"))


@pytest.mark.parametrize(
    "latest", [b"hello world", b"", b"..", b"garbage\x00\xff", b"../../other/checkpoints/step-00000002"]
)
def test_a_garbled_latest_pointer_is_passed_over_for_the_newest_complete_checkpoint(
    capsys, uninterrupted_run, tmp_path, latest: bytes
) -> None:
    """Whatever `latest` holds, a start tries the complete checkpoints, and nothing follows it as a path (status,
    export and verify say what is wrong with it, in one line)."""
    checkpoints = stopped_copy(uninterrupted_run, tmp_path / "run", 4) / "checkpoints"
    (checkpoints / LATEST).write_bytes(latest)
    passed_over: list[str] = []
    assert newest_intact(checkpoints, passed_over.append) == 4
    assert len(passed_over) == 1 and "not a checkpoint's tag: write the newest complete one's" in passed_over[0]
    with pytest.raises(CheckpointError, match=r"complete: step-00000002, step-00000004\)$"):
        latest_step(checkpoints)
    capsys.readouterr()
    assert main(["checkpoint", "verify", str(checkpoints.parent)]) == 2
    out, err = capsys.readouterr()
    assert out.count("verified") == 2 and "       latest: FAILS (" in out
    assert err.startswith("corolla: error: ") and err.endswith("(complete: step-00000002, step-00000004)\n")


def test_a_latest_pointer_naming_a_checkpoint_whose_record_is_gone_fails_verification(
    capsys, tokens: Path, uninterrupted_run: Path, tmp_path: Path
) -> None:
    """Every complete checkpoint verifying is not enough when `latest`, what an export and a reshard take, names one
    that is not complete: verify says so and fails; a start resumes from the newest complete one and mends it."""
    run_dir = stopped_copy(uninterrupted_run, tmp_path / "run", 4)  # checkpoints at steps 2 and 4
    checkpoints = run_dir / "checkpoints"
    (checkpoints / "step-00000004" / COMPLETE).unlink()
    capsys.readouterr()
    assert main(["checkpoint", "verify", str(run_dir)]) == 2
    out, err = capsys.readouterr()
    assert out.count("verified") == 1 and "       latest: FAILS (" in out
    named = f"{checkpoints / LATEST} names step-00000004, which is not a complete checkpoint: restore its files"
    assert err.startswith(f"corolla: error: {named}") and err.count("\n") == 1
    assert train(run_dir, tokens) == 0
    capsys.readouterr()
    assert main(["checkpoint", "verify", str(run_dir)]) == 0


@pytest.mark.parametrize("files", [{"model.pt": "x"}, [1], {"model.pt": {"bytes": 1}}])
def test_a_checkpoint_record_whose_files_are_not_a_listing_is_passed_over(uninterrupted_run, tmp_path, files) -> None:
    checkpoints = stopped_copy(uninterrupted_run, tmp_path / "run", 4) / "checkpoints"
    (checkpoints / "step-00000004" / COMPLETE).write_text(json.dumps({"step": 4, "files": files}))
    passed_over: list[str] = []
    assert newest_intact(checkpoints, passed_over.append) == 2
    record, fix = checkpoints / "step-00000004" / COMPLETE, "restore its files, or write the tag of an older"
    assert len(passed_over) == 1
    assert passed_over[0].startswith(
        f"corolla: passing over {record.parent}: {record} is not a checkpoint record: {fix}"
    )


def test_a_checkpoint_record_that_leaves_out_a_file_of_its_layout_is_no_record(
    capsys, uninterrupted_run, tmp_path
) -> None:
    """COMPLETE with a shard's entry dropped (or every entry): `checkpoint verify` hashed what it listed and said
    "verified", and a resume loaded the shard unhashed, damaged, its loss NaN two steps later."""
    run_dir = stopped_copy(uninterrupted_run, tmp_path / "run", 4)
    checkpoints = run_dir / "checkpoints"
    record_file = checkpoints / "step-00000004" / COMPLETE
    record = json.loads(record_file.read_text())
    shard = next(name for name in record["files"] if name.startswith("model-"))
    del record["files"][shard]
    record_file.write_text(json.dumps(record))
    assert main(["checkpoint", "verify", str(run_dir), "step=4"]) == 2
    assert capsys.readouterr().err == (
        f"corolla: error: {record_file} does not list {shard}, which its layout's ranks write, and no hash vouches "
        f"for it: write the tag of an older complete checkpoint into {checkpoints / LATEST}\n"
    )
    passed_over: list[str] = []
    assert newest_intact(checkpoints, passed_over.append) == 2 and len(passed_over) == 1


def test_when_no_checkpoint_verifies_the_run_refuses_to_start_again(capfd, tokens, uninterrupted_run, tmp_path) -> None:
    run_dir = stopped_copy(uninterrupted_run, tmp_path / "run", 2)
    flip_bytes(run_dir / "checkpoints" / "step-00000002" / "trainer.pt", offset_share=0.5, count=4)
    assert train(run_dir, tokens) == 2
    err = capfd.readouterr().err
    assert "corolla: error: no checkpoint in" in err and "trainer.pt changed since written" in err
    assert sorted(losses(run_dir)) == [1, 2]


def test_a_run_whose_checkpoints_were_lost_is_not_trained_from_scratch(capfd, tokens, uninterrupted_run, tmp_path):
    """A scratch purge, or `checkpoints` linked to storage not mounted: the start trained from step 0 without a word,
    dropped the records of every step, and MLflow, which held them, was never sent the new ones."""
    run_dir = stopped_copy(uninterrupted_run, tmp_path / "run", 4)
    (run_dir / "checkpoints").rename(tmp_path / "elsewhere")
    (run_dir / "checkpoints").mkdir()
    records = (run_dir / "metrics.jsonl").read_bytes()
    assert main(["train", "--dry-run", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN]) == 2
    assert train(run_dir, tokens) == 2
    err = capfd.readouterr().err.strip().splitlines()
    lost = (
        f"corolla: error: {run_dir / 'checkpoints'} holds no complete checkpoint, yet the run saved step-00000004 "
        f"there: restore its checkpoints (from a copy, or mount the storage it links to), or remove "
        f"{run_dir / 'last-saved'} to train from scratch there; nothing was trained"
    )
    assert err[0] == err[-1] == lost
    assert (run_dir / "metrics.jsonl").read_bytes() == records
    (run_dir / "checkpoints").rmdir()
    (tmp_path / "elsewhere").rename(run_dir / "checkpoints")
    assert train(run_dir, tokens) == 0 and sorted(losses(run_dir)) == list(range(1, 7))


def test_a_checkpoint_record_the_storage_fails_to_read_is_not_taken_for_damage(uninterrupted_run, monkeypatch) -> None:
    """An I/O error (a Lustre eviction, a soft NFS mount's timeout) passed the newest checkpoint over for an older one,
    a checkpoint interval lost; now the start fails, to be restarted. The error is injected: no storage here fails."""
    checkpoints = uninterrupted_run / "checkpoints"
    read_text = Path.read_text

    def failing(path: Path, *arguments, **keywords) -> str:
        if path.name == COMPLETE and path.parent.name == "step-00000006":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return read_text(path, *arguments, **keywords)

    monkeypatch.setattr(Path, "read_text", failing)
    with pytest.raises(OSError, match="Input/output error"):
        newest_intact(checkpoints, log=pytest.fail)
    monkeypatch.undo()
    assert newest_intact(checkpoints) == 6


def test_a_finished_run_launched_as_another_model_is_refused_not_told_there_is_nothing_to_do(
    capsys, tokens, uninterrupted_run, tmp_path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted_run, run_dir)
    assert train(run_dir, tokens, "model.num_layers=3") == 2
    assert "this job has model.num_layers=3: use the run's model settings" in capsys.readouterr().err
    assert train(run_dir, tokens) == 0
    assert capsys.readouterr().out.strip().endswith(f"{run_dir} is already trained to step 6 of 6: nothing to do")
    # One that started from another's weights, launched as it was, is still finished (init_from names the weights).
    forked = tmp_path / "forked"
    for _ in range(2):
        assert train(forked, tokens, f"init_from={uninterrupted_run}", "train.steps=1") == 0
    assert capsys.readouterr().out.strip().endswith(f"{forked} is already trained to step 1 of 1: nothing to do")


def test_steps_trained_again_with_other_settings_are_sent_to_mlflow_again(
    tokens, uninterrupted_run, uninterrupted, tmp_path
):
    """Its latest checkpoint pointed back to step 2 (past a loss spike) and relaunched with another learning rate, the
    run trained steps 3-6 anew, and MLflow kept their first values alone: it was never sent the new ones. It holds
    both now, the new last (step 3's loss, of the step-2 weights, is as it was, its learning rate is not)."""
    run_dir = stopped_copy(uninterrupted_run, tmp_path / "run", 6)
    (run_dir / "checkpoints" / LATEST).write_text("step-00000002\n")
    # Stopped at step 4 (a time limit), then on: the next launch has no records of 5-6 to compare, MLflow has.
    assert train(run_dir, tokens, "train.lr=3e-4", "train.exit_after=2") == 0
    assert train(run_dir, tokens, "train.lr=3e-4") == 0
    tracked = asdict(recorded_run(run_dir))
    client = MlflowClient(tracked["tracking_uri"])
    history = client.get_metric_history(tracked["run_id"], "train_loss")
    last = {point.step: point.value for point in sorted(history, key=lambda point: point.timestamp)}
    assert last == pytest.approx(losses(run_dir), abs=1e-6) and last[4] != pytest.approx(uninterrupted[4], abs=1e-6)
    assert sorted(point.step for point in history) == [1, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert client.get_run(tracked["run_id"]).data.tags["corolla.retrained_after_step"] == "4"  # the latest launch's


def test_non_finite_steps_can_be_let_pass_and_leave_the_weights_as_they_were(
    tokens: Path, uninterrupted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setenv(NAN_AT_STEP, "3")
    assert train(run_dir, tokens, "train.skip_nonfinite=1") == 0
    trained = losses(run_dir)
    assert math.isnan(trained[3]) and all(math.isfinite(trained[step]) for step in (1, 2, 4, 5, 6))
    assert [trained[step] for step in (1, 2)] == [uninterrupted[step] for step in (1, 2)]
    assert RunHistory(run_dir).events()[-1]["event"] == "finished"
