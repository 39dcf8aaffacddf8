"""BLOOM as DeepSpeed pipeline stages: the same modules as `model.bloom`, one layer spec per entry of
`model.layers.layer_kinds`.

DeepSpeed balances stages over the layer types PARTITION names, the kinds model.layers.BALANCED lists; the plan
(launch/plan/stages.py) owns the resulting cut, and each rank checks that DeepSpeed made the same one. Layers are
seeded by position, so the weights do not depend on how the layers are split over stages.
"""

from __future__ import annotations

import functools

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core.model_parallel_config import ModelParallelConfig

from model.bloom import BloomBlock, BloomEmbedding, BloomLayerNorm, lm_loss
from model.config import ModelConfig
from model.layers import LayerKind, layer_kinds

PARTITION = "type:BloomBlock|BloomEmbedding"  # model.layers.BALANCED, in DeepSpeed's terms


def _logits(embedding: BloomEmbedding, hidden: torch.Tensor) -> torch.Tensor:
    return embedding.logits(hidden)


def _spec(kind: LayerKind, model: ModelConfig, config: ModelParallelConfig) -> LayerSpec:
    if kind == LayerKind.embedding:
        return TiedLayerSpec("word_embeddings", BloomEmbedding, model, config)
    if kind == LayerKind.logits:
        return TiedLayerSpec("word_embeddings", BloomEmbedding, model, config, forward_fn=_logits)
    if kind == LayerKind.block:
        return LayerSpec(BloomBlock, model, config)
    return LayerSpec(BloomLayerNorm, model)


def layer_specs(model: ModelConfig, config: ModelParallelConfig) -> list[LayerSpec]:
    return [_spec(kind, model, config) for kind in layer_kinds(model.num_layers)]


def seed_layer(layer_seed: int) -> None:
    """What DeepSpeed calls before every layer's forward: reseeds the generators dropout draws from, only those.
    DeepSpeed's default (`set_random_seed`) also reseeds Python's and NumPy's and every accelerator backend's, which
    took an eighth of a small model's step on CPU. (The seed arrives as a numpy integer: made a plain int.)"""
    torch.default_generator.manual_seed(int(layer_seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed(int(layer_seed))


def pipeline_module(
    model: ModelConfig, config: ModelParallelConfig, pp: int, dp: int, seed: int, activation_checkpointing: bool
) -> PipelineModule:
    """The rank's stage of the model; TP comes with `config`. DeepSpeed's topology axes (pipe, data, model) give the
    ranks megatron-core's default order gives: rank = (pipe x dp + data) x tp + tensor."""
    tp = config.tensor_model_parallel_size
    topology = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    return PipelineModule(
        layers=layer_specs(model, config),
        topology=topology,
        loss_fn=functools.partial(lm_loss, compile_setting=model.compile),
        partition_method=PARTITION,
        seed_layers=True,
        seed_fn=seed_layer,
        base_seed=seed,
        activation_checkpoint_interval=1 if activation_checkpointing else 0,
        checkpointable_layers=["BloomBlock"],
    )
