"""Measure tokenizer parity on a parallel set: tokens per language relative to a reference language, and friends.

A parallel directory holds `<lang>.txt` files where line i is the same sentence in every file (FLORES-200 style).
The premium of a language is its token count divided by the reference language's on the same sentences:
1.0 is parity, 2.0 means the language pays twice as many tokens for the same content.
"""

from __future__ import annotations

import io
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from matplotlib.figure import Figure

from tokenizer.corpus import check_language_code, unread_format
from tokenizer.files import REPORT_FILE, not_a_directory, write_atomically
from tokenizer.loading import TextTokenizer, load_tokenizer

Parallel = dict[str, list[str]]
LanguageStats = dict[str, float | int | None]

# Scripts written without spaces between words: whitespace-separated "words" there are phrases or whole sentences.
UNSPACED_SCRIPTS = frozenset({"Hans", "Hant", "Jpan", "Thai", "Laoo", "Khmr", "Mymr", "Tibt"})
PREMIUM_THRESHOLDS = (1.5, 2.0)


class ParallelError(ValueError):
    """Bad parallel-set input; the message names the file and the fix."""


def load_parallel(parallel_dir: str | Path, reference: str = "eng_Latn", reference_key: str = "reference") -> Parallel:
    """Reads every `<lang>.txt` of `parallel_dir` (other files such as MANIFEST.tsv are ignored), sorted by code.
    `reference_key`: the override that sets `reference`, named in the error when it has no file."""
    directory = Path(parallel_dir)
    if problem := not_a_directory(directory):
        raise ParallelError(
            f"parallel directory {directory} {problem}: pass a directory of <lang>.txt files "
            "where line i is the same sentence in every file"
        )
    paths = sorted(p for p in directory.glob("*.txt") if p.is_file())
    for path in sorted(directory.iterdir()):
        if path.is_file() and (problem := unread_format(path, compressions=())):  # a parallel set is plain text
            raise ParallelError(f"parallel file {path} {problem}")
    if not paths:
        raise ParallelError(
            f"parallel directory {directory} has no <lang>.txt files: add one per language, "
            "line i the same sentence in every file"
        )
    parallel = {check_language_code(p.stem, str(p)): _read_lines(p) for p in paths}
    if reference not in parallel:
        raise ParallelError(
            f"reference language {reference} has no file in {directory}: add {reference}.txt "
            f"or pass {reference_key}= one of {', '.join(parallel)}"
        )
    _check_line_counts(parallel, reference, directory)
    return parallel


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark (Windows tools) is no part of the first line
    except UnicodeDecodeError as error:
        raise ParallelError(
            f"parallel file {path} is not UTF-8 ({error.reason} at byte {error.start}): re-encode it"
        ) from None
    if not text.strip():
        raise ParallelError(f"parallel file {path} is empty: remove it or fill it with one sentence a line")
    return [unicodedata.normalize("NFC", line.rstrip("\r")) for line in text.removesuffix("\n").split("\n")]


def _check_line_counts(parallel: Parallel, reference: str, directory: Path) -> None:
    expected = len(parallel[reference])
    for code, lines in parallel.items():
        if len(lines) != expected:
            raise ParallelError(
                f"parallel file {directory / code}.txt has {len(lines)} lines but {reference}.txt has {expected}: "
                "line i must be the same sentence in every file; fix or remove the file"
            )


def split_parallel(parallel: Parallel, fraction: float) -> tuple[Parallel, Parallel]:
    """The first `fraction` of the sentences (at least one) and the rest, at the same indices for every language."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"parallel split fraction {fraction} must be within (0, 1]")
    lengths = {len(lines) for lines in parallel.values()}
    if len(lengths) > 1:
        raise ValueError(
            f"parallel languages have different line counts {sorted(lengths)}: load them with load_parallel"
        )
    cut = max(1, int(lengths.pop() * fraction)) if lengths else 0
    tune = {code: lines[:cut] for code, lines in parallel.items()}
    held_out = {code: lines[cut:] for code, lines in parallel.items()}
    return tune, held_out


@dataclass(frozen=True)
class _Counts:
    tokens: int
    byte_tokens: int
    words: int
    chars: int


def _count(tokenizer: TextTokenizer, lines: list[str], byte_ids: frozenset[int]) -> _Counts:
    encoded = tokenizer.encode_batch(lines)
    return _Counts(
        tokens=sum(len(ids) for ids in encoded),
        byte_tokens=sum(1 for ids in encoded for token_id in ids if token_id in byte_ids),
        words=sum(len(line.split()) for line in lines),
        chars=sum(len(line) for line in lines),
    )


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _fertility(code: str, counts: _Counts) -> float | None:
    if code.split("_")[-1] in UNSPACED_SCRIPTS or counts.words == 0:
        return None
    return counts.tokens / counts.words


def language_stats(tokenizer: TextTokenizer, parallel: Parallel, reference: str) -> dict[str, LanguageStats]:
    """Per language: tokens, premium, fertility (tokens per word), byte_fallback_rate and chars_per_token."""
    if reference not in parallel:
        raise ValueError(
            f"reference language {reference} is not in the parallel set: pass one of {', '.join(parallel)}"
        )
    byte_ids = tokenizer.byte_piece_ids()
    counts = {code: _count(tokenizer, lines, byte_ids) for code, lines in parallel.items()}
    reference_tokens = counts[reference].tokens
    if reference_tokens == 0:
        raise ValueError(f"tokenizer {tokenizer.path} encodes the {reference} sentences to no tokens at all")
    return {
        code: {
            "tokens": c.tokens,
            "premium": c.tokens / reference_tokens,
            "fertility": _fertility(code, c),
            "byte_fallback_rate": _ratio(c.byte_tokens, c.tokens),
            "chars_per_token": _ratio(c.chars, c.tokens),
        }
        for code, c in counts.items()
    }


def summarize(stats: dict[str, LanguageStats], reference: str) -> dict[str, Any]:
    """Headline figures; the language lists are sorted from the highest premium down."""
    premiums = {code: s["premium"] for code, s in stats.items()}
    by_premium = sorted(premiums, key=lambda code: (-premiums[code], code))
    others = [p for code, p in premiums.items() if code != reference]
    return {
        "max_premium": premiums[by_premium[0]],
        "max_premium_language": by_premium[0],
        "mean_premium": mean(others) if others else None,
        "languages_above_1_5": [code for code in by_premium if premiums[code] > PREMIUM_THRESHOLDS[0]],
        "languages_above_2": [code for code in by_premium if premiums[code] > PREMIUM_THRESHOLDS[1]],
        "total_tokens": sum(s["tokens"] for s in stats.values()),
    }


def _default_names(paths: list[Path]) -> list[str]:
    """Directory or file names; equal ones get their parent's name in front, then a -2, -3 suffix if still equal."""
    names = [p.resolve().name for p in paths]
    names = [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate in taken:
            number += 1
            candidate = f"{name}-{number}"
        taken.add(candidate)
        unique.append(candidate)
    return unique


def _tokenizer_names(paths: list[Path], names: list[str] | None) -> list[str]:
    if not names:
        return _default_names(paths)
    if len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} tokenizers: give one name per tokenizer, or none")
    if len(set(names)) != len(names):
        raise ValueError(f"tokenizer names {names} repeat a name: give each tokenizer its own")
    return list(names)


def evaluate(
    tokenizers: list[str | Path], parallel_dir: str | Path, reference: str = "eng_Latn", names: list[str] | None = None
) -> dict[str, Any]:
    """Evaluates each tokenizer on the whole parallel set; see the module docstring for what premium means."""
    if not tokenizers:
        raise ValueError("no tokenizer to evaluate: pass at least one tokenizer directory, .model or tokenizer.json")
    paths = [Path(t) for t in tokenizers]
    labels = _tokenizer_names(paths, names)
    parallel = load_parallel(parallel_dir, reference)
    report: dict[str, Any] = {
        "reference": reference,
        "parallel": str(parallel_dir),
        "sentences": len(parallel[reference]),
        "paths": {label: str(path.resolve()) for label, path in zip(labels, paths, strict=True)},
        "tokenizers": {
            label: _evaluate_one(path, parallel, reference) for label, path in zip(labels, paths, strict=True)
        },
    }
    if len(labels) == 1:
        only = report["tokenizers"][labels[0]]
        report["languages"] = only["languages"]
        report["summary"] = only["summary"]
    return report


def _evaluate_one(path: Path, parallel: Parallel, reference: str) -> dict[str, Any]:
    tokenizer = load_tokenizer(path)
    stats = language_stats(tokenizer, parallel, reference)
    return {
        "path": str(tokenizer.path),
        "fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "languages": stats,
        "summary": summarize(stats, reference),
    }


def report_paths(output_dir: str | Path) -> dict[str, Path]:
    """Where write_report writes each form of the report."""
    directory = Path(output_dir)
    return {"json": directory / REPORT_FILE, "markdown": directory / "report.md", "chart": directory / "premium.png"}


def check_report_dir(output_dir: str | Path, tokenizers: list[str]) -> None:
    """Refuses an output_dir that holds the report of other tokenizers, which writing this one would lose; that of
    the same ones (a rerun) is replaced."""
    path = report_paths(output_dir)["json"]
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))["paths"]
    except (OSError, ValueError, TypeError, KeyError):  # none, or none readable: nothing to lose
        return
    if sorted(previous.values()) != sorted(str(Path(tokenizer).resolve()) for tokenizer in tokenizers):
        raise ValueError(
            f"output_dir {Path(output_dir)} holds the report of {', '.join(previous.values())}: choose another "
            "output_dir, or pass overwrite=true to replace it"
        )


def write_report(report: dict[str, Any], output_dir: str | Path) -> dict[str, Path]:
    """Writes report.md, premium.png and then report.json, the mark of a whole report (a pipeline's rerun takes one
    with it as current); all are rendered before any is written."""
    directory = Path(output_dir)
    contents = {
        "json": json.dumps(report, indent=2, ensure_ascii=False).encode() + b"\n",
        "markdown": render_markdown(report).encode(),
        "chart": render_premium_chart(report),
    }
    paths = report_paths(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for kind in ("markdown", "chart", "json"):
        write_atomically(paths[kind], contents[kind])
    return paths


def _languages_by_premium(report: dict[str, Any]) -> list[str]:
    """Languages from the highest premium down, by the first tokenizer's figures."""
    first = next(iter(report["tokenizers"].values()))["languages"]
    return sorted(first, key=lambda code: (-first[code]["premium"], code))


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_markdown(report: dict[str, Any]) -> str:
    tokenizers = report["tokenizers"]
    names = [_cell(name) for name in tokenizers]
    reference = report["reference"]
    lines = [
        "# Tokenizer parity",
        "",
        f"Parallel set `{report['parallel']}`, {report['sentences']} sentences a language. Premium = tokens of a "
        f"language / tokens of {reference} on the same sentences (1.00 is parity, lower is cheaper).",
        "",
        "## Premium per language",
        "",
    ]
    premium_rows = [
        [code] + [_cell(t["languages"][code]["premium"]) for t in tokenizers.values()]
        for code in _languages_by_premium(report)
    ]
    lines += _table(["language", *names], premium_rows)
    lines += ["", "## Summary", ""]
    lines += _table(["", *names], _summary_rows(tokenizers, reference))
    for name, tokenizer in tokenizers.items():
        lines += ["", f"## {_cell(name)}", "", f"`{tokenizer['path']}`, sha256 `{tokenizer['fingerprint']}`", ""]
        lines += _table(
            ["language", "tokens", "premium", "fertility", "byte fallback", "chars/token"],
            [_detail_row(code, s) for code, s in sorted(tokenizer["languages"].items())],
        )
    return "\n".join(lines) + "\n"


def format_summary(report: dict[str, Any]) -> str:
    """The summary table alone, for the terminal."""
    tokenizers = report["tokenizers"]
    return "\n".join(_table(["", *map(_cell, tokenizers)], _summary_rows(tokenizers, report["reference"])))


def _summary_rows(tokenizers: dict[str, Any], reference: str) -> list[list[str]]:
    summaries = [t["summary"] for t in tokenizers.values()]
    return [
        ["vocab size", *(str(t["vocab_size"]) for t in tokenizers.values())],
        ["total tokens", *(str(s["total_tokens"]) for s in summaries)],
        ["max premium", *(f"{s['max_premium']:.2f} ({s['max_premium_language']})" for s in summaries)],
        [f"mean premium (without {reference})", *(_cell(s["mean_premium"]) for s in summaries)],
        ["languages above 1.5", *(_language_list(s["languages_above_1_5"]) for s in summaries)],
        ["languages above 2", *(_language_list(s["languages_above_2"]) for s in summaries)],
    ]


def _language_list(codes: list[str]) -> str:
    return f"{len(codes)}: {', '.join(codes)}" if codes else "0"


def _detail_row(code: str, stats: LanguageStats) -> list[str]:
    return [
        code,
        str(stats["tokens"]),
        _cell(stats["premium"]),
        _cell(stats["fertility"]),
        f"{stats['byte_fallback_rate']:.2%}",
        _cell(stats["chars_per_token"]),
    ]


def render_premium_chart(report: dict[str, Any]) -> bytes:
    """A horizontal bar chart, highest premium on top, one bar series per tokenizer; returns the PNG."""
    tokenizers = report["tokenizers"]
    codes = _languages_by_premium(report)[::-1]  # barh draws the first row at the bottom
    bar_height = 0.8 / len(tokenizers)
    figure = Figure(figsize=(9, 1.5 + len(codes) * (0.16 + 0.06 * len(tokenizers))), layout="constrained")
    axes = figure.add_subplot()
    for index, (name, tokenizer) in enumerate(tokenizers.items()):
        offset = (index - (len(tokenizers) - 1) / 2) * bar_height
        premiums = [tokenizer["languages"][code]["premium"] for code in codes]
        axes.barh([row - offset for row in range(len(codes))], premiums, height=bar_height, label=name)
    axes.axvline(1.0, color="black", linewidth=1, label="parity (1.0)")
    axes.axvline(PREMIUM_THRESHOLDS[0], color="tab:red", linestyle="--", linewidth=1, label="premium 1.5")
    axes.set_yticks(range(len(codes)), codes, fontsize=8)
    axes.set_ylim(-0.6, len(codes) - 0.4)
    axes.set_xlabel(f"premium: tokens / tokens of {report['reference']} on the same sentences")
    axes.set_title(f"Tokenizer premium per language ({report['sentences']} parallel sentences)")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
