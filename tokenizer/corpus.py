"""Text in: find a corpus's per-language sources and stream clean documents out of them.

A corpus directory holds `<lang>.txt` files (one document per line, optionally `.gz`/`.zst`) and/or JSONL files
whose records have `text` and `lang` fields. Language codes are FLORES-200 style: ISO 639-3 + ISO 15924 (`fra_Latn`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pycountry
import zstandard
from tqdm import tqdm

from tokenizer.config import SizeMeasure
from tokenizer.hygiene import HygieneStats, clean_text

LANGUAGE_CODE = re.compile(r"^([a-z]{3})_([A-Z][a-z]{3})$")
COMPRESSIONS = (".gz", ".zst")
# A file where more than this share of lines is not UTF-8 is in another encoding, not merely damaged.
MAX_INVALID_SHARE = 0.1


@dataclass(frozen=True)
class LanguageSize:
    bytes: int
    chars: int
    documents: int

    def content(self, measure: SizeMeasure) -> int:
        return self.bytes if measure == SizeMeasure.bytes else self.chars

    def bytes_per_unit(self, measure: SizeMeasure) -> float:
        return self.bytes / max(self.content(measure), 1)


class CorpusError(ValueError):
    """Bad corpus input; the message names the file and the fix."""


def check_language_code(code: str, where: str) -> str:
    match = LANGUAGE_CODE.match(code)
    known = match and pycountry.languages.get(alpha_3=match[1]) and pycountry.scripts.get(alpha_4=match[2])
    if not known:
        raise CorpusError(
            f"unknown language code {code!r} in {where}: name languages FLORES-200 style, ISO 639-3 + ISO 15924 "
            "script (e.g. fra_Latn.txt)"
        )
    return code


@dataclass(frozen=True)
class Source:
    path: Path
    language: str | None  # None for JSONL, whose records name their language

    @property
    def is_jsonl(self) -> bool:
        return self.language is None


def _strip_compression(name: str) -> str:
    for suffix in COMPRESSIONS:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def discover_sources(corpus_dir: str | Path) -> list[Source]:
    corpus = Path(corpus_dir)
    if not corpus.is_dir():
        raise CorpusError(f"corpus directory {corpus} does not exist: pass corpus=DIR with <lang>.txt or .jsonl files")
    sources = []
    for path in sorted(p for p in corpus.iterdir() if p.is_file()):
        name = _strip_compression(path.name)
        if name.endswith(".jsonl"):
            sources.append(Source(path, None))
        elif name.endswith(".txt"):
            sources.append(Source(path, check_language_code(name[: -len(".txt")], str(path))))
    if not sources:
        raise CorpusError(f"corpus directory {corpus} has no <lang>.txt[.gz|.zst] or .jsonl files")
    for source in sources:
        if source.path.stat().st_size == 0:
            raise CorpusError(f"corpus file {source.path} is empty: remove it or fill it")
    return sources


def open_binary(path: Path) -> BinaryIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(path.open("rb")))
    return path.open("rb")


def _decode_record(source: Source, raw: bytes, line_number: int) -> tuple[str, str] | None:
    """(language, text) of one line, or None where the line is blank."""
    text = raw.decode("utf-8").rstrip("\r\n")
    if not source.is_jsonl:
        return (source.language, text) if text.strip() else None  # type: ignore[return-value]
    if not text.strip():
        return None
    where = f"{source.path}:{line_number}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise CorpusError(f"{where} is not valid JSON ({error.msg}): each line must be one JSON object") from None
    if not (isinstance(record, dict) and isinstance(record.get("text"), str) and isinstance(record.get("lang"), str)):
        raise CorpusError(f"{where} lacks string fields 'text' and 'lang': each record needs both")
    return check_language_code(record["lang"], where), record["text"]


def _raw_lines(path: Path) -> Iterator[bytes]:
    try:
        with open_binary(path) as handle:
            yield from handle
    except (OSError, EOFError, zstandard.ZstdError) as error:
        raise CorpusError(f"corpus file {path} cannot be read ({error}): replace the damaged file") from None


def read_documents(source: Source, stats: HygieneStats) -> Iterator[tuple[str, str]]:
    """Yields (language, clean NFC text) per document, counting what hygiene skipped or repaired in `stats`."""
    invalid = lines = 0
    for line_number, raw in enumerate(_raw_lines(source.path), start=1):
        lines += 1
        try:
            record = _decode_record(source, raw, line_number)
        except UnicodeDecodeError:
            invalid += 1
            stats.count_invalid_utf8(source.language or "?")
            continue
        if record is None:
            continue
        language, text = record
        clean = clean_text(language, text, stats)
        if clean:
            yield language, clean
    if lines and invalid > MAX_INVALID_SHARE * lines:
        raise CorpusError(
            f"corpus file {source.path} is not UTF-8 ({invalid} of {lines} lines invalid): convert it, "
            "e.g. iconv -f <encoding> -t UTF-8"
        )


def corpus_fingerprint(sources: list[Source]) -> str:
    """Identifies the corpus by its files' names, sizes and contents (hashed in streaming fashion)."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.path.name.encode() + b"\0")
        with source.path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class CorpusScan:
    sources: list[Source]
    sizes: dict[str, LanguageSize]
    hygiene: HygieneStats
    fingerprint: str

    @property
    def languages(self) -> list[str]:
        return sorted(self.sizes)


def iter_corpus(sources: list[Source], hygiene: HygieneStats, desc: str) -> Iterator[tuple[str, str]]:
    """Every (language, document) of the corpus, streamed, with a progress bar over the files' bytes."""
    total = sum(source.path.stat().st_size for source in sources)
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None, leave=False) as progress:
        for source in sources:
            yield from read_documents(source, hygiene)
            progress.update(source.path.stat().st_size)


def scan_corpus(corpus_dir: str) -> CorpusScan:
    sources = discover_sources(corpus_dir)
    hygiene = HygieneStats()
    counts: dict[str, list[int]] = {}
    for language, text in iter_corpus(sources, hygiene, "reading corpus"):
        count = counts.setdefault(language, [0, 0, 0])
        count[0] += len(text.encode("utf-8"))
        count[1] += len(text)
        count[2] += 1
    for source in sources:
        if source.language is not None and source.language not in counts:
            raise CorpusError(f"corpus file {source.path} has no usable text: remove it or fill it")
    sizes = {lang: LanguageSize(*count) for lang, count in sorted(counts.items())}
    return CorpusScan(sources, sizes, hygiene, corpus_fingerprint(sources))
