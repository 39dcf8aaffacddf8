"""Which layers each pipeline stage holds, and how many micro-batches it keeps in flight.

corolla balances stages over blocks *and* the two (tied) embeddings, as BLOOM did (`type:transformer|embedding`,
model/pipeline.py): DeepSpeed's balanced partition of equal weights gives the first `items % pp` stages one item
more. Megatron-LM splits the blocks alone and adds the embedding to the first stage and the output projection to the
last. Under the 1F1B schedule stage i holds the activations of min(pp - i, micro-batches) micro-batches at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    index: int
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


def pipeline_stages(num_layers: int, pp: int, micro_batches: int, embedding_is_a_block: bool = True) -> list[Stage]:
    if embedding_is_a_block:
        sizes = _even_split(num_layers + 2, pp)
        blocks = [size - (index == 0) - (index == pp - 1) for index, size in enumerate(sizes)]
    else:
        blocks = _even_split(num_layers, pp)
    return [
        Stage(index, count, index == 0, index == pp - 1, min(pp - index, micro_batches))
        for index, count in enumerate(blocks)
    ]
