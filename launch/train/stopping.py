"""Stopping a run cleanly from outside, and noticing when it stopped moving.

StopSignals: a signal (Slurm's USR2 before the time limit, SIGTERM on preemption) asks every rank to stop at the same
step boundary, after a checkpoint; so does the file RUN_DIR/STOP (a kill switch: the job then ends instead of
being requeued). Slurm signals every rank, but not all at once, so ranks agree by an all-reduce after each step:
when any rank has a reason, all stop after that step.

Watchdog: a rank whose peer died or hangs waits in a collective; the collective timeout ends that for gloo and NCCL,
but a rank stuck elsewhere (a dead filesystem, a deadlock) would wait until the time limit. When no step, save or
validation finishes for `timeout_s`, the watchdog prints every thread's stack and ends the process. On Slurm it ends
it too once the time limit is near and the ranks have not stopped (a rank hangs, or the last step and its save take
longer than the warning leaves): a job Slurm ends at its limit is never requeued, one that fails is.
"""

from __future__ import annotations

import faulthandler
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from launch.rundir.history import Event

if TYPE_CHECKING:
    import torch

# Slurm's USR2 before the time limit, SIGTERM on preemption; locally what corolla passes on (a terminal's Ctrl-C or
# hang-up, a kill).
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# The exit status of a process the watchdog ended.
STALLED_EXIT = 75
# The exit status of a start refused for what no restart would mend (a Slurm job is not requeued after it).
REFUSED_EXIT = 2
# The exit status of a rank whose start ended with a diverged loss or a full disk, as the README says.
ENDED_EXIT = {Event.diverged: 3, Event.no_space: 4}
# How corolla's one-line errors begin, the command line's and a rank's last words, which the local launcher reads
# for the cause of a failure (launch/jobs/local.py), as it reads the watchdog's line, which the stacks follow.
ERROR_PREFIX = "corolla: error: "
WATCHDOG = "corolla watchdog: "
STACKS_FOLLOW = "; stacks of every thread follow"


class StopSignals:
    def __init__(self, stop_file: Path, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.stop_file = stop_file
        self.received: signal.Signals | None = None
        self.warned_at: float | None = None  # when the time limit's warning came (time.monotonic())
        self.warning_s = 0.0  # how long before the limit it comes
        self.window_s = math.inf  # how long after it the start must have ended (ClusterConfig.stop_window_s)
        for number in signals:
            signal.signal(number, self._receive)

    def _receive(self, number: int, frame: object) -> None:
        self.received = signal.Signals(number)
        self._warned(number)

    def _warned(self, number: int) -> None:
        if number == signal.SIGUSR2 and self.warned_at is None:
            self.warned_at = time.monotonic()

    def watch_time_limit(self, warning_s: float, window_s: float) -> None:
        """On Slurm: USR2 warns of the time limit `warning_s` ahead (cluster.signal_delay_s), and the start must have
        ended `window_s` after it. Its time is taken by a thread as the signal comes, and by the handler: a handler
        runs only once the main thread is back in Python, which a rank stuck in a collective never is."""
        if window_s >= warning_s:  # an elastic run's next job takes over however this one ends
            return
        self.warning_s, self.window_s = warning_s, window_s
        read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)  # where the signal's number goes as it comes
        threading.Thread(target=self._read_signals, args=(read,), name="corolla-time-limit", daemon=True).start()

    def _read_signals(self, read: int) -> None:
        while numbers := os.read(read, 64):
            for number in numbers:
                self._warned(number)

    def must_end_by(self) -> float:
        """When (time.monotonic()) this start must have ended to be requeued before the time limit; math.inf until its
        warning came, or where no limit is watched."""
        return math.inf if self.warned_at is None else self.warned_at + self.window_s

    def ignore_from_now_on(self) -> None:
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank was asked to stop; a collective, so every rank calls it after every step."""
        import torch  # here, so that the handlers can be installed before torch is imported (seconds)
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.received or self.stop_file.exists() else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class Watchdog:
    def __init__(
        self, timeout_s: float, on_stall: Callable[[], None] = lambda: None, signals: StopSignals | None = None
    ) -> None:
        """`signals`, where they watch a time limit (StopSignals.watch_time_limit), end the start before it."""
        self.timeout_s = timeout_s
        self.on_stall = on_stall
        self.signals = signals
        self.last_progress = time.monotonic()
        self.stopped = False
        if timeout_s > 0:
            threading.Thread(target=self._watch, name="corolla-watchdog", daemon=True).start()

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def stop(self) -> None:
        self.stopped = True

    def _watch(self) -> None:
        rank = os.environ.get("RANK", "?")
        while True:
            time.sleep(min(self.timeout_s / 4, 5.0))
            now = time.monotonic()
            if self.stopped:
                return
            if now - self.last_progress > self.timeout_s:
                stalled = now - self.last_progress
                self._end(f"no progress on rank {rank} for {stalled:.0f} s (train.hang_timeout_s={self.timeout_s:g})")
            if self.signals and now > self.signals.must_end_by():
                warned, before = now - (self.signals.warned_at or now), self.signals.warning_s
                self._end(
                    f"rank {rank} has not stopped {warned:.0f} s after the time limit's warning, which comes "
                    f"cluster.signal_delay_s={before:g} s before it (raise it where the last step and its save take "
                    "longer): a job Slurm ends at its limit is never requeued, so this start ends now, to restart "
                    "from the last checkpoint"
                )

    def _end(self, why: str) -> None:
        print(f"{WATCHDOG}{why}{STACKS_FOLLOW}, then this rank exits", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        self.on_stall()
        os._exit(STALLED_EXIT)
