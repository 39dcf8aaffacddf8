"""What the plan needs to know of the data, as data preparation (launch/data/prepare.py) found it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataFacts:
    vocab_size: int  # the tokenizer's
    tokens_dir: str | None  # where the token files are; None: not built yet (a dry run)
    tokenizer_dir: str | None = None  # the tokenizer they were encoded with
    # Bytes of text per predicted token of each language's validation samples: for bits per byte (corpus.py).
    validation_bytes_per_token: dict[str, float] = field(default_factory=dict)
    # With init_from and a tokenizer that extends the weights' one: the vocabulary the embedding grows from.
    grown_from_vocab: int = 0
