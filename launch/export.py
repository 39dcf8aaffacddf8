"""`corolla export hf`: a checkpoint of any TP x PP layout → a Hugging Face `BloomForCausalLM` directory + tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from launch import checkpoint
from launch.data import TokenCorpus
from launch.run_files import CHECKPOINTS
from launch.schemas import ExportJob
from launch.worker import load_job
from model.bloom import tp_split_dim
from model.config import ModelConfig
from model.hf import hf_config, to_hf_state_dict
from model.pipeline import layer_prefixes

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def _merge(shards: list[dict[str, torch.Tensor]], prefix: str) -> dict[str, torch.Tensor]:
    """One pipeline layer's tensor-parallel shards → whole tensors, named as in `BloomModel`."""
    merged = {}
    for name, first in shards[0].items():
        if not isinstance(first, torch.Tensor):  # megatron's `_extra_state`
            continue
        dim = tp_split_dim(prefix + name)
        merged[prefix + name] = first if dim is None else torch.cat([shard[name] for shard in shards], dim=dim)
    return merged


def full_state_dict(directory: Path, model: ModelConfig) -> dict[str, torch.Tensor]:
    """Every parameter of the checkpoint in `directory`, gathered over its TP ranks and pipeline stages."""
    state = {}
    for index, prefix in enumerate(layer_prefixes(model)):
        files = sorted(directory.glob(f"layer_{index:02d}-model_*-model_states.pt"))
        if not files:
            raise ValueError(f"checkpoint {directory} has no files for layer {index}: it is not complete")
        state.update(_merge([torch.load(path, map_location="cpu", weights_only=False) for path in files], prefix))
    return state


def export_hf(job: ExportJob) -> None:
    from transformers import BloomConfig, BloomForCausalLM

    run_dir, output = Path(job.run_dir), Path(job.output_dir)
    train_job = load_job(run_dir)
    step = job.step or checkpoint.latest_step(run_dir / CHECKPOINTS)
    if not step:
        raise ValueError(f"{run_dir} has no complete checkpoint to export: train it first")
    state = full_state_dict(run_dir / CHECKPOINTS / checkpoint.tag_of(step), train_job.model)
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
