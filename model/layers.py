"""BLOOM's layers in pipeline order and its parameters' names, without torch: what the pipeline specs build
(model/pipeline.py), what the plan cuts into stages (launch/plan/stages.py), how each layer's parameter names map to
`BloomModel`'s, and which dimension of each parameter tensor parallelism splits.

The word embedding appears twice, tied: first (tokens → vectors) and last (vectors → logits). A pipeline module
names parameters by layer index (`3.mlp.dense_h_to_4h.weight`), except the tied embedding, which it keeps under
`tied_modules.word_embeddings.` on both the first and the last stage.
"""

from __future__ import annotations

from enum import Enum

TIED_PREFIX = "tied_modules."
EMBEDDING = "word_embeddings.weight"  # BloomModel's name of the (tied) embedding


class LayerKind(Enum):
    embedding = "embedding"
    embedding_norm = "embedding_norm"
    block = "block"
    final_norm = "final_norm"
    logits = "logits"  # the tied word embedding again, as the output projection


# What pipeline stages are balanced over, as BLOOM did (`type:transformer|embedding`): the embedding of a large
# vocabulary weighs as much as several blocks; the LayerNorms weigh nothing.
BALANCED = (LayerKind.embedding, LayerKind.block, LayerKind.logits)


def layer_kinds(num_layers: int) -> list[LayerKind]:
    return [
        LayerKind.embedding,
        LayerKind.embedding_norm,
        *[LayerKind.block] * num_layers,
        LayerKind.final_norm,
        LayerKind.logits,
    ]


def layer_of(parameter: str) -> int | None:
    """The layer index of a pipeline module's parameter; None for the tied embedding, which two layers share."""
    head = parameter.split(".", 1)[0]
    return None if parameter.startswith(TIED_PREFIX) else int(head)


def holds(parameter: str, layers: range, num_layers: int) -> bool:
    """Whether a stage holding `layers` holds the parameter (the tied embedding: with the first or the last layer)."""
    layer = layer_of(parameter)
    if layer is None:
        return 0 in layers or len(layer_kinds(num_layers)) - 1 in layers
    return layer in layers


def model_name(parameter: str, num_layers: int) -> str:
    """A pipeline module's parameter name → `BloomModel`'s (`3.mlp...` → `blocks.1.mlp...`, the tied embedding →
    `word_embeddings.weight`)."""
    layer = layer_of(parameter)
    rest = parameter.split(".", 1)[1]
    if layer is None:
        return rest
    kind = layer_kinds(num_layers)[layer]
    prefix = {
        LayerKind.embedding: "word_embeddings.",
        LayerKind.embedding_norm: "word_embeddings_layernorm.",
        LayerKind.block: f"blocks.{layer - 2}.",
        LayerKind.final_norm: "final_norm.",
    }[kind]
    return prefix + rest


def pipeline_name(name: str, num_layers: int) -> str:
    """`BloomModel`'s parameter name → a pipeline module's: the inverse of `model_name`."""
    head, rest = name.split(".", 1)
    if head == "word_embeddings":
        return TIED_PREFIX + name
    if head == "blocks":
        block, rest = rest.split(".", 1)
        return f"{layer_kinds(num_layers).index(LayerKind.block) + int(block)}.{rest}"
    kind = {"word_embeddings_layernorm": LayerKind.embedding_norm, "final_norm": LayerKind.final_norm}[head]
    return f"{layer_kinds(num_layers).index(kind)}.{rest}"


# Where tensor parallelism splits each parameter (by name suffix): column-parallel layers and the embedding by
# rows (dim 0), row-parallel layers by columns (dim 1). Everything else (LayerNorms, row-parallel biases) is whole
# on every TP rank.
_TP_SPLIT = {
    EMBEDDING: 0,
    "query_key_value.weight": 0,
    "query_key_value.bias": 0,
    "dense_h_to_4h.weight": 0,
    "dense_h_to_4h.bias": 0,
    "self_attention.dense.weight": 1,
    "dense_4h_to_h.weight": 1,
}


def tp_split_dim(name: str) -> int | None:
    """The dimension tensor parallelism splits parameter `name` along, or None if every TP rank holds all of it."""
    return next((dim for suffix, dim in _TP_SPLIT.items() if name == suffix or name.endswith("." + suffix)), None)
