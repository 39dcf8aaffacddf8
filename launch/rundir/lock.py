"""One writer per run directory: RUN_DIR/LOCK names the process that trains it (host, pid, the process's start),
held from before its launch touches the run directory until its ranks have ended.

A second `corolla train`, `corolla checkpoint reshard` or `corolla submit` of the run is refused in one line naming
the holder. A lock whose process has ended on this host (or whose pid now belongs to another process) is stale: it is
taken over, with a line saying so. On another host corolla cannot tell, and says how to clear it. (A run trained by
Slurm jobs is held by them: the caller says whether one is live.)
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from launch.rundir.files import LOCK_FILE
from tokenizer.files import directory_lock, process_exists, temporaries_of, temporary_of, write_atomically

_CANNOT_WRITE = {errno.EROFS: "a read-only filesystem", errno.EACCES: "permissions", errno.EPERM: "permissions"}


class RunLocked(RuntimeError):
    """The run directory has another writer; the message names it and what to do."""


def _started(pid: int) -> str | None:
    """When the process started (clock ticks since boot, /proc), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _started(os.getpid()), "since": time.time()}


def describe(holder: dict) -> str:
    if not holder:
        return "a writer whose lock cannot be read (it died writing it)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"process {holder.get('pid')} on {holder.get('host')} (since {since})"


def _alive(holder: dict) -> bool | None:
    """Whether the holder still runs: known on this host only (None elsewhere). A pid that /proc does not show but
    that runs is taken for the holder: /proc mounted with hidepid (shared login nodes) hides other users' processes."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = int(holder.get("pid", -1))
    started = _started(pid)
    if started is None:
        return pid > 0 and process_exists(pid)
    return started == holder.get("started")


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    readable = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str)
    return holder if readable else None


# A run directory's Slurm job that is queued or running, if any: the Slurm backend's answer, none without Slurm.
LiveJob = Callable[[Path], str | None]


def _refuse_if_held(path: Path, slurm_job: LiveJob) -> dict | None:
    """The lock's holder, when it has ended (stale); a RunLocked error when a writer may still run."""
    run_dir = path.parent
    job = slurm_job(run_dir)
    if job is not None:
        raise RunLocked(
            f"{run_dir} has Slurm job {job} queued or running: let it run (`corolla status {run_dir}`), or "
            f"`corolla cancel {run_dir}` first"
        )
    if not path.exists():
        return None
    holder = _read(path) or {}  # unreadable: a writer that died writing it
    alive = _alive(holder) if holder else False
    if alive:
        raise RunLocked(f"{run_dir} is being written by {describe(holder)}: wait for it to end, or stop it")
    if alive is None:
        raise RunLocked(f"{run_dir} is being written by {describe(holder)}: if that process is gone, remove {path}")
    return holder


def writer(run_dir: Path) -> tuple[str, bool | None] | None:
    """The process that holds the run directory, described, and whether it still runs (None: on another host, where
    this one cannot see); None when no lock is held."""
    holder = _read(run_dir / LOCK_FILE)
    return (describe(holder), _alive(holder)) if holder else None


def check_unheld(run_dir: Path, slurm_job: LiveJob) -> None:
    """A RunLocked error when a live process, or a Slurm job (`slurm_job` says which is), writes the run directory."""
    _refuse_if_held(run_dir / LOCK_FILE, slurm_job)


def _create(path: Path, mine: str) -> None:
    """The lock, written whole under another name and linked in place: no reader ever sees it empty."""
    temporary = temporary_of(path)
    temporary.write_text(mine)
    try:
        os.link(temporary, path)
    except FileExistsError:  # another writer came in between
        raise RunLocked(f"{path.parent} is being written by {describe(_read(path) or {})}: wait for it") from None
    finally:
        temporary.unlink()


@contextmanager
def _writable(run_dir: Path) -> Iterator[None]:
    """A run directory this user cannot write (an archive on read-only storage, another's) said as such, where the
    filesystem's error would name the lock's temporary and ask for another path."""
    try:
        yield
    except OSError as error:
        if error.errno not in _CANNOT_WRITE:
            raise
        raise ValueError(
            f"{run_dir} cannot be written ({_CANNOT_WRITE[error.errno]}), which this command does: run it on a copy "
            f"you can write (cp -a {run_dir} DIR)"
        ) from None


@contextmanager
def holding(run_dir: Path, slurm_job: LiveJob = lambda run_dir: None) -> Iterator[None]:
    """This process writes the run directory while the context lasts; a RunLocked error when another does. A
    directory made for the lock alone (a job refused before it wrote anything) is removed with it."""
    path, mine = run_dir / LOCK_FILE, json.dumps(_holder())
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        # One process after the other: between reading a lock and writing its own, another could judge the same
        # stale lock, or a lock not yet written, as ended, and both would hold it. Where the filesystem has no
        # flock, a new lock is still made whole at once (_create), and only two takeovers of one stale lock can meet.
        with directory_lock(run_dir), _writable(run_dir):
            stale = _refuse_if_held(path, slurm_job)
            if stale is None:
                _create(path, mine)
            else:
                write_atomically(path, mine)
                print(f"corolla: took over {path} from {describe(stale)}, which has ended")
    except RunLocked:
        if made and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    # By a writer killed halfway: none other writes here now, but for another process taking the lock, whose own
    # temporary of it (_create, a takeover) is there until it finds the lock taken, on a filesystem without flock.
    for left in set(temporaries_of(run_dir)) - set(temporaries_of(run_dir, LOCK_FILE)):
        left.unlink(missing_ok=True)
    try:
        yield
    finally:
        if path.is_file() and path.read_text() == mine:
            path.unlink()
            if made and not any(run_dir.iterdir()):
                run_dir.rmdir()
