"""What a pass over a corpus learns (each language's size, the hygiene counts, a content digest), measured once per
file and kept in a cache while the file keeps its size and modification time: a terabyte corpus is read to be
measured once, not at every tokenizer training, staleness check and encoding.

The cache is one small JSON file per corpus file, in COROLLA_CACHE (else $XDG_CACHE_HOME/corolla, else
~/.cache/corolla), under corpus-scans/; a cache that cannot be written only costs a measurement next time.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

from tqdm import tqdm

from tokenizer.corpus import CorpusError, LanguageSize, Source, discover_sources, read_documents
from tokenizer.files import sha256_of, user_cache, write_atomically
from tokenizer.hygiene import HygieneStats

CACHE_VERSION = 1  # raised whenever what a scan counts changes: older entries are then measured again


def cache_directory() -> Path:
    return user_cache("corpus-scans")


@dataclass(frozen=True)
class SourceFacts:
    digest: str  # of the file's bytes
    sizes: dict[str, LanguageSize]
    hygiene: HygieneStats

    def as_dict(self) -> dict:
        hygiene = {counter.name: dict(getattr(self.hygiene, counter.name)) for counter in fields(HygieneStats)}
        sizes = {language: [size.bytes, size.chars, size.documents] for language, size in self.sizes.items()}
        return {"digest": self.digest, "sizes": sizes, "hygiene": hygiene}

    @classmethod
    def from_dict(cls, record: dict) -> SourceFacts:
        hygiene = HygieneStats(**{name: Counter(counts) for name, counts in record["hygiene"].items()})
        sizes = {language: LanguageSize(*numbers) for language, numbers in record["sizes"].items()}
        return cls(record["digest"], sizes, hygiene)


def _measure(source: Source) -> SourceFacts:
    hygiene = HygieneStats()
    counts: dict[str, list[int]] = {}
    for language, text in read_documents(source, hygiene):
        count = counts.setdefault(language, [0, 0, 0])
        count[0] += len(text.encode("utf-8"))
        count[1] += len(text)
        count[2] += 1
    sizes = {language: LanguageSize(*count) for language, count in sorted(counts.items())}
    return SourceFacts(sha256_of(source.path), sizes, hygiene)


def _cache_file(source: Source) -> tuple[dict, Path]:
    """The stamp the file's cached facts must carry (its size and modification time), and where they are kept."""
    stat = source.path.stat()
    stamp = {"version": CACHE_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return stamp, cache_directory() / f"{hashlib.sha256(str(source.path.resolve()).encode()).hexdigest()}.json"


def cached_facts(source: Source) -> SourceFacts | None:
    """The file's facts from the cache while its size and modification time are those measured; None otherwise."""
    stamp, entry = _cache_file(source)
    try:
        cached = json.loads(entry.read_text())
        if cached["stamp"] == stamp:
            return SourceFacts.from_dict(cached)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not measured yet, or an entry this version cannot read
    return None


def source_facts(source: Source) -> SourceFacts:
    """The file's facts: from the cache while its size and modification time are those measured, else measured."""
    if (facts := cached_facts(source)) is not None:
        return facts
    stamp, entry = _cache_file(source)
    facts = _measure(source)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(entry, json.dumps({"stamp": stamp, "path": str(source.path), **facts.as_dict()}))
    except OSError:
        pass  # measured again next time
    return facts


def corpus_fingerprint(sources: list[Source], facts: list[SourceFacts] | None = None) -> str:
    """Identifies the corpus by its files' names (inside the corpus) and contents (`facts`: theirs, if at hand)."""
    digest = hashlib.sha256()
    for source, known in zip(sources, facts or map(source_facts, sources), strict=True):
        digest.update(f"{source.label}\0{known.digest}\0".encode())
    return digest.hexdigest()


def measured_fingerprint(sources: list[Source]) -> str | None:
    """corpus_fingerprint without reading the corpus: None while a file has no current facts in the cache."""
    facts = [cached_facts(source) for source in sources]
    return None if any(known is None for known in facts) else corpus_fingerprint(sources, facts)


@dataclass
class CorpusScan:
    sources: list[Source]
    sizes: dict[str, LanguageSize]
    hygiene: HygieneStats
    fingerprint: str

    @property
    def languages(self) -> list[str]:
        return sorted(self.sizes)


def scan_corpus(corpus_dir: str) -> CorpusScan:
    sources = discover_sources(corpus_dir)
    hygiene, totals, measured = HygieneStats(), {}, []
    for source in tqdm(sources, unit="file", desc="measuring corpus", disable=None, leave=False):
        facts = source_facts(source)
        measured.append(facts)
        if source.language is not None and not facts.sizes:
            raise CorpusError(f"corpus file {source.path} has no usable text: remove it or fill it")
        hygiene.add(facts.hygiene)
        for language, size in facts.sizes.items():
            total = totals.get(language, LanguageSize(0, 0, 0))
            totals[language] = LanguageSize(
                total.bytes + size.bytes, total.chars + size.chars, total.documents + size.documents
            )
    return CorpusScan(sources, dict(sorted(totals.items())), hygiene, corpus_fingerprint(sources, measured))
