"""`corolla import hf`: a Hugging Face `BloomForCausalLM` directory → a run directory at step 0.

The weights (safetensors or PyTorch files, sharded or not) become a checkpoint in corolla's layout-free format, as
fp32 master weights without Adam moments, cut into pipeline stages of at most `STAGE_BYTES` so that no file and no
moment of the import holds more than one stage; any TP x PP x DP layout reads it (launch/train/shards.py). The model's
shape comes from config.json, the embedding keeps its rows, and the tokenizer (a SentencePiece `tokenizer.model` or a
`tokenizer.json` only) is copied beside it. Everything is written under a temporary name first: a failed import
leaves no run directory.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from launch.config.compose import pasted
from launch.config.schemas import ImportJob
from launch.plan.layout import ParallelLayout
from launch.plan.stages import stage_cut
from launch.plan.weights import (
    HF_CONFIG_FILE,
    HF_WEIGHT_FILES,
    HF_WEIGHT_INDEXES,
    import_record,
    write_import_record,
)
from launch.rundir.checkpoints import point_latest, write_complete
from launch.rundir.files import CHECKPOINTS, TOKENIZER_DIR, checkpoint_tag, shard_file
from launch.train.hashed_save import save_hashed
from model.config import ModelConfig
from model.hf import corolla_name, model_config, parameter_shapes
from model.layers import holds, model_name, pipeline_name
from tokenizer.files import STAGED, TOKENIZER_FILES, OutputTaken, first_line, publish, read_json, staging_area
from tokenizer.loading import TextTokenizer, load_tokenizer
from tokenizer.vocab import BOS, EOS, PAD, SPECIAL_IDS

STAGE_BYTES = 16 * 2**30


class HFWeights:
    """A Hugging Face directory's tensors by corolla name, each read from its file when asked for."""

    def __init__(self, hf_dir: Path) -> None:
        self.files = _weight_files(hf_dir)  # sorted, each once
        self._opened: dict[Path, object] = {}
        self.file_of = {}
        for path in self.files:
            for name in self._open(path).keys():  # noqa: SIM118 (safetensors' safe_open has keys(), no iterator)
                if (corolla := corolla_name(name)) is not None:
                    self.file_of[corolla] = (path, name)

    def _open(self, path: Path):
        if path not in self._opened:
            try:
                self._opened[path] = _opened(path)
            except Exception as error:  # safetensors' and torch's own errors for a file that is not what it says
                reason = first_line(error)
                message = f"weight file {path} cannot be read ({reason}): restore it from the model's source"
                raise ValueError(message) from None
        return self._opened[path]

    def shape(self, name: str) -> tuple[int, ...]:
        path, key = self.file_of[name]
        opened = self._open(path)
        return tuple(opened.get_slice(key).get_shape() if path.suffix == ".safetensors" else opened[key].shape)

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor, finite: a NaN imported would make the first step's loss NaN, blamed on the learning rate."""
        path, key = self.file_of[name]
        opened = self._open(path)
        tensor = opened.get_tensor(key) if path.suffix == ".safetensors" else opened[key]
        if not torch.isfinite(tensor).all():
            raise ValueError(
                f"weight {key} in {path} holds NaN or infinite values: no run can start from it; restore the file "
                "from the model's source, or import another checkpoint of the model"
            )
        return tensor

    def stamp(self) -> list[list]:
        return stamp_of(self.files)


def stamp_of(files: list[Path]) -> list[list]:
    """The weight files' names, sizes and times: whether a later import of the same directory is the same."""
    return [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in files]


def weights_stamp(hf_dir: Path) -> list[list]:
    """The stamp of a Hugging Face directory's weight files, without opening them; a one-line ValueError when one is
    missing."""
    return stamp_of(_weight_files(hf_dir))


def _opened(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        return safe_open(str(path), framework="pt")
    return torch.load(path, mmap=True, weights_only=True, map_location="cpu")


def _weight_files(hf_dir: Path) -> list[Path]:
    """The files that hold the weights; a one-line ValueError when one is missing."""
    for index in HF_WEIGHT_INDEXES:
        if (hf_dir / index).is_file():
            listing = read_json(hf_dir / index, "restore it from the model's source")
            files = sorted(set(listing["weight_map"].values()))
            missing = [name for name in files if not (hf_dir / name).is_file()]
            if missing:
                raise ValueError(
                    f"hf_dir={hf_dir} lacks {missing[0]}, one of the {len(files)} weight files its {index} lists "
                    f"({len(missing)} missing): copy the whole model directory"
                )
            return [hf_dir / name for name in files]
    for name in HF_WEIGHT_FILES:
        if (hf_dir / name).is_file():
            return [hf_dir / name]
    raise ValueError(
        f"hf_dir={hf_dir} holds no weights ({', '.join(HF_WEIGHT_FILES)} or a sharded index): pass a directory that "
        "save_pretrained wrote"
    )


def read_hf_model(hf_dir: Path) -> ModelConfig:
    """The corolla model of a Hugging Face directory, from config.json and its tokenizer; nothing is written."""
    if not (hf_dir / HF_CONFIG_FILE).is_file():
        raise ValueError(f"hf_dir={hf_dir} has no config.json: pass a Hugging Face model directory")
    config = read_json(hf_dir / HF_CONFIG_FILE, "restore it from the model's source")
    tokenizer = load_tokenizer(hf_dir)
    _check_special_ids(hf_dir, tokenizer)
    try:
        model = model_config(config, hf_dir.resolve().name, tokenizer.vocab_size)
    except ValueError as error:
        raise ValueError(f"hf_dir={hf_dir}: {error}") from None
    if model.vocab_size > model.embedding_rows:
        raise ValueError(
            f"hf_dir={hf_dir}: its tokenizer has {model.vocab_size} tokens but the embedding only "
            f"{model.embedding_rows} rows (config.json vocab_size): the tokenizer is not the model's"
        )
    return model


def _check_special_ids(hf_dir: Path, tokenizer: TextTokenizer) -> None:
    """Token files end each document with </s> at its id, and an export writes these ids into config.json: a model
    whose tokenizer keeps them elsewhere would train on another token, and generate past its end."""
    for token in (BOS, EOS, PAD):
        if piece := tokenizer.misplaced(token):
            layout = ", ".join(f"{name} {number}" for name, number in SPECIAL_IDS.items())
            raise ValueError(
                f"hf_dir={hf_dir}: its tokenizer has {piece!r} at id {SPECIAL_IDS[token]}, where corolla keeps {token} "
                f"({layout}, as BLOOM's): corolla trains and exports models whose tokenizer has these ids only"
            )


def _check_shapes(hf_dir: Path, model: ModelConfig, weights: HFWeights) -> None:
    expected = parameter_shapes(model)
    missing = sorted(set(expected) - set(weights.file_of))
    extra = sorted(set(weights.file_of) - set(expected))
    if missing or extra:
        which = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which it should not"
        raise ValueError(
            f"hf_dir={hf_dir}: its weights do not match its config.json ({model.num_layers} layers): the model "
            f"{which} ({len(missing)} missing, {len(extra)} extra); fix config.json or the weight files"
        )
    for name, shape in expected.items():
        if weights.shape(name) != shape:
            raise ValueError(
                f"hf_dir={hf_dir}: {name} is {list(weights.shape(name))} in the weights but {list(shape)} by its "
                "config.json: the config does not match its weights; fix one of them"
            )


def _stages(model: ModelConfig) -> list[list[str]]:
    """The pipeline module's parameter names, by stage of the import's pipeline cut."""
    shapes = parameter_shapes(model)
    size = 4 * sum(math.prod(shape) for shape in shapes.values())
    cut = stage_cut(model, min(model.num_layers, max(1, math.ceil(size / STAGE_BYTES))))
    names = [pipeline_name(name, model.num_layers) for name in shapes]
    return [[name for name in names if holds(name, stage, model.num_layers)] for stage in cut]


def _write_checkpoint(directory: Path, model: ModelConfig, weights: HFWeights) -> int:
    """The step-0 checkpoint; the number of parameters."""
    stages, tag = _stages(model), checkpoint_tag(0)
    (directory / tag).mkdir(parents=True)
    checksums = {}
    for index, names in enumerate(stages):
        states = {
            name: {"weight": weights.tensor(model_name(name, model.num_layers)).to(torch.float32, copy=True)}
            for name in names
        }
        file = shard_file(0, 1, index, len(stages))
        checksums[file] = save_hashed(states, directory / tag / file)
    layout = asdict(ParallelLayout(1, len(stages), 1))
    write_complete(directory, tag, {"step": 0, "layout": layout, "rng_layout": layout}, checksums)
    point_latest(directory, tag)
    return sum(math.prod(shape) for shape in parameter_shapes(model).values())


def _copy_tokenizer(hf_dir: Path, output: Path) -> None:
    output.mkdir()
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file():
            shutil.copy2(hf_dir / name, output / name)


def _already_imported(run_dir: Path, hf_dir: Path) -> bool:
    """Whether run_dir holds this very import; a ValueError when it holds anything else."""
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return False
    record = import_record(run_dir) if run_dir.is_dir() else None
    if record and record["source"]["hf_dir"] == str(hf_dir.resolve()):
        if record["source"]["files"] == HFWeights(hf_dir).stamp():
            return True
        raise ValueError(
            f"run_dir={run_dir} holds an import of {hf_dir} whose weight files have changed since: import into a new "
            "run_dir"
        )
    raise ValueError(f"run_dir={run_dir} exists and holds something else: import into a new run_dir")


def _move_into_place(staging: Path, run_dir: Path, hf_dir: Path) -> bool:
    """Renames the import to run_dir; False when another process has put the same import there since it was checked
    (one of something else: the ValueError of _already_imported)."""
    try:
        publish(staging, run_dir, replace=False)
    except OutputTaken:
        if not _already_imported(run_dir, hf_dir):
            raise
        return False
    return True


def import_hf_model(job: ImportJob) -> None:
    hf_dir, run_dir = Path(job.hf_dir), Path(job.run_dir)
    if not hf_dir.is_dir():
        raise ValueError(f"hf_dir={hf_dir} is not a directory: pass a Hugging Face BloomForCausalLM directory")
    if _already_imported(run_dir, hf_dir):
        print(f"{run_dir} already holds this import of {hf_dir}: nothing to do")
        return
    model = read_hf_model(hf_dir)
    weights = HFWeights(hf_dir)
    _check_shapes(hf_dir, model, weights)
    with staging_area(run_dir) as area:
        staging = area / STAGED
        staging.mkdir()
        parameters = _write_checkpoint(staging / CHECKPOINTS, model, weights)
        _copy_tokenizer(hf_dir, staging / TOKENIZER_DIR)
        write_import_record(staging, model, {"hf_dir": str(hf_dir.resolve()), "files": weights.stamp()})
        if not _move_into_place(staging, run_dir, hf_dir):
            print(f"{run_dir} was given this import of {hf_dir} by another corolla meanwhile: nothing to do")
            return
    init_from = pasted("init_from", str(run_dir))
    print(
        f"imported {hf_dir} into {run_dir}: BLOOM of {model.num_layers} layers, hidden {model.hidden_size}, "
        f"{model.num_heads} heads, {parameters:,} parameters, a {model.vocab_size}-token tokenizer "
        f"({model.embedding_rows} embedding rows); train from it with `corolla train {init_from}`"
    )
