"""corolla's BLOOM ↔ Hugging Face `BloomForCausalLM`: configuration and parameter names (full, unsplit weights)."""

from __future__ import annotations

import re

import torch

from model.config import ModelConfig
from tokenizer.vocab import BOS, EOS, PAD, SPECIAL_IDS

# corolla name pattern → transformers name; the output projection is tied to the word embedding in both.
_NAMES = [
    (r"^(word_embeddings(_layernorm)?)\.", r"transformer.\1."),
    (r"^blocks\.(\d+)\.", r"transformer.h.\1."),
    (r"^final_norm\.", r"transformer.ln_f."),
]


def hf_name(name: str) -> str:
    for pattern, replacement in _NAMES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    raise ValueError(f"parameter {name} has no Hugging Face counterpart")


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors only: megatron's layers also keep an `_extra_state` entry (None) that has no counterpart."""
    hf = {hf_name(name): tensor for name, tensor in state.items() if isinstance(tensor, torch.Tensor)}
    hf["lm_head.weight"] = hf["transformer.word_embeddings.weight"]
    return hf


def hf_config(model: ModelConfig, vocab_size: int) -> dict:
    """Keyword arguments of `transformers.BloomConfig`; `vocab_size` is the embedding's (padded) row count."""
    return {
        "bos_token_id": SPECIAL_IDS[BOS],
        "eos_token_id": SPECIAL_IDS[EOS],
        "pad_token_id": SPECIAL_IDS[PAD],
        "vocab_size": vocab_size,
        "hidden_size": model.hidden_size,
        "n_layer": model.num_layers,
        "n_head": model.num_heads,
        "layer_norm_epsilon": model.layernorm_epsilon,
        "initializer_range": model.std,
        "hidden_dropout": model.hidden_dropout,
        "attention_dropout": model.attention_dropout,
        "apply_residual_connection_post_layernorm": False,
        "tie_word_embeddings": True,
        "seq_length": model.seq_length,
    }
