"""Where a model's weights are: a checkpoint of a corolla run, or a model imported from Hugging Face (`corolla import
hf`, a run directory at step 0 whose `imported.json` stands for job.yaml), with the model's shape and its tokenizer.
What `corolla export hf` reads, and what `corolla train init_from=DIR` starts from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import OmegaConf

from launch.config.job_file import read_job
from launch.config.schemas import TrainJob
from launch.data.corpus import TokenCorpus
from launch.plan.layout import ParallelLayout
from launch.rundir.checkpoints import CheckpointError, latest_step, reading, step_record
from launch.rundir.directory import holds_runs, runs_in
from launch.rundir.files import CHECKPOINTS, IMPORT_FILE, JOB_FILE, TOKENIZER_DIR, checkpoint_tag
from launch.rundir.history import RunHistory
from model.config import ModelConfig
from tokenizer.files import write_atomically

IMPORT_FORMAT = 1


@dataclass(frozen=True)
class Weights:
    run_dir: Path
    step: int
    model: ModelConfig  # its shape, the tokenizer's vocabulary and the checkpoint's embedding rows
    tokenizer_dir: Path
    imported_from: str | None  # the Hugging Face directory, for an import

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / CHECKPOINTS

    @property
    def checkpoint(self) -> Path:
        return self.checkpoints / checkpoint_tag(self.step)


def write_import_record(run_dir: Path, model: ModelConfig, source: dict) -> None:
    """`imported.json`: the model's shape and where it came from (`source`: the directory and its files' stamps)."""
    record = {
        "format_version": IMPORT_FORMAT,
        "model": OmegaConf.to_container(OmegaConf.structured(model), enum_to_str=True),
        "source": source,
    }
    write_atomically(run_dir / IMPORT_FILE, json.dumps(record, indent=1) + "\n")


def import_record(run_dir: Path) -> dict | None:
    """What `imported.json` says, None when `run_dir` is no import."""
    path = run_dir / IMPORT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("format_version") != IMPORT_FORMAT:
            raise ValueError(f"format version {record.get('format_version')}, this corolla reads {IMPORT_FORMAT}")
        record["model"] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), record["model"]))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} cannot be read ({error}): import the model again into a new run_dir") from None
    return record


def weights_of(run_dir: str | Path, step: int = 0) -> Weights:
    """The weights of checkpoint `step` of a run (0: its latest) or of an import; a one-line ValueError if there are
    none."""
    path = Path(run_dir)
    if (record := import_record(path)) is not None:
        if step:
            raise ValueError(f"{path} is an imported model, whose only checkpoint is step 0: drop step={step}")
        step_record(path / CHECKPOINTS, 0)  # complete, its files there
        return Weights(path, 0, record["model"], path / TOKENIZER_DIR, record["source"]["hf_dir"])
    if not (path / JOB_FILE).is_file():
        raise ValueError(_not_weights(path))
    if step:
        step_record(path / CHECKPOINTS, step)  # the one asked for must be a complete checkpoint
    elif not (step := latest_step(path / CHECKPOINTS) or 0):
        raise ValueError(f"{path} has no complete checkpoint: train it first")
    with reading(path / CHECKPOINTS, step):  # found there a moment ago: the training that runs may remove it
        layout = checkpoint_layout(path / CHECKPOINTS, step)
    job = read_job(path / JOB_FILE)
    model = replace(job.model, embedding_rows=job.model.padded_vocab_size(layout.tp))
    return Weights(path, step, model, _learnt_tokenizer(path, job), None)


def _learnt_tokenizer(path: Path, job: TrainJob) -> Path:
    """The tokenizer the run's checkpoints learnt: the one its token files name while it is that one (the folder its
    launches gave), else the run's own copy (the token files purged, or encoded again in place with another); the
    first one's ValueError when neither is (a run of an older corolla keeps no copy)."""
    try:
        named = _tokenizer_of_tokens(path, job)
        _check_tokenizer(path, named)
        return named
    except ValueError:
        if not (path / TOKENIZER_DIR).is_dir():
            raise
    _check_tokenizer(path, path / TOKENIZER_DIR)
    return path / TOKENIZER_DIR


def _tokenizer_of_tokens(path: Path, job: TrainJob) -> Path:
    """Where the run's token files say their tokenizer is."""
    tokens_dir = Path(job.data.tokens_dir)
    if not tokens_dir.is_absolute() and not tokens_dir.exists():
        raise ValueError(
            f"{path / JOB_FILE} names its token files by a path relative to where the run was launched "
            f"(data.tokens_dir: {tokens_dir}, as an older corolla wrote it): run this from there, or write their "
            "absolute path into it"
        )
    return TokenCorpus(job.data.tokens_dir, job.data.validation_documents).tokenizer_dir


def _not_weights(path: Path) -> str:
    """Why `path` holds no weights corolla reads, and what to pass instead."""
    if not path.exists():
        return f"{path} does not exist: pass a run directory, an imported model or a Hugging Face model directory"
    if holds_hf_weights(path):
        return f"{path} holds Hugging Face weights but no {HF_CONFIG_FILE}: restore it from the model's source"
    if runs := runs_in(path):
        return f"{path} {holds_runs(runs)}: pass one of them, such as {runs[0]}"
    return (
        f"{path} is neither a corolla run directory (no {JOB_FILE}) nor an imported model (no {IMPORT_FILE}): "
        "pass a run directory, or a Hugging Face model directory where init_from takes one"
    )


def _check_tokenizer(run_dir: Path, tokenizer_dir: Path) -> None:
    """The tokenizer the run's token files name now must be the one its checkpoints learnt: one trained again in
    place since would go out with weights whose ids mean other pieces. (A run of an older corolla recorded none.)"""
    from tokenizer.loading import load_tokenizer  # sentencepiece: not in a rank, which reads checkpoint layouts here

    learnt = RunHistory(run_dir).tokenizer_fingerprint()
    found = load_tokenizer(tokenizer_dir).fingerprint
    if learnt and found != learnt:
        raise ValueError(
            f"{run_dir} was trained on tokenizer {learnt[:8]}, but {tokenizer_dir} now holds tokenizer {found[:8]} "
            "(trained again since): its weights do not go with it; put the run's tokenizer back there, or use a run "
            "trained on this one"
        )


def checkpoint_layout(directory: Path, step: int, key: str = "layout") -> ParallelLayout:
    """The layout the checkpoint's parameter files are laid out for (key "rng_layout": that of the ranks that wrote
    its RNG files; an offline reshard changes the first, not this)."""
    record = step_record(directory, step)
    if key not in record:
        raise CheckpointError(
            f"checkpoint {directory / checkpoint_tag(step)} was saved in DeepSpeed's format by a corolla before "
            "resharding: resume it with that version, or start the run again"
        )
    return ParallelLayout(**record[key])


def embedding_rows_problem(model: ModelConfig, rows: int, saved_tp: int, tp: int) -> str | None:
    """Why a checkpoint whose embedding has `rows` rows (saved under TP=`saved_tp`) cannot go to a layout of TP=`tp`,
    or None: the vocabulary is padded to 128 x TP, and another TP that pads it to other rows cannot take the
    embedding."""
    padded = model.padded_vocab_size(tp)
    if rows == padded:
        return None
    return (
        f"the checkpoint's embedding has {rows} rows, the vocabulary padded for TP={saved_tp}, but TP={tp} pads it to "
        f"{padded}: choose a TP that pads it to {rows}, such as {saved_tp}"
    )


# A Hugging Face model directory's files: its config, and its weights whole or as an index of shards.
HF_CONFIG_FILE = "config.json"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def is_hf_directory(path: Path) -> bool:
    """A Hugging Face model directory, not yet imported."""
    return (path / HF_CONFIG_FILE).is_file() and not (path / IMPORT_FILE).is_file() and not (path / JOB_FILE).is_file()


def holds_hf_weights(path: Path) -> bool:
    return any((path / name).is_file() for name in (*HF_WEIGHT_FILES, *HF_WEIGHT_INDEXES))


def tokenizer_of(init_from: str | Path) -> Path:
    """The tokenizer directory of init_from's weights, without importing them."""
    path = Path(init_from)
    return path if is_hf_directory(path) else weights_of(path).tokenizer_dir
