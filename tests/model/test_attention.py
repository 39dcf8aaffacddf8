"""The two attention kernels agree: flex attention with ALiBi as a score modification, and SDPA with ALiBi as a bias.

PyTorch runs flex attention forward only on CPU. Its backward is softmax attention's with the scores it modified, so
the gradients are SDPA's when the modification adds exactly SDPA's bias, which is checked at every (head, query,
key); benchmarks/gpu_check.py compares flex attention's own backward with SDPA's on a GPU."""

from __future__ import annotations

import pytest
import torch

from model.attention import (
    alibi_bias,
    alibi_score_mod,
    alibi_slopes,
    flex_attention_alibi,
    kernel_for,
    sdpa_attention,
)
from model.config import Attention

SEQ, HEAD_DIM = 96, 16  # not a multiple of flex attention's 128-token blocks


def qkv(heads: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, heads, SEQ, HEAD_DIM, generator=generator) for _ in range(3)]


def rank_slopes(num_heads: int, tp: int, rank: int) -> torch.Tensor:
    heads = num_heads // tp
    return alibi_slopes(num_heads)[rank * heads : (rank + 1) * heads]


@pytest.mark.parametrize(("num_heads", "tp", "rank"), [(4, 1, 0), (6, 1, 0), (12, 2, 1), (16, 4, 3), (112, 8, 5)])
def test_flex_and_sdpa_give_the_same_outputs(num_heads: int, tp: int, rank: int) -> None:
    slopes = rank_slopes(num_heads, tp, rank)
    query, key, value = qkv(len(slopes))
    with torch.no_grad():
        flex = flex_attention_alibi(query, key, value, tuple(slopes.tolist()))
        sdpa = sdpa_attention(query, key, value, alibi_bias(slopes, SEQ, torch.float32, query.device), dropout=0.0)
    assert (flex - sdpa).abs().max().item() < 1e-5


def test_both_kernels_keep_alibi_exact_in_bf16_over_long_sequences() -> None:
    """A bf16 run's SDPA takes its bias in bf16: near the diagonal, where a steep head attends, it must be exact (as
    slope x key position it was not: at 2,048 tokens bf16 rounds it to steps of 8, and outputs moved by up to 4)."""
    seq, slopes = 2048, rank_slopes(16, 4, 0)  # BLOOM-560m's steepest heads: 2^-0.5 ... 2^-2
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(1, len(slopes), seq, 32, generator=generator).bfloat16() for _ in range(3))
    with torch.no_grad():
        wide = [tensor.double() for tensor in (query, key, value)]
        exact = sdpa_attention(*wide, alibi_bias(slopes, seq, torch.float64, query.device), dropout=0.0)
        sdpa = sdpa_attention(query, key, value, alibi_bias(slopes, seq, torch.bfloat16, query.device), dropout=0.0)
        flex = flex_attention_alibi(query, key, value, tuple(slopes.tolist()))
    for output in (sdpa, flex):
        assert output.dtype == torch.bfloat16
        assert (output.double() - exact).abs().max().item() < 0.05  # bf16 outputs: 2^-8 of values up to ~4


@pytest.mark.parametrize(("num_heads", "tp", "rank"), [(6, 1, 0), (12, 2, 1), (112, 8, 5)])
def test_the_score_modification_adds_sdpas_bias(num_heads: int, tp: int, rank: int) -> None:
    slopes = rank_slopes(num_heads, tp, rank)
    alibi = alibi_score_mod(tuple(slopes.tolist()), torch.device("cpu"))
    head, query_index, key_index = torch.meshgrid(
        torch.arange(len(slopes)), torch.arange(SEQ), torch.arange(SEQ), indexing="ij"
    )
    scores = torch.randn(len(slopes), SEQ, SEQ, generator=torch.Generator().manual_seed(2))
    added = alibi(scores, 0, head, query_index, key_index) - scores
    bias = alibi_bias(slopes, SEQ, torch.float32, torch.device("cpu"))
    causal = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    assert (added[:, causal] - bias[:, causal]).abs().max().item() < 1e-5


def test_auto_takes_flex_on_a_gpu_only_and_never_with_dropout() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert kernel_for(Attention.auto, cpu, 0.0) == Attention.sdpa
    assert kernel_for(Attention.auto, gpu, 0.0) == Attention.flex
    assert kernel_for(Attention.auto, gpu, 0.1) == Attention.sdpa
    with torch.no_grad():
        assert kernel_for(Attention.flex, cpu, 0.0) == Attention.flex  # evaluation runs on CPU
    with pytest.raises(ValueError, match=r"model\.attention=flex trains on GPUs only"):
        kernel_for(Attention.flex, cpu, 0.0)
