"""What the plan needs to know of the data, as data preparation (launch/data/prepare.py) found it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataFacts:
    vocab_size: int  # the tokenizer's
    tokens_dir: str | None  # where the token files are; None: not built yet (a dry run)
    tokenizer_dir: str | None = None  # the tokenizer they were encoded with
