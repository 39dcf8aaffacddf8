"""A second `corolla pipeline` on a run_dir whose pipeline runs, the same or with other settings: refused in one line
before it changes anything the first one trains on (it used to train the tokenizer and encode the token files anew
under the running training, whose export then shipped the new tokenizer with the old weights)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO_ROOT, cut_corpus
from launch.cli import main
from launch.train.faults import STEP_SECONDS
from tokenizer.encode import encoding_alone

PIPELINE = [
    "tokenizer=tiny",
    "tokenizer.vocab_size=2000",
    "tokenizer.character_coverage=0.99",
    "train=tiny",
    "train.steps=30",
    "train.eval_samples=4",
    "model.seq_length=32",
    "parallel=single",
]


def test_a_second_pipeline_on_a_running_one_changes_nothing_under_it(capsys, tmp_path: Path) -> None:
    corpus = cut_corpus(tmp_path / "corpus", ["eng_Latn", "fra_Latn", "hin_Deva"], 300)
    run_dir = tmp_path / "run"
    arguments = ["pipeline", *PIPELINE, f"data.corpus={corpus}", f"run_dir={run_dir}"]
    command = [sys.executable, "-m", "launch.cli", *arguments]
    environment = {**os.environ, STEP_SECONDS: "1"}
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "train" / "metrics.jsonl").is_file() and time.monotonic() < deadline:
            assert first.poll() is None, "the first pipeline ended before its training"
            time.sleep(0.2)
        tokenizer = (run_dir / "tokenizer" / "tokenizer.model").read_bytes()
        capsys.readouterr()

        assert main(arguments) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"corolla: error: run_dir={run_dir} is being run or submitted by another `corolla pipeline`: wait for it "
            "to end"
        )
        assert main([*arguments, "tokenizer.vocab_size=1900"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"corolla: error: {run_dir / 'train'} is being trained by process {first.pid} on ")
        assert err.endswith(
            "this pipeline would make its tokenizer or token files anew under it; wait for it to end, or give a new "
            "run_dir"
        )
        assert socket.gethostname() in err
        assert (run_dir / "tokenizer" / "tokenizer.model").read_bytes() == tokenizer
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)


def test_a_pipelines_encoding_holds_its_token_files_against_another_one(capsys, tmp_path: Path) -> None:
    """The local pipeline encoded without the token files' lock: an encoding into them meanwhile wrote the same files,
    and a training on them was told they had no manifest rather than to wait."""
    corpus = cut_corpus(tmp_path / "corpus", ["eng_Latn", "fra_Latn"], 100)
    run_dir = tmp_path / "run"
    with encoding_alone(run_dir / "tokens"):  # as `corolla tokenizer encode output_dir=RUN_DIR/tokens` holds them
        assert main(["pipeline", *PIPELINE, f"data.corpus={corpus}", f"run_dir={run_dir}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"corolla: error: output_dir {run_dir / 'tokens'} is being encoded by another command: wait for it to end"
    )
    assert list((run_dir / "tokens").iterdir()) == []
