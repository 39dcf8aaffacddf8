"""`corolla export hf`: a checkpoint of any TP x PP layout → a Hugging Face `BloomForCausalLM` directory + tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from launch.config.schemas import ExportJob
from launch.plan.weights import weights_of
from launch.rundir.checkpoints import CheckpointError, verify
from launch.rundir.files import checkpoint_tag
from launch.train import checkpoint
from launch.train.import_hf import TOKENIZER_FILES
from launch.train.shards import ShardReader
from model.config import ModelConfig
from model.hf import hf_config, to_hf_state_dict
from model.layers import model_name
from tokenizer.files import publish, staging_area


def full_state_dict(directory: Path, step: int, model: ModelConfig) -> dict[str, torch.Tensor]:
    """Every weight of the checkpoint of `step` in `directory`, whole, named as in `BloomModel`."""
    reader = ShardReader(directory / checkpoint_tag(step), checkpoint.saved_layout(directory, step))
    return {model_name(name, model.num_layers): reader.full(name).clone() for name in reader.names()}


def check_output_dir(output: Path, run_dir: Path, overwrite: bool) -> None:
    """Before the weights are read: not into the run directory, nor over files unless asked to."""
    if output.resolve().is_relative_to(run_dir.resolve()):
        raise ValueError(f"output_dir={output} is inside run_dir={run_dir}: export to a directory of its own")
    if output.exists() and not output.is_dir():
        raise ValueError(f"output_dir={output} is a file: choose a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"output_dir={output} already holds files: choose another, or pass overwrite=true")


def export_hf_model(job: ExportJob) -> None:
    from transformers import BloomConfig, BloomForCausalLM

    output = Path(job.output_dir)
    if not Path(job.run_dir).is_dir():
        raise ValueError(f"run_dir={job.run_dir} is not a directory: pass a run directory or an imported model")
    weights = weights_of(job.run_dir, job.step)
    check_output_dir(output, Path(job.run_dir), job.overwrite)
    _, _, bad = verify(weights.checkpoints, weights.step)
    if bad:
        raise CheckpointError(
            f"checkpoint {weights.step} of {weights.run_dir} fails its checksums ({', '.join(bad)}): export another"
        )
    state = full_state_dict(weights.checkpoints, weights.step, weights.model)
    vocab = state["word_embeddings.weight"].shape[0]
    model = BloomForCausalLM(BloomConfig(**hf_config(weights.model, vocab)))
    model.load_state_dict(to_hf_state_dict(state), strict=True)
    with staging_area(output) as area:  # an export stopped halfway leaves the directory as it was
        staging = area / "out"
        model.save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (weights.tokenizer_dir / name).is_file():
                shutil.copy2(weights.tokenizer_dir / name, staging / name)
        publish(staging, output)
    parameters = sum(tensor.numel() for tensor in state.values())
    print(
        f"exported step {weights.step} of {weights.run_dir} to {output}: BloomForCausalLM, {parameters:,} parameters, "
        "tokenizer"
    )
