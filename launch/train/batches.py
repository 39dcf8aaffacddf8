"""What one data-parallel rank feeds its model: micro-batches of the blended samples, and validation micro-batches
of each language's held-out tokens, as int64 tensors [micro_batch, seq_length + 1]."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

import numpy as np
import torch

from launch.data.blend import BlendedDataset
from launch.data.corpus import LanguageSplit, TokenCorpus, validation_samples


def micro_batches(
    dataset: BlendedDataset, start_sample: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int
) -> Iterator[torch.Tensor]:
    """This rank's micro-batches, [micro_batch, seq_length + 1] int64, from global sample `start_sample` on, endlessly.

    Global batch b is samples [start_sample + b·global_batch, start_sample + (b + 1)·global_batch); rank r takes the
    contiguous slice r of global_batch // dp_size of them, in global_batch // (micro_batch·dp_size) micro-batches.
    So ranks are disjoint, their slices concatenated by rank are the global batch whatever dp_size is, and resuming
    with start_sample = samples consumed so far gives what an uninterrupted run would have.
    """
    if min(global_batch, micro_batch, dp_size) < 1 or start_sample < 0 or not 0 <= dp_rank < dp_size:
        raise ValueError(
            f"global_batch={global_batch}, micro_batch={micro_batch}, dp_size={dp_size} must be positive, "
            f"start_sample={start_sample} 0 or more and dp_rank={dp_rank} in [0, dp_size)"
        )
    if global_batch % (micro_batch * dp_size):
        raise ValueError(
            f"global_batch={global_batch} is not a multiple of micro_batch × dp_size = {micro_batch} × {dp_size}: "
            "change one of them"
        )
    return _micro_batches(dataset, start_sample, global_batch, micro_batch, dp_rank, dp_size)


def _micro_batches(
    dataset: BlendedDataset, start_sample: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int
) -> Iterator[torch.Tensor]:
    per_rank = global_batch // dp_size
    for first in count(start_sample + dp_rank * per_rank, global_batch):
        for begin in range(first, first + per_rank, micro_batch):
            yield torch.from_numpy(np.stack([dataset[i] for i in range(begin, begin + micro_batch)]))


def validation_batches(
    corpus: TokenCorpus, seq_length: int, micro_batch: int, samples: dict[str, int], dp_rank: int = 0, dp_size: int = 1
) -> dict[str, list[torch.Tensor]]:
    """Per language, this rank's validation micro-batches, [micro_batch, seq_length + 1] int64; fixed for a corpus.

    A language's validation samples are the first `samples[language]` of its held-out tokens cut like training
    samples (the plan's count; 0 leaves it out); rank r takes the contiguous slice r of them. Every rank gets the same
    number of full micro-batches of a language, so the mean over micro-batches and ranks is the mean over its samples,
    whatever the layout.
    """
    if micro_batch < 1 or not 0 <= dp_rank < dp_size:
        raise ValueError(f"micro_batch={micro_batch} must be 1 or more and dp_rank={dp_rank} in [0, {dp_size})")
    for language, wanted in samples.items():
        if wanted % (micro_batch * dp_size):
            raise ValueError(
                f"{language}: validation samples={wanted} must be a multiple of micro_batch={micro_batch} x "
                f"dp_size={dp_size}"
            )
        held = validation_samples(corpus.splits[language], seq_length)
        if held < wanted:
            raise ValueError(
                f"{language}: its held-out documents hold {held} validation samples of {seq_length + 1} tokens, not "
                f"the {wanted} planned: the token files changed since the run was planned; launch it again"
            )
    return {
        language: _validation_language(corpus.splits[language], seq_length, micro_batch, wanted, dp_rank, dp_size)
        for language, wanted in samples.items()
        if wanted
    }


def _validation_language(
    split: LanguageSplit, seq_length: int, micro_batch: int, samples: int, dp_rank: int, dp_size: int
) -> list[torch.Tensor]:
    tokens = split.validation_tokens
    per_rank = samples // dp_size
    starts = range(dp_rank * per_rank * seq_length, (dp_rank + 1) * per_rank * seq_length, seq_length)
    mine = [tokens[start : start + seq_length + 1].astype(np.int64) for start in starts]
    return [torch.from_numpy(np.stack(mine[i : i + micro_batch])) for i in range(0, len(mine), micro_batch)]
