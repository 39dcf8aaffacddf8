"""Gradient clipping where corolla does it itself (fp32 without ZeRO): a global norm over TP ranks, counted once."""

from __future__ import annotations

import torch
from distributed import run_ranks
from megatron.core import parallel_state
from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

from launch.train.engine import GuardedAdamW


def _clip(tp: int) -> tuple[float, list[torch.Tensor]]:
    """Rank r holds shard r of a [2, 4] weight (TP-split) and a full copy of a bias; returns the reported norm and
    the gradients the optimizer stepped with."""
    parallel_state.initialize_model_parallel(tp, 1, create_gloo_process_groups=False)
    rank = parallel_state.get_tensor_model_parallel_rank()
    weight = torch.nn.Parameter(torch.zeros(2, 4 // tp))
    set_tensor_model_parallel_attributes(weight, True, 1, 1)
    bias = torch.nn.Parameter(torch.zeros(4))
    full_weight_grad = torch.arange(8.0).reshape(2, 4)
    weight.grad = full_weight_grad[:, rank * (4 // tp) : (rank + 1) * (4 // tp)].clone()
    bias.grad = torch.ones(4)
    optimizer = GuardedAdamW([{"params": [weight, bias]}], max_norm=1.0, lr=0.0)
    optimizer.step()
    norm = optimizer._global_grad_norm
    parallel_state.destroy_model_parallel()
    return norm, [weight.grad, bias.grad]


def _one_then_two_way() -> dict[int, tuple[float, list[torch.Tensor]]]:
    """`_clip` without tensor parallelism (each rank alone, as one process) and then with TP=2."""
    return {tp: _clip(tp) for tp in (1, 2)}


def test_the_norm_counts_shards_once_and_gradients_are_scaled_to_max_norm() -> None:
    expected = (sum(x * x for x in range(8)) + 4) ** 0.5  # sqrt(140 + 4) = 12
    ranks = run_ranks(2, _one_then_two_way)  # one start-up of two processes instead of one of each
    norm, grads = ranks[0][1]
    assert norm == expected
    torch.testing.assert_close(grads[1], torch.ones(4) / expected)
    for tp_norm, tp_grads in (rank[2] for rank in ranks):
        assert abs(tp_norm - expected) < 1e-6
        torch.testing.assert_close(tp_grads[1], torch.ones(4) / expected, atol=1e-6, rtol=1e-5)
