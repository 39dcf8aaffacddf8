"""corolla's BLOOM against Hugging Face's, and tensor parallelism against one process (real gloo processes)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from distributed import run_ranks
from megatron.core import parallel_state
from transformers import BloomConfig, BloomForCausalLM
from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

from launch.train.device import seed_everything
from model.attention import alibi_slopes
from model.bloom import BloomModel, parallel_config
from model.config import ModelConfig
from model.hf import hf_config, to_hf_state_dict

# Six heads: ALiBi's rule for a head count that is not a power of two is exercised too.
SHAPE = ModelConfig(num_layers=2, hidden_size=96, num_heads=6, seq_length=32, vocab_size=1000)


@pytest.mark.parametrize("heads", [1, 2, 4, 6, 12, 16, 24, 112])
def test_alibi_slopes_match_bloom(heads: int) -> None:
    assert torch.allclose(alibi_slopes(heads), _get_alibi_slopes(heads, torch.device("cpu")), rtol=0, atol=1e-7)


def _gather(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(parallel_state.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, tensor.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=dim)


def _step(tensor_parallel: int, shape: ModelConfig = SHAPE) -> dict:
    """One forward/backward on a fixed batch; logits and gradients gathered over the tensor-parallel ranks."""
    parallel_state.initialize_model_parallel(tensor_parallel, 1, create_gloo_process_groups=False)
    try:
        seed_everything(1234)
        model = BloomModel(shape, parallel_config(), seed=1234)
        batch = torch.randint(
            0, shape.vocab_size, (3, shape.seq_length + 1), generator=torch.Generator().manual_seed(7)
        )
        loss = model.loss(batch)
        loss.backward()
        with torch.no_grad():
            logits = _gather(model(batch[:, :-1]), dim=-1)
        return {
            "loss": loss.item(),
            "logits": logits,
            "embedding_grad": _gather(model.word_embeddings.weight.grad, dim=0),
            "qkv_grad": _gather(model.blocks[0].self_attention.query_key_value.weight.grad, dim=0),
            "mlp_out_grad": _gather(model.blocks[1].mlp.dense_4h_to_h.weight.grad, dim=1),
            "layernorm_grad": model.blocks[1].input_layernorm.weight.grad.clone(),
            "state": {
                name: t.detach().clone() for name, t in model.state_dict().items() if isinstance(t, torch.Tensor)
            },
            "batch": batch,
        }
    finally:
        parallel_state.destroy_model_parallel()


def _one_then_two_way() -> dict[int, dict]:
    """`_step` without tensor parallelism (each rank the whole model, as one process) and then with TP=2."""
    return {tp: _step(tp) for tp in (1, 2)}


@pytest.fixture(scope="module")
def by_tp() -> dict[int, list[dict]]:
    """Each rank's `_step` by tensor-parallel size, from one pair of processes: one start-up instead of two."""
    ranks = run_ranks(2, _one_then_two_way)
    return {tp: [rank[tp] for rank in ranks] for tp in (1, 2)}


@pytest.fixture(scope="module")
def one_process(by_tp: dict[int, list[dict]]) -> dict:
    return by_tp[1][0]


def test_logits_match_transformers_bloom(one_process: dict) -> None:
    padded = SHAPE.padded_vocab_size(1)
    reference = BloomForCausalLM(BloomConfig(**hf_config(SHAPE, padded))).eval()
    reference.load_state_dict(to_hf_state_dict(one_process["state"]))
    with torch.no_grad():
        expected = reference(one_process["batch"][:, :-1]).logits
    assert (one_process["logits"] - expected).abs().max().item() <= 1e-5


def test_tensor_parallel_matches_one_process(by_tp: dict[int, list[dict]], one_process: dict) -> None:
    for rank in by_tp[2]:
        assert rank["loss"] == pytest.approx(one_process["loss"], abs=1e-6)
        for key in ("logits", "embedding_grad", "qkv_grad", "mlp_out_grad", "layernorm_grad"):
            assert (rank[key] - one_process[key]).abs().max().item() <= 1e-5, key
