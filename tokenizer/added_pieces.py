"""added_pieces.json, in a tokenizer that `corolla tokenizer extend` made: its base, and how each added piece reads in
it (light: the ranks that grow an embedding read it, and load no tokenizer library)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizer.files import ADDED_PIECES_FILE, read_json

ADDED_PIECES_FIX = "extend the base tokenizer again (corolla tokenizer extend)"


@dataclass(frozen=True)
class AddedPieces:
    """An extended tokenizer's record of its base (added_pieces.json): whose extension it is, and each added id's
    text as the base encodes it (where a grown embedding's new row starts)."""

    base_fingerprint: str
    base_vocab_size: int
    decompositions: dict[int, list[int]]

    def write(self, directory: Path) -> None:
        record = {**asdict(self), "decompositions": {str(i): pieces for i, pieces in self.decompositions.items()}}
        (directory / ADDED_PIECES_FILE).write_text(json.dumps(record) + "\n")

    @classmethod
    def read(cls, directory: Path) -> AddedPieces:
        """A one-line ValueError naming the file when it is missing or not one corolla wrote."""
        path = directory / ADDED_PIECES_FILE
        if not path.is_file():
            raise ValueError(f"{path} is missing: {ADDED_PIECES_FIX}")
        record = read_json(path, ADDED_PIECES_FIX)
        try:
            decompositions = {int(i): [int(piece) for piece in ids] for i, ids in record["decompositions"].items()}
            return cls(str(record["base_fingerprint"]), int(record["base_vocab_size"]), decompositions)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(f"{path} is not the record of an extension corolla wrote: {ADDED_PIECES_FIX}") from None
