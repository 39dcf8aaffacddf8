"""Files, for the tokenizer and every module above it: the names of a tokenizer's outputs that others read; writing
a file, or a directory (built in a staging area, then published by a rename), so that readers see the old contents
or the new, never half; locking a directory against a second writer; what a full disk is, and an error that names
the path a write failed on; reading JSON with a one-line error, and a file's digest."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# What a step says its progress through: print, or a caller's own (a test's, a launcher's).
Log = Callable[[str], None]
RETIRED = "retired"  # in a staging area: the output `publish` replaced
STAGED = "out"  # in a staging area: the output being built, which `publish` puts in place
ADDED_PIECES_FILE = "added_pieces.json"  # in an extended tokenizer (tokenizer/extend.py): how an embedding grows
SPM_MODEL_FILE = "tokenizer.model"  # a SentencePiece tokenizer's model (tokenizer/train.py)
HF_TOKENIZER_FILE = "tokenizer.json"  # Hugging Face's form of it (tokenizer/hf_export.py), a byte-level BPE's own
HF_TOKENIZER_CONFIG, HF_SPECIAL_TOKENS = "tokenizer_config.json", "special_tokens_map.json"  # for transformers
HF_CONFIG_FILES = (HF_TOKENIZER_CONFIG, HF_SPECIAL_TOKENS)
TOKENIZER_FILES = (HF_TOKENIZER_FILE, *HF_CONFIG_FILES, SPM_MODEL_FILE)  # what a model directory carries of one
METADATA_FILE = "metadata.json"  # beside tokenizer.model: how it was trained, on what (written last)
REPORT_FILE = "report.json"  # an evaluation's figures, written after its markdown and chart (tokenizer/evaluate.py)


def user_cache(name: str) -> Path:
    """A folder of corolla's cache for this user: COROLLA_CACHE, else $XDG_CACHE_HOME/corolla, else ~/.cache/corolla.
    What is kept there is rebuilt when missing."""
    home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("COROLLA_CACHE") or Path(home) / "corolla") / name


def read_json(path: Path, fix: str) -> object:
    """A JSON file's contents, or a one-line ValueError that names the file and `fix`."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg}, line {error.lineno}): {fix}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text: {fix}") from None


def not_a_directory(path: Path) -> str | None:
    """Why `path` is not a directory to read, in a few words; None when it is one."""
    if path.is_dir():
        return None
    return "is a file, not a directory" if path.exists() else "does not exist"


def tokenizer_file(directory: Path, fingerprint: str) -> Path | None:
    """The tokenizer model in `directory` whose SHA-256 is `fingerprint` (a .model or a .json, by any name), if any."""
    found = sorted(directory.glob("*.model")) + sorted(directory.glob("*.json")) if directory.is_dir() else []
    return next((path for path in found if path.is_file() and sha256_of(path) == fingerprint), None)


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, read a block at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


END_BLOCK = 1 << 16  # bytes read at a time from a file's end


def lines_from_end(file: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """The lines of a file open for reading in binary, last first, each with the offset it starts at, read a block at
    a time from the end: what a reader of the end of a log or a records file that grows for weeks reads is what it
    takes, not the whole file. The last line counts without its line break too (one being written)."""
    end = file.seek(0, os.SEEK_END)
    position, first = end, b""  # `first`: a line whose start lies in a block not read yet
    while position > 0:
        size = min(END_BLOCK, position)
        position -= size
        file.seek(position)
        data = file.read(size) + first
        first, *lines = data.split(b"\n")
        cursor = position + len(data)
        for line in reversed(lines):
            cursor -= len(line)
            if cursor < end or line:  # not the nothing after a final line break
                yield cursor, line
            cursor -= 1
    if end:
        yield 0, first


def first_line(error: BaseException) -> str:
    """An error's first line, for a message of one line; its type's name when it says nothing."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


# A full filesystem, or a full quota (what a cluster's per-user or per-project quota gives).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(error: OSError) -> bool:
    return error.errno in NO_SPACE


def over_quota(where: object) -> str:
    """What EDQUOT says of `where`, whose filesystem may have petabytes free, and how to see the quota."""
    return (
        f"over a disk quota (yours or your project's; `quota -s`, or on Lustre `lfs quota -h -u $USER`, `-g GROUP` or "
        f"`-p PROJECT`) on {where}"
    )


def no_room(number: int | None, where: object) -> str:
    """What a write that found no room on `where` says of it: a full quota (EDQUOT, over_quota), or a full disk."""
    return over_quota(where) if number == errno.EDQUOT else f"no space left on {where}"


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError raised inside names `path` if it names no file, as a failing write() or close() does not (a full
    disk): the error line then says which filesystem."""
    try:
        yield
    except OSError as error:
        error.filename = error.filename or str(path)
        raise


def temporary_of(path: Path) -> Path:
    """Where this process writes `path` before it takes its place: a hidden sibling, its own."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def written_for(path: str) -> str:
    """`path` with this process's temporaries named by what they are written for, the path a user gave or knows: a
    temporary_of by its file, a staging_area by its output (what is built there by its place in the output); any
    other path as it is."""
    pid, parts = os.getpid(), Path(path).parts
    for index, part in enumerate(parts):
        if match := re.fullmatch(rf"\.(.+)\.(?:{pid}\.tmp|staging-.+-{pid})", part):
            built = parts[index + 2 :] if parts[index + 1 : index + 2] == (STAGED,) else ()
            return str(Path(*parts[:index], match[1], *built))
    return path


def with_umask_permissions(directory: Path) -> None:
    """The files in `directory` given the permissions the user's umask gives new files: a library may write its own
    0600 (safetensors does), readable by no one else of a group that shares the output."""
    mask = os.umask(0o022)
    os.umask(mask)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~mask)


def temporaries_of(directory: Path, name: str = "*") -> list[Path]:
    """The temporaries of the file `name` in `directory` (of any file there by default) that writers killed halfway
    left, any process's."""
    return list(directory.glob(f".{name}.*.tmp"))


def write_atomically(path: Path, data: bytes | str) -> None:
    """Writes `data` to a temporary sibling, flushes it to disk, renames it over `path`, and flushes the rename."""
    # A plain open (not tempfile) so the file gets the usual umask permissions rather than 0600.
    temporary = temporary_of(path)
    try:
        with naming(path), temporary.open("wb") as file:
            file.write(data.encode("utf-8") if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Flushes the names a directory holds to disk (a file's own flush does not, on ext4 and XFS): what a crash would
    otherwise undo of a rename or a file just made."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except PermissionError:  # a folder one may write in but not read: the system flushes its names in its own time
        return
    try:
        os.fsync(descriptor)
    except OSError as error:  # some filesystems cannot flush a directory: nothing more to do there
        if error.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(descriptor)


@contextmanager
def directory_lock(directory: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on the directory itself while the context lasts, so that processes that take it go one
    after the other; yields False, without it, when `wait` is off and another process holds it. Where the filesystem
    has no flock (some network filesystems) nothing is locked, and it yields True."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError:
            pass
        yield True
    finally:
        os.close(descriptor)  # releases the flock


@contextmanager
def exclusively(directory: Path, refusal: str) -> Iterator[None]:
    """directory_lock without waiting: a ValueError saying `refusal` when another process holds it."""
    with directory_lock(directory, wait=False) as alone:
        if not alone:
            raise ValueError(refusal)
        yield


def check_replaceable(
    out: Path, what: str, owned: Callable[[str], bool], inputs: dict[str, str | None], overwrite: bool
) -> None:
    """Before anything is read, for a command that replaces output_dir=`out` whole with `what` ("a tokenizer"): a
    directory, neither inside an input (`inputs`: setting, path) nor holding one, holding only the files of an earlier
    `what` (`owned`, of a file's name), which only overwrite=true replaces."""
    check_apart(out, what, inputs)
    held = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    if foreign := [name for name in held if not owned(name)]:
        raise ValueError(
            f"output_dir={out} holds files that are not {what}'s ({', '.join(foreign[:3])}): the directory is "
            "replaced whole, so choose an empty or new one"
        )
    if held and not overwrite:
        raise ValueError(f"output_dir={out} already holds {what}: choose another, or pass overwrite=true")


def check_apart(out: Path, what: str, inputs: dict[str, str | None], replaced_whole: bool = True) -> None:
    """output_dir=`out` for `what` ("a tokenizer"): a directory, or a path one can be made at, not inside an input
    (`inputs`: setting, path), nor holding one where it is `replaced_whole`."""
    nearest = next(path for path in (out, *out.parents) if path.exists())
    if not nearest.is_dir():
        raise ValueError(f"output_dir={out} is, or lies under, the file {nearest}: give a directory's path")
    for setting, given in inputs.items():
        inside = given and out.resolve().is_relative_to(Path(given).resolve())
        if inside or (given and replaced_whole and Path(given).resolve().is_relative_to(out.resolve())):
            raise ValueError(
                f"output_dir={out} and {setting}={given} lie one inside the other: give {what} a directory of its own"
            )


def _linked(out: Path) -> Path:
    """What a link at `out` leads to (an output kept on scratch storage, linked in): replaced there, the link kept."""
    return out.resolve() if out.is_symlink() else out


@contextmanager
def staging_area(out: Path) -> Iterator[Path]:
    """A fresh working directory beside `out` (on its filesystem, so that what is built there is renamed to `out`
    whole, by `publish`), removed when the context ends, however it ends. Those that processes killed outright left
    (no `finally` runs then) are removed first, or named when their host is another."""
    out = _linked(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for left in out.parent.glob(f".{out.name}.staging-*"):
        _sweep(left, out)
    area = out.parent / f".{out.name}.staging-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(area, ignore_errors=True)
    area.mkdir()
    try:
        yield area
    finally:
        shutil.rmtree(area, ignore_errors=True)


class OutputTaken(ValueError):
    """Another command put an output where this one was about to publish its own."""


def publish(staging: Path, out: Path, replace: bool) -> None:
    """Puts `staging`, a directory in `out`'s staging area, in `out`'s place, so that a reader never sees a
    half-written directory: the old one, whole, until the new one, whole. Unless `replace`, an `out` that holds
    anything now (another command wrote it meanwhile) is kept, and this one refused. A Ctrl-C or SIGTERM waits for
    both renames (the old one is removed with the staging area); a SIGKILL between them leaves the old one for the
    next staging area to give back."""
    out = _linked(out)
    if not replace:
        try:
            staging.rename(out)  # over nothing, or an empty directory; never over one that holds files
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise OutputTaken(
                f"{out} was written by another command while this one ran: see what it holds, and run again with "
                "overwrite=true to replace it"
            ) from None
        return
    retired = staging.parent / RETIRED
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if out.exists():
            out.rename(retired)
        try:
            staging.rename(out)
        except OSError:
            if retired.is_dir():
                retired.rename(out)
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _sweep(left: Path, out: Path) -> None:
    """Removes a staging area of `out` whose process on this host has ended, after giving back the output it had
    retired (killed between publish's two renames). One of another host cannot be told from one in use there: it is
    named, with what it holds, for a person to remove."""
    host, _, pid = left.name.removeprefix(f".{out.name}.staging-").rpartition("-")
    if host != socket.gethostname():
        held = f", and holds the {out.name} it replaced, in {RETIRED}/" if (left / RETIRED).is_dir() else ""
        print(
            f"corolla: warning: {left} was left by a process on {host}, which cannot be seen from here{held}: remove "
            f"it once nothing on {host} writes {out}",
            file=sys.stderr,
        )
        return
    if not pid.isdigit() or process_exists(int(pid)):
        return
    if (left / RETIRED).is_dir() and not out.exists():
        (left / RETIRED).rename(out)
    shutil.rmtree(left, ignore_errors=True)


def process_exists(pid: int) -> bool:
    """Whether a process of this pid runs on this host, whoever's: asked of the kernel, which /proc mounted with
    hidepid (as on shared login nodes) does not show another user's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
