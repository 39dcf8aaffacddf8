"""Which checkpoints a run directory holds: the `latest` pointer and each checkpoint's COMPLETE record.

A checkpoint directory is complete when it holds COMPLETE (written last, atomically): its step, the layouts of its
parameter and RNG files, and every file with its size and SHA-256 (computed as it was written). A file missing or of
another size fails at once; one whose bytes changed fails when its hash is checked (`unverified`). This module reads
and writes that record; what goes into the files is launch/train/checkpoint.py's.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from launch.rundir.files import (
    COMPLETE,
    LAST_SAVED,
    LATEST,
    SET_ASIDE,
    checkpoint_step,
    checkpoint_tag,
    is_checkpoint_tag,
    shard_file,
)
from tokenizer.files import sha256_of, sync_directory, temporaries_of, write_atomically


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names it and what to do."""


class CheckpointRemoved(CheckpointError):
    """A checkpoint that went while it was read: the training that runs removed it, or a reshard rewrote it."""

    def __init__(self, directory: Path, step: int) -> None:
        super().__init__(
            f"checkpoint {directory / checkpoint_tag(step)} was removed while it was read (a training that runs keeps "
            "only its newest train.keep_checkpoints, a reshard rewrites their files): run the command again"
        )


@contextmanager
def reading(directory: Path, step: int) -> Iterator[None]:
    """Reads of the checkpoint of `step`, which was there when they began: one gone meanwhile (a file of it, or its
    directory under a CheckpointError, or under torch's RuntimeError "unable to open file", which is no OSError) is a
    CheckpointRemoved. On NFS a file open here that the training removes from another node is not kept for its
    reader: its reads fail with ESTALE."""
    try:
        yield
    except OSError as error:
        if not (isinstance(error, FileNotFoundError) or error.errno == errno.ESTALE):
            raise
        raise CheckpointRemoved(directory, step) from None
    except (CheckpointError, RuntimeError) as error:
        if isinstance(error, CheckpointRemoved) or (directory / checkpoint_tag(step)).exists():
            raise
        raise CheckpointRemoved(directory, step) from None


def latest_tag(directory: Path) -> str | None:
    """What `latest` holds: a checkpoint's tag, unless damaged (then what it holds, undecodable bytes replaced)."""
    pointer = directory / LATEST
    return pointer.read_bytes().decode(errors="replace").strip() if pointer.is_file() else None


def file_entries(record: dict) -> dict[str, tuple[int, str | None]]:
    """Each file's size and SHA-256 as COMPLETE records them (an older corolla recorded sizes only)."""
    return {
        name: (entry, None) if isinstance(entry, int) else (entry["bytes"], entry["sha256"])
        for name, entry in record.get("files", {}).items()
    }


def _lists_files(record: dict) -> bool:
    """COMPLETE's files are a mapping of names to a size, or to a size and a SHA-256."""
    files = record.get("files", {})

    def entry_ok(entry: object) -> bool:
        if isinstance(entry, dict):
            return isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)
        return isinstance(entry, int)

    return isinstance(files, dict) and all(entry_ok(entry) for entry in files.values())


def _layout_sizes(record: dict) -> tuple[int, int] | None:
    """TP and PP of the record's layout; None for a record of DeepSpeed's format, which has none."""
    layout = record.get("layout")
    if layout is None:
        return None
    tp, pp = (layout.get("tp"), layout.get("pp")) if isinstance(layout, dict) else (None, None)
    return (tp, pp) if isinstance(tp, int) and isinstance(pp, int) and tp > 0 and pp > 0 else (0, 0)


def _unlisted_shards(record: dict) -> list[str]:
    """The parameter files of the record's layout (one per TP x PP rank) that its files leave out."""
    tp, pp = _layout_sizes(record) or (0, 0)
    shards = [shard_file(tp_rank, tp, pp_rank, pp) for pp_rank in range(pp) for tp_rank in range(tp)]
    return [name for name in shards if name not in record["files"]]


def complete_record(directory: Path, tag: str) -> dict:
    """What COMPLETE says of checkpoint `tag` (step, layouts, files), its files checked to be all there."""
    fix = f"restore its files, or write the tag of an older complete checkpoint into {directory / LATEST}"
    if not is_checkpoint_tag(tag):  # never a path to follow: `latest` names a checkpoint of this directory
        complete = ", ".join(complete_tags(directory)[0]) or "none"
        raise CheckpointError(
            f"{directory / LATEST} holds {tag[:40]!r}, not a checkpoint's tag: write the newest complete one's into it "
            f"(complete: {complete})"
        )
    try:
        record = json.loads((directory / tag / COMPLETE).read_text())
    except (FileNotFoundError, NotADirectoryError):  # another error (EIO, a timeout) is the storage's: no damage
        raise CheckpointError(f"{directory / LATEST} names {tag}, which is not a complete checkpoint: {fix}") from None
    except ValueError:
        record = None
    if not (isinstance(record, dict) and isinstance(record.get("step"), int) and _lists_files(record)):
        raise CheckpointError(f"{directory / tag / COMPLETE} is not a checkpoint record: {fix}")
    if _layout_sizes(record) == (0, 0):
        raise CheckpointError(f"{directory / tag / COMPLETE} holds no layout of TP x PP ranks: {fix}")
    if unlisted := _unlisted_shards(record):  # verified by nobody: a shard the record leaves out is never hashed
        more = f" and {len(unlisted) - 1} more" if len(unlisted) > 1 else ""
        raise CheckpointError(
            f"{directory / tag / COMPLETE} does not list {unlisted[0]}{more}, which its layout's ranks write, and no "
            f"hash vouches for it: write the tag of an older complete checkpoint into {directory / LATEST}"
        )
    for name, (size, _) in file_entries(record).items():
        path = directory / tag / name
        if not path.is_file() or path.stat().st_size != size:
            raise CheckpointError(f"checkpoint file {path} is missing or truncated: {fix}")
    return record


def unverified(directory: Path, tag: str, names: Iterable[str]) -> list[str]:
    """Those of `names` whose bytes are not what COMPLETE's hash says, a few words each (read whole: the cost of a
    verification)."""
    entries = file_entries(complete_record(directory, tag))
    changed = [name for name in names if entries[name][1] and sha256_of(directory / tag / name) != entries[name][1]]
    return [f"{name} changed since written" for name in changed]


def verify(directory: Path, step: int) -> tuple[int, int, list[str]]:
    """The files and bytes of the checkpoint of `step`, and those of its files that fail their hashes."""
    entries = file_entries(step_record(directory, step))
    with reading(directory, step):
        bad = unverified(directory, checkpoint_tag(step), entries)
    return len(entries), sum(size for size, _ in entries.values()), bad


def hashes_recorded(directory: Path, step: int) -> bool:
    """Whether COMPLETE of `step` holds a SHA-256 of every file (a corolla before checksums recorded sizes only)."""
    return all(sha256 for _, sha256 in file_entries(step_record(directory, step)).values())


def verified(directory: Path, step: int, command: str) -> None:
    """The checkpoint of `step` hashes whole to what COMPLETE says; else a CheckpointError naming the files that do
    not, and the other checkpoints `command` (export, reshard) may take instead."""
    _, _, bad = verify(directory, step)
    if bad:
        others = ", ".join(str(other) for other in complete_steps(directory) if other != step)
        then = f"{command} another with step=N (complete: {others})" if others else f"no other is complete to {command}"
        raise CheckpointError(
            f"checkpoint {directory / checkpoint_tag(step)} fails its checksums ({', '.join(bad)}): {then}"
        )


def newest_intact(directory: Path, log: Callable[[str], None] = print, below: str | None = None) -> int | None:
    """The step of the newest complete checkpoint, from `latest` (or below the tag `below`) down, whose files are all
    there at their sizes (a line for each one passed over); None when there is none to try, a CheckpointError when
    none of those tried is intact. A save cut off between its COMPLETE and `latest` counts (_unpointed)."""
    candidates = _candidates(directory, below)
    if not candidates:
        return None
    errors = []
    for tag in candidates:
        try:
            return complete_record(directory, tag)["step"]
        except CheckpointError as error:
            errors.append(error)
            log(f"corolla: passing over {directory / tag}: {error}")
    raise errors[0]


def first_candidate(directory: Path) -> int | None:
    """The step a start would try first to resume from, its files unchecked; None where there is no checkpoint."""
    tags = [tag for tag in _candidates(directory) if is_checkpoint_tag(tag)]
    return checkpoint_step(tags[0]) if tags else None


def _candidates(directory: Path, below: str | None = None) -> list[str]:
    """The checkpoint tags a start may resume from, the one to take first first: those a save cut off before `latest`
    named them, `latest`'s, then the older complete ones (or those older than `below`, alone, when given)."""
    latest = latest_tag(directory)
    complete, _ = complete_tags(directory)
    pointed = [] if latest is None else [latest]
    candidates = [*_unpointed(directory, complete, latest), *pointed] if below is None else []
    # Older than `latest`; every complete one when `latest` is no tag at all (garbled), lest none be tried.
    limit = below or (latest if latest is not None and is_checkpoint_tag(latest) else None)
    if latest is not None or below:
        candidates += [tag for tag in reversed(complete) if limit is None or tag < limit]
    return candidates


def _unpointed(directory: Path, complete: list[str], latest: str | None) -> list[str]:
    """The complete checkpoints, newest first, whose save was cut off after their COMPLETE and before `latest` named
    them: every one with no `latest` yet, else those newer than it whose COMPLETE was written after it (a checkpoint
    that a user pointed `latest` back past was written before)."""
    if latest is None:
        return complete[::-1]
    if not is_checkpoint_tag(latest):
        return []
    pointed = (directory / LATEST).stat().st_mtime_ns
    return [
        tag for tag in reversed(complete) if tag > latest and (directory / tag / COMPLETE).stat().st_mtime_ns >= pointed
    ]


def dangling_latest(directory: Path) -> str | None:
    """What is wrong with `latest` when it names no complete checkpoint (its tag garbled, or the checkpoint's record
    gone), in one line with the fix; None when it names one, is absent, or moved on while read (a training that runs
    saved a newer checkpoint and removed the one read)."""
    tag = latest_tag(directory)
    sound = tag is None or (is_checkpoint_tag(tag) and (directory / tag / COMPLETE).is_file())
    if sound or latest_tag(directory) != tag:  # read again after the check, as `latest` only ever moves on
        return None
    try:
        complete_record(directory, tag)
    except CheckpointError as error:
        return str(error)
    return None


def set_aside_newer(directory: Path, step: int) -> list[str]:
    """Points `latest` at `step`'s checkpoint, the one a start resumes from (0: none), and moves every complete one
    newer than it into SET_ASIDE, where the steps trained again cannot overwrite them; their paths there. A
    checkpoint passed over as damaged may only have been unreadable for a while, and one `latest` was pointed back past
    is someone's to delete."""
    if step and latest_tag(directory) != checkpoint_tag(step):  # first: `latest` never names a moved checkpoint
        point_latest(directory, checkpoint_tag(step))
    newer = [tag for tag in complete_tags(directory)[0] if tag > checkpoint_tag(step)]
    moved = []
    for tag in newer:
        target = directory / SET_ASIDE / tag
        copies = 1
        while target.exists():
            copies += 1
            target = directory / SET_ASIDE / f"{tag}.{copies}"
        target.parent.mkdir(exist_ok=True)
        (directory / tag).rename(target)
        moved.append(str(target))
    return moved


def remove_checkpoints(directory: Path, tags: Iterable[str]) -> None:
    """Removes checkpoints so that a reader (an export, a verification, while the run trains) finds each whole or
    gone, never half-deleted: each is renamed away at once, then deleted; what a removal cut short left goes too."""
    for tag in tags:
        with suppress(FileNotFoundError):
            (directory / tag).rename(directory / f".{tag}{REMOVING}{os.getpid()}")
    for doomed in directory.glob(f".*{REMOVING}*"):
        shutil.rmtree(doomed, ignore_errors=True)


REMOVING = ".removing-"


def latest_step(directory: Path) -> int | None:
    """The step of the newest complete checkpoint (`latest`'s, or one a save cut off before it named it), or None when
    there is none; checks its files are all there. Unlike newest_intact, a damaged one is an error, never passed over
    for an older one: an export or reshard takes the checkpoint it names, or none."""
    candidates = _candidates(directory)
    return complete_record(directory, candidates[0])["step"] if candidates else None


def step_record(directory: Path, step: int) -> dict:
    """COMPLETE of the checkpoint of `step`, which must be one."""
    if not (directory / checkpoint_tag(step) / COMPLETE).is_file():
        steps = ", ".join(str(step) for step in complete_steps(directory)) or "none"
        raise CheckpointError(f"{directory} has no complete checkpoint of step {step}: choose one of {steps}")
    return complete_record(directory, checkpoint_tag(step))


def write_complete(
    directory: Path, tag: str, record: dict, checksums: Mapping[str, str], leave_out: frozenset[str] = frozenset()
) -> None:
    """Marks `tag` complete (atomically): `record` (step, layouts) and every file with its size and SHA-256, but
    `leave_out`."""
    entries = list((directory / tag).rglob("*"))
    paths = [path for path in entries if path.is_file()]
    names = {str(path.relative_to(directory / tag)): path for path in paths}
    files = {
        name: {"bytes": path.stat().st_size, "sha256": checksums[name]}
        for name, path in sorted(names.items())
        if name not in {COMPLETE, *leave_out}
    }
    # Each rank flushed its files; the names of them, and of their folders, are flushed here, before COMPLETE says
    # the checkpoint is whole (the older ones it replaces go once it does).
    for folder in [*(path for path in entries if path.is_dir()), directory / tag, directory]:
        sync_directory(folder)
    write_atomically(directory / tag / COMPLETE, json.dumps({**record, "files": files}, indent=1) + "\n")


def point_latest(directory: Path, tag: str) -> None:
    for left in temporaries_of(directory, LATEST):  # by a writer killed halfway; the run has one writer (its lock)
        left.unlink(missing_ok=True)
    write_atomically(directory / LATEST, tag + "\n")
    with suppress(OSError):  # the run directory full where the checkpoints are not: no reason to fail the save
        write_atomically(directory.parent / LAST_SAVED, tag + "\n")


def check_not_lost(directory: Path, step: int) -> None:
    """A start that resumes from no checkpoint in `directory` (`step` 0) where the run saved some would train from
    scratch and drop the records of every step since: a CheckpointError. A scratch filesystem's purge, checkpoints
    deleted, or a `checkpoints` link to storage that is not mounted."""
    marker = directory.parent / LAST_SAVED
    if step or not marker.is_file():
        return
    raise CheckpointError(
        f"{directory} holds no complete checkpoint, yet the run saved {marker.read_text().strip()[:40]} there: restore "
        f"its checkpoints (from a copy, or mount the storage it links to), or remove {marker} to train from scratch "
        "there; nothing was trained"
    )


def complete_steps(directory: Path) -> list[int]:
    """The steps of the complete checkpoints in `directory`, oldest first."""
    return [checkpoint_step(tag) for tag in complete_tags(directory)[0]]


def complete_tags(directory: Path) -> tuple[list[str], list[str]]:
    """The checkpoint tags in `directory`, oldest first: those complete, and those a crashed save left incomplete.
    Nothing else is one: a folder of the user's (`step-best`, a copy `step-00000400.bak`) is neither resumed from nor
    removed."""
    tags = sorted(path.name for path in directory.glob("step-*") if is_checkpoint_tag(path.name) and path.is_dir())
    complete = [tag for tag in tags if (directory / tag / COMPLETE).is_file()]
    return complete, [tag for tag in tags if tag not in complete]
