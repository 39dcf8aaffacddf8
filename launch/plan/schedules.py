"""What changes from step to step: the learning rate and, during a ramp-up, the global batch size.

Both are pure functions of the step (and of the samples consumed before it), so a resumed run recomputes them.
"""

from __future__ import annotations

import math

from launch.config.schemas import TrainConfig


def lr_at(step: int, train: TrainConfig) -> float:
    """Linear warm-up to train.lr, then cosine decay to train.min_lr at the last step (BLOOM's schedule)."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(train.steps - train.warmup_steps, 1)
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def batch_size_at(consumed_samples: int, train: TrainConfig) -> int:
    """The global batch of the step that starts after `consumed_samples` samples (Megatron's ramp-up rule)."""
    rampup = train.rampup
    if not rampup.start or consumed_samples >= rampup.samples:
        return train.global_batch
    increments = (train.global_batch - rampup.start) // rampup.increment
    samples_per_increment = rampup.samples / increments
    return min(train.global_batch, rampup.start + int(consumed_samples / samples_per_increment) * rampup.increment)


def batch_sizes(train: TrainConfig) -> set[int]:
    """Every global batch size the run will use."""
    if not train.rampup.start:
        return {train.global_batch}
    return set(range(train.rampup.start, train.global_batch + 1, train.rampup.increment))


def samples_before(step: int, train: TrainConfig) -> int:
    """Samples consumed by steps [0, step): where the data of `step` starts."""
    if not train.rampup.start:
        return step * train.global_batch
    consumed = 0
    for _ in range(step):
        consumed += batch_size_at(consumed, train)
    return consumed
