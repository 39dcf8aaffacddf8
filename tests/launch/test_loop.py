"""The training loop on a fake engine (no process group, no DeepSpeed): which samples each step trains on, the
learning rate and batch size it reports, when it validates and saves, and how it stops."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from launch.config.schemas import BatchRampup, TrainConfig
from launch.plan.schedules import lr_at, samples_before
from launch.train.loop import Callbacks, DataShard, StepRecord, train_steps

SEQ = 4


class Samples:
    """Global sample i: seq_length + 1 copies of i, so a batch says which samples it holds."""

    def __getitem__(self, index: int) -> np.ndarray:
        return np.full(SEQ + 1, index, dtype=np.int64)


class FakeEngine:
    """What the loop asks of DeepSpeed's pipeline engine, recording what it is given."""

    def __init__(self, global_batch: int, micro_batch: int, dp: int) -> None:
        self.batch, self.micro_batch, self.dp = global_batch, micro_batch, dp
        self.module = SimpleNamespace(micro_offset=0)  # DeepSpeed's count of forward passes (launch/compat.py)
        self.trained: list[list[int]] = []  # the samples of each step, on this data-parallel rank
        self.batch_sizes: list[int] = []

    def train_batch_size(self) -> int:
        return self.batch

    def set_train_batch_size(self, size: int) -> None:
        self.batch = size

    def gradient_accumulation_steps(self) -> int:
        return self.batch // (self.micro_batch * self.dp)

    def train_batch(self, data_iter) -> torch.Tensor:
        samples = [int(inputs[row, 0]) for inputs, labels in data_iter for row in range(len(inputs))]
        self.trained.append(samples)
        self.batch_sizes.append(self.batch)
        self.module.micro_offset += len(samples) // self.micro_batch
        return torch.tensor(1.0 / len(self.trained))

    def get_global_grad_norm(self) -> float:
        return 0.5

    def eval_batch(self, data_iter, num_micro_batches: int) -> torch.Tensor:
        self.module.micro_offset += num_micro_batches
        return torch.tensor(float(sum(1 for _ in data_iter)))


class Recorder:
    def __init__(
        self, stop_after: int | None = None, gives_way_after: int | None = None, stop_in_save: int | None = None
    ) -> None:
        self.steps: list[StepRecord] = []
        self.validations: list[tuple[int, dict[str, float]]] = []
        self.saves: list[int] = []
        self.stop_after, self.gives_way_after, self.stop_in_save = stop_after, gives_way_after, stop_in_save
        self.asked_to_give_way: list[int] = []  # the checkpoints after which the loop asked

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_step=self.steps.append,
            on_validation=lambda step, losses: self.validations.append((step, losses)),
            save=self.saves.append,
            should_stop=self.should_stop,
            gives_way=self.gives_way,
        )

    def should_stop(self) -> bool:
        asked = self.stop_after is not None and self.steps[-1].step >= self.stop_after
        return asked or (self.stop_in_save is not None and self.stop_in_save in self.saves)

    def gives_way(self, step: int) -> bool:
        self.asked_to_give_way.append(step)
        return self.gives_way_after is not None and step >= self.gives_way_after


def run(
    train: TrainConfig,
    first_step: int = 0,
    dp_rank: int = 0,
    dp: int = 1,
    validation=None,
    recorder=None,
    first_sample: int | None = None,
):
    engine = FakeEngine(train.global_batch, train.micro_batch, dp)
    recorder = recorder or Recorder()
    data = DataShard(Samples(), dp_rank, dp, validation or {})
    first_sample = samples_before(first_step, train) if first_sample is None else first_sample
    result = train_steps(engine, data, train, SEQ, first_step, first_sample, recorder.callbacks())
    return engine, recorder, result


def test_steps_train_consecutive_global_batches_and_report_the_schedule() -> None:
    train = TrainConfig(steps=5, global_batch=4, micro_batch=2, checkpoint_interval=2, warmup_steps=1)
    engine, recorder, result = run(train)
    assert result == (5, False)
    assert engine.trained == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
    assert [record.step for record in recorder.steps] == [1, 2, 3, 4, 5]
    assert [record.lr for record in recorder.steps] == [lr_at(step, train) for step in range(5)]
    assert all(record.grad_norm == 0.5 and record.batch_size == 4 for record in recorder.steps)
    assert recorder.saves == [2, 4, 5]  # every checkpoint_interval, and the last step


def test_each_data_parallel_rank_takes_its_slice_of_every_global_batch() -> None:
    train = TrainConfig(steps=2, global_batch=8, micro_batch=2)
    slices = [run(train, dp_rank=rank, dp=2)[0].trained for rank in range(2)]
    assert slices == [[[0, 1, 2, 3], [8, 9, 10, 11]], [[4, 5, 6, 7], [12, 13, 14, 15]]]


def test_a_resumed_loop_trains_on_what_the_uninterrupted_one_did_after_that_step() -> None:
    rampup = BatchRampup(start=2, increment=2, samples=8)
    train = TrainConfig(steps=6, global_batch=6, micro_batch=1, rampup=rampup)
    whole, _, _ = run(train)
    resumed, recorder, _ = run(train, first_step=3)
    assert whole.batch_sizes == [2, 2, 4, 6, 6, 6] and resumed.batch_sizes == whole.batch_sizes[3:]
    assert resumed.trained == whole.trained[3:]
    assert [record.step for record in recorder.steps] == [4, 5, 6]


def test_a_resume_with_another_batch_size_trains_the_samples_after_those_already_trained() -> None:
    before, _, _ = run(TrainConfig(steps=4, global_batch=4, micro_batch=2, exit_after=2))
    after, _, _ = run(TrainConfig(steps=4, global_batch=8, micro_batch=2), first_step=2, first_sample=8)
    bounds = [(0, 4), (4, 8), (8, 16), (16, 24)]  # not 16-31 and 24-39: 2 steps x the new batch
    assert before.trained + after.trained == [list(range(start, stop)) for start, stop in bounds]


def test_validation_runs_on_its_interval_and_leaves_the_forward_count_as_it_was() -> None:
    train = TrainConfig(steps=5, global_batch=2, micro_batch=1, eval_interval=2)
    batches = {"fra_Latn": [torch.zeros(1, SEQ + 1, dtype=torch.int64)] * 3}
    engine, recorder, _ = run(train, validation=batches)
    assert [step for step, _ in recorder.validations] == [2, 4, 5]
    assert recorder.validations[0][1] == {"fra_Latn": 3.0}
    assert engine.module.micro_offset == 5 * 2  # the training forwards only


@pytest.mark.parametrize(("exit_after", "stop_after", "expected"), [(2, None, (3, False)), (0, 2, (2, True))])
def test_a_launch_stops_early_with_a_checkpoint(exit_after: int, stop_after, expected) -> None:
    train = TrainConfig(steps=10, global_batch=2, micro_batch=1, checkpoint_interval=5, exit_after=exit_after)
    _, recorder, result = run(train, first_step=1 if exit_after else 0, recorder=Recorder(stop_after))
    assert result == expected and recorder.saves == [expected[0]]


def test_a_launch_gives_way_after_a_checkpoint_it_saved_and_is_asked_only_then() -> None:
    train = TrainConfig(steps=10, global_batch=2, micro_batch=1, checkpoint_interval=3)
    _, recorder, result = run(train, recorder=Recorder(gives_way_after=6))
    assert result == (6, True) and recorder.saves == [3, 6] and recorder.asked_to_give_way == [3, 6]
    _, recorder, result = run(train, recorder=Recorder(gives_way_after=0))
    assert result == (3, True) and len(recorder.steps) == 3
    # Not after the last step's checkpoint: the run is done, there is nothing to give way to.
    _, recorder, result = run(train, first_step=7, recorder=Recorder(gives_way_after=10))
    assert result == (10, False) and recorder.saves == [9, 10] and recorder.asked_to_give_way == [9]
    # A stop asked for while the checkpoint was saved stops there, as asked: it does not give way.
    _, recorder, result = run(train, recorder=Recorder(gives_way_after=0, stop_in_save=3))
    assert result == (3, True) and recorder.asked_to_give_way == []
