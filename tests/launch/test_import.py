"""`corolla import hf` and `corolla train init_from=...`: a small BLOOM made here with `transformers` (random weights,
nothing downloaded), once with a corolla SentencePiece tokenizer and once with a byte-level BPE `tokenizer.json` as
BLOOM's, imported exactly, trained on as `transformers` trains it, and refused in one line when it cannot be."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from distributed import run_ranks
from megatron.core import parallel_state
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file
from test_training import records
from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM

from conftest import (
    MULTILINGUAL,
    REPO_ROOT,
    SHARED_DATA,
    TRAINING_LANGUAGES,
    byte_level_bpe,
    cut_corpus,
    small_filesystem,
)
from launch.cli import main
from launch.config.job_file import read_job
from launch.data.blend import BlendedDataset
from launch.data.corpus import TokenCorpus
from launch.plan.schedules import lr_at
from launch.plan.weights import import_record, weights_of, write_import_record
from launch.rundir.checkpoints import CheckpointError
from launch.rundir.lock import holding
from launch.rundir.run_record import recorded_run
from launch.train import import_hf
from launch.train.checkpoint import load_weights
from launch.train.export import full_state_dict
from model.bloom import BloomModel, parallel_config

SHAPE = {"hidden_size": 64, "n_layer": 4, "n_head": 4, "seq_length": 64}
RUN = ["model.seq_length=32", "train.steps=3", "train.global_batch=8", "train.micro_batch=2", "train.warmup_steps=1"]


def make_bloom(directory: Path, rows: int, tokenizer_files: list[Path], safetensors: bool) -> Path:
    """A random BloomForCausalLM with `rows` embedding rows, LayerNorms and biases not at their initial values."""
    torch.manual_seed(3)
    model = BloomForCausalLM(BloomConfig(vocab_size=rows, **SHAPE))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(directory, max_shard_size="300KB", safe_serialization=safetensors)
    for path in tokenizer_files:
        shutil.copy2(path, directory / path.name)
    return directory


@pytest.fixture(scope="module")
def corolla_bloom(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """With corolla's 2,000-token tokenizer (both its files) and 2,048 embedding rows, in sharded safetensors."""
    tokenizer = tokens.parent / "tokenizer"
    files = [tokenizer / name for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")]
    return make_bloom(tmp_path_factory.mktemp("corolla-bloom"), 2048, files, safetensors=True)


@pytest.fixture(scope="module")
def bpe_bloom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """With a 1,000-token byte-level BPE `tokenizer.json` only and as many rows, in sharded PyTorch files."""
    texts = []
    for language in TRAINING_LANGUAGES:
        texts += (MULTILINGUAL / f"{language}.txt").read_text(encoding="utf-8").splitlines()[:300]
    tokenizer = byte_level_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json", texts)
    return make_bloom(tmp_path_factory.mktemp("bpe-bloom"), 1000, [tokenizer], safetensors=False)


@pytest.mark.parametrize("bloom", ["corolla_bloom", "bpe_bloom"])
def test_import_then_export_gives_back_every_tensor_bit_for_bit(bloom: str, request, tmp_path: Path) -> None:
    hf_dir = request.getfixturevalue(bloom)
    assert main(["import", "hf", f"hf_dir={hf_dir}", f"run_dir={tmp_path / 'run'}"]) == 0
    assert main(["import", "hf", f"hf_dir={hf_dir}", f"run_dir={tmp_path / 'run'}"]) == 0  # nothing to do
    assert main(["export", "hf", f"run_dir={tmp_path / 'run'}", f"output_dir={tmp_path / 'hf'}"]) == 0
    original = BloomForCausalLM.from_pretrained(hf_dir).state_dict()
    exported = BloomForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    assert original.keys() == exported.keys()
    assert all(torch.equal(original[name], exported[name]) for name in original)
    tokenizer = "tokenizer.model" if bloom == "corolla_bloom" else "tokenizer.json"
    assert (tmp_path / "hf" / tokenizer).read_bytes() == (hf_dir / tokenizer).read_bytes()
    # transformers' tokenizer of it knows the model's special tokens and length, a tokenizer.json alone too.
    loaded = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (loaded.unk_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (0, 1, 2, 3)
    assert loaded.model_max_length == SHAPE["seq_length"]


def test_an_export_onto_a_full_disk_is_said_in_one_line(capsys, bpe_bloom: Path, tmp_path: Path) -> None:
    run_dir, whole = tmp_path / "run", tmp_path / "whole"
    assert main(["import", "hf", f"hf_dir={bpe_bloom}", f"run_dir={run_dir}"]) == 0
    assert main(["export", "hf", f"run_dir={run_dir}", f"output_dir={whole}"]) == 0
    pages = [-(-path.stat().st_size // 4096) * 4 for path in whole.iterdir() if path.name != "tokenizer.json"]
    capsys.readouterr()
    with small_filesystem(tmp_path / "disk", f"{sum(pages) + 16}k") as disk:  # room for the weights, not the tokenizer
        assert main(["export", "hf", f"run_dir={run_dir}", f"output_dir={disk / 'hf'}"]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' progress bar
        # Named by the file's place in the output, not in the hidden staging area beside it.
        assert line == f"corolla: error: no space left on the filesystem of {disk}/hf/tokenizer.json: free some, " + (
            "or give a path on another one"
        )
        assert not list(disk.iterdir())
    with small_filesystem(tmp_path / "smaller", f"{sum(pages) // 2}k") as disk:  # safetensors' own error
        assert main(["export", "hf", f"run_dir={run_dir}", f"output_dir={disk / 'hf'}"]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "corolla: error: no space left on a filesystem this command writes to: free some there, or give its "
            "output paths on another one"
        )
        assert not list(disk.iterdir())


def test_an_import_onto_a_full_disk_is_said_in_one_line_and_leaves_nothing(
    capsys, bpe_bloom: Path, tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "disk", "200k") as disk:  # torch.save's error for it: "unexpected pos"
        assert main(["import", "hf", f"hf_dir={bpe_bloom}", f"run_dir={disk / 'run'}"]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"corolla: error: no space left on the filesystem of {disk}/run"), error
        assert error.endswith(".pt: free some, or give a path on another one\n") and error.count("\n") == 1
        assert not list(disk.iterdir())


@pytest.mark.parametrize("other", ["bpe_bloom", "corolla_bloom"], ids=["the-same-import", "another-import"])
def test_an_import_that_another_puts_in_its_run_dir_first_is_that_import_or_said(
    capsys, monkeypatch, bpe_bloom: Path, other: str, request, tmp_path: Path
) -> None:
    """Two imports into one run_dir at once: the one that finishes second finds the other's there, its own import if
    of the same model (nothing to do, as a rerun), else a line saying so."""
    run_dir, other_dir = tmp_path / "run", request.getfixturevalue(other)

    def other_first(*arguments: object) -> None:  # another corolla's import finishes while this one is built
        command = [sys.executable, "-m", "launch.cli", "import", "hf", f"hf_dir={other_dir}", f"run_dir={run_dir}"]
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)
        write_import_record(*arguments)

    monkeypatch.setattr(import_hf, "write_import_record", other_first)
    code = main(["import", "hf", f"hf_dir={bpe_bloom}", f"run_dir={run_dir}"])
    out, err = capsys.readouterr()
    if other == "bpe_bloom":
        assert code == 0 and out.strip().endswith("by another corolla meanwhile: nothing to do"), err
    else:
        assert code == 2 and err.strip().splitlines()[-1] == (  # after the progress bar of the fixture's making
            f"corolla: error: run_dir={run_dir} exists and holds something else: import into a new run_dir"
        )
    assert import_record(run_dir)["source"]["hf_dir"] == str(other_dir.resolve())  # the other's, whole
    assert [path.name for path in tmp_path.iterdir()] == ["run"]


def _corolla_logits(run_dir: Path, batch: torch.Tensor) -> torch.Tensor:
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
    try:
        weights = weights_of(run_dir)
        model = BloomModel(weights.model, parallel_config(), seed=1)
        model.load_state_dict(full_state_dict(weights.checkpoints, 0, weights.model), strict=False)
        with torch.no_grad():
            return model(batch)
    finally:
        parallel_state.destroy_model_parallel()


def test_the_imported_model_computes_the_logits_of_transformers(corolla_bloom: Path, tmp_path: Path) -> None:
    assert main(["import", "hf", f"hf_dir={corolla_bloom}", f"run_dir={tmp_path / 'run'}"]) == 0
    batch = torch.randint(0, 2000, (3, 48), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = BloomForCausalLM.from_pretrained(corolla_bloom).eval()(batch).logits
    (logits,) = run_ranks(1, _corolla_logits, tmp_path / "run", batch)
    assert logits.shape == expected.shape == (3, 48, 2048)
    assert (logits - expected).abs().max() <= 1e-5


def transformers_losses(hf_dir: Path, run_dir: Path) -> list[float]:
    """The same steps in `transformers`: the run's batches, AdamW (no decay on 1-D weights), clipping, LR schedule."""
    job = read_job(run_dir / "job.yaml")
    train = job.train
    corpus = TokenCorpus(job.data.tokens_dir, job.data.validation_documents)
    dataset = BlendedDataset(corpus, job.data, job.model.seq_length)
    model = BloomForCausalLM.from_pretrained(hf_dir).train()
    groups = [
        {"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps)
    losses = []
    for step in range(train.steps):
        samples = range(step * train.global_batch, (step + 1) * train.global_batch)
        batch = torch.from_numpy(np.stack([dataset[index] for index in samples]).astype(np.int64))
        logits = model(batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, train)
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    ("bloom", "layout"),
    [
        ("corolla_bloom", ["parallel.tp=1", "parallel.pp=1"]),
        ("corolla_bloom", ["parallel.tp=2", "parallel.pp=2", "parallel.dp=2"]),
        ("bpe_bloom", ["parallel.tp=1", "parallel.pp=2", "parallel.dp=2"]),
    ],
)
def test_continued_training_takes_the_steps_transformers_takes(
    bloom: str, layout: list[str], request, tokens: Path, tmp_path: Path
) -> None:
    """The first step's loss is the imported weights' on its batch (the logits under that layout); the next ones
    follow the optimizer. The corolla tokenizer's model trains on the token files of its tokenizer; the BPE one on
    a corpus encoded with its own tokenizer.json."""
    hf_dir = request.getfixturevalue(bloom)
    data = [f"data.tokens_dir={tokens}"] if bloom == "corolla_bloom" else [f"data.corpus={tokens.parent / 'corpus'}"]
    run_dir = tmp_path / "run"
    arguments = [f"init_from={hf_dir}", f"run_dir={run_dir}", f"data.cache_dir={tmp_path / 'cache'}", *data]
    assert main(["train", *arguments, *RUN, *layout]) == 0
    losses = [record["loss"] for record in records(run_dir)]
    expected = transformers_losses(hf_dir, run_dir)
    assert abs(losses[0] - expected[0]) <= 1e-5, (losses, expected)
    assert np.allclose(losses, expected, rtol=0, atol=1e-4), (losses, expected)

    job = read_job(run_dir / "job.yaml")
    assert job.model.num_layers == 4 and job.model.embedding_rows == (2048 if bloom == "corolla_bloom" else 1000)
    tracked = recorded_run(run_dir)
    tags = MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).data.tags
    assert tags["corolla.init_from"] == str(hf_dir.resolve()) and tags["corolla.init_step"] == "0"


def _broken_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _swap_tokens(tokenizer_json: Path, first: str, second: str) -> None:
    tokenizer = json.loads(tokenizer_json.read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    for added in tokenizer["added_tokens"]:
        added["id"] = vocab[added["content"]]
    tokenizer_json.write_text(json.dumps(tokenizer))


def _config(hf_dir: Path, **changes: object) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, **changes}))


def test_an_import_that_cannot_be_says_why_in_one_line_and_leaves_no_run_directory(
    capsys, corolla_bloom: Path, bpe_bloom: Path, tokens: Path, tmp_path: Path
) -> None:
    missing = _broken_copy(corolla_bloom, tmp_path / "missing")
    next(missing.glob("model-00002-of-*.safetensors")).unlink()
    other = _broken_copy(corolla_bloom, tmp_path / "other")
    _config(other, model_type="gpt2")
    mismatched = _broken_copy(corolla_bloom, tmp_path / "mismatched")
    _config(mismatched, n_layer=5)
    garbled = _broken_copy(corolla_bloom, tmp_path / "garbled")
    (garbled / "config.json").write_text('{"n_layer": 2,\n')
    listed = _broken_copy(corolla_bloom, tmp_path / "listed")  # JSON, but not a config: each a traceback once
    (listed / "config.json").write_text("[1, 2]")
    shapeless = _broken_copy(corolla_bloom, tmp_path / "shapeless")
    _config(shapeless, hidden_size=None, n_embed=None)
    worded = _broken_copy(corolla_bloom, tmp_path / "worded")
    _config(worded, n_layer="four", layer_norm_epsilon=1e-5)
    cut = _broken_copy(corolla_bloom, tmp_path / "cut")
    weights = next(cut.glob("model-00001-of-*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    swapped = _broken_copy(bpe_bloom, tmp_path / "swapped")  # <s> and </s> at each other's ids: exported wrong
    _swap_tokens(swapped / "tokenizer.json", "<s>", "</s>")
    poisoned = _broken_copy(corolla_bloom, tmp_path / "poisoned")  # imported, its first step's loss NaN
    shard = next(poisoned.glob("model-00001-of-*.safetensors"))
    tensors = load_file(shard)
    spoiled = sorted(tensors)[0]
    tensors[spoiled].view(-1)[0] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    narrow = _broken_copy(bpe_bloom, tmp_path / "narrow")
    (narrow / "tokenizer.json").unlink()
    shutil.copy2(tokens.parent / "tokenizer" / "tokenizer.model", narrow)  # 2,000 tokens, 1,000 rows
    cases = {
        missing: "lacks model-00002-of-",
        other: "holds a gpt2 model (config.json model_type), not BLOOM",
        mismatched: "its weights do not match its config.json (5 layers): the model lacks blocks.4.",
        narrow: "its tokenizer has 2000 tokens but the embedding only 1000 rows",
        swapped: "its tokenizer has '</s>' at id 1, where corolla keeps <s> (<unk> 0, <s> 1, </s> 2, <pad> 3",
        garbled: f"{garbled / 'config.json'} is not valid JSON (Expecting property name enclosed in double quotes",
        cut: f"weight file {weights} cannot be read (",
        poisoned: f"weight {spoiled} in {shard} holds NaN or infinite values: no run can start from it;",
        listed: "its config.json holds list, not a JSON object: restore config.json from the model's source",
        shapeless: "its config.json gives hidden_size=None, not a positive integer: restore config.json from the",
        worded: "its config.json gives n_layer='four', not a positive integer",
    }
    for hf_dir, reason in cases.items():
        run_dir = tmp_path / f"run-{hf_dir.name}"
        assert main(["import", "hf", f"hf_dir={hf_dir}", f"run_dir={run_dir}"]) == 2
        error = capsys.readouterr().err
        assert reason in error and error.count("\n") == 1, error
        assert not run_dir.exists() and not list(tmp_path.glob("*.importing"))

    # An imported model is trained from, not in; and only on token files of its own tokenizer.
    imported = tmp_path / "an import"
    assert main(["import", "hf", f"hf_dir={bpe_bloom}", f"run_dir={imported}"]) == 0
    # The line to paste, as a shell reads it: the path's space split it in two.
    pasted = shlex.split(capsys.readouterr().out.split("train from it with `corolla ")[1].split("`")[0])
    assert pasted[0] == "train" and main([*pasted, "--cfg"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["init_from"] == str(imported)
    assert main(["train", f"run_dir={imported}", f"data.tokens_dir={tokens}"]) == 2
    said = capsys.readouterr().err.split("train from it with ")[1].split(" run_dir=NEW")[0]
    assert shlex.split(said) == [f"init_from='{imported}'"]  # quoted for the shell and for Hydra: it holds a space
    new_run = tmp_path / "new"
    assert main(["train", f"init_from={imported}", f"run_dir={new_run}", f"data.tokens_dir={tokens}"]) == 2
    assert f"the token files in {tokens} were encoded with another tokenizer than that of init_from's weights" in (
        capsys.readouterr().err
    )
    # Weights a live process writes (a run that trains): the checkpoint a new run would start from goes meanwhile.
    with holding(imported):
        assert main(["train", f"init_from={imported}", f"run_dir={new_run}", f"data.tokens_dir={tokens}"]) == 2
    assert f"init_from: {imported} is being written by " in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"step-00000018 is gone \(its run saved newer ones, or it was deleted\)"):
        load_weights(None, imported / "checkpoints" / "step-00000018")  # as the ranks found it, launched before
    configless = _broken_copy(bpe_bloom, tmp_path / "configless")
    (configless / "config.json").unlink()
    for source, reason in {
        tmp_path / "nowhere": "does not exist: pass a run directory, an imported model or a Hugging Face model "
        "directory",
        configless: "holds Hugging Face weights but no config.json: restore it from the model's source",
    }.items():
        assert main(["train", f"init_from={source}", f"run_dir={new_run}", f"data.tokens_dir={tokens}"]) == 2
        assert capsys.readouterr().err == f"corolla: error: {source} {reason}\n"
    assert not new_run.exists()


def test_init_from_weights_whose_bytes_changed_trains_nothing_until_they_are_restored(
    capsys, bpe_bloom: Path, tokens: Path, tmp_path: Path
) -> None:
    """A checkpoint file of the same size but other bytes (a flipped bit on disk) loads; its hash says it is not what
    was saved, as for a resume, and the run learns nothing from it."""
    imported, run_dir = tmp_path / "imported", tmp_path / "run"
    assert main(["import", "hf", f"hf_dir={bpe_bloom}", f"run_dir={imported}"]) == 0
    (shard,) = (imported / "checkpoints" / "step-00000000").glob("model-*.pt")
    intact = shard.read_bytes()
    damaged = bytearray(intact)
    damaged[len(damaged) // 2] ^= 0xFF
    shard.write_bytes(damaged)
    arguments = ["train", f"init_from={imported}", f"run_dir={run_dir}", f"data.corpus={tokens.parent / 'corpus'}"]
    arguments += [f"data.cache_dir={tmp_path / 'cache'}", *RUN, "train.steps=1"]
    capsys.readouterr()
    assert main(["checkpoint", "verify", str(imported)]) == 2  # an import's step 0 is verified as a run's checkpoints
    said = capsys.readouterr()
    assert f"step        0: 1 files, {len(intact) / 1e6:,.1f} MB: FAILS ({shard.name} changed" in said.out
    assert said.err == (
        "corolla: error: 1 of 1 checkpoints fail verification (steps 0): import the model again into a new run_dir\n"
    )
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"init_from's checkpoint {shard.parent} fails its checksums ({shard.name} changed since written)" in error
    assert not list((run_dir / "checkpoints").glob("step-*"))
    shard.write_bytes(intact)
    assert main(["checkpoint", "verify", str(imported)]) == 0
    assert main(["checkpoint", "reshard", str(imported), "tp=2"]) == 2  # nothing to reshard: any layout reads it
    assert capsys.readouterr().err == (
        f"corolla: error: run_dir={imported} holds a model imported from Hugging Face, not a training run (any layout "
        f"reads it as it is): train from it with init_from={imported} run_dir=NEW\n"
    )
    assert main(arguments) == 0  # the same command, once the files are restored
    assert [record["step"] for record in records(run_dir)] == [1]


def test_init_from_a_hugging_face_directory_whose_weights_changed_imports_them_anew(
    capsys, bpe_bloom: Path, tokens: Path, tmp_path: Path
) -> None:
    """Its import in data.cache_dir is of the weights as they were: a new run starts from the new ones, and a run
    that started from the old ones still resumes (both runs with the same command, as before the change)."""
    hf_dir = _broken_copy(bpe_bloom, tmp_path / "bloom")
    data = [f"data.corpus={tokens.parent / 'corpus'}", f"data.cache_dir={tmp_path / 'cache'}", *RUN]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", f"init_from={hf_dir}", f"run_dir={first}", *data, "train.steps=1"]) == 0
    model = BloomForCausalLM.from_pretrained(hf_dir)
    with torch.no_grad():
        model.transformer.ln_f.bias.add_(0.5)  # trained further, saved again in place
    model.save_pretrained(hf_dir, max_shard_size="300KB", safe_serialization=False)
    capsys.readouterr()
    assert main(["train", f"init_from={hf_dir}", f"run_dir={second}", *data, "train.steps=1"]) == 0, (
        capsys.readouterr().err
    )
    assert records(second)[0]["loss"] != records(first)[0]["loss"]
    assert main(["train", f"init_from={hf_dir}", f"run_dir={first}", *data, "train.steps=2"]) == 0, (
        capsys.readouterr().err
    )
    assert [record["step"] for record in records(first)] == [1, 2]
    assert len(list((tmp_path / "cache" / "imports").iterdir())) == 2
    # Its files copied without their times: each resume imported the model again (BLOOM-176B's, 700 GB a copy).
    for path in hf_dir.iterdir():
        os.utime(path)
    capsys.readouterr()
    assert main(["train", f"init_from={hf_dir}", f"run_dir={first}", *data, "train.steps=3"]) == 0
    assert "imported" not in capsys.readouterr().out
    assert len(list((tmp_path / "cache" / "imports").iterdir())) == 2


def test_an_extended_tokenizer_grows_the_embedding_with_the_mean_of_each_new_pieces_base_rows(
    corolla_bloom: Path, tmp_path: Path
) -> None:
    """The 2,000-token tokenizer extended with Greek and Amharic, which it lacks; a step at a learning rate of 1e-9
    under TP2 x PP2 leaves the rows as they started."""
    corpus = cut_corpus(tmp_path / "corpus", ["eng_Latn", "ell_Grek", "amh_Ethi"], 300)
    extended = tmp_path / "extended"
    arguments = [f"base={corolla_bloom}", f"corpus={corpus}", f"output_dir={extended}", "languages=[ell_Grek,amh_Ethi]"]
    arguments += ["added_pieces=1000", "tokenizer=tiny", f"tokenizer.parity_set={SHARED_DATA / 'parallel-dev'}"]
    assert main(["tokenizer", "extend", *arguments]) == 0
    run_dir = tmp_path / "run"
    arguments = [f"init_from={corolla_bloom}", f"run_dir={run_dir}", f"data.tokenizer_dir={extended}"]
    arguments += [f"data.corpus={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "train.lr=1e-9", "train.min_lr=1e-9"]
    assert main(["train", *arguments, *RUN, "train.steps=1", "parallel.tp=2", "parallel.pp=2"]) == 0

    job = read_job(run_dir / "job.yaml")
    vocab = job.model.vocab_size
    assert vocab > 2300 and job.model.embedding_rows == 0
    grown = full_state_dict(run_dir / "checkpoints", 1, job.model)["word_embeddings.weight"]
    assert grown.shape == (-(-vocab // 256) * 256, 64)  # padded to 128 x TP
    base = BloomForCausalLM.from_pretrained(corolla_bloom).state_dict()["transformer.word_embeddings.weight"]
    assert torch.allclose(grown[:2000], base[:2000], atol=1e-6)
    pieces = json.loads((extended / "added_pieces.json").read_text())["decompositions"]
    means = torch.stack([base[ids].mean(0) for _, ids in sorted(pieces.items(), key=lambda item: int(item[0]))])
    assert torch.allclose(grown[2000:vocab], means, atol=1e-6)
    tracked = recorded_run(run_dir)
    assert (
        MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).data.tags["corolla.init_vocab_grown_from"] == "2000"
    )


def test_the_pipeline_encodes_with_the_imported_models_tokenizer_and_continues_it(
    bpe_bloom: Path, tokens: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "pipeline"
    arguments = [f"init_from={bpe_bloom}", f"run_dir={run_dir}", f"data.corpus={tokens.parent / 'corpus'}"]
    arguments += [f"data.cache_dir={tmp_path / 'cache'}", *RUN, "train.steps=2", "parallel=single"]
    assert main(["pipeline", *arguments]) == 0
    assert not (run_dir / "tokenizer").exists()  # none trained: the model's own
    manifest = json.loads((run_dir / "tokens" / "manifest.json").read_text())
    assert manifest["tokenizer"]["path"] == str(bpe_bloom / "tokenizer.json")
    report = json.loads((run_dir / "tokenizer-eval" / "report.json").read_text())
    assert report["languages"]["fra_Latn"]["premium"] > 1
    assert BloomForCausalLM.from_pretrained(run_dir / "hf").config.vocab_size == 1000
    assert [record["step"] for record in records(run_dir / "train")] == [1, 2]
