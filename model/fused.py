"""The elementwise and reduction work around BLOOM's matmuls, written so that torch.compile fuses each into one or two
kernels on a GPU (eager elsewhere, unless `model.compile` asks): each MLP's bias + GeLU, and the loss.

The loss is next-token cross-entropy over logits split by vocabulary over TP ranks, [b, s, v/tp] in the run's
precision. megatron's `vocab_parallel_cross_entropy` works on an fp32 copy of bf16 logits, in about a dozen passes
over it, and keeps their softmax in fp32 for backward: at BLOOM's 250,880-token vocabulary, 8 GB per 8,192 tokens,
beside the logits. The fused one here keeps the logits as they are: compiled, one kernel computes each row's max and
sum of exponentials in fp32, and backward one more writes their gradient in their dtype. Both give the same losses and
gradients (tests/model/test_fused.py). The fused one runs where it pays, compiled on 16-bit logits; megatron's
elsewhere: on fp32 logits it works in place and keeps nothing else, and eager its in-place passes are faster than the
fused one's arithmetic unfused (3.9 times on CPU in fp32, benchmarks/loss_kernel.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as in_place_cross_entropy


@functools.cache
def compiled(function: Callable) -> Callable:
    """`function` compiled for fixed shapes, when first called, so that ranks that never compile do not import the
    compiler."""
    return torch.compile(function, dynamic=False)


def compiles(setting: bool | None, device: torch.device) -> bool:
    """Whether to run the compiled kernels: as `model.compile` says, by default on a GPU only."""
    return setting if setting is not None else device.type == "cuda"


def bias_gelu(intermediate: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One kernel when compiled, which also keeps only its input for backward."""
    return F.gelu(intermediate + bias, approximate="tanh")


def row_statistics(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's max and its sum of exp(logit - max), in fp32."""
    wide = logits.float()
    row_max = wide.amax(dim=-1)
    return row_max, torch.exp(wide - row_max.unsqueeze(-1)).sum(dim=-1)


def logit_gradient(
    logits: torch.Tensor, log_sum_exp: torch.Tensor, target: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """(softmax - one-hot of the target) x the loss's gradient, computed in fp32 (1 - p of a confident prediction
    survives) and written in the logits' dtype. `target` is the label's column in this rank's slice, -1 where another
    rank holds it."""
    probabilities = torch.exp(logits.float() - log_sum_exp.unsqueeze(-1))
    one_hot = torch.arange(logits.shape[-1], device=logits.device) == target.unsqueeze(-1)
    return ((probabilities - one_hot.float()) * scale.unsqueeze(-1)).to(logits.dtype)


def kernel(function: Callable, compile_kernels: bool) -> Callable:
    """`function`, compiled or as it is."""
    return compiled(function) if compile_kernels else function


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> None:
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(tensor, op=op, group=parallel_state.get_tensor_model_parallel_group())


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, compile_kernels: bool) -> torch.Tensor:
        columns = logits.shape[-1]
        first = parallel_state.get_tensor_model_parallel_rank() * columns
        target = labels - first
        target = target.masked_fill((target < 0) | (target >= columns), -1)
        row_max, sum_exp = kernel(row_statistics, compile_kernels)(logits)
        global_max = row_max.clone()
        _all_reduce(global_max, dist.ReduceOp.MAX)
        sum_exp *= torch.exp(row_max - global_max)
        _all_reduce(sum_exp, dist.ReduceOp.SUM)
        picked = logits.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1).float()
        picked = picked.masked_fill(target < 0, 0.0)
        _all_reduce(picked, dist.ReduceOp.SUM)
        log_sum_exp = torch.log(sum_exp) + global_max
        ctx.save_for_backward(logits, log_sum_exp, target)
        ctx.compile_kernels = compile_kernels
        return log_sum_exp - picked

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, log_sum_exp, target = ctx.saved_tensors
        gradient = kernel(logit_gradient, ctx.compile_kernels)
        return gradient(logits, log_sum_exp, target, grad_loss.float()), None, None


def fused_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, compile_kernels: bool) -> torch.Tensor:
    """Per token, -log softmax(logits)[label], the softmax over every TP rank's slice of the vocabulary, in fp32."""
    return _FusedCrossEntropy.apply(logits, labels, compile_kernels)


def runs_fused(compile_kernels: bool, dtype: torch.dtype) -> bool:
    return compile_kernels and dtype.itemsize < 4


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, compile_kernels: bool) -> torch.Tensor:
    """The fused cross-entropy where it pays, megatron's elsewhere."""
    if runs_fused(compile_kernels, logits.dtype):
        return fused_cross_entropy(logits, labels, compile_kernels=True)
    return in_place_cross_entropy(logits.float(), labels)
