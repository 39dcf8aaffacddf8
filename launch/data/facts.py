"""What the plan needs to know of the data, as data preparation (launch/data/prepare.py) found it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataFacts:
    vocab_size: int  # the tokenizer's
    tokens_dir: str | None  # where the token files are; None: not built yet (a dry run)
    tokenizer_dir: str | None = None  # the tokenizer they were encoded with
    tokenizer_fingerprint: str | None = None  # that tokenizer's, as their manifest records it
    # Per language, the held-out samples of seq_length + 1 tokens that validation may use, at most train.eval_samples
    # (none: no validation, or a dry run without data), and, where the tokenizer is at hand, the bytes of text each of
    # them predicts: for bits per byte (corpus.py).
    validation_samples: dict[str, int] = field(default_factory=dict)
    validation_sample_bytes: dict[str, list[int]] = field(default_factory=dict)
    # With init_from and a tokenizer that extends the weights' one: the vocabulary the embedding grows from.
    grown_from_vocab: int = 0
