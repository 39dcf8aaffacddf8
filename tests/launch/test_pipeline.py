"""`corolla pipeline`, the README's main job, on a small cut of the sample data: every stage, then a rerun that
finds everything current."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import cut_corpus
from launch.cli import main

LANGUAGES = ["eng_Latn", "fra_Latn", "hin_Deva", "zho_Hans"]
SMALL = [
    "tokenizer=tiny",
    "tokenizer.vocab_size=2000",
    "tokenizer.character_coverage=0.99",
    "tokenizer.sampling=parity",
    "tokenizer.parity_rounds=2",
    "parallel=single",
    "train.steps=2",
    "model.seq_length=32",
    "data.validation_documents=5",
]


def test_the_main_job_runs_every_stage_and_then_finds_them_current(capsys, tmp_path: Path) -> None:
    corpus = cut_corpus(tmp_path / "corpus", LANGUAGES, 300)
    parallel = cut_corpus(tmp_path / "parallel", LANGUAGES, 60)
    run_dir = tmp_path / "demo"
    args = [
        "pipeline",
        f"data.corpus={corpus}",
        f"parallel_set={parallel}",
        f"tokenizer.parity_set={parallel}",
        f"run_dir={run_dir}",
        *SMALL,
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    for path in (
        "tokenizer/tokenizer.model",
        "tokenizer-eval/premium.png",
        "tokens/manifest.json",
        "train/checkpoints/latest",
        "train/run.json",
        "hf/config.json",
        "hf/tokenizer.json",
    ):
        assert (run_dir / path).is_file(), path
    assert "parity did not tune on" in first and "MLflow run" in first
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "up to date" in second and "already trained to step 2 of 2" in second
    assert json.loads((run_dir / "hf" / "config.json").read_text())["n_layer"] == 2
