"""BLOOM's initial weights, the same whatever the layout: each parameter drawn from generators seeded by the run's
seed and the parameter's name in `BloomModel`, a block of rows at a time, each rank keeping its tensor-parallel slice.

So a rank never builds a whole weight (megatron's CPU initialisation builds every one whole on every rank: ~2.4 GB
per BLOOM-176B layer), draws on its own device, and every TP x PP x DP layout starts from the same numbers (on one
kind of device: CUDA's generators draw other numbers than the CPU's). Blocks of PAD_MULTIPLE rows keep the rows an
embedding padded for one TP shares with another padding the same. Weights are normal with BLOOM's std (the output
projections of attention and MLP with it / sqrt(2 x layers), as Megatron does), biases 0, LayerNorms 1 and 0; the
split ones are marked tensor-parallel, as megatron's own initialisation would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import torch
from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

from model.config import ModelConfig
from model.layers import tp_split_dim
from tokenizer.vocab import PAD_MULTIPLE

OUTPUT_PROJECTIONS = ("self_attention.dense.weight", "dense_4h_to_h.weight")
ONES = ("layernorm.weight", "final_norm.weight")


def _generator(seed: int, name: str, block: int, device: torch.device) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}/{name}/{block}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)


def _std(model: ModelConfig, name: str) -> float:
    return model.output_std if name.endswith(OUTPUT_PROJECTIONS) else model.std


@torch.no_grad()
def _draw(parameter: torch.Tensor, name: str, model: ModelConfig, seed: int, tp: int, tp_rank: int) -> None:
    """This rank's slice of a normal weight: the row blocks it overlaps, drawn whole, cut to the slice."""
    dim = tp_split_dim(name)
    rows, columns = parameter.shape[0] * (tp if dim == 0 else 1), parameter.shape[1] * (tp if dim == 1 else 1)
    first, last = (tp_rank * parameter.shape[0], (tp_rank + 1) * parameter.shape[0]) if dim == 0 else (0, rows)
    for start in range(first - first % PAD_MULTIPLE, last, PAD_MULTIPLE):
        stop = min(start + PAD_MULTIPLE, rows)
        block = torch.empty(stop - start, columns, dtype=torch.float32, device=parameter.device)
        block.normal_(0.0, _std(model, name), generator=_generator(seed, name, start // PAD_MULTIPLE, block.device))
        low, high = max(start, first), min(stop, last)
        piece = block[low - start : high - start]
        if dim == 1:
            piece = piece.narrow(1, tp_rank * parameter.shape[1], parameter.shape[1])
        parameter[low - first : high - first].copy_(piece)


@torch.no_grad()
def initialize(
    parameters: Iterable[tuple[str, torch.nn.Parameter]],
    model: ModelConfig,
    seed: int,
    tp: int,
    tp_rank: int,
    model_name: Callable[[str], str] = lambda name: name,
) -> None:
    """Sets every parameter; `model_name` maps a module's parameter names to `BloomModel`'s (a pipeline stage's)."""
    for module_name, parameter in parameters:
        name = model_name(module_name)
        if parameter.ndim == 2:
            _draw(parameter, name, model, seed, tp, tp_rank)
            # What megatron's own initialisation marks (perform_initialization=False leaves it to us); the gradient
            # norm counts a parameter marked so on every TP rank, others on the first only.
            if tp_split_dim(name) is not None:
                set_tensor_model_parallel_attributes(parameter, True, tp_split_dim(name), 1)
        elif name.endswith(ONES):
            parameter.fill_(1.0)
        else:
            parameter.zero_()
