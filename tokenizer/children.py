"""Child processes that end with the process that started them, whatever kills it (Linux's parent-death signal):
torchrun under `corolla train`, and the encoding workers, which would otherwise wait on their parent's queue for
ever."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up on import: a forked child only calls it


def ended_with_parent() -> None:
    """Called in the child: SIGTERM to it when its parent dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
