"""Tokenizer outputs: the names of shared files, and writing a file so that readers see the old contents or the new,
never a half-written file."""

from __future__ import annotations

import os
from pathlib import Path

ADDED_PIECES_FILE = "added_pieces.json"  # in an extended tokenizer (tokenizer/extend.py): how an embedding grows


def write_atomically(path: Path, data: bytes | str) -> None:
    """Writes `data` to a temporary sibling, flushes it to disk, and renames it over `path`."""
    # A plain open (not tempfile) so the file gets the usual umask permissions rather than 0600.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as file:
            file.write(data.encode("utf-8") if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
