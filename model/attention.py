"""BLOOM's attention kernels: ALiBi + causal attention of one TP rank's heads, [batch, heads, seq, head_dim] in and out.

- flex: `torch.nn.attention.flex_attention`, compiled, with ALiBi as a score modification and causality as a block
  mask: FlashAttention-class speed, nothing [heads, seq, seq] kept. PyTorch runs it forward only on CPU, and it has
  no dropout.
- sdpa: `scaled_dot_product_attention` with ALiBi and causality as a float mask (the memory-efficient kernel on a GPU,
  the math one on CPU), which each layer keeps: the fallback, and what attention dropout needs.
The two give the same outputs and gradients (tests/model/test_attention.py); `auto` takes flex on a GPU, sdpa on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from model.config import FLEX_NEEDS_GPU, Attention

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes: a geometric series from 2^(-8/n); for n not a power of two, the series of the
    nearest lower power of two, then every other slope of the series for twice that many heads."""

    def series(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    power = 2 ** math.floor(math.log2(num_heads))
    slopes = series(power) + series(2 * power)[0::2][: num_heads - power]
    return torch.tensor(slopes, dtype=torch.float32)


def kernel_for(attention: Attention, device: torch.device, dropout: float) -> Attention:
    """The kernel a forward pass runs: auto takes flex on a GPU, unless attention dropout is on."""
    if attention == Attention.auto:
        return Attention.flex if device.type == "cuda" and not dropout else Attention.sdpa
    if attention == Attention.flex and device.type != "cuda" and torch.is_grad_enabled():
        raise ValueError(FLEX_NEEDS_GPU)
    return attention


def alibi_bias(slopes: torch.Tensor, seq: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """ALiBi + causal mask as a float bias, [heads, queries, keys]: slope x (key - query position), -inf above the
    diagonal. Softmax ignores a per-query offset, so this is BLOOM's slope x key position; but it is 0 on the diagonal
    and small near it, where a bf16 bias must be exact: slope x key position reaches ~1,400 at 2,048 tokens, where
    bf16 steps by 8, and moved a steep head's scores by up to 4 (attention outputs by up to 4, against flex
    attention's 0.01)."""
    positions = torch.arange(seq, device=device, dtype=torch.float32)
    alibi = slopes.to(device)[:, None, None] * (positions - positions[:, None])
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    return alibi.masked_fill(~causal, float("-inf")).to(dtype)


def sdpa_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, dropout: float
) -> torch.Tensor:
    # Heads differ per TP rank, so their dropout masks must too: drawn from the tensor-parallel RNG.
    with get_cuda_rng_tracker().fork() if dropout else contextlib.nullcontext():
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout)


@functools.cache
def alibi_score_mod(slopes: tuple[float, ...], device: torch.device):
    """ALiBi as flex attention's score modification; one function per set of slopes, so that every layer of a rank
    shares one compiled kernel."""
    table = torch.tensor(slopes, dtype=torch.float32, device=device)

    def alibi(score, batch, head, query_index, key_index):
        return score + table[head] * (key_index - query_index)

    return alibi


def _causal(batch, head, query_index, key_index):
    return query_index >= key_index


@functools.cache
def causal_block_mask(seq: int, device: torch.device) -> BlockMask:
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(_causal, None, None, seq, seq, device=device)


# Flex attention's module imports TorchDynamo (a second of each rank's start): imported when flex first runs.
@functools.cache
def _flex_attention(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def flex_attention_alibi(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slopes: tuple[float, ...]
) -> torch.Tensor:
    """Compiled on a GPU (the fused kernel); on CPU, PyTorch's unfused reference (forward only there)."""
    score_mod = alibi_score_mod(slopes, query.device)
    mask = causal_block_mask(query.shape[-2], query.device)
    return _flex_attention(query.is_cuda)(query, key, value, score_mod=score_mod, block_mask=mask)
