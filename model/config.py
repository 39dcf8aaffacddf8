"""The shape of a BLOOM model and the kernels it runs with: the schema behind `conf/model/*.yaml`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from tokenizer.vocab import padded_vocab_size

BLOOM_VOCABULARY = 250_680  # BLOOM's tokenizer; its embedding is padded to 250,880 under TP4


class Attention(Enum):
    """The attention kernel (model/attention.py); auto: flex on a GPU, sdpa on CPU."""

    auto = "auto"
    flex = "flex"
    sdpa = "sdpa"


FLEX_NEEDS_GPU = (
    "model.attention=flex trains on GPUs only (PyTorch's flex attention has no backward on CPU): use "
    "model.attention=auto or sdpa"
)


@dataclass
class ModelConfig:
    name: str = "bloom-tiny"
    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 4
    seq_length: int = 128
    # The tokenizer's vocabulary (0: take it from the token files); the embedding is padded to 128 x TP.
    vocab_size: int = 0
    # The embedding's rows when they are given rather than padded: an imported model's (0: padded to 128 x TP).
    embedding_rows: int = 0
    ffn_multiplier: int = 4
    layernorm_epsilon: float = 1e-5
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    # None: BLOOM's sqrt(1 / (3 h)); output projections get it / sqrt(2 * layers), as Megatron does.
    init_std: float | None = None
    attention: Attention = Attention.auto
    # torch.compile of each block's bias + GeLU and of a bf16 run's loss (model/fused.py); None: on a GPU only.
    compile: bool | None = None

    def __post_init__(self) -> None:
        shape = {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "num_heads": self.num_heads}
        shape |= {"seq_length": self.seq_length}
        rows = {"vocab_size": self.vocab_size, "embedding_rows": self.embedding_rows}
        wrong = [f"model.{key}={value}" for key, value in shape.items() if value < 1]
        wrong += [f"model.{key}={value}" for key, value in rows.items() if value < 0]
        if wrong:
            raise ValueError(
                f"model {self.name}: {', '.join(wrong)}: layers, hidden size, heads and sequence length are at least "
                "1, the vocabulary and embedding rows 0 (the tokenizer's, padded) or more"
            )
        if self.ffn_multiplier < 1 or not self.layernorm_epsilon > 0:
            raise ValueError(
                f"model.ffn_multiplier={self.ffn_multiplier} must be at least 1 and model.layernorm_epsilon="
                f"{self.layernorm_epsilon} positive (BLOOM: 4 and 1e-5)"
            )
        if not (0 <= self.hidden_dropout < 1 and 0 <= self.attention_dropout < 1):
            raise ValueError(
                f"model.hidden_dropout={self.hidden_dropout} and model.attention_dropout={self.attention_dropout} are "
                "probabilities: give each in [0, 1) (BLOOM: 0)"
            )
        if self.attention == Attention.flex and self.attention_dropout:
            raise ValueError(
                f"model.attention=flex has no dropout but model.attention_dropout={self.attention_dropout}: use "
                "model.attention=sdpa (or auto), or model.attention_dropout=0"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}: "
                "choose heads that divide the hidden size"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_hidden_size(self) -> int:
        return self.ffn_multiplier * self.hidden_size

    @property
    def std(self) -> float:
        return self.init_std if self.init_std is not None else math.sqrt(1.0 / (3 * self.hidden_size))

    @property
    def output_std(self) -> float:
        return self.std / math.sqrt(2.0 * self.num_layers)

    def padded_vocab_size(self, tensor_parallel: int) -> int:
        if not self.vocab_size:
            raise ValueError(f"model {self.name} has no vocabulary size yet: it comes from the tokenizer's token files")
        if not self.embedding_rows:
            return padded_vocab_size(self.vocab_size, tensor_parallel)
        if self.vocab_size > self.embedding_rows:
            raise ValueError(
                f"the tokenizer has {self.vocab_size} tokens but model {self.name}'s embedding only "
                f"{self.embedding_rows} rows: use the model's own tokenizer (or one extended for it)"
            )
        if self.embedding_rows % tensor_parallel:
            raise ValueError(
                f"model {self.name}'s embedding has {self.embedding_rows} rows, which TP={tensor_parallel} cannot "
                "split evenly: choose a parallel.tp that divides them"
            )
        return self.embedding_rows
