"""corolla's fused vocabulary-parallel cross-entropy against megatron-core's: the same losses and logit gradients, on
every tensor-parallel rank's slice (real gloo processes), in fp32 and bf16; eager (its arithmetic, at every TP) and
compiled as training runs it (Inductor's CPU code here; the graph it compiles is the one a GPU compiles to Triton)."""

from __future__ import annotations

import math

import pytest
import torch
from distributed import run_ranks
from megatron.core import parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as megatron_cross_entropy

from model.bloom import lm_loss
from model.fused import fused_cross_entropy

TOKENS, VOCAB = (3, 40), 1024


def _logits_and_labels(tensor_parallel: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of one set of logits and labels spread over every slice; a few rows far from zero (where a
    naive exp overflows), a few predicting their label with probability 0.99 (where bf16 keeps 1 - p to 20% unless it
    is computed in fp32)."""
    generator = torch.Generator().manual_seed(11)
    logits = 4 * torch.randn(*TOKENS, VOCAB, generator=generator)
    labels = torch.randint(0, VOCAB, TOKENS, generator=generator)
    logits[0, :5] += 80.0
    logits[1, :5] = 0.0
    logits[1, :5].scatter_(-1, labels[1, :5, None], math.log(99 * (VOCAB - 1)))
    rank = parallel_state.get_tensor_model_parallel_rank()
    return logits.chunk(tensor_parallel, dim=-1)[rank].to(dtype).contiguous(), labels


def _losses_and_gradients(tensor_parallel: int, dtype: torch.dtype, compile_kernels: bool) -> dict:
    parallel_state.initialize_model_parallel(tensor_parallel, 1, create_gloo_process_groups=False)
    try:
        logits, labels = _logits_and_labels(tensor_parallel, dtype)
        results = {}
        for name, loss_of in {
            "corolla": lambda x: fused_cross_entropy(x, labels, compile_kernels),
            "megatron": lambda x: megatron_cross_entropy(x.float(), labels),
        }.items():
            leaf = logits.clone().requires_grad_()
            losses = loss_of(leaf)
            (losses * torch.linspace(0.5, 1.5, losses.numel()).view_as(losses)).sum().backward()
            results[name] = (losses.detach(), leaf.grad)
        return results
    finally:
        parallel_state.destroy_model_parallel()


# (TP, dtype, compiled): one pair of processes runs them all (TP 1 as DP 2).
CASES = [(1, torch.float32, False), (2, torch.float32, False), (2, torch.bfloat16, False), (2, torch.bfloat16, True)]
# (model.compile, dtype) as the training loss sees them, on CPU.
ROUTES = [(None, torch.bfloat16), (True, torch.float32), (True, torch.bfloat16)]


def _training_loss(compile_setting: bool | None, dtype: torch.dtype) -> tuple[str, torch.Tensor]:
    """The loss node lm_loss runs, and the logits' gradient of its mean."""
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
    try:
        logits, labels = _logits_and_labels(1, dtype)
        leaf = logits.requires_grad_()
        loss = lm_loss(leaf, labels, compile_setting)
        loss.backward()
        return type(loss.grad_fn.next_functions[0][0]).__name__, leaf.grad
    finally:
        parallel_state.destroy_model_parallel()


def _every_case() -> dict:
    return {"cases": [_losses_and_gradients(*case) for case in CASES], "routes": [_training_loss(*r) for r in ROUTES]}


@pytest.fixture(scope="module")
def compared() -> list[dict]:
    """Per rank: corolla's and megatron's losses and gradients per case, and the training loss's per route."""
    return run_ranks(2, _every_case)


@pytest.mark.parametrize(
    "case", range(len(CASES)), ids=[f"tp{tp}-{str(d)[6:]}-{'compiled' if c else 'eager'}" for tp, d, c in CASES]
)
def test_losses_and_logit_gradients_are_megatrons(compared: list[dict], case: int) -> None:
    dtype = CASES[case][1]
    relative = 1e-4 if dtype == torch.float32 else 2**-7  # bf16: both round the same fp32 value, at most 1 unit apart
    for rank in compared:
        cases = rank["cases"]
        (losses, gradient), (expected_losses, expected_gradient) = cases[case]["corolla"], cases[case]["megatron"]
        assert losses.dtype == torch.float32 and gradient.dtype == dtype
        assert (losses - expected_losses).abs().max().item() < 1e-5
        assert torch.allclose(gradient.float(), expected_gradient.float(), rtol=relative, atol=1e-6)


def test_training_runs_the_fused_loss_compiled_on_bf16_logits_and_megatrons_otherwise(compared: list[dict]) -> None:
    (eager, _), (fp32, _), (fused, gradient) = compared[0]["routes"]
    assert eager == fp32 == "_VocabParallelCrossEntropyBackward" and fused == "_FusedCrossEntropyBackward"
    expected = compared[0]["routes"][0][1]  # megatron's mean's gradient, of the same bf16 logits
    assert torch.allclose(gradient.float(), expected.float(), rtol=2**-7, atol=1e-9)
