"""BLOOM as DeepSpeed pipeline stages: the same modules as `model.bloom`, as a list of layer specs.

The word embedding appears twice, tied: at the start (tokens → vectors) and at the end (vectors → logits). Stages
are balanced over blocks *and* embeddings (BLOOM's `type:transformer|embedding`), since the embedding of a large
vocabulary weighs as much as several blocks. Layers are seeded by position, so the weights do not depend on how
the layers are split over stages.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from deepspeed.runtime.utils import partition_balanced
from megatron.core.model_parallel_config import ModelParallelConfig

from launch.layout import ParallelLayout
from model.bloom import BloomBlock, BloomEmbedding, BloomLayerNorm, lm_loss
from model.config import ModelConfig

PARTITION = "type:BloomBlock|BloomEmbedding"


def _logits(embedding: BloomEmbedding, hidden: torch.Tensor) -> torch.Tensor:
    return embedding.logits(hidden)


def layer_specs(model: ModelConfig, config: ModelParallelConfig) -> list[LayerSpec]:
    return [
        TiedLayerSpec("word_embeddings", BloomEmbedding, model, config),
        LayerSpec(BloomLayerNorm, model),
        *(LayerSpec(BloomBlock, model, config) for _ in range(model.num_layers)),
        LayerSpec(BloomLayerNorm, model),
        TiedLayerSpec("word_embeddings", BloomEmbedding, model, config, forward_fn=_logits),
    ]


def layer_prefixes(model: ModelConfig) -> list[str]:
    """The `BloomModel` name prefix of each pipeline layer's parameters, by layer index (the tied output projection
    at the end is the word embedding again and has none of its own)."""
    blocks = [f"blocks.{index}." for index in range(model.num_layers)]
    return ["word_embeddings.", "word_embeddings_layernorm.", *blocks, "final_norm."]


def stage_layers(model: ModelConfig, pp: int) -> list[range]:
    """The layer indices of each pipeline stage, as `PipelineModule` partitions them (its rule for PARTITION)."""
    kinds = PARTITION.removeprefix("type:").split("|")
    weights = [int(spec.typename.__name__ in kinds) for spec in layer_specs(model, None)]
    parts = [int(part) for part in partition_balanced(weights=weights, num_parts=pp)]
    return [range(start, stop) for start, stop in pairwise(parts)]


def stage_problems(model: ModelConfig, pp: int) -> list[str]:
    """A stage holding nothing but the output embedding has no 1-D parameter, hence one optimizer parameter group
    where the others have two, and ZeRO's per-group collectives then wait for each other for ever."""
    specs = layer_specs(model, None)
    lone = [
        stage
        for stage, layers in enumerate(stage_layers(model, pp))
        if all(specs[index].typename is BloomEmbedding for index in layers)
    ]
    if not lone:
        return []
    return [f"parallel.pp={pp} leaves stage {lone[0]} with the output embedding alone: use fewer stages or more layers"]


def seed_layer(layer_seed: int) -> None:
    """What DeepSpeed calls before every layer's forward: reseeds the generators dropout draws from, only those.
    DeepSpeed's default (`set_random_seed`) also reseeds Python's and NumPy's and every accelerator backend's, which
    took an eighth of a small model's step on CPU. (The seed arrives as a numpy integer: made a plain int.)"""
    torch.default_generator.manual_seed(int(layer_seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed(int(layer_seed))


def pipeline_module(
    model: ModelConfig, config: ModelParallelConfig, layout: ParallelLayout, seed: int, activation_checkpointing: bool
) -> PipelineModule:
    topology = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
    return PipelineModule(
        layers=layer_specs(model, config),
        topology=topology,
        loss_fn=lm_loss,
        partition_method=PARTITION,
        seed_layers=True,
        seed_fn=seed_layer,
        base_seed=seed,
        activation_checkpoint_interval=1 if activation_checkpointing else 0,
        checkpointable_layers=["BloomBlock"],
    )
