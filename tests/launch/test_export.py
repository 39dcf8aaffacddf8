"""`corolla export hf`: a TP=2 x PP=2 checkpoint, merged, is a BloomForCausalLM that computes the training loss."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_training import SHORT_RUN
from transformers import AutoTokenizer, BloomForCausalLM

from conftest import REPO_ROOT
from launch.cli import main
from launch.config.job_file import read_job
from launch.data.blend import BlendedDataset
from launch.data.corpus import TokenCorpus
from launch.rundir.checkpoints import (
    CheckpointError,
    CheckpointRemoved,
    reading,
    remove_checkpoints,
    verify,
    write_complete,
)
from launch.rundir.files import checkpoint_tag
from tokenizer.files import sha256_of


def test_exported_model_reproduces_the_next_training_loss(
    capsys, tokens: Path, tmp_path: Path, monkeypatch, group_umask
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir, exported = tmp_path / "run", tmp_path / "hf"
    layout = ["parallel.tp=2", "parallel.pp=2", "train.steps=3", "train.checkpoint_interval=2"]
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, *layout]) == 0
    assert main(["export", "hf", f"run_dir={run_dir}", f"output_dir={exported}", "step=2"]) == 0

    model = BloomForCausalLM.from_pretrained(exported).eval()
    job = read_job(run_dir / "job.yaml")
    dataset = BlendedDataset(TokenCorpus(job.data.tokens_dir, job.data.validation_documents), job.data, 32)
    # Step 3 trained on global samples 16..23 with the weights of step 2: the exported model must see the same loss.
    batch = torch.stack([torch.from_numpy(dataset[index]) for index in range(16, 24)])
    with torch.no_grad():
        logits = model(batch[:, :-1]).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).item()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[2]["step"] == 3 and abs(loss - records[2]["loss"]) <= 1e-4

    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert tokenizer("Bonjour", add_special_tokens=False)["input_ids"]
    assert tokenizer.model_max_length == 32  # the model's sequence length, not the standalone tokenizer's 2048
    assert model.config.vocab_size == 2048 and model.config.n_layer == 2
    # Readable by the group, as the umask has it: safetensors wrote the weights 0600.
    assert {oct(path.stat().st_mode & 0o777) for path in exported.iterdir()} == {"0o644"}

    # An export is kept as it is unless overwrite=true, which replaces it whole; a directory that holds anything else,
    # the run directory or one that holds it, never is an export's.
    written = {path.name: path.stat().st_mtime_ns for path in exported.iterdir()}
    assert main(["export", "hf", f"run_dir={run_dir}", f"output_dir={exported}", "step=3"]) == 2
    assert f"output_dir={exported} already holds an export: choose another, or pass overwrite=true" in (
        capsys.readouterr().err
    )
    assert {path.name: path.stat().st_mtime_ns for path in exported.iterdir()} == written
    assert main(["export", "hf", f"run_dir={run_dir}", f"output_dir={exported}", "step=3", "overwrite=true"]) == 0
    assert not list(tmp_path.glob(".hf.*"))  # its staging area, gone with it
    for inside in (run_dir / "hf", tmp_path):
        assert main(["export", "hf", f"run_dir={run_dir}", f"output_dir={inside}", "overwrite=true"]) == 2
        assert f"output_dir={inside} and run_dir={run_dir} lie one inside the other" in capsys.readouterr().err
    assert not (run_dir / "hf").exists() and (run_dir / "checkpoints").is_dir()
    (exported / "notes.txt").write_text("mine")
    assert main(["export", "hf", f"run_dir={run_dir}", f"output_dir={exported}", "overwrite=true"]) == 2
    assert "holds files that are not an export's (notes.txt)" in capsys.readouterr().err
    assert (exported / "notes.txt").read_text() == "mine"

    # A step never saved, and a directory that is no run, are said as such.
    checkpoints = run_dir / "checkpoints"
    assert main(["export", "hf", f"run_dir={run_dir}", f"output_dir={tmp_path / 'hf1'}", "step=1"]) == 2
    assert f"{checkpoints} has no complete checkpoint of step 1: choose one of 2, 3" in capsys.readouterr().err
    no_run = tmp_path / "not-a-run"
    no_run.mkdir()
    assert main(["export", "hf", f"run_dir={no_run}", f"output_dir={tmp_path / 'hf2'}"]) == 2
    assert f"{no_run} is neither a corolla run directory (no job.yaml) nor an imported model" in capsys.readouterr().err


def test_reading_the_checkpoints_of_a_run_that_trains_meets_no_missing_file(
    capsys, tokens: Path, tmp_path: Path
) -> None:
    """A training that saves every step and keeps one checkpoint removes each as the next is saved: `checkpoint
    verify` passes over the ones it removes, and `export hf` of the latest reads the next one, or (saves this fast
    outrun its tries) says in one line that the checkpoint went; neither fails on a file gone meanwhile."""
    run_dir = tmp_path / "run"
    arguments = [
        f"data.tokens_dir={tokens}",
        f"run_dir={run_dir}",
        *SHORT_RUN,
        "train.steps=200",
        "train.eval_interval=0",
    ]
    rotating = [*arguments, "train.checkpoint_interval=1", "train.keep_checkpoints=1"]
    command = [sys.executable, "-m", "launch.cli", "train", *rotating]
    training = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "checkpoints" / "latest").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        verified, exported = [], []
        for attempt in range(30):
            verified.append(main(["checkpoint", "verify", str(run_dir)]))
            if attempt % 5 == 0:
                exported.append(
                    main(["export", "hf", f"run_dir={run_dir}", f"output_dir={tmp_path / 'hf'}", "overwrite=true"])
                )
        assert training.poll() is None, "the training ended before the reads did: they raced nothing"
    finally:
        training.kill()
        training.wait()
    said = capsys.readouterr()
    assert verified == [0] * len(verified), said.out + said.err
    removed = re.compile(r"corolla: error: checkpoint \S+/step-\d+ was removed while it was read \(a training that ")
    errors = [line for line in said.err.splitlines() if line.startswith("corolla:")]
    assert all(removed.match(line) for line in errors) and len(errors) == exported.count(2), said.err


def test_a_checkpoint_gone_between_being_found_and_read_is_said_to_be_removed(tmp_path: Path) -> None:
    """What the race above meets by chance, in order: a checkpoint found, then removed by the training, is said to be
    removed when read; one asked for that was never there is said to be missing, with the complete ones named."""
    directory, tag = tmp_path / "checkpoints", checkpoint_tag(2)
    (directory / tag).mkdir(parents=True)
    (directory / tag / "weights").write_bytes(b"weights of step 2")
    write_complete(directory, tag, {"step": 2}, {"weights": sha256_of(directory / tag / "weights")})
    assert verify(directory, 2) == (1, 17, [])
    remove_checkpoints(directory, [tag])
    removed = re.escape(f"checkpoint {directory / tag} was removed while it was read")
    with pytest.raises(CheckpointRemoved, match=removed), reading(directory, 2):  # found a moment ago
        verify(directory, 2)
    missing = re.escape(f"{directory} has no complete checkpoint of step 2: choose one of none")
    with pytest.raises(CheckpointError, match=missing) as asked:
        verify(directory, 2)  # asked for by a user
    assert not isinstance(asked.value, CheckpointRemoved)


def test_a_checkpoint_file_torch_cannot_open_once_removed_is_said_to_be_removed(tmp_path: Path) -> None:
    """torch.load(mmap=True) opens a shard twice: removed between the two, its second open raises a RuntimeError,
    not an OSError (CI's race above met it once). Raised here as torch raises it; any other stays what it is."""
    directory, tag = tmp_path / "checkpoints", checkpoint_tag(2)
    (directory / tag).mkdir(parents=True)
    shard = directory / tag / "model-tp00of01-pp00of01.pt"
    torch_says = f"unable to open file <{shard}> in read-only mode: No such file or directory (2)"
    with pytest.raises(RuntimeError, match="unable to open file"), reading(directory, 2):  # still there
        raise RuntimeError(torch_says)
    remove_checkpoints(directory, [tag])
    removed = re.escape(f"checkpoint {directory / tag} was removed while it was read")
    with pytest.raises(CheckpointRemoved, match=removed), reading(directory, 2):
        raise RuntimeError(torch_says)


def test_a_checkpoint_removed_from_another_nfs_client_while_read_is_said_to_be_removed(tmp_path: Path) -> None:
    """On NFS, a reader on the login node whose checkpoint file the training on a compute node removes gets ESTALE
    from its next read, not ENOENT (only a file removed by the reader's own client is kept for it). No NFS here: the
    read's error is raised as NFS raises it."""
    directory, tag = tmp_path / "checkpoints", checkpoint_tag(2)
    (directory / tag).mkdir(parents=True)
    (directory / tag / "weights").write_bytes(b"weights of step 2")
    write_complete(directory, tag, {"step": 2}, {"weights": sha256_of(directory / tag / "weights")})
    remove_checkpoints(directory, [tag])
    removed = re.escape(f"checkpoint {directory / tag} was removed while it was read")
    with pytest.raises(CheckpointRemoved, match=removed), reading(directory, 2):
        raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(directory / tag / "weights"))
    with pytest.raises(PermissionError), reading(directory, 2):  # any other failure is what it is
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(directory / tag / "weights"))


def test_a_run_launched_with_relative_paths_is_exported_and_continued_from_anywhere(
    capsys, tokens: Path, tmp_path: Path, monkeypatch
) -> None:
    """Its job.yaml names the token files whose tokenizer goes with the weights: a path relative to where `corolla
    train` ran would send a reader elsewhere to other files, or none."""
    launched = tmp_path / "launched"
    launched.mkdir()
    monkeypatch.chdir(launched)
    relative = os.path.relpath(tokens, launched)
    assert main(["train", f"data.tokens_dir={relative}", "run_dir=run", *SHORT_RUN, "train.steps=1"]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["export", "hf", "run_dir=launched/run", "output_dir=hf"]) == 0, capsys.readouterr().err
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")("Bonjour", add_special_tokens=False)["input_ids"]
    continued = ["train", "init_from=launched/run", "run_dir=continued", f"data.tokens_dir={tokens}", *SHORT_RUN]
    assert main([*continued, "train.steps=1"]) == 0, capsys.readouterr().err
    job_file = launched / "run" / "job.yaml"  # as an older corolla wrote it: the path as given, no tokenizer kept
    job_file.write_text(job_file.read_text().replace(f"tokens_dir: {tokens}", f"tokens_dir: {relative}"))
    shutil.rmtree(launched / "run" / "tokenizer")
    capsys.readouterr()
    assert main(["export", "hf", "run_dir=launched/run", "output_dir=hf2"]) == 2
    relative_named = "launched/run/job.yaml names its token files by a path relative to where the run was launched"
    assert capsys.readouterr().err.startswith(f"corolla: error: {relative_named} (data.tokens_dir: {relative},")
    monkeypatch.chdir(launched)
    assert main(["export", "hf", "run_dir=run", f"output_dir={tmp_path / 'hf2'}"]) == 0
