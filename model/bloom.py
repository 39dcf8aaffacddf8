"""BLOOM, on megatron-core tensor-parallel layers.

Word embedding + LayerNorm → pre-LN blocks (fused QKV attention with ALiBi, GeLU MLP of 4h) → final LayerNorm →
logits through the word embedding (tied). Under tensor parallelism every linear layer holds a slice: QKV, the MLP's
first layer and the embedding are split by output (heads / columns / vocabulary rows), the attention output and the
MLP's second layer by input, so a block needs one all-reduce after attention and one after the MLP. Activations are
[batch, sequence, hidden]; logits stay split over the vocabulary (`vocab_parallel_cross_entropy` reads them so).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    copy_to_tensor_model_parallel_region,
    get_cuda_rng_tracker,
    vocab_parallel_cross_entropy,
)
from torch import nn

from model.config import ModelConfig

# Where tensor parallelism splits each parameter (by name suffix): column-parallel layers and the embedding by
# rows (dim 0), row-parallel layers by columns (dim 1). Everything else (LayerNorms, row-parallel biases) is whole
# on every TP rank.
_TP_SPLIT = {
    "word_embeddings.weight": 0,
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


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes: a geometric series from 2^(-8/n); for n not a power of two, the series of the
    nearest lower power of two, then every other slope of the series for twice that many heads."""

    def series(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    power = 2 ** math.floor(math.log2(num_heads))
    slopes = series(power) + series(2 * power)[0::2][: num_heads - power]
    return torch.tensor(slopes, dtype=torch.float32)


def parallel_config(params_dtype: torch.dtype = torch.float32) -> ModelParallelConfig:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return ModelParallelConfig(tensor_model_parallel_size=tp, use_cpu_initialization=True, params_dtype=params_dtype)


def _normal(std: float):
    return lambda weight: nn.init.normal_(weight, mean=0.0, std=std)


class BloomEmbedding(VocabParallelEmbedding):
    """Token ids → vectors; also the output projection, through the same (tied) weight."""

    def __init__(self, model: ModelConfig, config: ModelParallelConfig) -> None:
        vocab = model.padded_vocab_size(config.tensor_model_parallel_size)
        super().__init__(vocab, model.hidden_size, init_method=_normal(model.std), config=config)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[b, s, h] → [b, s, vocab / tp]: this rank's slice of the vocabulary."""
        return F.linear(copy_to_tensor_model_parallel_region(hidden), self.weight)


class BloomLayerNorm(nn.LayerNorm):
    """After the word embedding, around attention and the MLP, and after the last block."""

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model.hidden_size, eps=model.layernorm_epsilon)


class BloomAttention(nn.Module):
    def __init__(self, model: ModelConfig, config: ModelParallelConfig) -> None:
        super().__init__()
        tp, rank = config.tensor_model_parallel_size, parallel_state.get_tensor_model_parallel_rank()
        if model.num_heads % tp:
            raise ValueError(f"model.num_heads={model.num_heads} is not divisible by parallel.tp={tp}")
        self.heads, self.head_dim, self.dropout = model.num_heads // tp, model.head_dim, model.attention_dropout
        h = model.hidden_size
        self.query_key_value = ColumnParallelLinear(
            h, 3 * h, config=config, init_method=_normal(model.std), bias=True, gather_output=False
        )
        self.dense = RowParallelLinear(
            h,
            h,
            config=config,
            init_method=_normal(model.output_std),
            bias=True,
            input_is_parallel=True,
            skip_bias_add=False,
        )
        slopes = alibi_slopes(model.num_heads)[rank * self.heads : (rank + 1) * self.heads]
        self.register_buffer("slopes", slopes, persistent=False)
        self._cached_bias: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        qkv, _ = self.query_key_value(hidden)
        # Per head, query, key and value lie side by side (BLOOM's layout), so a TP slice holds whole heads.
        query, key, value = qkv.view(batch, seq, self.heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        bias = self._bias(seq, query.dtype, hidden.device)
        dropout = self.dropout if self.training else 0.0
        # Heads differ per TP rank, so their dropout masks must too: draw them from the tensor-parallel RNG.
        with get_cuda_rng_tracker().fork() if dropout else contextlib.nullcontext():
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout)
        output, _ = self.dense(context.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim))
        return output

    def _bias(self, seq: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """ALiBi + causal mask, [heads, queries, keys]; slope x key position (softmax ignores a per-query offset)."""
        if self._cached_bias is None or self._cached_bias.shape[-1] != seq or self._cached_bias.dtype != dtype:
            positions = torch.arange(seq, device=device, dtype=torch.float32)
            alibi = self.slopes.to(device)[:, None, None] * positions
            causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
            self._cached_bias = alibi.masked_fill(~causal, float("-inf")).to(dtype)
        return self._cached_bias


class BloomMLP(nn.Module):
    def __init__(self, model: ModelConfig, config: ModelParallelConfig) -> None:
        super().__init__()
        h, ffn = model.hidden_size, model.ffn_hidden_size
        self.dense_h_to_4h = ColumnParallelLinear(
            h, ffn, config=config, init_method=_normal(model.std), bias=True, gather_output=False
        )
        self.dense_4h_to_h = RowParallelLinear(
            ffn,
            h,
            config=config,
            init_method=_normal(model.output_std),
            bias=True,
            input_is_parallel=True,
            skip_bias_add=False,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        intermediate, _ = self.dense_h_to_4h(hidden)
        output, _ = self.dense_4h_to_h(F.gelu(intermediate, approximate="tanh"))
        return output


class BloomBlock(nn.Module):
    def __init__(self, model: ModelConfig, config: ModelParallelConfig) -> None:
        super().__init__()
        self.input_layernorm = BloomLayerNorm(model)
        self.self_attention = BloomAttention(model, config)
        self.post_attention_layernorm = BloomLayerNorm(model)
        self.mlp = BloomMLP(model, config)
        self.dropout = model.hidden_dropout

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + F.dropout(self.self_attention(self.input_layernorm(hidden)), self.dropout, self.training)
        return hidden + F.dropout(self.mlp(self.post_attention_layernorm(hidden)), self.dropout, self.training)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over vocabulary-parallel logits [b, s, v/tp] (computed in fp32)."""
    return vocab_parallel_cross_entropy(logits.float(), labels).mean()


class BloomModel(nn.Module):
    """The whole network in one module, for runs without pipeline parallelism (and tests)."""

    def __init__(self, model: ModelConfig, config: ModelParallelConfig) -> None:
        super().__init__()
        self.word_embeddings = BloomEmbedding(model, config)
        self.word_embeddings_layernorm = BloomLayerNorm(model)
        self.blocks = nn.ModuleList(BloomBlock(model, config) for _ in range(model.num_layers))
        self.final_norm = BloomLayerNorm(model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.word_embeddings_layernorm(self.word_embeddings(tokens))
        for block in self.blocks:
            hidden = block(hidden)
        return self.word_embeddings.logits(self.final_norm(hidden))

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """`batch` holds seq_length + 1 tokens a row: inputs are all but the last, labels all but the first."""
        return lm_loss(self(batch[:, :-1]), batch[:, 1:])
