"""BLOOM, on megatron-core tensor-parallel layers.

Word embedding + LayerNorm → pre-LN blocks (fused QKV attention with ALiBi, GeLU MLP of 4h) → final LayerNorm →
logits through the word embedding (tied). Under tensor parallelism every linear layer holds a slice: QKV, the MLP's
first layer and the embedding are split by output (heads / columns / vocabulary rows), the attention output and the
MLP's second layer by input, so a block needs one all-reduce after attention and one after the MLP. Activations are
[batch, sequence, hidden]; logits stay split over the vocabulary (the loss reads them so). Attention runs one of two
kernels (model/attention.py), the bias + GeLU and a bf16 run's loss are compiled on a GPU (model/fused.py), weights
are drawn by model/weights.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    copy_to_tensor_model_parallel_region,
)
from torch import nn

from model.attention import alibi_bias, alibi_slopes, flex_attention_alibi, kernel_for, sdpa_attention
from model.config import Attention, ModelConfig
from model.fused import bias_gelu, compiles, kernel, vocab_parallel_cross_entropy
from model.weights import initialize


def parallel_config(params_dtype: torch.dtype = torch.float32) -> ModelParallelConfig:
    """megatron's layers allocate this rank's slices on its device, uninitialised: model/weights.py fills them."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    on_cpu = not torch.cuda.is_available()
    return ModelParallelConfig(
        tensor_model_parallel_size=tp,
        use_cpu_initialization=on_cpu,
        perform_initialization=False,
        params_dtype=params_dtype,
    )


def _uninitialised(weight: torch.Tensor) -> None:
    """megatron's init_method, unused (perform_initialization=False): model/weights.py initialises every parameter."""


class BloomEmbedding(VocabParallelEmbedding):
    """Token ids → vectors; also the output projection, through the same (tied) weight."""

    def __init__(self, model: ModelConfig, config: ModelParallelConfig) -> None:
        vocab = model.padded_vocab_size(config.tensor_model_parallel_size)
        super().__init__(vocab, model.hidden_size, init_method=_uninitialised, config=config)

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
        self.attention = model.attention
        h = model.hidden_size
        self.query_key_value = ColumnParallelLinear(
            h, 3 * h, config=config, init_method=_uninitialised, bias=True, gather_output=False
        )
        self.dense = RowParallelLinear(
            h,
            h,
            config=config,
            init_method=_uninitialised,
            bias=True,
            input_is_parallel=True,
            skip_bias_add=False,
        )
        slopes = alibi_slopes(model.num_heads)[rank * self.heads : (rank + 1) * self.heads]
        self.register_buffer("slopes", slopes, persistent=False)
        self.slope_values = tuple(slopes.tolist())  # for flex attention's score modification, without a device sync
        self._cached_bias: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        qkv, _ = self.query_key_value(hidden)
        # Per head, query, key and value lie side by side (BLOOM's layout), so a TP slice holds whole heads.
        query, key, value = qkv.view(batch, seq, self.heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        dropout = self.dropout if self.training else 0.0
        if kernel_for(self.attention, hidden.device, dropout) == Attention.flex:
            context = flex_attention_alibi(query, key, value, self.slope_values)
        else:
            context = sdpa_attention(query, key, value, self._bias(seq, query.dtype, hidden.device), dropout)
        output, _ = self.dense(context.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim))
        return output

    def _bias(self, seq: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if self._cached_bias is None or self._cached_bias.shape[-1] != seq or self._cached_bias.dtype != dtype:
            self._cached_bias = alibi_bias(self.slopes, seq, dtype, device)
        return self._cached_bias


class BloomMLP(nn.Module):
    def __init__(self, model: ModelConfig, config: ModelParallelConfig) -> None:
        super().__init__()
        h, ffn = model.hidden_size, model.ffn_hidden_size
        self.compile = model.compile
        self.dense_h_to_4h = ColumnParallelLinear(
            h, ffn, config=config, init_method=_uninitialised, bias=True, gather_output=False, skip_bias_add=True
        )
        self.dense_4h_to_h = RowParallelLinear(
            ffn,
            h,
            config=config,
            init_method=_uninitialised,
            bias=True,
            input_is_parallel=True,
            skip_bias_add=False,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        intermediate, bias = self.dense_h_to_4h(hidden)
        activated = kernel(bias_gelu, compiles(self.compile, hidden.device))(intermediate, bias)
        output, _ = self.dense_4h_to_h(activated)
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


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, compile_setting: bool | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over vocabulary-parallel logits [b, s, v/tp] (computed in fp32);
    `compile_setting` is `model.compile`."""
    return vocab_parallel_cross_entropy(logits, labels, compiles(compile_setting, logits.device)).mean()


class BloomModel(nn.Module):
    """The whole network in one module, whose parameter names are those every weight is known by (model/layers.py
    maps a pipeline stage's to them); training runs it as pipeline stages (model/pipeline.py), the GPU check and the
    tests compare it with transformers' as it is. Its weights as model/weights.py draws them from `seed`."""

    def __init__(self, model: ModelConfig, config: ModelParallelConfig, seed: int) -> None:
        super().__init__()
        self.word_embeddings = BloomEmbedding(model, config)
        self.word_embeddings_layernorm = BloomLayerNorm(model)
        self.blocks = nn.ModuleList(BloomBlock(model, config) for _ in range(model.num_layers))
        self.final_norm = BloomLayerNorm(model)
        self.compile = model.compile
        tp, tp_rank = config.tensor_model_parallel_size, parallel_state.get_tensor_model_parallel_rank()
        initialize(self.named_parameters(), model, seed, tp, tp_rank)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.word_embeddings_layernorm(self.word_embeddings(tokens))
        for block in self.blocks:
            hidden = block(hidden)
        return self.word_embeddings.logits(self.final_norm(hidden))

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """`batch` holds seq_length + 1 tokens a row: inputs are all but the last, labels all but the first."""
        return lm_loss(self(batch[:, :-1]), batch[:, 1:], self.compile)
