"""Learning-rate and batch-size schedules: pure functions of the step that a resumed run recomputes."""

from __future__ import annotations

from itertools import pairwise

import pytest

from launch.config.compose import compose_job
from launch.config.schemas import BatchRampup, TrainConfig
from launch.plan.schedules import batch_size_at, batch_sizes, lr_at, samples_before

BLOOM_176B = TrainConfig(
    steps=95_000, global_batch=2048, micro_batch=2, rampup=BatchRampup(start=192, increment=16, samples=9_765_625)
)


def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr() -> None:
    train = TrainConfig(steps=12, lr=1e-3, min_lr=1e-4, warmup_steps=2)
    assert [lr_at(step, train) for step in (0, 1)] == [5e-4, 1e-3]
    assert lr_at(2, train) == pytest.approx(1e-3)
    assert lr_at(7, train) == pytest.approx((1e-3 + 1e-4) / 2)  # half-way through the decay
    assert lr_at(12, train) == pytest.approx(1e-4) and lr_at(50, train) == pytest.approx(1e-4)
    assert all(lr_at(step, train) >= lr_at(step + 1, train) for step in range(2, 20))


def test_bloom_176b_ramps_from_192_to_2048_in_steps_of_16_over_its_samples() -> None:
    sizes, consumed, changes = [], 0, []
    while consumed < 10_000_000:
        size = batch_size_at(consumed, BLOOM_176B)
        if sizes and size != sizes[-1]:
            changes.append(consumed)
        sizes.append(size)
        consumed += size
    assert sizes[0] == 192 and sizes[-1] == 2048
    assert all(b - a in (0, 16) for a, b in pairwise(sizes))
    assert set(sizes) == batch_sizes(BLOOM_176B) and len(set(sizes)) == 117
    # One increment every 9,765,625 / 116 samples, overshot by less than the batch that crosses it.
    spacing = 9_765_625 / 116
    assert all(0 <= at - (i + 1) * spacing < 2048 for i, at in enumerate(changes))
    step = len(sizes) // 2
    assert samples_before(step, BLOOM_176B) == sum(sizes[:step])


def test_without_rampup_every_step_is_the_global_batch() -> None:
    train = TrainConfig(global_batch=8)
    assert batch_sizes(train) == {8} and batch_size_at(0, train) == 8 and samples_before(5, train) == 40


@pytest.mark.parametrize(
    ("rampup", "expected"),
    [
        ({"start": 4}, "needs a positive train.rampup.increment"),
        (
            {"start": 8, "increment": 2, "samples": 16},
            r"must be below train.global_batch=8 \(train.rampup.start=0: no ramp-up\)$",
        ),
        ({"start": 3, "increment": 2, "samples": 16}, "do not reach train.global_batch=8"),
    ],
)
def test_impossible_rampups_are_named(rampup: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        TrainConfig(global_batch=8, rampup=BatchRampup(**rampup))


def test_the_bloom_176b_preset_warms_up_and_trains_for_as_many_tokens_as_bloom() -> None:
    """BLOOM warmed up over 183,105 samples (375M tokens) and stopped at step 95,000 (~366B tokens): the preset, which
    says so, warmed up for 183 steps (35,136 samples at the ramp-up's first batches) and trained 344B tokens."""
    job = compose_job("submit", ["experiment=bloom-176b"])[1]
    train, tokens = job.train, job.model.seq_length
    assert samples_before(train.warmup_steps - 1, train) < 183_105 <= samples_before(train.warmup_steps, train)
    assert samples_before(train.steps, train) * tokens == pytest.approx(366e9, rel=0.005)
