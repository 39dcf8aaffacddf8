"""The JSON-lines files of a run directory (metrics, validation): appended a record at a time by rank 0, read by
`corolla status` while the run may be writing.

A file's records are appended in step order: a resumed launch first drops the records of the steps it redoes
(keep_steps_up_to), so that its last lines hold its last steps. What wants only those (`corolla status`, a resume that
redoes no step, the records MLflow lacks) reads the file from its end, as far as it needs: a run of a million steps
writes 160 MB of them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tokenizer.files import lines_from_end, write_atomically


def append_record(path: Path, record: dict) -> None:
    """Appends a line; after a line cut short by a crash mid-write, on a line of its own."""
    line = (json.dumps(record) + "\n").encode()
    with path.open("a+b") as file:
        if file.seek(0, os.SEEK_END):
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                line = b"\n" + line
        file.write(line)


def _objects(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSON-lines file, a line at a time; a line cut short by a crash mid-write is skipped."""
    if not path.is_file():
        return
    with path.open("rb") as file:
        for line in file:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def read_jsonl(path: Path) -> list[dict]:
    """The records (JSON objects) of a JSON-lines file; a line cut short by a crash mid-write is skipped."""
    return list(_objects(path))


def _figures(value: object) -> bool:
    """A number, or a mapping (per language) of numbers: what corolla's step and validation records hold."""
    if isinstance(value, dict):
        return all(_figures(item) for item in value.values())
    return type(value) in (int, float)


def _is_step_record(record: object) -> bool:
    """A record with a whole-number step that holds figures only: corolla's; anything else is passed over."""
    return isinstance(record, dict) and type(record.get("step")) is int and _figures(record)


def step_record(line: bytes) -> dict | None:
    """A line's step record; None for a line cut short by a crash mid-write, or that holds none of corolla's."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if _is_step_record(record) else None


def last_record_per_step(path: Path) -> list[dict]:
    """A restarted run appends the steps it redoes again: the last record of each step wins. Sorted by step; a record
    without a whole-number step, or holding anything but figures, is none of corolla's, and passed over."""
    by_step = {record["step"]: record for record in _objects(path) if _is_step_record(record)}
    return [by_step[step] for step in sorted(by_step)]


def last_value_per_step(path: Path, key: str) -> tuple[list[int], list]:
    """The steps and one figure of each step's last record, as last_record_per_step orders them, the file read a
    line at a time: what a chart of a run of a million steps holds is two lists, not a million records."""
    by_step = {record["step"]: record[key] for record in _objects(path) if _is_step_record(record) and key in record}
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


def _from_end(file: BinaryIO) -> Iterator[tuple[int, dict]]:
    """The step records of a file, the last written first, each with where the line after it starts."""
    for start, line in lines_from_end(file):
        if (record := step_record(line)) is not None:
            yield start + len(line) + 1, record


def last_records(path: Path, count: int) -> list[dict]:
    """The records of the last `count` steps, as last_record_per_step ends, read from the file's end."""
    if not path.is_file():
        return []
    by_step: dict[int, dict] = {}
    with path.open("rb") as file:
        for _, record in _from_end(file):
            if len(by_step) == count:
                break
            by_step.setdefault(record["step"], record)  # of a step written twice, the last record
    return [by_step[step] for step in sorted(by_step)]


def record_of_step(path: Path, step: int) -> dict | None:
    """The last record of `step`, the file read from its end as far as that step; None where it holds none."""
    if not path.is_file():
        return None
    with path.open("rb") as file:
        found = next((record for _, record in _from_end(file) if record["step"] <= step), None)
    return found if found is not None and found["step"] == step else None


def offset_after(file: BinaryIO, step: int) -> int:
    """Where the lines after the last record of a step up to `step` start (0 where none is), read from the file's
    end: the records of the steps after `step` follow."""
    return next((end for end, record in _from_end(file) if record["step"] <= step), 0)


def keep_steps_up_to(path: Path, step: int) -> list[dict]:
    """Drops the records after `step` (those a resumed launch is about to redo), keeping the last of each step;
    returns those dropped, in step order. Whole or not at all: the file is replaced, never cut mid-way; and only
    where a record is to go (after a crash between checkpoints): a resume from the step a launch stopped at with a
    checkpoint reads the last line alone."""
    last = last_records(path, 1)
    if not last or last[0]["step"] <= step:
        return []
    records = last_record_per_step(path)
    kept = [record for record in records if record["step"] <= step]
    write_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))
    return records[len(kept) :]
