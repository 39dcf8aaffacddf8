"""Token files: what the training data pipeline reads, a pair per corpus file and language (encode.py lays them out).

`<prefix>.bin` holds every document's token ids back to back, little-endian, uint16 when the vocabulary fits in
16 bits and uint32 otherwise. `<prefix>.idx` says where each document starts (all fields little-endian):

    bytes 0-7    magic b"CRLTIDX\\0"
    bytes 8-11   format version, uint32 (1)
    bytes 12-15  dtype code of the .bin, uint32: 1 = uint16, 2 = uint32
    bytes 16-23  document count N, uint64
    bytes 24-    N + 1 document start offsets in tokens, int64: offsets[0] = 0, offsets[N] = tokens in the .bin;
                 document i is tokens[offsets[i]:offsets[i + 1]]

The 24-byte header keeps the offsets 8-byte aligned, so both files can be memory-mapped as they are.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

MANIFEST_VERSION = 2  # of manifest.json; 1: a single pair per language
MANIFEST_NAME = "manifest.json"  # above the pairs: each language's pairs and token counts, the tokenizer's fingerprint
MAGIC = b"CRLTIDX\0"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQ")
DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
OFFSET_DTYPE = np.dtype("<i8")


def token_dtype(vocab_size: int) -> np.dtype:
    if not 0 < vocab_size <= 1 << 32:
        raise ValueError(f"vocab_size={vocab_size} cannot be stored in token files (1 to 2**32)")
    return DTYPES[1] if vocab_size <= 1 << 16 else DTYPES[2]


def token_file_paths(prefix: str | Path) -> tuple[Path, Path]:
    """The (.bin, .idx) pair of `prefix`, e.g. out/fra_Latn -> out/fra_Latn.bin, out/fra_Latn.idx."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _sync(handle: BinaryIO) -> None:
    """Flushes to disk, so that a crash after the rename cannot leave a renamed but empty file."""
    handle.flush()
    os.fsync(handle.fileno())


class TokenFileWriter:
    """Writes a token file pair under temporary names; `finish()` renames them into place.

    Used as a context manager, the temporaries are removed unless `finish()` was called, so an interrupted or
    failed write never leaves anything under the final names.
    """

    def __init__(self, prefix: str | Path, vocab_size: int) -> None:
        self.bin_path, self.idx_path = token_file_paths(prefix)
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        self.documents = 0
        self.num_tokens = 0
        self._document_ends: list[np.ndarray] = []
        self._finished = False
        self._bin = _temporary(self.bin_path).open("wb")

    def add_documents(self, tokens: Sequence[int] | np.ndarray, lengths: Sequence[int] | np.ndarray) -> None:
        """Appends len(lengths) documents whose ids lie back to back in `tokens`."""
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if (lengths < 0).any() or int(lengths.sum()) != tokens.size:
            raise ValueError(
                f"document lengths must be non-negative and add up to the {tokens.size} tokens given "
                f"(they add up to {int(lengths.sum())})"
            )
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {tokens.min()}..{tokens.max()}")
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).data)
        self._document_ends.append(self.num_tokens + np.cumsum(lengths))
        self.documents += lengths.size
        self.num_tokens += tokens.size

    def finish(self) -> None:
        """Publishes the pair: .bin first, so that a complete .idx never describes a missing or stale .bin."""
        if self._finished:
            raise ValueError(f"token file {self.bin_path} was already finished")
        _sync(self._bin)
        self._bin.close()
        offsets = np.concatenate([np.zeros(1, np.int64), *self._document_ends]).astype(OFFSET_DTYPE)
        dtype_code = next(code for code, dtype in DTYPES.items() if dtype == self.dtype)
        with _temporary(self.idx_path).open("wb") as idx:
            idx.write(HEADER.pack(MAGIC, FORMAT_VERSION, dtype_code, self.documents))
            idx.write(offsets.data)
            _sync(idx)
        os.replace(_temporary(self.bin_path), self.bin_path)
        os.replace(_temporary(self.idx_path), self.idx_path)
        self._finished = True

    def abort(self) -> None:
        self._bin.close()
        for path in (self.bin_path, self.idx_path):
            _temporary(path).unlink(missing_ok=True)

    def __enter__(self) -> TokenFileWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self._finished:
            self.abort()


class TokenFile:
    """A finished token file pair, memory-mapped: `document(i)` reads nothing until its tokens are used."""

    def __init__(self, prefix: str | Path) -> None:
        self.bin_path, self.idx_path = token_file_paths(prefix)
        self.dtype, count = self._read_header()
        self.offsets = np.memmap(self.idx_path, dtype=OFFSET_DTYPE, mode="r", offset=HEADER.size, shape=(count + 1,))
        self.tokens = self._map_tokens()

    def _invalid(self, path: Path, why: str) -> ValueError:
        return ValueError(f"token file {path} is {why}: re-run `corolla tokenizer encode` to rewrite it")

    def _read_header(self) -> tuple[np.dtype, int]:
        if not self.idx_path.is_file():
            raise self._invalid(self.idx_path, "missing")
        size = self.idx_path.stat().st_size
        with self.idx_path.open("rb") as idx:
            header = idx.read(HEADER.size)
        if len(header) < HEADER.size:
            raise self._invalid(self.idx_path, f"truncated ({size} bytes, shorter than its header)")
        magic, version, dtype_code, count = HEADER.unpack(header)
        if magic != MAGIC:
            raise self._invalid(self.idx_path, "not a corolla token index (bad magic bytes)")
        if version != FORMAT_VERSION:
            raise self._invalid(self.idx_path, f"format version {version}; this corolla reads {FORMAT_VERSION}")
        if dtype_code not in DTYPES:
            raise self._invalid(self.idx_path, f"damaged (unknown dtype code {dtype_code})")
        expected = HEADER.size + (count + 1) * OFFSET_DTYPE.itemsize
        if size != expected:
            raise self._invalid(
                self.idx_path, f"truncated or damaged ({size} bytes, {count} documents need {expected})"
            )
        return DTYPES[dtype_code], count

    def _map_tokens(self) -> np.ndarray:
        if not self.bin_path.is_file():
            raise self._invalid(self.bin_path, "missing")
        first, last = int(self.offsets[0]), int(self.offsets[-1])
        size = self.bin_path.stat().st_size
        if first != 0 or size != last * self.dtype.itemsize:
            raise self._invalid(
                self.bin_path, f"{size} bytes, but its index {self.idx_path.name} describes {last} tokens"
            )
        if last == 0:
            return np.empty(0, self.dtype)  # numpy cannot map an empty file
        return np.memmap(self.bin_path, dtype=self.dtype, mode="r")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return self.tokens.size

    def start(self, i: int) -> int:
        """Where document i starts in the .bin (its token count for i = len(self)); an offset out of order with its
        neighbours is a damaged index (checked here, where it is read, not over the whole index at every open)."""
        first = max(i - 1, 0)
        around = [int(offset) for offset in self.offsets[first : i + 2]]
        if around != sorted(around):
            starts = ", ".join(f"{document} at {offset}" for document, offset in enumerate(around, first))
            raise self._invalid(self.idx_path, f"damaged (documents start out of order: {starts})")
        return int(self.offsets[i])

    def document(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} out of range: {self.idx_path} holds {len(self)}")
        return self.tokens[self.start(i) : self.start(i + 1)]
