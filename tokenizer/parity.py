"""Parity sampling, corolla's own balancing: re-weight languages by what they pay per sentence, retrain, repeat.

Round 1 samples by temperature (alpha). Each later round multiplies every language's share by its premium
(tokens / reference tokens on the tuning half of a parallel set) to the power `parity_strength`, so expensive
languages get more of the vocabulary. A round is kept only if it lowers max + mean premium while the total token
count over all languages stays below round 1's by `parity_token_margin` (balance must not be bought by compressing
everything worse, and the margin keeps that true on sentences the search did not see);
a round that does not improve is retried from the best one with half the step (twice at most), then the search
stops. The held-out half reports how well the result generalises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tokenizer.config import REFERENCE_KEY, TokenizerConfig
from tokenizer.corpus import CorpusError
from tokenizer.evaluate import Parallel, language_stats, load_parallel, split_parallel, summarize
from tokenizer.files import Log
from tokenizer.loading import load_tokenizer
from tokenizer.sampling import LanguageBudget, LanguageSize, budgets, content_shares, format_budget_table

# A round that does not improve is retried from the best one with half the step, this many times at most.
MAX_HALVINGS = 2
TrainRound = Callable[[list[LanguageBudget]], tuple[bytes, dict[str, int]]]


@dataclass
class ParityRound:
    round: int
    plan: list[LanguageBudget]
    model: bytes
    sampled: dict[str, int]
    premiums: dict[str, float]
    summary: dict

    @property
    def score(self) -> float:
        return self.summary["max_premium"] + self.summary["mean_premium"]


@dataclass
class ParityResult:
    plan: list[LanguageBudget]
    model: bytes
    sampled: dict[str, int]
    history: dict = field(default_factory=dict)


def _measure(
    model: bytes, parallel: dict[str, list[str]], reference: str, workdir: Path, suffix: str
) -> tuple[dict, dict]:
    path = workdir / f"parity-round{suffix}"
    path.write_bytes(model)
    stats = language_stats(load_tokenizer(path), parallel, reference)
    return stats, summarize(stats, reference)


def _reweight(weights: dict[str, float], premiums: dict[str, float], strength: float) -> dict[str, float]:
    return {lang: w * premiums.get(lang, 1.0) ** strength for lang, w in weights.items()}


def _improves(trial: ParityRound, best: ParityRound | None, token_limit: float) -> bool:
    if best is None:
        return True
    return trial.score < best.score - 1e-3 and trial.summary["total_tokens"] <= token_limit


def _round_record(trial: ParityRound, kept: bool) -> dict:
    summary = trial.summary
    return {
        "round": trial.round,
        "kept": kept,
        "max_premium": summary["max_premium"],
        "mean_premium": summary["mean_premium"],
        "total_tokens": summary["total_tokens"],
        "shares": {row.language: row.share for row in trial.plan},
    }


def parity_search(
    sizes: dict[str, LanguageSize],
    cfg: TokenizerConfig,
    train_round: TrainRound,
    workdir: Path,
    log: Log = print,
    measured: frozenset[str] | None = None,
    suffix: str = ".model",
) -> ParityResult:
    """`measured`: the languages whose premiums are balanced (default: those sampled), the reference among them;
    `suffix`: what the models `train_round` returns are, SentencePiece's `.model` or a `.json` tokenizer."""
    reference = cfg.reference_language
    tune, held_out = _parallel_halves(cfg, frozenset(sizes) if measured is None else measured)
    log(f"parity: tuning on {len(tune)} languages x {len(tune[reference])} sentences of {cfg.parity_set}")
    if untuned := sorted(set(sizes) - set(tune)):
        log(f"parity: {cfg.parity_set} has no sentences of {', '.join(untuned)}: their shares are sampled, not tuned")
    best: ParityRound | None = None
    token_limit = 0.0  # from round 1's total (temperature sampling): later rounds may not compress worse overall
    step, halvings = cfg.parity_strength, 0
    weights = content_shares(sizes, cfg)
    rounds = []
    for number in range(1, cfg.parity_rounds + 1):
        plan = budgets(sizes, cfg, weights)
        if number == 1:
            log("sampling budget per language, round 1 (before training):\n" + format_budget_table(plan))
        model, sampled = train_round(plan)
        stats, summary = _measure(model, tune, reference, workdir, suffix)
        trial = ParityRound(
            number, plan, model, sampled, {lang: row["premium"] for lang, row in stats.items()}, summary
        )
        token_limit = token_limit or summary["total_tokens"] * (1 - cfg.parity_token_margin)
        kept = _improves(trial, best, token_limit)
        rounds.append(_round_record(trial, kept))
        log(
            f"parity round {number}: max premium {summary['max_premium']:.3f} ({summary['max_premium_language']}), "
            f"mean {summary['mean_premium']:.3f}, total tokens {summary['total_tokens']}"
            + ("" if kept else " - no better")
        )
        if kept:
            best = trial
        elif halvings < MAX_HALVINGS:
            step, halvings = step / 2, halvings + 1
        else:
            break
        # Backtracking: after a round that did not help, step again from the best round, half as far.
        weights = _reweight({row.language: row.share for row in best.plan}, best.premiums, step)
    assert best is not None
    log(f"parity: keeping round {best.round}; its budget per language:\n" + format_budget_table(best.plan))
    history = {"rounds": rounds, "kept_round": best.round, "tune_lines": len(tune[reference])}
    if held_out and held_out.get(reference):
        _, held_summary = _measure(best.model, held_out, reference, workdir, suffix)
        history["held_out"] = {key: held_summary[key] for key in ("max_premium", "mean_premium", "total_tokens")}
        log(f"parity: held-out max premium {held_summary['max_premium']:.3f}, mean {held_summary['mean_premium']:.3f}")
    return ParityResult(best.plan, best.model, best.sampled, history)


def _parallel_halves(cfg: TokenizerConfig, measured: frozenset[str]) -> tuple[Parallel, Parallel]:
    """The parallel set's sentences of the `measured` languages, split into the half the rounds are tuned on and the
    half held out to check the kept round."""
    reference = cfg.reference_language
    if reference not in measured:
        raise CorpusError(
            f"parity sampling measures premiums against {reference}, which the corpus lacks: "
            "add it or set tokenizer.reference_language"
        )
    parallel = load_parallel(cfg.parity_set, reference, REFERENCE_KEY)
    tune, held_out = (
        {lang: lines for lang, lines in half.items() if lang in measured}
        for half in split_parallel(parallel, cfg.parity_tune_fraction)
    )
    if len(tune) < 2:
        raise CorpusError(
            f"parallel set {cfg.parity_set} shares no language with the corpus besides {reference}: "
            "parity needs parallel sentences of the corpus's languages"
        )
    return tune, held_out
