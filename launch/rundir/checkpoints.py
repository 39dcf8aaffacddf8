"""Which checkpoints a run directory holds: the `latest` pointer and each checkpoint's COMPLETE record.

A checkpoint directory is complete when it holds COMPLETE (written last, atomically): its step, the layouts of its
parameter and RNG files, and every file with its size. This module reads and writes that record; what goes into
the files is launch/train/checkpoint.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

from launch.rundir.files import COMPLETE, LATEST, checkpoint_tag
from tokenizer.files import write_atomically


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names it and what to do."""


def latest_tag(directory: Path) -> str | None:
    pointer = directory / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def complete_record(directory: Path, tag: str) -> dict:
    """What COMPLETE says of checkpoint `tag` (step, layouts, files), its files checked to be all there."""
    fix = f"restore its files, or write the tag of an older complete checkpoint into {directory / LATEST}"
    try:
        record = json.loads((directory / tag / COMPLETE).read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{directory / LATEST} names {tag}, which is not a complete checkpoint: {fix}") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise CheckpointError(f"{directory / tag / COMPLETE} is not a checkpoint record: {fix}")
    for name, size in record.get("files", {}).items():
        path = directory / tag / name
        if not path.is_file() or path.stat().st_size != size:
            raise CheckpointError(f"checkpoint file {path} is missing or truncated: {fix}")
    return record


def latest_step(directory: Path) -> int | None:
    """The step of the newest complete checkpoint, or None when there is none; checks its files are all there."""
    tag = latest_tag(directory)
    return complete_record(directory, tag)["step"] if tag else None


def step_record(directory: Path, step: int) -> dict:
    return complete_record(directory, checkpoint_tag(step))


def write_complete(directory: Path, tag: str, record: dict, leave_out: frozenset[str] = frozenset()) -> None:
    """Marks `tag` complete (atomically): `record` (step, layouts) and every file with its size, but `leave_out`."""
    files = {str(p.relative_to(directory / tag)): p.stat().st_size for p in (directory / tag).rglob("*") if p.is_file()}
    for name in {COMPLETE, *leave_out}:
        files.pop(name, None)
    write_atomically(directory / tag / COMPLETE, json.dumps({**record, "files": files}, indent=1) + "\n")


def point_latest(directory: Path, tag: str) -> None:
    write_atomically(directory / LATEST, tag + "\n")


def complete_tags(directory: Path) -> tuple[list[str], list[str]]:
    """The checkpoint tags in `directory`, oldest first: those complete, and those a crashed save left incomplete."""
    tags = sorted(path.name for path in directory.glob("step-*") if path.is_dir())
    complete = [tag for tag in tags if (directory / tag / COMPLETE).is_file()]
    return complete, [tag for tag in tags if tag not in complete]
