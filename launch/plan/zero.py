"""The ZeRO stage a run trains with, which is not always the configured one."""

from __future__ import annotations

from launch.config.schemas import Precision


def effective_zero_stage(zero_stage: int, dp: int, precision: Precision) -> int:
    """ZeRO-1 shards optimizer states over data-parallel ranks; with one there is nothing to shard, and in fp32 its
    bookkeeping would cost a fifth of a small model's step. In bf16 the configured stage stands: ZeRO-1 keeps the
    fp32 masters, and so does DeepSpeed's bf16 optimizer at parallel.zero_stage=0."""
    return zero_stage if dp > 1 or precision == Precision.bf16 else 0
