"""`corolla train` end to end on real processes: every 3D layout gives the one-process losses; bad jobs stop early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cut_corpus
from launch.cli import main
from tokenizer.config import TokenizerConfig, TokenizerTrainJob
from tokenizer.encode import encode_corpus
from tokenizer.train import train_tokenizer

LANGUAGES = ["eng_Latn", "fra_Latn", "hin_Deva", "rus_Cyrl"]
# A few steps of a tiny BLOOM with a short sequence: enough for the optimizer and the LR schedule to act.
SHORT_RUN = ["model.seq_length=32", "train.steps=4", "train.global_batch=8", "train.micro_batch=2", "seed=7"]
LAYOUTS = {
    "TP2": ["parallel.tp=2"],
    "PP2": ["parallel.pp=2"],
    "DP2": ["parallel.dp=2"],
    "TP2xPP2": ["parallel.tp=2", "parallel.pp=2"],
    "TP2xPP2xDP2": ["parallel=3d"],
}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    corpus = cut_corpus(root / "corpus", LANGUAGES, 300)
    cfg = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=1_000_000)
    tokenizer = train_tokenizer(TokenizerTrainJob(cfg, str(corpus), str(root / "tokenizer")), log=lambda *_: None)
    encode_corpus(tokenizer, corpus, root / "tokens", workers=1, log=lambda *_: None)
    return root / "tokens"


def train(run_dir: Path, tokens: Path, *overrides: str) -> list[dict]:
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, *overrides]) == 0
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return train(tmp_path_factory.mktemp("single") / "run", tokens)


def test_one_process_learns(one_process: list[dict]) -> None:
    assert [record["step"] for record in one_process] == [1, 2, 3, 4]
    assert one_process[-1]["loss"] < one_process[0]["loss"]
    assert all(record["grad_norm"] > 0 and record["tokens_per_second"] > 0 for record in one_process)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_one_process_losses(layout: str, tokens: Path, one_process, tmp_path: Path) -> None:
    records = train(tmp_path / "run", tokens, *LAYOUTS[layout])
    assert len(records) == len(one_process)
    for record, reference in zip(records, one_process, strict=True):
        assert abs(record["loss"] - reference["loss"]) <= 1e-5, (layout, record, reference)
        assert record["lr"] == reference["lr"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["parallel.tp=3"], "model.num_heads=4 is not divisible by parallel.tp=3"),
        (["parallel.pp=3"], "parallel.pp=3 stages for 2 layers"),
        (["parallel.dp=3"], "train.global_batch=8 is not divisible by train.micro_batch=2 x dp=3"),
        (["model.vocab_size=5000"], "model.vocab_size=5000 but the tokenizer of"),
    ],
)
def test_impossible_jobs_stop_before_any_process_starts(capsys, tokens, tmp_path, overrides, expected) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("corolla: error: ") and expected in err and "\n" not in err
    assert not run_dir.exists()


def test_missing_token_files_are_named(capsys, tmp_path: Path) -> None:
    assert main(["train", f"data.tokens_dir={tmp_path}/none", f"run_dir={tmp_path}/run"]) == 2
    err = capsys.readouterr().err
    assert "none" in err and err[-1] == "\n" and err.count("\n") == 1
