"""`corolla export hf`: a checkpoint of any TP x PP layout → a Hugging Face `BloomForCausalLM` directory + tokenizer."""

from __future__ import annotations

import shutil
from fnmatch import fnmatch
from pathlib import Path

import torch

from launch.config.schemas import ExportJob
from launch.plan.weights import (
    HF_CONFIG_FILE,
    HF_WEIGHT_FILES,
    HF_WEIGHT_INDEXES,
    Weights,
    checkpoint_layout,
    weights_of,
)
from launch.rundir.checkpoints import CheckpointRemoved, reading, verified
from launch.rundir.files import checkpoint_tag
from launch.train.shards import ShardReader
from model.config import ModelConfig
from model.hf import hf_config, to_hf_state_dict
from model.layers import EMBEDDING, model_name
from tokenizer.files import (
    HF_TOKENIZER_CONFIG,
    HF_TOKENIZER_FILE,
    STAGED,
    TOKENIZER_FILES,
    check_replaceable,
    publish,
    staging_area,
    with_umask_permissions,
)
from tokenizer.hf_export import set_model_max_length


def full_state_dict(directory: Path, step: int, model: ModelConfig) -> dict[str, torch.Tensor]:
    """Every weight of the checkpoint of `step` in `directory`, whole, named as in `BloomModel`."""
    reader = ShardReader(directory / checkpoint_tag(step), checkpoint_layout(directory, step))
    return {model_name(name, model.num_layers): reader.full(name).clone() for name in reader.names()}


def _read_weights(job: ExportJob, weights: Weights, tries: int = 3) -> tuple[Weights, dict[str, torch.Tensor]]:
    """The checkpoint's weights, whole and verified. The run's latest (no step given) is found and read again,
    `tries` times in all, when the training that runs removes it meanwhile."""
    try:
        return weights, _verified_state(weights)
    except CheckpointRemoved:
        if job.step or tries == 1:
            raise
        return _read_weights(job, weights_of(job.run_dir), tries - 1)


def _verified_state(weights: Weights) -> dict[str, torch.Tensor]:
    directory, step = weights.checkpoints, weights.step
    with reading(directory, step):  # there a moment ago, when weights_of found it
        verified(directory, step, "export")
    with reading(directory, step):
        return full_state_dict(directory, step, weights.model)


# What an export writes: the model's config and weights (save_pretrained's names), and the tokenizer's files.
EXPORT_FILES = (
    HF_CONFIG_FILE,
    "generation_config.json",
    *HF_WEIGHT_FILES,
    *HF_WEIGHT_INDEXES,
    "model-*-of-*.safetensors",
    *TOKENIZER_FILES,
)


def _is_exported(name: str) -> bool:
    return any(fnmatch(name, pattern) for pattern in EXPORT_FILES)


def export_hf_model(job: ExportJob) -> None:
    from transformers import BloomConfig, BloomForCausalLM

    output = Path(job.output_dir)
    if not Path(job.run_dir).is_dir():
        raise ValueError(f"run_dir={job.run_dir} is not a directory: pass a run directory or an imported model")
    weights = weights_of(job.run_dir, job.step)
    check_replaceable(output, "an export", _is_exported, {"run_dir": job.run_dir}, job.overwrite)
    weights, state = _read_weights(job, weights)
    vocab = state[EMBEDDING].shape[0]
    model = BloomForCausalLM(BloomConfig(**hf_config(weights.model, vocab)))
    model.load_state_dict(to_hf_state_dict(state), strict=True)
    with staging_area(output) as area:  # an export stopped halfway leaves the directory as it was
        staging = area / STAGED
        model.save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (weights.tokenizer_dir / name).is_file():
                shutil.copy2(weights.tokenizer_dir / name, staging / name)
        if any((staging / name).is_file() for name in (HF_TOKENIZER_CONFIG, HF_TOKENIZER_FILE)):
            set_model_max_length(staging, weights.model.seq_length)
        with_umask_permissions(staging)
        publish(staging, output, job.overwrite)
    parameters = sum(tensor.numel() for tensor in state.values())
    print(
        f"exported step {weights.step} of {weights.run_dir} to {output}: BloomForCausalLM, {parameters:,} parameters, "
        "tokenizer"
    )
