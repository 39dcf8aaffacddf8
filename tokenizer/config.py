"""Typed configuration of the tokenizer commands (the schema behind `conf/tokenizer/*.yaml`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING


class Sampling(Enum):
    natural = "natural"
    temperature = "temperature"
    uniform = "uniform"
    unimax = "unimax"
    weights = "weights"
    parity = "parity"


class ModelType(Enum):
    bpe = "bpe"
    unigram = "unigram"


class SizeMeasure(Enum):
    bytes = "bytes"
    chars = "chars"


# The knobs that only some sampling methods read, and which (tokenizer.weights: sampling=weights, checked below).
SAMPLING_KNOBS = {
    "alpha": (Sampling.temperature, Sampling.parity),
    "unimax_max_epochs": (Sampling.unimax,),
    **dict.fromkeys(
        ["parity_set", "parity_rounds", "parity_strength", "parity_tune_fraction", "parity_token_margin"],
        (Sampling.parity,),
    ),
}
MAX_THREADS = 1024  # the most SentencePiece trains on
DEFAULT_SAMPLE_BYTES = 40_000_000
REFERENCE_KEY = "tokenizer.reference_language"  # the override that sets TokenizerConfig.reference_language


@dataclass
class TokenizerConfig:
    model_type: ModelType = ModelType.bpe
    vocab_size: int = 64000
    sampling: Sampling = Sampling.temperature
    alpha: float = 0.3
    # How a language's size is measured for balancing: UTF-8 bytes penalise scripts that need 3 bytes a character.
    size_measure: SizeMeasure = SizeMeasure.chars
    # Total UTF-8 bytes handed to SentencePiece; bounds its memory whatever the corpus size.
    sample_bytes: int = DEFAULT_SAMPLE_BYTES
    # UniMax: the most times a language's text may be repeated to reach its share.
    unimax_max_epochs: float = 4.0
    # Explicit per-language weights for sampling=weights (languages left out get weight 0).
    weights: dict[str, float] = field(default_factory=dict)
    # Parity sampling: a parallel directory, the rounds, and how hard each round pushes.
    parity_set: str | None = None
    parity_rounds: int = 8
    parity_strength: float = 2.0
    # Fraction of the parallel set's lines used for tuning; the rest is held out for reporting.
    parity_tune_fraction: float = 0.5
    # Later rounds must use this fraction fewer tokens than round 1 in total, on the tuning half.
    parity_token_margin: float = 0.002
    reference_language: str = "eng_Latn"
    character_coverage: float = 0.9995
    language_tags: bool = False
    # The tensor parallelism metadata.json's padded vocabulary is given for (128 x TP: tokenizer/vocab.py). It says
    # nothing about the tokenizer itself: a training run pads for the TP it runs with.
    tensor_parallel: int = 1
    threads: int = 0  # 0: every core

    def __post_init__(self) -> None:
        if self.vocab_size < 256 + 4:
            raise ValueError(f"tokenizer.vocab_size={self.vocab_size} is too small: byte fallback alone needs 260")
        if self.sample_bytes <= 0:
            raise ValueError("tokenizer.sample_bytes must be positive")
        if self.sampling in (Sampling.temperature, Sampling.parity) and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"tokenizer.alpha={self.alpha} must be within [0, 1]")
        if self.sampling == Sampling.weights and not self.weights:
            raise ValueError("tokenizer.sampling=weights needs '+tokenizer.weights={fra_Latn: 2, eng_Latn: 1, ...}'")
        bad = sorted(
            language for language, weight in self.weights.items() if not (math.isfinite(weight) and weight >= 0)
        )
        if bad:
            raise ValueError(f"tokenizer.weights of {', '.join(bad)} must be finite and 0 or more")
        if self.weights and self.sampling != Sampling.weights:
            raise ValueError(
                f"tokenizer.weights are read by tokenizer.sampling=weights alone, not {self.sampling.value}: add "
                "tokenizer.sampling=weights or drop the weights"
            )
        if self.sampling == Sampling.parity and not self.parity_set:
            raise ValueError("tokenizer.sampling=parity needs tokenizer.parity_set=DIR (a parallel directory)")
        if not self.unimax_max_epochs > 0:  # NaN too
            raise ValueError(f"tokenizer.unimax_max_epochs={self.unimax_max_epochs} must be positive")
        if not 0.0 <= self.parity_token_margin < 1.0:
            raise ValueError("tokenizer.parity_token_margin must be within [0, 1)")
        if not 0.0 < self.parity_tune_fraction <= 1.0:
            raise ValueError("tokenizer.parity_tune_fraction must be within (0, 1]")
        if not 0 < self.parity_strength < math.inf:  # NaN too
            raise ValueError(f"tokenizer.parity_strength={self.parity_strength} must be positive and finite")
        if not 0 <= self.threads <= MAX_THREADS:
            raise ValueError(
                f"tokenizer.threads={self.threads} must be 0 (every core) or a count up to {MAX_THREADS}, "
                "SentencePiece's most"
            )
        if self.parity_rounds < 1:
            raise ValueError("tokenizer.parity_rounds must be at least 1")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ValueError("tokenizer.character_coverage must be within (0, 1]")
        if self.tensor_parallel < 1:
            raise ValueError("tokenizer.tensor_parallel must be at least 1")


# SentencePiece's random generator takes an unsigned 32-bit seed.
MAX_SEED = 2**32 - 1
DEFAULT_SEED = 1234  # every command's, conf/*.yaml's too


def check_seed(seed: int) -> None:
    """A seed that every RNG a run seeds takes (SentencePiece's, torch's): another failed midway, with a traceback."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed} is out of range: give a seed from 0 to {MAX_SEED}")


@dataclass
class TokenizerTrainJob:
    tokenizer: TokenizerConfig = MISSING
    corpus: str = MISSING
    output_dir: str = MISSING
    seed: int = DEFAULT_SEED
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_seed(self.seed)


# What tokenizer extend reads of the tokenizer's parity settings whatever its sampling: it measures the premiums that
# choose the languages to extend on the parallel set's tuning half.
EXTEND_READS = frozenset({"parity_set", "parity_tune_fraction"})


@dataclass
class TokenizerExtendJob:
    """`corolla tokenizer extend`: pieces for the corpus languages `base` serves badly, appended to its vocabulary.

    `tokenizer` says how the pieces are trained (sampling, parity_set, reference_language, sample_bytes, ...); its
    vocab_size is `added_pieces`'s. Languages: those named, else those whose premium under `base` on the tuning half
    of tokenizer.parity_set is above premium_threshold.
    """

    base: str = MISSING
    corpus: str = MISSING
    output_dir: str = MISSING
    tokenizer: TokenizerConfig = MISSING
    added_pieces: int = 8000  # the vocabulary trained for the added languages; pieces base has already are skipped
    premium_threshold: float = 1.45
    languages: list[str] = field(default_factory=list)
    seed: int = DEFAULT_SEED
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.added_pieces < 260:
            raise ValueError(f"added_pieces={self.added_pieces} is too small: the pieces' own byte fallback needs 260")
        if not self.premium_threshold >= 1.0:  # NaN too
            raise ValueError(f"premium_threshold={self.premium_threshold} must be at least 1 (the reference's own)")
        if self.tokenizer.model_type != ModelType.bpe:
            raise ValueError(
                f"tokenizer.model_type={self.tokenizer.model_type.value}: tokenizer extend appends BPE pieces to a BPE "
                "base (a unigram vocabulary's pieces are not all reachable by its merges): use tokenizer.model_type=bpe"
            )
        if self.tokenizer.language_tags:
            raise ValueError(
                "tokenizer.language_tags=true: tokenizer extend appends trained pieces only, never language tags: "
                "drop it (the base keeps the tags it has)"
            )


@dataclass
class TokenizerEvaluateJob:
    tokenizer: Any = MISSING  # one path, or a list of paths to compare
    parallel: str = "${sample_data:parallel-dev}"
    output_dir: str = MISSING
    reference: str = "eng_Latn"
    # Optional display names, one per tokenizer; defaults to the directory or file names.
    names: list[str] = field(default_factory=list)
    overwrite: bool = False  # replace a report of other tokenizers in output_dir

    def __post_init__(self) -> None:
        # A path Hydra read as a number (`tokenizer=5`, `tokenizer=[2024,2025]`) is still a path.
        paths = self.tokenizer if isinstance(self.tokenizer, list) else [self.tokenizer]
        self.tokenizer = [str(path) for path in paths]
        if not self.tokenizer:
            raise ValueError("tokenizer=[] names no tokenizer: pass tokenizer=DIR or tokenizer=[A,B]")
        if self.names and len(self.names) != len(self.tokenizer):
            raise ValueError(
                f"names= has {len(self.names)} entries for {len(self.tokenizer)} tokenizers: give one each"
            )


@dataclass
class TokenizerEncodeJob:
    tokenizer: str = MISSING
    corpus: str = MISSING
    output_dir: str = MISSING
    append_eos: bool = True
    workers: int = 0  # 0: every core
    overwrite: bool = False  # token files of another tokenizer (or append_eos) in output_dir are encoded anew
