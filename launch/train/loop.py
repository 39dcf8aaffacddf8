"""The training loop of one rank: optimizer steps of a DeepSpeed pipeline engine, validation, checkpoints, stops.

Each optimizer step (loss, learning rate, gradient norm, batch size, tokens/s) and each validation (loss per language)
goes to the callbacks; losses are means over the global batch (or the validation samples), the same on every rank.
The engine is any object with DeepSpeed's pipeline engine's methods used here, so the loop runs on a fake one too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import torch

from launch import compat
from launch.config.schemas import TrainConfig
from launch.data.blend import BlendedDataset
from launch.plan.schedules import batch_size_at, lr_at
from launch.train.batches import micro_batches


@dataclass(frozen=True)
class StepRecord:
    step: int
    loss: float
    lr: float
    grad_norm: float
    batch_size: int
    tokens_per_second: float


class NonFiniteStep(RuntimeError):
    """A step whose loss or gradient norm is not finite, one too many (train.skip_nonfinite)."""

    def __init__(self, record: StepRecord) -> None:
        super().__init__(f"step {record.step}: loss {record.loss}, gradient norm {record.grad_norm}")
        self.record = record


def finite(record: StepRecord) -> bool:
    return math.isfinite(record.loss) and math.isfinite(record.grad_norm)


@dataclass
class Callbacks:
    """What the loop reports to (rank 0 prints and logs; other ranks ignore), how it saves a checkpoint, whether it
    was asked to stop and whether it gives way once a checkpoint is saved (collectives: every rank gets the same
    answer), and where it signals progress."""

    on_step: Callable[[StepRecord], None]
    on_validation: Callable[[int, dict[str, float]], None]
    save: Callable[[int], None]
    should_stop: Callable[[], bool] = lambda: False
    progress: Callable[[], None] = lambda: None
    gives_way: Callable[[int], bool] = lambda step: False


@dataclass(frozen=True)
class DataShard:
    """The data one rank trains on: the blended samples, its slice of each global batch, its validation batches."""

    dataset: BlendedDataset
    dp_rank: int
    dp: int
    validation: dict[str, list[torch.Tensor]]


def pairs(batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Micro-batches of seq+1 tokens as (inputs, labels), the pair a DeepSpeed pipeline expects."""
    for batch in batches:
        yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def validate(engine, batches: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Mean validation loss per language over all data-parallel ranks, the same on every rank.

    Forward passes advance the pipeline's dropout reseed counter; it is put back so that training continues exactly
    as it would have without validation.
    """
    forwards_before = compat.forward_count(engine)
    losses = {
        language: float(engine.eval_batch(pairs(micro), num_micro_batches=len(micro)))
        for language, micro in batches.items()
    }
    compat.set_forward_count(engine, forwards_before)
    return losses


def _step(
    engine, batches: Iterator[torch.Tensor], step: int, batch_size: int, train: TrainConfig, seq_length: int
) -> StepRecord:
    if batch_size != engine.train_batch_size():
        engine.set_train_batch_size(batch_size)
    start = time.perf_counter()
    loss = engine.train_batch(data_iter=pairs(islice(batches, engine.gradient_accumulation_steps())))
    seconds = time.perf_counter() - start
    grad_norm = engine.get_global_grad_norm()
    return StepRecord(
        step=step + 1,
        loss=float(loss),
        lr=lr_at(step, train),
        grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
        batch_size=batch_size,
        tokens_per_second=batch_size * seq_length / seconds,
    )


def train_steps(
    engine,
    data: DataShard,
    train: TrainConfig,
    seq_length: int,
    first_step: int,
    first_sample: int,
    callbacks: Callbacks,
) -> tuple[int, bool]:
    """Optimizer steps after `first_step` (steps done), on the global samples from `first_sample` (those the steps
    before it trained, whatever batch sizes they had) on; validation every train.eval_interval steps and at the end;
    a checkpoint every train.checkpoint_interval steps and at the end.

    Stops early, with a checkpoint, after train.exit_after steps of this launch, when asked to, or when it gives way
    after a checkpoint it saved before the last step (to a job without nodes found unfit); raises NonFiniteStep,
    saving nothing more, at the first non-finite step past train.skip_nonfinite (the optimizer left the weights as
    they were). The batch size follows from the samples consumed. Returns the last step done and whether it was
    asked to stop.
    """
    consumed, skipped = first_sample, 0
    last = train.steps if not train.exit_after else min(train.steps, first_step + train.exit_after)
    for step in range(first_step, last):
        batch_size = batch_size_at(consumed, train)
        batches = micro_batches(data.dataset, consumed, batch_size, train.micro_batch, data.dp_rank, data.dp)
        record = _step(engine, batches, step, batch_size, train, seq_length)
        callbacks.on_step(record)
        skipped += not finite(record)
        if skipped > train.skip_nonfinite:
            raise NonFiniteStep(record)
        consumed += batch_size
        done = step + 1
        callbacks.progress()
        if data.validation and train.eval_interval and (done % train.eval_interval == 0 or done == train.steps):
            callbacks.on_validation(done, validate(engine, data.validation))
            callbacks.progress()
        stop = done < last and callbacks.should_stop()
        if stop or done % train.checkpoint_interval == 0 or done == last:
            callbacks.save(done)
            # A stop asked for during the save (a cancel, a time limit's signal) comes before giving way.
            stop = stop or (done < last and (callbacks.should_stop() or callbacks.gives_way(done)))
        if stop:
            return done, True
    return last, False
