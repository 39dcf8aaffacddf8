"""A full disk is said as one: which filesystem, how much the checkpoint needs; the previous checkpoint is kept, the
run stops (no restart loop), MLflow says failed, and a launch after space is freed resumes. The run directory lives
on a real tmpfs of a few MiB (tests/conftest.py mounts it: the tests run as root)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_training import SHORT_RUN

from conftest import REPO_ROOT, resize, small_filesystem
from launch.cli import FILESYSTEM_ERRORS, main
from launch.config.job_file import read_job
from launch.plan.layout import ParallelLayout
from launch.plan.report import checkpoint_bytes
from launch.rundir.checkpoints import latest_step, write_complete
from launch.rundir.history import RunHistory
from launch.rundir.run_record import recorded_run
from launch.train import checkpoint, hashed_save
from launch.train.faults import FILL_AT_COMMIT, FILL_LEAVES_BYTES
from launch.train.hashed_save import save_hashed

RUN = [*SHORT_RUN, "train.steps=6", "train.checkpoint_interval=2", "train.keep_checkpoints=2"]


def figures(line: str) -> tuple[float, float]:
    """The MiB free and the MiB needed that a checkpoint's no-space line says."""
    said = re.search(r": ([\d.]+) MiB free, it needs about ([\d.]+) MiB \(", line)
    assert said, line
    return float(said[1]), float(said[2])


def mib_of(checkpoint: Path) -> float:
    return sum(file.stat().st_size for file in checkpoint.iterdir()) / 2**20


def fill(disk: Path, leave: int = 0) -> None:
    """Writes zeros into `disk` until it is full, then gives `leave` bytes back."""
    with (disk / "filler").open("ab") as filler:
        try:
            while True:
                filler.write(bytes(2**20))
                filler.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
        filler.truncate(filler.tell() - leave)


def fill_once_trained_to(step: int, run_dir: Path, disk: Path) -> threading.Thread:
    """A thread that fills `disk` once the run's metrics.jsonl holds `step`."""

    def watch() -> None:
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.is_file() and f'"step": {step},' in metrics.read_text()):
            time.sleep(0.05)
        fill(disk)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def mlflow_status(run_dir: Path) -> str:
    tracked = recorded_run(run_dir)
    return MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).info.status


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync flushes from now on, in order."""
    paths: list[str] = []
    fsync = os.fsync

    def watched(descriptor: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", watched)
    return paths


def test_a_checkpoint_file_is_on_its_disk_before_its_rank_reports_it_written(tmp_path: Path, synced) -> None:
    """Rank 0 marks a checkpoint complete once every rank has reported its files; a node that crashes then loses what
    its page cache still held of them (a Lustre or GPFS client's too), and with train.keep_checkpoints=1 the run
    would keep no checkpoint that verifies. No node can crash here: the flush to disk is watched instead."""
    path = tmp_path / "shard.pt"
    save_hashed({"weight": torch.ones(4)}, path)
    assert synced == [str(path)]


def test_a_ctrl_c_as_a_checkpoint_file_is_written_is_an_interrupt_not_a_torch_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that came as torch.save's zip writer called back into Python surfaced as torch's "[enforce fail at
    inline_container.cc] unexpected pos", and `corolla checkpoint reshard` or `import hf` said that in place of
    "interrupted". A signal cannot be timed to land there: the writer's third write raises as its handler would."""
    write, calls = hashed_save._HashingWriter.write, []

    def interrupted(self, data) -> int:
        calls.append(len(data))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write(self, data)

    monkeypatch.setattr(hashed_save._HashingWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_hashed({"weight": torch.ones(1024)}, tmp_path / "shard.pt")


def test_a_checkpoints_names_are_on_disk_before_complete_says_it_is_whole(tmp_path: Path, synced) -> None:
    """A file's flush does not flush its name (ext4, XFS): a crash after COMPLETE (and the removal of the older
    checkpoints) could leave a complete checkpoint without its files. Watched, as a crash cannot be staged here."""
    tag = tmp_path / "step-00000002"
    (tag / "layer_01").mkdir(parents=True)
    (tag / "layer_01" / "model.pt").write_bytes(b"weights")
    write_complete(tmp_path, tag.name, {"step": 2}, {"layer_01/model.pt": "0" * 64})
    complete = synced.index(next(path for path in synced if path.startswith(f"{tag}/.COMPLETE.")))
    assert {str(tag / "layer_01"), str(tag), str(tmp_path)} <= set(synced[:complete])
    assert synced[complete + 1 :] == [str(tag)]  # COMPLETE's own name


def test_a_checkpoint_with_no_room_keeps_the_last_one_and_stops_until_space_is_freed(
    capsys, tokens: Path, tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "disk", size="8M") as disk:
        run_dir = disk / "run"
        train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN]
        assert main(train) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"corolla: error: no space on {disk} for the step-6 checkpoint: ")
        assert "(the step-4 checkpoint is kept); free space there or move run_dir, then launch again" in err
        assert latest_step(run_dir / "checkpoints") == 4
        assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == [
            "latest",
            "step-00000002",
            "step-00000004",
        ]
        assert [event["event"] for event in RunHistory(run_dir).events()][-1] == "no_space"
        assert mlflow_status(run_dir) == "FAILED"

        resize(disk, "32M")
        assert main(train) == 0
        assert RunHistory(run_dir).starts()[-1]["resumed_from_step"] == 4
        assert latest_step(run_dir / "checkpoints") == 6 and mlflow_status(run_dir) == "FINISHED"


@pytest.mark.parametrize(("size", "warned"), [("5M", True), ("32M", False)])
def test_a_launch_warns_of_a_disk_without_room_for_the_checkpoints_kept_and_the_one_saved(
    capsys, tokens: Path, tmp_path: Path, size: str, warned: bool
) -> None:
    """A run that needs train.keep_checkpoints of them and one more found it out hours in, at a later checkpoint."""
    with small_filesystem(tmp_path / "disk", size=size) as disk:
        run_dir = disk / "run"
        assert main(["train", "--dry-run", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN]) == 0
        out = capsys.readouterr().out
        assert (f"corolla: warning: the filesystem of {run_dir / 'checkpoints'} has room for " in out) == warned
        assert ("MiB each and the one being saved; it would end out of space at a later checkpoint" in out) == warned


def test_a_first_checkpoint_that_fills_the_disk_is_removed_and_said(capsys, tokens: Path, tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk", size="3M") as disk:
        run_dir = disk / "run"
        assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"corolla: error: no space on {disk} for the step-2 checkpoint: ")
        assert "(there is no checkpoint yet)" in err
        assert [path.name for path in (run_dir / "checkpoints").iterdir()] == []
        assert [event["event"] for event in RunHistory(run_dir).events()][-1] == "no_space"
        free, needed = figures(err)
        assert abs(free - shutil.disk_usage(disk).free / 2**20) < 0.2 and needed > free


def test_a_disk_that_fills_as_a_checkpoint_is_marked_complete_ends_the_run_as_out_of_space(
    capsys, monkeypatch, tokens: Path, tmp_path: Path
) -> None:
    """The files written, the record that says the checkpoint is whole found no room: a traceback on rank 0, the
    other ranks waiting at the barrier for train.hang_timeout_s, and a failure that was restarted."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with small_filesystem(tmp_path / "disk", size="16M") as disk:
        (run_dir / "checkpoints").symlink_to(disk)
        monkeypatch.setenv(FILL_AT_COMMIT, f"4:{disk / 'filler'}")
        train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN]
        assert main(train) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"corolla: error: no space on {disk} for the step-4 checkpoint: ")
        assert "Traceback" not in "\n".join(err)
        assert sorted(path.name for path in disk.iterdir()) == ["filler", "latest", "step-00000002"]
        assert RunHistory(run_dir).events()[-1]["event"] == "no_space"
        monkeypatch.delenv(FILL_AT_COMMIT)
        (disk / "filler").unlink()
        assert main(train) == 0, capsys.readouterr().err
        assert RunHistory(run_dir).starts()[-1]["resumed_from_step"] == 2


def test_a_disk_that_fills_as_latest_is_pointed_keeps_the_complete_checkpoint_and_the_next_launch_resumes_from_it(
    capsys, monkeypatch, tokens: Path, tmp_path: Path
) -> None:
    """Room for the checkpoint's record, a page, and none for `latest`'s: the line says the checkpoint is complete and
    kept (it said there was no room for the checkpoint), and the next launch, with room, resumes from it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with small_filesystem(tmp_path / "disk", size="16M") as disk:
        (run_dir / "checkpoints").symlink_to(disk)
        monkeypatch.setenv(FILL_AT_COMMIT, f"4:{disk / 'filler'}")
        monkeypatch.setenv(FILL_LEAVES_BYTES, str(os.sysconf("SC_PAGESIZE")))
        train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN]
        assert main(train) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"corolla: error: no space on {disk} to point latest at the step-4 checkpoint, which is complete and kept: "
            "free space there or move run_dir, then launch again to resume from it"
        )
        assert (disk / "latest").read_text() == "step-00000002\n" and (disk / "step-00000004" / "COMPLETE").is_file()
        monkeypatch.delenv(FILL_AT_COMMIT)
        (disk / "filler").unlink()
        assert main(train) == 0, capsys.readouterr().err
        assert RunHistory(run_dir).starts()[-1]["resumed_from_step"] == 4


def test_the_space_a_checkpoint_needs_is_its_own_on_another_layout(capsys, tokens: Path, tmp_path: Path) -> None:
    """A one-process run's checkpoint (2.7 MiB) resumed on PP=2, whose checkpoint is bigger (both pipeline stages
    hold the tied embedding): refused before writing, with what the new layout's checkpoint needs."""
    with small_filesystem(tmp_path / "disk", size="7M") as disk:
        run_dir = disk / "run"
        train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, "train.steps=4"]
        assert main([*train, "train.exit_after=2"]) == 0
        assert main([*train, "parallel.pp=2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"corolla: error: no space on {disk} for the step-4 checkpoint: ")
        assert "(the step-2 checkpoint is kept)" in err
        free, needed = figures(err)
        assert abs(free - shutil.disk_usage(disk).free / 2**20) < 0.2 and needed > free

        resize(disk, "16M")
        assert main([*train, "parallel.pp=2"]) == 0
        written = mib_of(run_dir / "checkpoints" / "step-00000004")
        assert written > 1.5 * mib_of(run_dir / "checkpoints" / "step-00000002")
        assert abs(needed - written) < 0.05 * written
        # The planner's figure (corolla submit's signal_delay_s warning) likewise, for both layouts.
        model = read_job(run_dir / "job.yaml").model
        for layout, step in ((ParallelLayout(1, 1, 1), 2), (ParallelLayout(1, 2, 1), 4)):
            written = mib_of(run_dir / "checkpoints" / f"step-{step:08d}")
            assert abs(checkpoint_bytes(model, layout) / 2**20 - written) < 0.05 * written, layout


def test_a_checkpoint_directory_that_cannot_be_written_is_refused_before_the_first_step(
    capsys, tokens: Path, tmp_path: Path
) -> None:
    """`checkpoints` linked to a filesystem mounted read-only: said at the start, not after training to the first
    save; the launcher's last line gives the rank's reason."""
    with small_filesystem(tmp_path / "scratch", size="1M") as scratch:
        (scratch / "checkpoints").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(scratch)], check=True)
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / "checkpoints").symlink_to(scratch / "checkpoints")
        assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"corolla: error: training failed, {run_dir / 'checkpoints'} cannot be written (Read-only file system "
            f"on {socket.gethostname()}): make it writable, or give another run_dir; nothing was trained: see the log "
            "above"
        )
        assert not (run_dir / "metrics.jsonl").exists() and mlflow_status(run_dir) == "FAILED"
    # A link to a mount that is not there: refused too, its target not made on whatever filesystem holds its parent.
    missing = tmp_path / "unmounted" / "checkpoints"
    run_dir = tmp_path / "run2"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(missing)
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN]) == 2
    assert f"cannot be written (it links to {missing}, which is not there on " in capsys.readouterr().err
    assert not (tmp_path / "unmounted").exists()


def test_a_run_directory_with_no_room_for_its_records_stops_every_rank_as_a_full_checkpoint_does(
    capsys, monkeypatch, tokens: Path, tmp_path: Path
) -> None:
    """The run directory fills between checkpoints (they are elsewhere): at the next record every rank stops, exit
    status 4 (Slurm does not requeue it), one line names the filesystem and the fix; space freed, the run resumes."""
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setenv("COROLLA_TEST_STEP_SECONDS", "0.3")  # room for the filler between step 3 and the validation
    with small_filesystem(tmp_path / "disk", size="20M") as disk:
        run_dir = disk / "run"
        run_dir.mkdir()
        (run_dir / "checkpoints").symlink_to(tmp_path / "checkpoints")
        train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "parallel.dp=2"]
        evaluated = [*train, "train.steps=12", "train.eval_interval=10", "train.checkpoint_interval=6"]
        filler = fill_once_trained_to(3, run_dir, disk)
        assert main(evaluated) == 2
        filler.join()
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == (
            f"corolla: error: no space left on {disk} for {run_dir / 'validation.jsonl'}: free space there or move "
            "run_dir, then launch again to resume from the last checkpoint"
        )
        assert "OSError" not in err
        assert [event["event"] for event in RunHistory(run_dir).events()][-1] == "no_space"
        assert latest_step(run_dir / "checkpoints") == 6

        os.remove(disk / "filler")
        assert main(evaluated) == 0
        assert RunHistory(run_dir).starts()[-1]["resumed_from_step"] == 6
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 13)) and mlflow_status(run_dir) == "FINISHED"


def test_a_resumed_run_whose_directory_is_full_stops_every_rank_before_its_first_step(tokens: Path, tmp_path: Path):
    """A start's own writes (the records of the steps it redoes dropped, its start recorded) find no room: every rank
    stops as on a full checkpoint (exit status 4, which Slurm does not requeue), in one line, not a traceback; the
    records and checkpoints stay as they were."""
    (tmp_path / "checkpoints").mkdir()
    with small_filesystem(tmp_path / "disk", size="20M") as disk:
        run_dir = disk / "run"
        run_dir.mkdir()
        (run_dir / "checkpoints").symlink_to(tmp_path / "checkpoints")
        train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "parallel.dp=2"]
        assert main([*train, "train.exit_after=3"]) == 0  # stopped, with a checkpoint of step 3
        with (run_dir / "metrics.jsonl").open("a") as metrics:  # and step 4 trained by a launch that then crashed
            metrics.write(json.dumps({"step": 4, "loss": 7.0, "lr": 1e-4, "grad_norm": 1.0, "batch_size": 8}) + "\n")
        records = (run_dir / "metrics.jsonl").read_bytes()
        command = [sys.executable, "-m", "launch.cli", *train]
        launch = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in launch.stdout:  # the launcher's writes are done: the disk fills as its ranks import torch
            if line.startswith("training "):
                fill(disk)
                break
        _, err = launch.communicate(timeout=300)
        assert launch.returncode == 2, err
        assert err.strip().splitlines()[-1] == (
            f"corolla: error: no space left on {disk} for {run_dir}: free space there or move run_dir, then launch "
            "again to resume from the last checkpoint"
        )
        assert "Traceback" not in err, err
        assert (run_dir / "metrics.jsonl").read_bytes() == records
        assert latest_step(run_dir / "checkpoints") == 3


def test_a_trained_run_whose_end_found_the_disk_full_is_finished_by_its_next_launch(
    capsys, monkeypatch, tokens: Path, tmp_path: Path
) -> None:
    """The run directory fills as the last step trains (checkpoints elsewhere): MLflow, whose store is there, lacks
    the last records and the end, and no loss chart is drawn. A sync says where to free space; once freed, the same
    `corolla train` draws the chart and completes MLflow before saying there is nothing to train."""
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setenv("COROLLA_TEST_STEP_SECONDS", "1")
    with small_filesystem(tmp_path / "disk", size="20M") as disk:
        run_dir = disk / "run"
        run_dir.mkdir()
        (run_dir / "checkpoints").symlink_to(tmp_path / "checkpoints")
        train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "train.eval_interval=2"]
        filler = fill_once_trained_to(3, run_dir, disk)
        assert main(train) == 2
        filler.join()
        assert RunHistory(run_dir).events()[-1]["event"] == "finished"
        assert not (run_dir / "loss.png").exists() and mlflow_status(run_dir) == "RUNNING"

        fill(disk, leave=4096)  # room for the sync's lock, not for MLflow's writes
        capsys.readouterr()
        assert main(["tracking", "sync", str(run_dir)]) == 2
        said = capsys.readouterr().err.strip().splitlines()[-1]
        assert said.endswith(
            f"): no space left on the filesystem of its MLflow store {run_dir / 'mlflow.db'}: free some, then "
            f"`corolla tracking sync {run_dir}` again"
        )
        assert "database or disk is full" in said and "autoflush" not in said  # SQLite's words, not SQLAlchemy's

        os.remove(disk / "filler")
        assert main(train) == 0
        assert capsys.readouterr().out.strip().endswith(f"{run_dir} is already trained to step 4 of 4: nothing to do")
        assert (run_dir / "loss.png").is_file() and mlflow_status(run_dir) == "FINISHED"
        tracked = recorded_run(run_dir)
        validations = MlflowClient(tracked.tracking_uri).get_metric_history(tracked.run_id, "val_loss")
        assert sorted(metric.step for metric in validations) == [2, 4]


def test_a_trained_run_whose_ranks_had_no_room_to_record_its_end_is_finished_by_its_next_launch(
    capsys, tokens: Path, tmp_path: Path
) -> None:
    """The state a start that trained to the last step leaves when the run directory has no room for the end's record
    (exit 4, MLflow marked FAILED by its launcher, no end in the history), made here by removing that record: a tmpfs
    gives an append the room left in the file's last page, so a full disk cannot be relied on to refuse it. `corolla
    status` said it failed and `corolla train` that there was nothing to do; the next launch records the end."""
    run_dir = tmp_path / "run"
    train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN]
    assert main(train) == 0
    history = run_dir / "history.jsonl"
    lines = history.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["event"] == "finished"
    history.write_text("".join(lines[:-1]))
    tracked = recorded_run(run_dir)
    MlflowClient(tracked.tracking_uri).set_terminated(tracked.run_id, "FAILED")
    capsys.readouterr()

    assert main(train) == 0
    assert capsys.readouterr().out.strip().endswith(f"{run_dir} is already trained to step 4 of 4: nothing to do")
    assert RunHistory(run_dir).events()[-1]["event"] == "finished" and mlflow_status(run_dir) == "FINISHED"
    assert main(["status", str(run_dir)]) == 0
    assert "recorded no end" not in capsys.readouterr().out


def test_a_disk_that_fills_as_the_mlflow_store_is_made_is_said_and_leaves_no_half_store(
    capsys, tokens: Path, tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "disk", size="600k") as disk:
        run_dir = disk / "run"
        train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "train.steps=1"]
        assert main(train) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"corolla: error: no space left on the filesystem of {run_dir / 'mlflow.db'}: free some, or give a path "
            "on another one"
        )
        assert not [path.name for path in run_dir.iterdir() if path.name.startswith(".") or path.name == "mlflow.db"]
        resize(disk, "32M")
        assert main(train) == 0 and mlflow_status(run_dir) == "FINISHED"


def test_a_tracking_store_named_on_a_disk_that_fills_is_not_left_half_built(
    capsys, monkeypatch, tokens: Path, tmp_path: Path
) -> None:
    """Half-built, it could never be opened again ("table ... already exists"): a launch after space is freed makes
    it whole, and a sync to a new store on a full disk leaves none either."""
    monkeypatch.chdir(tmp_path)  # where MLflow puts the artifacts of a store that is not the run directory's
    run_dir = tmp_path / "run"
    with small_filesystem(tmp_path / "disk", size="600k") as disk:
        store = disk / "mlflow.db"
        train = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "train.steps=1"]
        assert main([*train, f"tracking.uri=sqlite:///{store}"]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"corolla: error: no space left on the filesystem of {store}: free some, or give a path on another one"
        )
        assert list(disk.iterdir()) == []
        resize(disk, "32M")
        assert main([*train, f"tracking.uri=sqlite:///{store}"]) == 0 and mlflow_status(run_dir) == "FINISHED"
        fill(disk)  # the store's disk fills, the run directory's has room: the failure is kept, and said by status
        assert main([*train, "train.steps=2", f"tracking.uri=sqlite:///{store}"]) == 0
        capsys.readouterr()
        assert main(["status", str(run_dir)]) == 0
        assert f"no space left on the filesystem of its MLflow store {store}: free some" in capsys.readouterr().out
        os.remove(disk / "filler")
    with small_filesystem(tmp_path / "other", size="600k") as other:
        assert main(["tracking", "sync", str(run_dir), f"uri=sqlite:///{other / 'new.db'}"]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"corolla: error: no space left on the filesystem of {other / 'new.db'}: free some, or give a path on "
            "another one"
        )
        assert list(other.iterdir()) == []


def test_a_full_quota_is_said_as_one_not_as_a_full_filesystem(tmp_path: Path) -> None:
    """On a cluster's project filesystem a quota fills long before the disk: a checkpoint refused by EDQUOT was said
    as 'no space ...: 1.2 PiB free, it needs more than 1.2 PiB'. (This kernel has no quotas: the words are checked
    as the ranks and the command line put them, given the errno.)"""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    line = checkpoint.no_space_message(checkpoints, 4, 3 * 2**30, number=errno.EDQUOT)
    assert line == (
        "over a disk quota (yours or your project's; `quota -s`, or on Lustre `lfs quota -h -u $USER`, `-g GROUP` "
        f"or `-p PROJECT`) on {checkpoint.filesystem(checkpoints)} for the step-4 checkpoint of about 3.00 GiB (there "
        "is no checkpoint yet): free some, then launch again to resume"
    )
    path = tmp_path / "run" / "metrics.jsonl"
    assert FILESYSTEM_ERRORS[errno.EDQUOT].format(path=path) == (
        "over a disk quota (yours or your project's; `quota -s`, or on Lustre `lfs quota -h -u $USER`, `-g GROUP` "
        f"or `-p PROJECT`) on the filesystem of {path}: free some, or give a path on another one"
    )
    assert FILESYSTEM_ERRORS[errno.ENOSPC].format(path=path).startswith(f"no space left on the filesystem of {path}")
