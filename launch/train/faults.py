"""Fault injection, for tests only: read once when a rank starts, applied by wrapping what the training loop calls
back; the loop itself never looks.

- COROLLA_TEST_HANG_AT_STEP=N: rank COROLLA_TEST_HANG_RANK (default 1) hangs for good once step N is reported, as a
  rank stuck outside any collective would;
- COROLLA_TEST_CRASH_DURING_SAVE=N: rank 0 dies after writing its files of step N's checkpoint, before the checkpoint
  is marked complete;
- COROLLA_TEST_STEP_SECONDS=S: steps follow each other no faster than every S seconds, as a bigger model's would, so
  that a job's share of a run does not depend on how fast these cores happen to be.
A hang or a crash is injected on a first launch only: a requeued Slurm job keeps its environment, and must recover.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from launch.train.loop import Callbacks, StepRecord

HANG_AT_STEP = "COROLLA_TEST_HANG_AT_STEP"
HANG_RANK = "COROLLA_TEST_HANG_RANK"
CRASH_DURING_SAVE = "COROLLA_TEST_CRASH_DURING_SAVE"
STEP_SECONDS = "COROLLA_TEST_STEP_SECONDS"
CRASHED_EXIT = 17


@dataclass(frozen=True)
class Faults:
    rank: int
    hang_at_step: int | None = None
    crash_during_save: int | None = None
    step_seconds: float = 0.0

    @classmethod
    def from_environment(cls, rank: int, env: Mapping[str, str] = os.environ) -> Faults:
        first_launch = env.get("SLURM_RESTART_COUNT", "0") == "0"
        hang_rank = int(env.get(HANG_RANK, "1"))
        hang = env.get(HANG_AT_STEP) if first_launch and rank == hang_rank else None
        crash = env.get(CRASH_DURING_SAVE) if first_launch and rank == 0 else None
        return cls(
            rank,
            int(hang) if hang else None,
            int(crash) if crash else None,
            float(env.get(STEP_SECONDS, "0")),
        )

    def wrap(self, callbacks: Callbacks) -> Callbacks:
        if self.hang_at_step is None and not self.step_seconds:
            return callbacks
        return replace(callbacks, on_step=self._on_step(callbacks.on_step))

    def _on_step(self, on_step: Callable[[StepRecord], None]) -> Callable[[StepRecord], None]:
        previous = time.monotonic()

        def injected(record: StepRecord) -> None:
            nonlocal previous
            on_step(record)
            if record.step == self.hang_at_step:
                while True:
                    time.sleep(1)
            time.sleep(max(0.0, previous + self.step_seconds - time.monotonic()))
            previous = time.monotonic()

        return injected

    def before_commit(self, step: int) -> None:
        """Called by a checkpoint save on every rank once its files are written, before the checkpoint is marked."""
        if step == self.crash_during_save:
            os._exit(CRASHED_EXIT)
