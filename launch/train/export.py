"""`corolla export hf`: a checkpoint of any TP x PP layout → a Hugging Face `BloomForCausalLM` directory + tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from launch.config.schemas import ExportJob
from launch.data.corpus import TokenCorpus
from launch.rundir.checkpoints import CheckpointError, latest_step, verify
from launch.rundir.directory import RunDirectory
from launch.rundir.files import CHECKPOINTS, checkpoint_tag
from launch.train import checkpoint
from launch.train.shards import ShardReader
from model.config import ModelConfig
from model.hf import hf_config, to_hf_state_dict
from model.layers import model_name

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def full_state_dict(directory: Path, step: int, model: ModelConfig) -> dict[str, torch.Tensor]:
    """Every weight of the checkpoint of `step` in `directory`, whole, named as in `BloomModel`."""
    reader = ShardReader(directory / checkpoint_tag(step), checkpoint.saved_layout(directory, step))
    return {model_name(name, model.num_layers): reader.full(name).clone() for name in reader.names()}


def export_hf_model(job: ExportJob) -> None:
    from transformers import BloomConfig, BloomForCausalLM

    run = RunDirectory.open(job.run_dir)
    run_dir, output, train_job = run.path, Path(job.output_dir), run.train_job()
    step = job.step or latest_step(run_dir / CHECKPOINTS)
    if not step:
        raise ValueError(f"{run_dir} has no complete checkpoint to export: train it first")
    _, _, bad = verify(run_dir / CHECKPOINTS, step)
    if bad:
        raise CheckpointError(f"checkpoint {step} of {run_dir} fails its checksums ({', '.join(bad)}): export another")
    state = full_state_dict(run_dir / CHECKPOINTS, step, train_job.model)
    vocab = state["word_embeddings.weight"].shape[0]
    model = BloomForCausalLM(BloomConfig(**hf_config(train_job.model, vocab)))
    model.load_state_dict(to_hf_state_dict(state), strict=True)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer = TokenCorpus(train_job.data.tokens_dir, train_job.data.validation_documents).tokenizer_dir
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy2(tokenizer / name, output / name)
    parameters = sum(tensor.numel() for tensor in state.values())
    print(f"exported step {step} of {run_dir} to {output}: BloomForCausalLM, {parameters:,} parameters, tokenizer")
