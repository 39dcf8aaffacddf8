"""Stopping a run cleanly from outside, and noticing when it stopped moving.

StopSignals: a signal (Slurm's USR2 before the time limit, SIGTERM on preemption) asks every rank to stop at the same
step boundary, after a checkpoint; so does the file RUN_DIR/STOP (a kill switch: the job then ends instead of
being requeued). Slurm signals every rank, but not all at once, so ranks agree by an all-reduce after each step:
when any rank has a reason, all stop after that step.

Watchdog: a rank whose peer died or hangs waits in a collective; the collective timeout ends that for gloo and NCCL,
but a rank stuck elsewhere (a dead filesystem, a deadlock) would wait until the time limit. When no step, save or
validation finishes for `timeout_s`, the watchdog prints every thread's stack and ends the process.
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
        for number in signals:
            signal.signal(number, self._receive)

    def _receive(self, number: int, frame: object) -> None:
        self.received = signal.Signals(number)

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
    def __init__(self, timeout_s: float, on_stall: Callable[[], None] = lambda: None) -> None:
        self.timeout_s = timeout_s
        self.on_stall = on_stall
        self.last_progress = time.monotonic()
        if timeout_s > 0:
            threading.Thread(target=self._watch, name="corolla-watchdog", daemon=True).start()

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def stop(self) -> None:
        self.last_progress = math.inf

    def _watch(self) -> None:
        while True:
            time.sleep(min(self.timeout_s / 4, 10.0))
            stalled = time.monotonic() - self.last_progress
            if stalled > self.timeout_s:
                print(
                    f"{WATCHDOG}no progress on rank {os.environ.get('RANK', '?')} for {stalled:.0f} s "
                    f"(train.hang_timeout_s={self.timeout_s:g}){STACKS_FOLLOW}, then this rank exits",
                    file=sys.stderr,
                    flush=True,
                )
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                self.on_stall()
                os._exit(STALLED_EXIT)
