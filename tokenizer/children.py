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


def worker_of(parent: int) -> None:
    """A pool worker's start: it ends with its parent, and leaves a terminal's Ctrl-C to it (which stops the work in
    one line) instead of printing a traceback of its own."""
    ended_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked while it started (tokenizer/encode.py)
