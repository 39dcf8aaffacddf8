"""Child processes that end with the process that started them, whatever kills it (Linux's parent-death signal):
torchrun under `corolla train`, and the encoding workers, which would otherwise wait on their parent's queue for
ever."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up on import: a forked child only calls it


def ended_with_parent(parent: int) -> None:
    """Called in the child: SIGTERM to it when its parent (pid `parent`) dies; at once if it died already, before
    the child could ask."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


# What a pool worker leaves to its parent: a terminal's Ctrl-C, which corolla ends the work on in one line, and the USR2
# Slurm sends every process of a job step before its time limit (cluster.signal_delay_s), which a stage job's handler
# (submitit's) answers by requeueing it; a worker it killed would break the pool under that handler.
LEFT_TO_PARENT = {signal.SIGINT, signal.SIGUSR2}


def worker_of(parent: int) -> None:
    """A pool worker's start: it ends with its parent, and leaves the signals above to it (a Ctrl-C would print a
    traceback of its own)."""
    ended_with_parent(parent)
    for number in LEFT_TO_PARENT:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, LEFT_TO_PARENT)  # blocked while it started (tokenizer/encode.py)
