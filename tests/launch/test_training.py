"""`corolla train` end to end on real processes: every 3D layout gives the one-process losses; bad jobs stop early."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from run_copies import stopped_copy

from conftest import SHARED_DATA, TRAINING_LANGUAGES, cut_corpus
from launch.cli import main
from launch.plan.run_plan import read_plans
from launch.rundir.run_record import recorded_run

# A few steps of a tiny BLOOM with a short sequence: enough for the optimizer and the LR schedule to act, and for
# gradient clipping (the gradient norm is about 0.8).
SHORT_RUN = [
    "model.seq_length=32",
    "train.steps=4",
    "train.global_batch=8",
    "train.micro_batch=2",
    "seed=7",
    "train.grad_clip=0.5",
]
LAYOUTS = {
    "TP2": ["parallel.tp=2"],
    "PP2": ["parallel.pp=2"],
    "DP2": ["parallel.dp=2"],
    "TP2xPP2xDP2": ["parallel=3d"],  # every mix of two at once too
}


def train(run_dir: Path, tokens: Path, *overrides: str) -> list[dict]:
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, *overrides]) == 0
    return records(run_dir)


def records(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def whole_and_resumed(tokens: Path, tmp_path: Path, *overrides: str) -> tuple[list[dict], list[dict]]:
    """The records of a run saved at step 2, and of a copy of it stopped there (run_copies.py) and resumed."""
    resumable = [*overrides, "train.checkpoint_interval=2"]
    whole = train(tmp_path / "whole", tokens, *resumable)
    return whole, train(stopped_copy(tmp_path / "whole", tmp_path / "stopped", 2), tokens, *resumable)


@pytest.fixture(scope="module")
def one_process_run(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "run"
    train(run_dir, tokens)
    return run_dir


@pytest.fixture(scope="module")
def one_process(one_process_run: Path) -> list[dict]:
    return records(one_process_run)


def test_one_process_learns(one_process: list[dict], tokens: Path, tmp_path: Path) -> None:
    assert [record["step"] for record in one_process] == [1, 2, 3, 4]
    assert all(record["grad_norm"] > 0 and record["tokens_per_second"] > 0 for record in one_process)
    # Four steps learn less than batches of other languages differ; ten at a higher rate learn clearly more.
    longer = train(tmp_path / "run", tokens, "train.steps=10", "train.lr=3e-3", "train.min_lr=3e-4")
    losses = [record["loss"] for record in longer]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses


def test_a_local_run_leaves_nothing_of_torchrun_in_the_temporary_directory(tokens, tmp_path, monkeypatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    train(tmp_path / "run", tokens, "train.steps=1", "parallel.dp=2")
    assert not list(scratch.glob("torchelastic_*"))


def test_validation_loss_per_language_is_logged_at_the_end(one_process: list[dict], one_process_run: Path) -> None:
    run_dir = one_process_run
    [validation] = records(run_dir, "validation.jsonl")  # train.eval_interval=10 > train.steps=4: at the end only
    assert validation["step"] == 4 and sorted(validation["loss"]) == TRAINING_LANGUAGES
    [plan] = read_plans(run_dir)
    assert plan.validation_samples == dict.fromkeys(TRAINING_LANGUAGES, 4)  # train/tiny.yaml's eval_samples
    assert all(abs(loss - one_process[-1]["loss"]) < 1.0 for loss in validation["loss"].values())
    tracked = asdict(recorded_run(run_dir))
    client = MlflowClient(tracked["tracking_uri"])
    for language, loss in validation["loss"].items():
        [metric] = client.get_metric_history(tracked["run_id"], f"val_loss/{language}")
        assert (metric.step, metric.value) == (4, pytest.approx(loss))
    [mean] = client.get_metric_history(tracked["run_id"], "val_loss")
    assert mean.value == pytest.approx(sum(validation["loss"].values()) / len(TRAINING_LANGUAGES))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_one_process_losses(layout, tokens, one_process, one_process_run, tmp_path) -> None:
    run_dir = tmp_path / "run"
    losses = train(run_dir, tokens, *LAYOUTS[layout])
    assert len(losses) == len(one_process)
    for record, reference in zip(losses, one_process, strict=True):
        assert abs(record["loss"] - reference["loss"]) <= 1e-5, (layout, record, reference)
        assert record["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5), (layout, record, reference)
        assert record["lr"] == reference["lr"]
    [validation], [reference] = records(run_dir, "validation.jsonl"), records(one_process_run, "validation.jsonl")
    assert validation["loss"] == pytest.approx(reference["loss"], abs=1e-5)


def test_activation_checkpointing_recomputes_the_attention_dropout_masks_of_the_forward(tokens, tmp_path) -> None:
    """The recompute draws attention dropout from the tensor-parallel RNG as it stood before the forward: the same
    losses and gradient norms as without recomputation. (DeepSpeed restored a tracker of its own, not megatron's that
    dropout draws from: the recompute drew other masks and shifted every later micro-batch's, from step 1 on.)"""
    dropout = ["model.attention_dropout=0.3", "train.steps=3"]
    kept = train(tmp_path / "kept", tokens, *dropout)
    recomputed = train(tmp_path / "recomputed", tokens, *dropout, "parallel.activation_checkpointing=true")
    assert [(r["loss"], r["grad_norm"]) for r in recomputed] == [(r["loss"], r["grad_norm"]) for r in kept]


def test_batch_rampup_over_stages_and_replicas_gives_the_one_process_losses_and_resumes(tokens, tmp_path) -> None:
    # Batches 4, 4, 6, 6, 8, 8: start 4, +2 every 16 / 2 samples; micro-batch 1 so that DP=2 divides every size.
    rampup = [
        "train.steps=6",
        "train.micro_batch=1",
        "train.rampup.start=4",
        "train.rampup.increment=2",
        "train.rampup.samples=16",
    ]
    single = train(tmp_path / "single", tokens, *rampup)
    assert [record["batch_size"] for record in single] == [4, 4, 6, 6, 8, 8]
    stopped = train(tmp_path / "pp-dp", tokens, *rampup, "parallel.pp=2", "parallel.dp=2", "train.exit_after=3")
    assert [record["step"] for record in stopped] == [1, 2, 3]
    resumed = train(tmp_path / "pp-dp", tokens, *rampup, "parallel.pp=2", "parallel.dp=2")
    assert [record["batch_size"] for record in resumed] == [4, 4, 6, 6, 8, 8]
    for record, reference in zip(resumed, single, strict=True):
        assert abs(record["loss"] - reference["loss"]) <= 1e-5, (record, reference)


def test_a_resume_with_another_global_batch_goes_on_from_the_samples_already_trained(tokens, tmp_path) -> None:
    """2 steps of 8 sequences, resumed with train.global_batch=16: steps 3 and 4 train sequences 16-47, as a ramp-up
    from 8 to 16 after 16 samples does, not 32-63 (step x the new batch), which skipped 16 sequences."""
    rampup = ["train.global_batch=16", "train.rampup.start=8", "train.rampup.increment=8", "train.rampup.samples=16"]
    reference = train(tmp_path / "rampup", tokens, *rampup)
    assert [record["batch_size"] for record in reference] == [8, 8, 16, 16]
    train(tmp_path / "run", tokens, "train.exit_after=2")
    resumed = train(tmp_path / "run", tokens, "train.global_batch=16")
    assert [record["batch_size"] for record in resumed] == [8, 8, 16, 16]
    for record, expected in zip(resumed, reference, strict=True):
        assert abs(record["loss"] - expected["loss"]) <= 1e-5, (record, expected)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["parallel.tp=3"], "model.num_heads=4 is not divisible by parallel.tp=3"),
        (["parallel.pp=3"], "parallel.pp=3 stages for 2 layers"),
        (["parallel.dp=3"], "train.global_batch=8 is not divisible by train.micro_batch=2 x dp=3"),
        (
            ["parallel.dp=2", "train.rampup.start=4", "train.rampup.increment=2", "train.rampup.samples=16"],
            "ramp-up batches (train.rampup.start=4, increment=2) are not all multiples of train.micro_batch x dp = 4: "
            "make both multiples of it, or train.rampup.start=0 for no ramp-up",
        ),
        (["train.eval_samples=3"], "train.eval_samples=3 is not divisible by train.micro_batch x dp = 2"),
        (["data.validation_documents=0"], "data.validation_documents=0 holds nothing out for validation"),
        (["model.vocab_size=5000"], "model.vocab_size=5000 but the tokenizer of"),
        (["model.num_layers=4", "parallel.pp=4"], "parallel.pp=4 leaves stage 3 with the output embedding alone"),
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


def test_with_no_data_arguments_train_reads_the_sample_corpus(capsys) -> None:
    assert main(["train", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "tokens_dir: null" in out and f"corpus: {(SHARED_DATA / 'multilingual').resolve()}" in out
    assert "sampling: parity" in out  # the default tokenizer balances languages


def test_token_files_are_built_on_first_use_cached_and_built_anew_when_the_corpus_changes(capsys, tmp_path) -> None:
    corpus = cut_corpus(tmp_path / "corpus", TRAINING_LANGUAGES, 300)
    tokenizer = ["tokenizer=tiny", "tokenizer.vocab_size=2000", "tokenizer.character_coverage=0.99"]
    cached = [f"data.corpus={corpus}", f"data.cache_dir={tmp_path / 'cache'}", *tokenizer, *SHORT_RUN, "train.steps=1"]

    def train_from_corpus(run_dir: Path) -> str:
        capsys.readouterr()
        assert main(["train", f"run_dir={run_dir}", *cached]) == 0
        return capsys.readouterr().out

    assert "training on" in train_from_corpus(tmp_path / "first")
    [tokens_dir] = (tmp_path / "cache").glob("*/tokens")
    built = {path: path.stat().st_mtime_ns for path in tokens_dir.iterdir()}
    assert "tokenizer: cached" in train_from_corpus(tmp_path / "second")
    assert {path: path.stat().st_mtime_ns for path in tokens_dir.iterdir()} == built
    assert f"tokens_dir: {tokens_dir}" in (tmp_path / "second" / "job.yaml").read_text()
    [model] = (tmp_path / "cache").glob("*/tokenizer/tokenizer.model")
    model.write_bytes(b"damaged")  # the cache's to make again: the same tokenizer, whose token files stay current
    out = train_from_corpus(tmp_path / "damaged")
    assert "tokenizer: training on" in out
    assert {path: path.stat().st_mtime_ns for path in tokens_dir.iterdir()} == built
    [cut] = tokens_dir.glob("eng_Latn/*.bin")
    cut.write_bytes(cut.read_bytes()[:100])  # the cache's too: a dry run says the job is valid, a run encodes again
    capsys.readouterr()
    assert main(["train", "--dry-run", f"run_dir={tmp_path / 'cut'}", *cached]) == 0
    assert "dry run: the job is valid" in capsys.readouterr().out
    train_from_corpus(tmp_path / "cut")
    assert cut.stat().st_size > 100

    # An edited corpus gets an entry of its own: the runs trained on it as it was find their token files unchanged.
    built = {path: path.stat().st_mtime_ns for path in tokens_dir.iterdir()}
    with (corpus / "eng_Latn.txt").open("a") as text:
        text.write("A sentence the cached tokenizer never saw.\n")
    assert "training on" in train_from_corpus(tmp_path / "third")
    [edited] = set((tmp_path / "cache").glob("*/tokens")) - {tokens_dir}
    assert f"tokens_dir: {edited}" in (tmp_path / "third" / "job.yaml").read_text()
    assert json.loads((edited / "manifest.json").read_text())["languages"]["eng_Latn"]["documents"] == 301
    assert {path: path.stat().st_mtime_ns for path in tokens_dir.iterdir()} == built


def test_bf16_without_zero_resumes_bit_identically(tokens: Path, tmp_path: Path) -> None:
    # DeepSpeed's own bf16 optimizer (no ZeRO) keeps the fp32 masters; corolla's checkpoint carries them.
    bf16 = ["train.precision=bf16", "parallel.zero_stage=0", "model.hidden_dropout=0.1"]
    whole, resumed = whole_and_resumed(tokens, tmp_path, *bf16)
    assert [(r["loss"], r["grad_norm"]) for r in resumed] == [(r["loss"], r["grad_norm"]) for r in whole]


def test_bf16_over_data_parallel_ranks_resumes_bit_identically_and_on_another_layout(tokens, tmp_path) -> None:
    """ZeRO-1 in bf16 runs DeepSpeed's bf16 optimizer, its fp32 masters and moments split over DP: corolla's
    checkpoint gathers them by parameter, and a resume on the same ranks, or on one, scatters them again."""
    bf16 = ["train.precision=bf16", "parallel.dp=2"]
    whole, resumed = whole_and_resumed(tokens, tmp_path, *bf16)
    assert [(r["loss"], r["grad_norm"]) for r in resumed] == [(r["loss"], r["grad_norm"]) for r in whole]
    one_rank = stopped_copy(tmp_path / "whole", tmp_path / "one-rank", 2)
    alone = train(one_rank, tokens, "train.precision=bf16", "train.checkpoint_interval=2", "parallel.dp=1")
    assert [r["step"] for r in alone] == [r["step"] for r in whole]
    for record, reference in zip(alone[2:], whole[2:], strict=True):
        assert abs(record["loss"] - reference["loss"]) < 0.02, (record, reference)


def test_bf16_trains_close_to_fp32_in_every_layout_and_resumes_bit_identically(
    capfd, tokens, one_process, tmp_path
) -> None:
    bf16 = ["train.precision=bf16", "model.hidden_dropout=0.1"]
    whole, resumed = whole_and_resumed(tokens, tmp_path, *bf16)
    assert [(r["loss"], r["grad_norm"]) for r in resumed] == [(r["loss"], r["grad_norm"]) for r in whole]
    capfd.readouterr()
    three_d = train(tmp_path / "3d", tokens, *bf16, "parallel=3d")
    # Eight ranks say nothing of the libraries' that tells the user nothing (DeepSpeed's stage listing, torch's
    # warnings of what DeepSpeed calls), and one node says once that DeepSpeed found no GPU on it.
    said = "".join(capfd.readouterr())
    assert said.count("Setting accelerator to CPU") == 1
    assert not [noise for noise in ("Warning:", "Using topology", "stage=0", "untested optimizer") if noise in said]
    for record, reference in zip(three_d, one_process, strict=True):
        assert abs(record["loss"] - reference["loss"]) < 0.05, (record, reference)
        # DeepSpeed's bf16 optimizer clips by a norm that counts each TP shard and pipeline stage once
        assert record["grad_norm"] == pytest.approx(reference["grad_norm"], rel=0.02), (record, reference)
