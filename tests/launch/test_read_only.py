"""Shared storage a user reads but cannot write (a group's token files, an archived run), made with a read-only bind
mount, which refuses root too: what only reads works, what writes says so in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

from test_training import SHORT_RUN

from conftest import read_only
from launch.cli import main
from tokenizer.loading import load_tokenizer


def test_a_current_token_directory_on_read_only_storage_is_only_read(tokens: Path, tmp_path: Path, capsys) -> None:
    """Its check removed the token files of languages a corpus file does not hold, which were not there: a read-only
    filesystem refuses even that."""
    shared = tmp_path / "shared"
    shutil.copytree(tokens, shared)
    encode = ["tokenizer", "encode", f"tokenizer={tokens.parent / 'tokenizer'}", f"corpus={tokens.parent / 'corpus'}"]
    with read_only(shared):
        assert main([*encode, f"output_dir={shared}", "workers=1"]) == 0, capsys.readouterr().err
    assert "already encoded" in capsys.readouterr().out


def test_an_archived_run_whose_data_was_purged_is_read_exported_and_continued_from_read_only_storage(
    tokens: Path, tmp_path: Path, capsys
) -> None:
    scratch, archive = tmp_path / "scratch", tmp_path / "archive"
    scratch.mkdir()
    # A SentencePiece model by a name of its own, as one made elsewhere is: the run keeps it as tokenizer.model.
    shutil.copy2(tokens.parent / "tokenizer" / "tokenizer.model", scratch / "spm-2k.model")
    data = [f"data.corpus={tokens.parent / 'corpus'}", f"data.tokenizer_dir={scratch / 'spm-2k.model'}"]
    data += [f"data.cache_dir={scratch / 'cache'}", "data.tokens_dir=null"]
    run = archive / "run"
    assert main(["train", *data, f"run_dir={run}", *SHORT_RUN, "train.steps=2", "train.exit_after=1"]) == 0
    assert main(["train", *data, f"run_dir={run}", *SHORT_RUN, "train.steps=2"]) == 0  # resumed
    trained_on = load_tokenizer(scratch / "spm-2k.model").fingerprint
    assert load_tokenizer(run / "tokenizer").fingerprint == trained_on
    shutil.rmtree(scratch)  # the scratch filesystem's purge: the token files and their tokenizer are gone
    capsys.readouterr()
    with read_only(archive):
        assert main(["status", str(run)]) == 0
        assert main(["checkpoint", "verify", str(run)]) == 0
        assert main(["export", "hf", f"run_dir={run}", f"output_dir={tmp_path / 'hf'}"]) == 0
        assert load_tokenizer(tmp_path / "hf").fingerprint == trained_on  # the run's own copy
        continued = [f"init_from={run}", f"run_dir={tmp_path / 'continued'}", f"data.tokens_dir={tokens}"]
        assert main(["train", *continued, *SHORT_RUN, "train.steps=1"]) == 0
        capsys.readouterr()
        # What writes: the run itself, said as such rather than by the lock's temporary; a new output, by its path.
        assert main(["tracking", "sync", str(run)]) == 2
        assert capsys.readouterr().err == (
            f"corolla: error: {run} cannot be written (a read-only filesystem), which this command does: run it on "
            f"a copy you can write (cp -a {run} DIR)\n"
        )
        assert main(["export", "hf", f"run_dir={run}", f"output_dir={archive / 'hf'}"]) == 2
        assert capsys.readouterr().err == (
            f"corolla: error: {archive / 'hf'} is on a read-only filesystem: give a path where corolla can write\n"
        )
