"""What the plan needs to know of the data, as data preparation (launch/data/prepare.py) found it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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


class TokenizerChanged(ValueError):
    """Token files encoded with another tokenizer (`found`) than the one whose ids a run's checkpoints learnt
    (`trained`); the fix depends on whether they are the run's own (`run_tokens_dir`), encoded again in place."""

    def __init__(self, run_dir: Path, trained: str, tokens_dir: str, found: str, run_tokens_dir: str) -> None:
        if Path(run_tokens_dir).resolve() == Path(tokens_dir).resolve():
            fix = (
                f"they were encoded again in place: encode {tokens_dir} again with the run's tokenizer "
                f"({trained[:8]}) and overwrite=true where it still exists, or train them in a new run_dir"
            )
        else:
            fix = f"use the run's data (data.tokens_dir={run_tokens_dir}) or start a new run_dir"
        super().__init__(
            f"run_dir={run_dir} was trained on token files of tokenizer {trained[:8]}, those in {tokens_dir} were "
            f"encoded with {found[:8]}: {fix}"
        )
