"""Language balancing: how many bytes of each language the tokenizer trainer sees.

Shares are decided over *content* (characters by default, so a Khmer sentence is not counted three times as big
as its English translation because its script needs 3 bytes a character), then turned into byte budgets that add
up to at most `tokenizer.sample_bytes` (less where the language sampled least for its size would otherwise be
repeated: repeating every language gains nothing). A language's budget may exceed its text: it is then repeated
(upsampled).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizer.config import Sampling, TokenizerConfig
from tokenizer.corpus import LanguageSize, iter_corpus
from tokenizer.corpus_scan import CorpusScan
from tokenizer.files import naming
from tokenizer.hygiene import HygieneStats, pieces


@dataclass(frozen=True)
class LanguageBudget:
    language: str
    share: float  # of content
    budget_bytes: float
    available_bytes: int

    @property
    def ratio(self) -> float:
        """Times each document is used on average: below 1 it is sub-sampled, above 1 repeated."""
        return self.budget_bytes / self.available_bytes


def content_shares(
    sizes: dict[str, LanguageSize], cfg: TokenizerConfig, weights: dict[str, float] | None = None
) -> dict[str, float]:
    """p(L) for every strategy but UniMax (whose shares depend on the budget). `weights` overrides the strategy."""
    content = {lang: float(size.content(cfg.size_measure)) for lang, size in sizes.items()}
    if weights is not None:
        raw = {lang: weights.get(lang, 0.0) for lang in content}
    elif cfg.sampling == Sampling.weights and set(cfg.weights) - set(content):
        unknown = ", ".join(sorted(set(cfg.weights) - set(content)))
        raise ValueError(f"tokenizer.weights names languages the corpus lacks ({unknown}): fix the codes or drop them")
    elif cfg.sampling == Sampling.natural:
        raw = content
    elif cfg.sampling in (Sampling.temperature, Sampling.parity):
        raw = {lang: c**cfg.alpha for lang, c in content.items()}
    elif cfg.sampling == Sampling.uniform:
        raw = dict.fromkeys(content, 1.0)
    elif cfg.sampling == Sampling.weights:
        raw = {lang: cfg.weights.get(lang, 0.0) for lang in content}
    else:
        raise ValueError(f"{cfg.sampling.value} shares depend on the budget: use budgets()")
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("every language has weight 0: give at least one corpus language a positive weight")
    return {lang: w / total for lang, w in raw.items()}


def _unimax_content(sizes: dict[str, LanguageSize], cfg: TokenizerConfig) -> dict[str, float]:
    """Equal content per language, none repeated more than `unimax_max_epochs`; bytes add up to the budget.

    Water-filling over a common content level u: content(L) = min(u, epochs * size(L)), smallest caps first.
    """
    measure, epochs = cfg.size_measure, cfg.unimax_max_epochs
    order = sorted(sizes, key=lambda lang: sizes[lang].content(measure))
    remaining_bytes = float(cfg.sample_bytes)
    content: dict[str, float] = {}
    for index, lang in enumerate(order):
        fair_level = remaining_bytes / sum(sizes[other].bytes_per_unit(measure) for other in order[index:])
        content[lang] = min(fair_level, epochs * sizes[lang].content(measure))
        remaining_bytes -= content[lang] * sizes[lang].bytes_per_unit(measure)
    # Every language repeated (a small corpus, every one at its cap): as for the other samplings, repeating them all
    # gains nothing, and the least repeated is used once.
    repeats = [content[lang] / sizes[lang].content(measure) for lang in order if sizes[lang].content(measure)]
    least = min(repeats, default=1.0)
    return {lang: level / least for lang, level in content.items()} if least > 1 else content


def _content_for_budget(shares: dict[str, float], sizes: dict[str, LanguageSize], cfg: TokenizerConfig):
    """Scales shares p(L) to content C * p(L) whose bytes, the sum of C * p(L) * bytes_per_unit(L), meet the budget.

    C stops where the least-sampled language is used exactly once: repeating every language gains nothing.
    """
    measure = cfg.size_measure
    bytes_per_share = sum(p * sizes[lang].bytes_per_unit(measure) for lang, p in shares.items())
    whole_corpus = max(sizes[lang].content(measure) / p for lang, p in shares.items() if p > 0)
    scale = min(cfg.sample_bytes / bytes_per_share, whole_corpus)
    return {lang: scale * p for lang, p in shares.items()}


def budgets(
    sizes: dict[str, LanguageSize], cfg: TokenizerConfig, weights: dict[str, float] | None = None
) -> list[LanguageBudget]:
    if cfg.sampling == Sampling.unimax and weights is None:
        content = _unimax_content(sizes, cfg)
    else:
        content = _content_for_budget(content_shares(sizes, cfg, weights), sizes, cfg)
    total = sum(content.values())
    return [
        LanguageBudget(lang, content[lang] / total, content[lang] * size.bytes_per_unit(cfg.size_measure), size.bytes)
        for lang, size in sorted(sizes.items())
        if content[lang] > 0
    ]


def format_budget_table(plan: list[LanguageBudget]) -> str:
    lines = [f"{'language':<10} {'share':>7} {'sampled MB':>11} {'corpus MB':>10} {'ratio':>7}"]
    for row in sorted(plan, key=lambda row: -row.budget_bytes):
        lines.append(
            f"{row.language:<10} {row.share:>7.2%} {row.budget_bytes / 1e6:>11.2f} "
            f"{row.available_bytes / 1e6:>10.2f} {row.ratio:>7.2f}"
        )
    total = sum(row.budget_bytes for row in plan)
    lines.append(f"{'total':<10} {'':>7} {total / 1e6:>11.2f} {sum(r.available_bytes for r in plan) / 1e6:>10.2f}")
    return "\n".join(lines)


class DocumentSampler:
    """Decides, document by document, how many copies of each go into the sample; deterministic for a seed."""

    def __init__(self, plan: list[LanguageBudget], seed: int) -> None:
        self._ratio = {row.language: row.ratio for row in plan}
        self._rng = {row.language: random.Random(f"{seed}:{row.language}") for row in plan}

    def copies(self, language: str) -> int:
        ratio = self._ratio.get(language, 0.0)
        if ratio == 0.0:
            return 0
        whole = int(ratio)
        return whole + (self._rng[language].random() < ratio - whole)

    def sample(self, documents: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
        for language, text in documents:
            for _ in range(self.copies(language)):
                yield language, text


def sample_sentences(scan: CorpusScan, plan: list[LanguageBudget], seed: int, path: Path) -> dict[str, int]:
    """Writes the sampled training text to `path`, one sentence a line; returns the bytes sampled per language."""
    sampler = DocumentSampler(plan, seed)
    sampled = dict.fromkeys(scan.languages, 0)
    documents = iter_corpus(scan.sources, HygieneStats(), "sampling")
    cut = ((language, piece) for language, text in documents for piece in pieces(text))
    with naming(path), path.open("w", encoding="utf-8") as sample:
        for language, text in sampler.sample(cut):
            for sentence in text.splitlines():
                sample.write(sentence + "\n")
            sampled[language] += len(text.encode("utf-8"))
    return sampled
