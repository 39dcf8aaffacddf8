"""Initial weights are the same whatever the layout: drawn by parameter name and row block, each TP rank keeping its
slice, on the device the parameter lives on (the same code path on CPU as on a GPU)."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.layers import tp_split_dim
from model.weights import initialize

MODEL = ModelConfig(num_layers=2, hidden_size=64, num_heads=4, vocab_size=1000)
H, FFN = MODEL.hidden_size, MODEL.ffn_hidden_size
SHAPES = {  # BloomModel's names, whole shapes (the embedding padded for TP=1)
    "word_embeddings.weight": (MODEL.padded_vocab_size(1), H),
    "blocks.1.self_attention.query_key_value.weight": (3 * H, H),
    "blocks.1.self_attention.query_key_value.bias": (3 * H,),
    "blocks.1.self_attention.dense.weight": (H, H),
    "blocks.1.mlp.dense_4h_to_h.weight": (H, FFN),
    "blocks.1.input_layernorm.weight": (H,),
    "final_norm.bias": (H,),
}


def slices(tp: int, rank: int, seed: int = 7) -> dict[str, torch.Tensor]:
    """Rank `rank`'s parameters under TP `tp`, as initialize sets them."""
    parameters = {}
    for name, shape in SHAPES.items():
        local = list(shape)
        if tp_split_dim(name) is not None:
            local[tp_split_dim(name)] //= tp
        parameters[name] = torch.nn.Parameter(torch.full(local, float("nan")))
    initialize(parameters.items(), MODEL, seed, tp, rank)
    return {name: parameter.detach() for name, parameter in parameters.items()}


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_slices_join_into_the_one_process_weights(tp: int) -> None:
    whole = slices(1, 0)
    ranks = [slices(tp, rank) for rank in range(tp)]
    for name in SHAPES:
        dim = tp_split_dim(name)
        joined = ranks[0][name] if dim is None else torch.cat([rank[name] for rank in ranks], dim)
        assert torch.equal(joined, whole[name]), name


def test_weights_are_normal_with_blooms_std_biases_zero_and_layernorms_one() -> None:
    weights = slices(1, 0)
    assert not any(tensor.isnan().any() for tensor in weights.values())
    assert weights["word_embeddings.weight"].std().item() == pytest.approx(MODEL.std, rel=0.05)
    assert weights["blocks.1.mlp.dense_4h_to_h.weight"].std().item() == pytest.approx(MODEL.output_std, rel=0.05)
    assert torch.equal(weights["blocks.1.input_layernorm.weight"], torch.ones(H))
    assert not weights["blocks.1.self_attention.query_key_value.bias"].any() and not weights["final_norm.bias"].any()
    assert not torch.equal(slices(1, 0, seed=8)["word_embeddings.weight"], weights["word_embeddings.weight"])
    qkv = weights["blocks.1.self_attention.query_key_value.weight"]
    assert not torch.equal(qkv[:H], weights["blocks.1.self_attention.dense.weight"])  # each parameter its own draws


def test_an_embedding_padded_for_another_tp_keeps_the_rows_they_share() -> None:
    rows = MODEL.padded_vocab_size(3)  # 1152, where TP 1 pads to 1024
    embedding = torch.nn.Parameter(torch.empty(rows // 3, H))
    initialize([("word_embeddings.weight", embedding)], MODEL, 7, tp=3, tp_rank=0)
    assert torch.equal(embedding.detach(), slices(1, 0)["word_embeddings.weight"][: rows // 3])
