"""The training loop on every rank: DeepSpeed pipeline engine (ZeRO-1) over megatron-core TP layers.

Rank 0 reports each optimizer step (loss, learning rate, gradient norm, tokens/s) to the `on_step` callback; the
loss is the global batch's mean, the same on every rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import deepspeed
import torch
from megatron.core import parallel_state

from launch.data import BlendedDataset, micro_batches
from launch.layout import ParallelLayout
from launch.schemas import Precision, TrainConfig
from model.bloom import parallel_config
from model.config import ModelConfig
from model.pipeline import pipeline_module


@dataclass(frozen=True)
class StepRecord:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_second: float


def lr_at(step: int, train: TrainConfig) -> float:
    """Linear warm-up to train.lr, then cosine decay to train.min_lr at the last step (BLOOM's schedule)."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(train.steps - train.warmup_steps, 1)
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def _optimizer(module: torch.nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights (1-D) are not decayed. A torch optimizer: DeepSpeed's own would JIT-build
    a fused CPU kernel first."""
    decayed = [p for p in module.parameters() if p.ndim >= 2]
    plain = [p for p in module.parameters() if p.ndim < 2]
    groups = [{"params": decayed, "weight_decay": train.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps)


def deepspeed_config(train: TrainConfig, layout: ParallelLayout, zero_stage: int) -> dict:
    return {
        "train_batch_size": train.global_batch,
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": layout.gradient_accumulation(train.micro_batch, train.global_batch),
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": train.precision == Precision.bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(model: ModelConfig, layout: ParallelLayout, train: TrainConfig, zero_stage: int, seed: int,
                 activation_checkpointing: bool):  # fmt: skip
    dtype = torch.bfloat16 if train.precision == Precision.bf16 else torch.float32
    module = pipeline_module(model, parallel_config(dtype), layout, seed, activation_checkpointing)
    optimizer = _optimizer(module, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, train) / train.lr)
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(train, layout, zero_stage)
    )
    return engine


def _pairs(batches: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Micro-batches of seq+1 tokens as (inputs, labels), the pair a DeepSpeed pipeline expects."""
    for batch in batches:
        yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def train_steps(
    engine,
    dataset: BlendedDataset,
    layout: ParallelLayout,
    train: TrainConfig,
    seq_length: int,
    first_step: int,
    on_step: Callable[[StepRecord], None],
    save: Callable[[int], None],
) -> int:
    """Optimizer steps after `first_step` (steps done), saving every train.checkpoint_interval and at the end.

    Stops early, with a checkpoint, after train.exit_after steps of this launch. The data position follows from the
    step (samples consumed). Returns the last step done.
    """
    dp_rank = parallel_state.get_data_parallel_rank()
    batches = micro_batches(dataset, first_step * train.global_batch, train.global_batch, train.micro_batch,
                            dp_rank, layout.dp)  # fmt: skip
    data = _pairs(batches)
    last = train.steps if not train.exit_after else min(train.steps, first_step + train.exit_after)
    for step in range(first_step, last):
        start = time.perf_counter()
        loss = engine.train_batch(data_iter=data)
        seconds = time.perf_counter() - start
        grad_norm = engine.get_global_grad_norm()
        on_step(
            StepRecord(
                step=step + 1,
                loss=float(loss),
                lr=lr_at(step, train),
                grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                tokens_per_second=train.global_batch * seq_length / seconds,
            )
        )
        if (step + 1) % train.checkpoint_interval == 0 or step + 1 == last:
            save(step + 1)
    return last
