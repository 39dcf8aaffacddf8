"""Language balancing: shares follow each strategy's formula, budgets add up, the sampler delivers them."""

from __future__ import annotations

import pytest

from tokenizer.config import Sampling, SizeMeasure, TokenizerConfig
from tokenizer.corpus_scan import scan_corpus
from tokenizer.sampling import DocumentSampler, LanguageSize, budgets, content_shares, sample_sentences

# Latin at 1 byte a character, Khmer at 3, Chinese at 3: the content measure must see through the bytes.
SIZES = {
    "eng_Latn": LanguageSize(bytes=8_000_000, chars=8_000_000, documents=80_000),
    "khm_Khmr": LanguageSize(bytes=3_000_000, chars=1_000_000, documents=10_000),
    "zho_Hans": LanguageSize(bytes=1_500_000, chars=500_000, documents=20_000),
    "yor_Latn": LanguageSize(bytes=200_000, chars=200_000, documents=2_000),
}


def config(**overrides) -> TokenizerConfig:
    return TokenizerConfig(**{"sample_bytes": 2_000_000, **overrides})


def by_language(plan):
    return {row.language: row for row in plan}


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_temperature_shares_follow_size_to_the_alpha(alpha: float) -> None:
    shares = content_shares(SIZES, config(sampling=Sampling.temperature, alpha=alpha))
    norm = sum(size.chars**alpha for size in SIZES.values())
    for language, size in SIZES.items():
        assert shares[language] == pytest.approx(size.chars**alpha / norm, rel=1e-12)


def test_content_is_characters_by_default_and_bytes_on_request() -> None:
    by_chars = content_shares(SIZES, config(sampling=Sampling.natural))
    by_bytes = content_shares(SIZES, config(sampling=Sampling.natural, size_measure=SizeMeasure.bytes))
    assert by_chars["khm_Khmr"] == pytest.approx(1_000_000 / 9_700_000)
    assert by_bytes["khm_Khmr"] == pytest.approx(3_000_000 / 12_700_000)


@pytest.mark.parametrize("sampling", [Sampling.natural, Sampling.temperature, Sampling.uniform, Sampling.unimax])
def test_budgets_add_up_to_the_byte_budget(sampling: Sampling) -> None:
    plan = budgets(SIZES, config(sampling=sampling, unimax_max_epochs=100.0))
    assert sum(row.budget_bytes for row in plan) == pytest.approx(2_000_000)
    assert sum(row.share for row in plan) == pytest.approx(1.0)


@pytest.mark.parametrize("sampling", [Sampling.natural, Sampling.temperature, Sampling.uniform, Sampling.unimax])
def test_a_budget_beyond_the_corpus_never_repeats_every_language(sampling: Sampling) -> None:
    # unimax repeated every language its unimax_max_epochs times (4) on a small corpus.
    plan = budgets(SIZES, config(sampling=sampling, sample_bytes=10**9))
    assert min(row.ratio for row in plan) == pytest.approx(1.0)
    if sampling == Sampling.natural:
        assert sum(row.budget_bytes for row in plan) == pytest.approx(sum(s.bytes for s in SIZES.values()))


def test_uniform_gives_every_language_the_same_content_not_the_same_bytes() -> None:
    plan = by_language(budgets(SIZES, config(sampling=Sampling.uniform)))
    content = {lang: row.budget_bytes / SIZES[lang].bytes_per_unit(SizeMeasure.chars) for lang, row in plan.items()}
    assert len({round(c) for c in content.values()}) == 1
    assert plan["khm_Khmr"].budget_bytes == pytest.approx(3 * plan["eng_Latn"].budget_bytes)


def test_unimax_caps_repeats_and_spreads_the_rest_evenly() -> None:
    cfg = config(sampling=Sampling.unimax, unimax_max_epochs=2.0, sample_bytes=6_000_000)
    plan = by_language(budgets(SIZES, cfg))
    # Yoruba (200k chars) is capped at 2 epochs; the other three share the remaining bytes at one content level.
    assert plan["yor_Latn"].ratio == pytest.approx(2.0)
    level = (6_000_000 - 400_000) / (1 + 3 + 3)
    for language in ("eng_Latn", "khm_Khmr", "zho_Hans"):
        chars = plan[language].budget_bytes / SIZES[language].bytes_per_unit(SizeMeasure.chars)
        assert chars == pytest.approx(min(level, 2 * SIZES[language].chars))
    assert sum(row.budget_bytes for row in plan.values()) == pytest.approx(6_000_000)


def test_unimax_with_a_budget_beyond_every_cap_stops_at_the_caps() -> None:
    plan = budgets(SIZES, config(sampling=Sampling.unimax, unimax_max_epochs=1.0, sample_bytes=10**9))
    assert all(row.ratio == pytest.approx(1.0) for row in plan)


def test_explicit_weights_exclude_languages_without_weight() -> None:
    plan = by_language(budgets(SIZES, config(sampling=Sampling.weights, weights={"eng_Latn": 1.0, "yor_Latn": 3.0})))
    assert set(plan) == {"eng_Latn", "yor_Latn"}
    assert plan["yor_Latn"].share == pytest.approx(0.75)


def test_sampler_is_deterministic_for_a_seed() -> None:
    plan = budgets(SIZES, config())

    def draws(seed: int) -> list[int]:
        sampler = DocumentSampler(plan, seed)
        return [sampler.copies("yor_Latn") for _ in range(200)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


def test_sampled_bytes_match_the_plan_on_real_text(small_corpus, tmp_path) -> None:
    scan = scan_corpus(str(small_corpus))
    cfg = config(sampling=Sampling.temperature, alpha=0.3, sample_bytes=600_000)
    plan = budgets(scan.sizes, cfg)
    sampled = sample_sentences(scan, plan, seed=7, path=tmp_path / "sample.txt")
    assert (tmp_path / "sample.txt").stat().st_size == pytest.approx(sum(sampled.values()), rel=0.02)
    for row in plan:
        # Whole documents are drawn, so a budget is met up to sampling noise over a few hundred documents.
        assert sampled[row.language] == pytest.approx(row.budget_bytes, rel=0.15), row.language
    upsampled = [row for row in plan if row.ratio > 1]
    downsampled = [row for row in plan if row.ratio < 1]
    assert upsampled and downsampled


def test_scan_measures_characters_and_bytes(small_corpus) -> None:
    scan = scan_corpus(str(small_corpus))
    text = (small_corpus / "khm_Khmr.txt").read_text(encoding="utf-8")
    size = scan.sizes["khm_Khmr"]
    assert size.documents == 400
    assert size.chars == len(text) - text.count("\n")
    assert size.bytes == len(text.encode()) - text.count("\n")
