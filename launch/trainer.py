"""The training loop on every rank: DeepSpeed pipeline engine (ZeRO-1) over megatron-core TP layers.

Each optimizer step (loss, learning rate, gradient norm, batch size, tokens/s) and each validation (loss per language)
goes to the callbacks; losses are means over the global batch (or the validation samples), the same on every rank.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import deepspeed
import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

from launch.data import BlendedDataset, micro_batches
from launch.layout import ParallelLayout
from launch.schedules import batch_size_at, lr_at, samples_before
from launch.schemas import ParallelConfig, Precision, TrainConfig
from model.bloom import parallel_config
from model.config import ModelConfig
from model.pipeline import pipeline_module

# Fault injection for tests: rank COROLLA_TEST_HANG_RANK (default 1) hangs for good after the optimizer step read here
# (as a rank stuck outside any collective would), and only on a first launch, like checkpoint.CRASH_DURING_SAVE.
HANG_AT_STEP = "COROLLA_TEST_HANG_AT_STEP"
# For tests of time limits: every optimizer step lasts at least this many seconds, as a bigger model's would, so that
# a job's share of the run does not depend on how fast these cores happen to be.
STEP_SECONDS = "COROLLA_TEST_STEP_SECONDS"
HANG_RANK = "COROLLA_TEST_HANG_RANK"


@dataclass(frozen=True)
class StepRecord:
    step: int
    loss: float
    lr: float
    grad_norm: float
    batch_size: int
    tokens_per_second: float


def global_grad_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The L2 norm of the whole model's gradient: each parameter counted once across TP ranks (shards, or rank 0's
    copy) and pipeline stages (the tied embedding only where DeepSpeed owns it)."""
    counted = [
        p.grad
        for p in parameters
        if p.grad is not None
        and not getattr(p, "ds_pipe_replicated", False)
        and param_is_not_tensor_parallel_duplicate(p)
    ]
    squares = torch.stack([grad.float().pow(2).sum() for grad in counted]).sum() if counted else torch.zeros(())
    torch.distributed.all_reduce(squares, group=parallel_state.get_model_parallel_group())
    return squares.sqrt()


class ClippingAdamW(torch.optim.AdamW):
    """AdamW that clips gradients to a global norm first, for fp32 without ZeRO: there DeepSpeed's own clipping
    counts only the first pipeline stage's untied parameters. The norm goes where DeepSpeed's engine reads it."""

    def __init__(self, param_groups: list[dict], max_norm: float, **adamw: float) -> None:
        super().__init__(param_groups, **adamw)
        self.max_norm = max_norm
        self._global_grad_norm: float | None = None

    @torch.no_grad()
    def step(self, closure=None):
        parameters = [p for group in self.param_groups for p in group["params"]]
        norm = global_grad_norm(parameters)
        if self.max_norm > 0:
            scale = (self.max_norm / (norm + 1e-6)).clamp(max=1.0)
            for p in parameters:
                if p.grad is not None:
                    p.grad.mul_(scale)
        self._global_grad_norm = float(norm)
        return super().step(closure)


def zero_stage_for(parallel: ParallelConfig, layout: ParallelLayout, precision: Precision) -> int:
    """ZeRO-1 shards optimizer states over data-parallel ranks; with one there is nothing to shard, and in fp32 its
    bookkeeping would cost a fifth of a small model's step. In bf16 the configured stage stands: ZeRO-1 keeps the
    fp32 masters, and so does DeepSpeed's bf16 optimizer at parallel.zero_stage=0."""
    return parallel.zero_stage if layout.dp > 1 or precision == Precision.bf16 else 0


def _clips_itself(train: TrainConfig, zero_stage: int) -> bool:
    return zero_stage == 0 and train.precision == Precision.fp32


def _optimizer(module: torch.nn.Module, train: TrainConfig, zero_stage: int) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights (1-D) are not decayed. A torch optimizer: DeepSpeed's own would JIT-build
    a fused CPU kernel first."""
    decayed = [p for p in module.parameters() if p.ndim >= 2]
    plain = [p for p in module.parameters() if p.ndim < 2]
    groups = [{"params": decayed, "weight_decay": train.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    adamw = {"lr": train.lr, "betas": (train.beta1, train.beta2), "eps": train.eps}
    if _clips_itself(train, zero_stage):
        return ClippingAdamW(groups, train.grad_clip, **adamw)
    return torch.optim.AdamW(groups, **adamw)


def deepspeed_config(train: TrainConfig, layout: ParallelLayout, zero_stage: int) -> dict:
    return {
        "train_batch_size": train.global_batch,
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": layout.gradient_accumulation(train.micro_batch, train.global_batch),
        "gradient_clipping": 0.0 if _clips_itself(train, zero_stage) else train.grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": train.precision == Precision.bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(model: ModelConfig, layout: ParallelLayout, train: TrainConfig, parallel: ParallelConfig, seed: int):
    dtype = torch.bfloat16 if train.precision == Precision.bf16 else torch.float32
    module = pipeline_module(model, parallel_config(dtype), layout, seed, parallel.activation_checkpointing)
    zero_stage = zero_stage_for(parallel, layout, train.precision)
    optimizer = _optimizer(module, train, zero_stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, train) / train.lr)
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(train, layout, zero_stage)
    )
    return engine


def _pairs(batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Micro-batches of seq+1 tokens as (inputs, labels), the pair a DeepSpeed pipeline expects."""
    for batch in batches:
        yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def validate(engine, batches: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Mean validation loss per language over all data-parallel ranks, the same on every rank.

    Forward passes advance the pipeline's dropout reseed counter; it is put back so that training continues exactly
    as it would have without validation.
    """
    forwards_before = engine.module.micro_offset
    losses = {
        language: float(engine.eval_batch(_pairs(micro), num_micro_batches=len(micro)))
        for language, micro in batches.items()
    }
    engine.module.micro_offset = forwards_before
    return losses


def _hang_if_injected(step: int) -> None:
    first_run = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
    rank = str(torch.distributed.get_rank())
    if os.environ.get(HANG_AT_STEP) == str(step) and rank == os.environ.get(HANG_RANK, "1") and first_run:
        while True:
            time.sleep(1)


@dataclass
class Callbacks:
    """What the loop reports to (rank 0 prints and logs; other ranks ignore), how it saves a checkpoint, whether it
    was asked to stop (a collective: every rank gets the same answer), and where it signals progress."""

    on_step: Callable[[StepRecord], None]
    on_validation: Callable[[int, dict[str, float]], None]
    save: Callable[[int], None]
    should_stop: Callable[[], bool] = lambda: False
    progress: Callable[[], None] = lambda: None


def train_steps(
    engine,
    dataset: BlendedDataset,
    validation: dict[str, list[torch.Tensor]],
    layout: ParallelLayout,
    train: TrainConfig,
    seq_length: int,
    first_step: int,
    callbacks: Callbacks,
) -> tuple[int, bool]:
    """Optimizer steps after `first_step` (steps done); validation every train.eval_interval steps and at the end;
    a checkpoint every train.checkpoint_interval steps and at the end.

    Stops early, with a checkpoint, after train.exit_after steps of this launch or when asked to. The data position
    and the batch size follow from the step (samples consumed). Returns the last step done and whether it was asked
    to stop.
    """
    dp_rank = parallel_state.get_data_parallel_rank()
    consumed = samples_before(first_step, train)
    last = train.steps if not train.exit_after else min(train.steps, first_step + train.exit_after)
    for step in range(first_step, last):
        batch_size = batch_size_at(consumed, train)
        if batch_size != engine.train_batch_size():
            engine.set_train_batch_size(batch_size)
        micro = micro_batches(dataset, consumed, batch_size, train.micro_batch, dp_rank, layout.dp)
        start = time.perf_counter()
        loss = engine.train_batch(data_iter=_pairs(islice(micro, engine.gradient_accumulation_steps())))
        seconds = time.perf_counter() - start
        consumed += batch_size
        grad_norm = engine.get_global_grad_norm()
        callbacks.on_step(
            StepRecord(
                step=step + 1,
                loss=float(loss),
                lr=lr_at(step, train),
                grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                batch_size=batch_size,
                tokens_per_second=batch_size * seq_length / seconds,
            )
        )
        done = step + 1
        callbacks.progress()
        _hang_if_injected(done)
        time.sleep(max(0.0, float(os.environ.get(STEP_SECONDS, "0")) - seconds))
        if validation and train.eval_interval and (done % train.eval_interval == 0 or done == train.steps):
            callbacks.on_validation(done, validate(engine, validation))
            callbacks.progress()
        stop = done < last and callbacks.should_stop()
        if stop or done % train.checkpoint_interval == 0 or done == last:
            callbacks.save(done)
        if stop:
            return done, True
    return last, False
