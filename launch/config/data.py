"""What a training job reads: the schema behind conf/data/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenizer.config import DEFAULT_SEED

# Beyond this the largest language is all there is (and tokens^alpha overflows a float).
MAX_ALPHA = 10.0


@dataclass
class DataConfig:
    """What the trainer reads and how.

    tokens_dir: the output_dir of a `corolla tokenizer encode`. None: `corpus` encoded with the job's tokenizer
    config, both built on first use in `cache_dir` and reused while their inputs are unchanged.
    tokenizer_dir: a trained tokenizer that encodes `corpus` instead (with init_from: the weights' own).
    weights: explicit per-language weights (normalised; languages left out get 0). Empty: p(L) ∝ tokens(L)^alpha over
    the training split's token counts (alpha=1: the natural mix, 0: uniform).
    validation_documents: per language, the last n documents are held out for validation; a language with n or fewer
    documents holds out all but its first, which it keeps for training.
    seed: the order of each language's sequences, reshuffled every epoch (launch/data/blend.py); the job's own seed
    draws the weights and trains the tokenizer.
    """

    tokens_dir: str | None = None
    corpus: str | None = None
    tokenizer_dir: str | None = None
    cache_dir: str = "runs/cache"
    weights: dict[str, float] | None = field(default_factory=dict)
    alpha: float = 1.0
    validation_documents: int = 50
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        # A corolla before per-language weights wrote none as null: the same blend as {}, not a change of it.
        self.weights = self.weights or {}
        if not 0 <= self.alpha <= MAX_ALPHA:
            raise ValueError(
                f"data.alpha={self.alpha} must lie in [0, {MAX_ALPHA:g}]: 0 uniform, 1 the natural mix, above 1 "
                "favouring the large languages"
            )
        if self.weights and self.alpha != DataConfig.alpha:
            raise ValueError(
                f"data.alpha={self.alpha:g} sets the mix only where data.weights do not, and they are given: drop "
                "data.alpha or data.weights"
            )
        if self.validation_documents < 0:
            raise ValueError(f"data.validation_documents={self.validation_documents} must be 0 or more")
        if self.tokens_dir is None and self.corpus is None:
            raise ValueError("set data.tokens_dir (encoded token files) or data.corpus (a corpus to encode)")
