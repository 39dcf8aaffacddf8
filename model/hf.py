"""corolla's BLOOM ↔ Hugging Face `BloomForCausalLM`: configuration and parameter names (full, unsplit weights)."""

from __future__ import annotations

import re

import torch

from model.config import ModelConfig
from model.layers import EMBEDDING
from tokenizer.vocab import BOS, EOS, PAD, SPECIAL_IDS

# corolla name pattern → transformers name; the output projection is tied to the word embedding in both.
_NAMES = [
    (r"^(word_embeddings(_layernorm)?)\.", r"transformer.\1."),
    (r"^blocks\.(\d+)\.", r"transformer.h.\1."),
    (r"^final_norm\.", r"transformer.ln_f."),
]
# transformers name (without its "transformer." prefix) → corolla name: _NAMES the other way.
_COROLLA_NAMES = [
    (r"^(word_embeddings(_layernorm)?)\.", r"\1."),
    (r"^h\.(\d+)\.", r"blocks.\1."),
    (r"^ln_f\.", r"final_norm."),
]


def _renamed(name: str, rules: list[tuple[str, str]]) -> str | None:
    """`name` by the first rule whose pattern it matches; None where none does."""
    for pattern, replacement in rules:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return None


def hf_name(name: str) -> str:
    if (renamed := _renamed(name, _NAMES)) is None:
        raise ValueError(f"parameter {name} has no Hugging Face counterpart")
    return renamed


def corolla_name(name: str) -> str | None:
    """A `BloomForCausalLM` or `BloomModel` name → corolla's (the inverse of `hf_name`); None for `lm_head.weight`,
    the tied word embedding again."""
    if name == "lm_head.weight":
        return None
    name = name.removeprefix("transformer.")
    if (renamed := _renamed(name, _COROLLA_NAMES)) is None:
        raise ValueError(f"{name} is no parameter of a BloomForCausalLM")
    return renamed


def parameter_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of `model` (whole, with `model.embedding_rows` rows) by corolla's name."""
    h, ffn = model.hidden_size, model.ffn_hidden_size
    norm = {"weight": (h,), "bias": (h,)}
    block = {
        **{f"input_layernorm.{key}": shape for key, shape in norm.items()},
        "self_attention.query_key_value.weight": (3 * h, h),
        "self_attention.query_key_value.bias": (3 * h,),
        "self_attention.dense.weight": (h, h),
        "self_attention.dense.bias": (h,),
        **{f"post_attention_layernorm.{key}": shape for key, shape in norm.items()},
        "mlp.dense_h_to_4h.weight": (ffn, h),
        "mlp.dense_h_to_4h.bias": (ffn,),
        "mlp.dense_4h_to_h.weight": (h, ffn),
        "mlp.dense_4h_to_h.bias": (h,),
    }
    shapes = {EMBEDDING: (model.embedding_rows, h)}
    shapes |= {f"word_embeddings_layernorm.{key}": shape for key, shape in norm.items()}
    for layer in range(model.num_layers):
        shapes |= {f"blocks.{layer}.{key}": shape for key, shape in block.items()}
    return shapes | {f"final_norm.{key}": shape for key, shape in norm.items()}


def model_config(config: object, name: str, vocab_size: int) -> ModelConfig:
    """The corolla model of a `BloomForCausalLM`'s config.json (any BLOOM size; `n_embed` and `num_attention_heads`
    as BLOOM's own files spell them), with the tokenizer's `vocab_size`; a one-line ValueError for another model, or
    a config.json whose shape is missing or not numbers."""
    if not isinstance(config, dict):
        raise ValueError(f"its config.json holds {type(config).__name__}, not a JSON object: {RESTORE_CONFIG}")
    kind = config.get("model_type")
    if kind != "bloom":
        raise ValueError(
            f"it holds a {kind or 'unknown'} model (config.json model_type), not BLOOM: corolla imports "
            "BloomForCausalLM only"
        )
    if config.get("apply_residual_connection_post_layernorm") or not config.get("tie_word_embeddings", True):
        raise ValueError(
            "its config.json asks for post-LayerNorm residuals or an untied output layer, which BLOOM "
            "does not have: corolla imports BLOOM's own architecture only"
        )
    hidden = _positive(config, "hidden_size", "n_embed")
    inner = _positive(config, "n_inner") if config.get("n_inner") is not None else 4 * hidden
    if inner % hidden:
        raise ValueError(f"its MLP is {inner} wide, not a multiple of hidden_size={hidden}: corolla cannot build it")
    return ModelConfig(
        name=name,
        num_layers=_positive(config, "n_layer", "num_hidden_layers"),
        hidden_size=hidden,
        num_heads=_positive(config, "n_head", "num_attention_heads"),
        seq_length=_positive(config, "seq_length") if config.get("seq_length") is not None else 2048,
        vocab_size=vocab_size,
        embedding_rows=_positive(config, "vocab_size"),
        ffn_multiplier=inner // hidden,
        layernorm_epsilon=_number(config, "layer_norm_epsilon", 1e-5),
        hidden_dropout=_number(config, "hidden_dropout", 0.0),
        attention_dropout=_number(config, "attention_dropout", 0.0),
        init_std=_number(config, "initializer_range", None),
    )


RESTORE_CONFIG = "restore config.json from the model's source"


def _positive(config: dict, *names: str) -> int:
    """The first of `names` that config.json gives (BLOOM's files spell some keys their own way), a positive
    integer."""
    spelled = " or ".join(names)
    found = [name for name in names if name in config]
    if not found:
        raise ValueError(f"its config.json has no {spelled}: {RESTORE_CONFIG}")
    value = config[found[0]]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"its config.json gives {found[0]}={value!r}, not a positive integer: {RESTORE_CONFIG}")
    return value


def _number(config: dict, name: str, default: float | None) -> float | None:
    """An optional number of config.json (null: `default`)."""
    value = config.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"its config.json gives {name}={value!r}, not a number: {RESTORE_CONFIG}")
    return value


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
