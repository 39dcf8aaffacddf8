"""Fault injection, for tests only: read once when a rank starts, applied by wrapping what the training loop calls
back (and, for a NaN, by a hook on the model); the loop itself never looks.

- COROLLA_TEST_HANG_AT_STEP=N: rank COROLLA_TEST_HANG_RANK (default 1) hangs for good once step N is reported, as a
  rank stuck outside any collective would;
- COROLLA_TEST_ABORT_AT_STEP=N: every rank's process is taken down (SIGABRT) once step N is reported, no Python run
  after it, as NCCL's watchdog takes every rank down when a collective with a dead rank fails;
- COROLLA_TEST_CRASH_DURING_SAVE=N: rank 0 dies after writing its files of step N's checkpoint, before the checkpoint
  is marked complete;
- COROLLA_TEST_FAIL_BEFORE_TRAINING=1: every rank raises once its model is built, before the start is recorded, at
  every start, as a set-up that fails so at every restart would (a checkpoint too large for the node's memory);
- COROLLA_TEST_NAN_AT_STEP=N: step N's forward passes give NaN (every rank), as a numerical blow-up would;
- COROLLA_TEST_HUGE_GRADIENTS_AT_STEP=N: step N's backward passes scale the gradients by 1e25 (every rank): each one
  finite, with the loss, and their norm past what a float holds (with one pipeline stage; with more, each stage's
  hook scales again what flows back to the stages before it, until it is infinite);
- COROLLA_TEST_STEP_SECONDS=S: steps follow each other no faster than every S seconds, as a bigger model's would, so
  that a job's share of a run does not depend on how fast these cores happen to be;
- COROLLA_TEST_UNFIT_NODE_FILE=PATH: the node of the first rank 0 to run a health check (launch/train/health.py) is
  written there (every allocation has one, however few nodes an elastic job gets), and from then on every rank on
  that node fails its self-test, in every job, as on a broken GPU;
- COROLLA_TEST_UNFIT_MID_RUN=1: that node is the one of the first rank 0 to run a health check after a checkpoint
  (a GPU that breaks while the run trains), not before;
- COROLLA_TEST_SLOW_NODE=NODE: ranks on NODE take 10 times as long for their self-test, as on a throttled GPU.
A hang, an abort, a crash, a NaN or huge gradients are injected on a first launch only: a requeued Slurm job keeps
its environment, and must recover. A node stays unfit whichever job lands on it, and a failing set-up fails at every
start.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from launch.train.loop import Callbacks, StepRecord

HANG_AT_STEP = "COROLLA_TEST_HANG_AT_STEP"
HANG_RANK = "COROLLA_TEST_HANG_RANK"
ABORT_AT_STEP = "COROLLA_TEST_ABORT_AT_STEP"
CRASH_DURING_SAVE = "COROLLA_TEST_CRASH_DURING_SAVE"
# "STEP:FILE": rank 0's save of that step, its files written, grows FILE until that filesystem is full, then gives
# back FILL_LEAVES_BYTES (rounded to the filesystem's blocks): room for the checkpoint's record, not for `latest`.
FILL_AT_COMMIT = "COROLLA_TEST_FILL_AT_COMMIT"
FILL_LEAVES_BYTES = "COROLLA_TEST_FILL_LEAVES_BYTES"
FAIL_BEFORE_TRAINING = "COROLLA_TEST_FAIL_BEFORE_TRAINING"
NAN_AT_STEP = "COROLLA_TEST_NAN_AT_STEP"
HUGE_GRADIENTS_AT_STEP = "COROLLA_TEST_HUGE_GRADIENTS_AT_STEP"
HUGE_GRADIENT_SCALE = 1e25  # a gradient of 1e-3 becomes 1e22, its square past float32's 3.4e38
STEP_SECONDS = "COROLLA_TEST_STEP_SECONDS"
UNFIT_NODE_FILE = "COROLLA_TEST_UNFIT_NODE_FILE"
SLOW_NODE = "COROLLA_TEST_SLOW_NODE"
UNFIT_MID_RUN = "COROLLA_TEST_UNFIT_MID_RUN"
CRASHED_EXIT = 17


def _step(value: str | None) -> int | None:
    return int(value) if value else None


@dataclass
class Faults:
    rank: int
    hang_at_step: int | None = None
    abort_at_step: int | None = None
    crash_during_save: int | None = None
    fill_at_commit: tuple[int, Path] | None = None
    fill_leaves_bytes: int = 0
    nan_at_step: int | None = None
    huge_gradients_at_step: int | None = None
    fail_before_training: bool = False
    step_seconds: float = 0.0
    unfit_node_file: Path | None = None
    unfit_mid_run: bool = False
    slow_node: str | None = None
    training_step: int = 0  # the step being trained, for the model's hook

    @classmethod
    def from_environment(cls, rank: int) -> Faults:
        first_launch = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
        hang_rank = int(os.environ.get(HANG_RANK, "1"))
        return cls(
            rank,
            hang_at_step=_step(os.environ.get(HANG_AT_STEP)) if first_launch and rank == hang_rank else None,
            abort_at_step=_step(os.environ.get(ABORT_AT_STEP)) if first_launch else None,
            crash_during_save=_step(os.environ.get(CRASH_DURING_SAVE)) if first_launch and rank == 0 else None,
            fill_at_commit=_step_and_file(os.environ.get(FILL_AT_COMMIT)) if first_launch and rank == 0 else None,
            fill_leaves_bytes=int(os.environ.get(FILL_LEAVES_BYTES, "0")),
            nan_at_step=_step(os.environ.get(NAN_AT_STEP)) if first_launch else None,
            huge_gradients_at_step=_step(os.environ.get(HUGE_GRADIENTS_AT_STEP)) if first_launch else None,
            fail_before_training=os.environ.get(FAIL_BEFORE_TRAINING) == "1",
            step_seconds=float(os.environ.get(STEP_SECONDS, "0")),
            unfit_node_file=Path(os.environ[UNFIT_NODE_FILE]) if os.environ.get(UNFIT_NODE_FILE) else None,
            unfit_mid_run=os.environ.get(UNFIT_MID_RUN) == "1",
            slow_node=os.environ.get(SLOW_NODE) or None,
        )

    def self_test(self, node: str, mid_run: bool = False) -> Callable[[float], float]:
        """What a health check on `node` (`mid_run`: after a checkpoint) makes of its self-test's seconds: raises on
        the unfit node, stretches them on the slow one."""

        def injected(seconds: float) -> float:
            if self.unfit_node_file is not None:
                if self.rank == 0 and (mid_run or not self.unfit_mid_run):
                    with contextlib.suppress(FileExistsError), self.unfit_node_file.open("x") as marked:
                        marked.write(node)
                if self.unfit_node_file.is_file() and self.unfit_node_file.read_text() == node:
                    raise RuntimeError(f"injected: the device of {node} fails")
            return seconds * 10 if node == self.slow_node else seconds

        return injected

    def install(self, module: torch.nn.Module, first_step: int) -> None:
        """The failed set-up, if one is asked for; the NaN or huge gradients, if asked for: a hook on the rank's model
        that spoils its outputs, or their gradients, during that step."""
        if self.fail_before_training:
            raise RuntimeError("injected: the start fails before it trains")
        if self.nan_at_step is None and self.huge_gradients_at_step is None:
            return
        self.training_step = first_step + 1

        def spoil(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
            if self.training_step == self.nan_at_step:
                return output * float("nan")
            if self.training_step == self.huge_gradients_at_step and output.requires_grad:
                output.register_hook(lambda gradient: gradient * HUGE_GRADIENT_SCALE)
            return None

        module.register_forward_hook(spoil)

    def wrap(self, callbacks: Callbacks) -> Callbacks:
        steps = (self.hang_at_step, self.abort_at_step, self.nan_at_step, self.huge_gradients_at_step)
        if all(step is None for step in steps) and not self.step_seconds:
            return callbacks
        return replace(callbacks, on_step=self._on_step(callbacks.on_step))

    def _on_step(self, on_step: Callable[[StepRecord], None]) -> Callable[[StepRecord], None]:
        previous = time.monotonic()

        def injected(record: StepRecord) -> None:
            nonlocal previous
            on_step(record)
            self.training_step = record.step + 1
            if record.step == self.hang_at_step:
                while True:
                    time.sleep(1)
            if record.step == self.abort_at_step:
                os.abort()
            time.sleep(max(0.0, previous + self.step_seconds - time.monotonic()))
            previous = time.monotonic()

        return injected

    def before_commit(self, step: int) -> None:
        """Called by a checkpoint save on every rank once its files are written, before the checkpoint is marked."""
        if step == self.crash_during_save:
            os._exit(CRASHED_EXIT)
        if self.fill_at_commit and step == self.fill_at_commit[0]:
            _fill(self.fill_at_commit[1], self.fill_leaves_bytes)


def _step_and_file(value: str | None) -> tuple[int, Path] | None:
    if not value:
        return None
    step, file = value.split(":", 1)
    return int(step), Path(file)


def _fill(file: Path, leaves: int) -> None:
    """Grows `file` until its filesystem has not a byte left, then shrinks it by `leaves` bytes."""
    descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (2**20, 2**12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
        os.ftruncate(descriptor, max(0, os.fstat(descriptor).st_size - leaves))
    finally:
        os.close(descriptor)
