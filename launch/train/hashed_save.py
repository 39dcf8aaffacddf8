"""torch.save that hashes the bytes as it writes them: a checkpoint file's SHA-256 without reading it again."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from launch import compat
from tokenizer.files import naming


class _HashingWriter(io.RawIOBase):
    def __init__(self, file: io.BufferedWriter) -> None:
        self.file = file
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def save_hashed(value: object, path: Path) -> str:
    """Writes `value` to `path` as torch.save does, and onto its disk before it returns: a checkpoint is marked complete
    (by rank 0, on another node) once every rank has returned, and what a node's page cache still held when it crashed
    would be lost (Lustre and GPFS clients cache writes as a local disk does). The SHA-256 of the file's bytes (hex). A
    write that fails (a full disk) raises its OSError, naming `path`; a Ctrl-C meanwhile, its KeyboardInterrupt."""
    with naming(path):
        try:
            with path.open("wb") as file:
                writer = _HashingWriter(file)
                torch.save(value, writer)
                file.flush()
                os.fsync(file.fileno())
        except RuntimeError as error:
            if underneath := compat.torch_save_cause(error):
                raise underneath from None
            raise
    return writer.digest.hexdigest()
