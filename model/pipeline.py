"""BLOOM as DeepSpeed pipeline stages: the same modules as `model.bloom`, as a list of layer specs.

The word embedding appears twice, tied: at the start (tokens → vectors) and at the end (vectors → logits). Stages
are balanced over blocks *and* embeddings (BLOOM's `type:transformer|embedding`), since the embedding of a large
vocabulary weighs as much as several blocks. Layers are seeded by position, so the weights do not depend on how
the layers are split over stages.
"""

from __future__ import annotations

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from deepspeed.runtime.utils import set_random_seed
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
        # The partition arrives as numpy integers, which random.seed refuses: seed each layer with a plain int.
        seed_fn=lambda layer_seed: set_random_seed(int(layer_seed)),
        base_seed=seed,
        activation_checkpoint_interval=1 if activation_checkpointing else 0,
        checkpointable_layers=["BloomBlock"],
    )
