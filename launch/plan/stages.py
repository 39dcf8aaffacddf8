"""The pipeline stage cut: which layers (model/layers.py) each stage holds, and how many micro-batches it keeps in
flight; the one place it is decided.

Stages are balanced over blocks *and* the two (tied) embeddings, as BLOOM did: the balanced items are split as
evenly as they go, the first `items % pp` stages taking one more, and each LayerNorm stays on the stage of the layer
before it. This is the cut DeepSpeed's `partition_balanced` makes of model/pipeline.py's specs, and every rank checks
that it did (launch/train/engine.py). Megatron-LM (for the planner's calibration) splits the blocks alone and adds
the embedding to the first stage and the output projection to the last. Under the 1F1B schedule stage i holds the
activations of min(pp - i, micro-batches) micro-batches at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.config import ModelConfig
from model.layers import BALANCED, LayerKind, layer_kinds


@dataclass(frozen=True)
class Stage:
    index: int
    layers: range  # indices into model.layers.layer_kinds
    blocks: int
    embedding: bool  # holds the word embedding (tokens -> vectors)
    logits: bool  # holds the tied output projection (vectors -> logits) and the loss
    in_flight: int  # micro-batches whose activations it holds at once

    @property
    def tied_copy(self) -> bool:
        """Holds the embedding weights (the first stage, or the last through the tied projection)."""
        return self.embedding or self.logits


def _even_split(items: int, parts: int) -> list[int]:
    return [items // parts + (1 if index < items % parts else 0) for index in range(parts)]


def _bounds(num_layers: int, pp: int, embedding_is_a_block: bool) -> list[int]:
    """The first layer of each stage, then the layer count."""
    kinds = layer_kinds(num_layers)
    balanced = [index for index, kind in enumerate(kinds) if kind in BALANCED]
    if not embedding_is_a_block:  # blocks alone; the embeddings go with the first and the last
        balanced = [index for index in balanced if kinds[index] == LayerKind.block]
    sizes = _even_split(len(balanced), pp)
    starts = [sum(sizes[:stage]) for stage in range(pp)]
    return [0, *(balanced[start] for start in starts[1:]), len(kinds)]


def pipeline_stages(num_layers: int, pp: int, micro_batches: int, embedding_is_a_block: bool = True) -> list[Stage]:
    kinds = layer_kinds(num_layers)
    bounds = _bounds(num_layers, pp, embedding_is_a_block)
    stages = []
    for index in range(pp):
        layers = range(bounds[index], bounds[index + 1])
        held = [kinds[layer] for layer in layers]
        blocks = held.count(LayerKind.block)
        stages.append(Stage(index, layers, blocks, index == 0, index == pp - 1, min(pp - index, micro_batches)))
    return stages


def stage_cut(model: ModelConfig, pp: int) -> list[range]:
    """The layers each stage of corolla's pipeline holds."""
    return [stage.layers for stage in pipeline_stages(model.num_layers, pp, micro_batches=1)]


def stage_problems(model: ModelConfig, pp: int) -> list[str]:
    """A stage holding nothing but an embedding has no 1-D parameter, hence one optimizer parameter group where the
    others have two, and ZeRO's per-group collectives then wait for each other for ever."""
    kinds = layer_kinds(model.num_layers)
    embeddings = (LayerKind.embedding, LayerKind.logits)
    lone = [index for index, layers in enumerate(stage_cut(model, pp)) if all(kinds[i] in embeddings for i in layers)]
    if not lone:
        return []
    return [f"parallel.pp={pp} leaves stage {lone[0]} with the output embedding alone: use fewer stages or more layers"]
