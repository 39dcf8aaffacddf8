"""`corolla tokenizer encode`: corpus → one token file pair per language (see token_files.py) + manifest.json.

1. Load the tokenizer and discover the sources: bad input fails here, before output_dir is touched.
2. Scan every source, in parallel: this validates it (UTF-8, JSON, language codes), finds the languages each JSONL
   file holds, counts documents and fingerprints the files, so that a bad file also fails before anything is written.
3. Read the documents of the languages still to encode in corpus order, hand them to the workers in chunks, and
   write the chunks' tokens in the order they were handed out: the output does not depend on the worker count.
   Reading and cleaning stay in this process; on the sample corpus with an 8k SentencePiece model they cost about a
   quarter of what tokenizing does, so beyond about four workers this process is the bottleneck.

A language's files are renamed into place and recorded in the manifest (itself replaced atomically) as soon as its
last chunk is written. A rerun skips every language the manifest records with the same sources, tokenizer and
append_eos, and encodes the rest from scratch; half-written files only ever exist under temporary names.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from tokenizer.corpus import CorpusError, Source, discover_sources, read_documents
from tokenizer.corpus_scan import corpus_fingerprint, source_facts
from tokenizer.files import write_atomically
from tokenizer.hygiene import HygieneStats
from tokenizer.loading import TextTokenizer, load_tokenizer
from tokenizer.token_files import MANIFEST_NAME, TokenFile, TokenFileWriter, token_dtype, token_file_paths
from tokenizer.vocab import EOS, SPECIAL_IDS

MANIFEST_VERSION = 1
EOS_ID = SPECIAL_IDS[EOS]
# Text per task: enough to amortise handing it to a worker, little enough to spread one language over all workers.
CHUNK_CHARS = 1 << 18
# Chunks handed out ahead per worker: keeps the workers busy while bounding the text held in memory.
CHUNKS_IN_FLIGHT_PER_WORKER = 4

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class SourceScan:
    source: Source
    documents: Counter[str]  # per language
    fingerprint: str
    hygiene: HygieneStats


@dataclass
class LanguagePlan:
    """One language's share of the corpus: the sources holding its documents, in corpus order."""

    language: str
    scans: list[SourceScan] = field(default_factory=list)

    @property
    def documents(self) -> int:
        return sum(scan.documents[self.language] for scan in self.scans)

    @property
    def source_fingerprint(self) -> str:
        digest = hashlib.sha256()
        for scan in self.scans:
            digest.update(scan.fingerprint.encode())
        return digest.hexdigest()

    def manifest_entry(self, writer: TokenFileWriter) -> dict:
        return {
            "documents": writer.documents,
            "tokens": writer.num_tokens,
            "files": [writer.bin_path.name, writer.idx_path.name],
            "sources": [scan.source.path.name for scan in self.scans],
            "source_fingerprint": self.source_fingerprint,
        }


@dataclass
class Chunk:
    language: str
    texts: list[str]
    last: bool  # the language's final chunk: its token files can be finished after it


@dataclass
class EncodedChunk:
    language: str
    tokens: np.ndarray  # the documents' ids back to back
    lengths: np.ndarray
    last: bool


@dataclass(frozen=True)
class EncoderSettings:
    tokenizer_path: Path
    tokenizer_fingerprint: str
    append_eos: bool


@dataclass(frozen=True)
class ChunkEncoder:
    tokenizer: TextTokenizer
    append_eos: bool

    @classmethod
    def load(cls, settings: EncoderSettings) -> ChunkEncoder:
        tokenizer = load_tokenizer(settings.tokenizer_path)
        if tokenizer.fingerprint != settings.tokenizer_fingerprint:
            raise ValueError(f"tokenizer {settings.tokenizer_path} changed while encoding: run again")
        return cls(tokenizer, settings.append_eos)

    def __call__(self, chunk: Chunk) -> EncodedChunk:
        ids = self.tokenizer.encode_batch(chunk.texts) if chunk.texts else []
        if self.append_eos:
            for document in ids:
                document.append(EOS_ID)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        dtype = token_dtype(self.tokenizer.vocab_size)
        tokens = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
        return EncodedChunk(chunk.language, tokens, lengths, chunk.last)


_worker_encoder: ChunkEncoder | None = None


def _encode_in_worker(settings: EncoderSettings, chunk: Chunk) -> EncodedChunk:
    # Loaded at the first chunk rather than by a pool initializer, whose errors would not say what went wrong.
    global _worker_encoder
    if _worker_encoder is None:
        _worker_encoder = ChunkEncoder.load(settings)
    return _worker_encoder(chunk)


@dataclass
class Manifest:
    tokenizer: dict
    corpus: str
    append_eos: bool
    languages: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        languages = dict(sorted(self.languages.items()))
        return {
            "format_version": MANIFEST_VERSION,
            "tokenizer": self.tokenizer,
            "corpus": self.corpus,
            "append_eos": self.append_eos,
            "eos_id": EOS_ID if self.append_eos else None,
            "dtype": token_dtype(self.tokenizer["vocab_size"]).name,
            "languages": languages,
            "totals": {
                "languages": len(languages),
                "documents": sum(entry["documents"] for entry in languages.values()),
                "tokens": sum(entry["tokens"] for entry in languages.values()),
            },
        }

    def write(self, output: Path) -> None:
        """Leaves an identical manifest untouched, so that current token files keep their times."""
        text = json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n"
        path = output / MANIFEST_NAME
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_atomically(path, text)


def scan_source(source: Source) -> SourceScan:
    facts = source_facts(source)
    documents: Counter[str] = Counter({language: size.documents for language, size in facts.sizes.items()})
    if not documents:
        raise CorpusError(f"corpus file {source.path} has no usable text: remove it or fill it")
    return SourceScan(source, documents, corpus_fingerprint([source]), facts.hygiene)


def plan_languages(scans: list[SourceScan]) -> dict[str, LanguagePlan]:
    plans: dict[str, LanguagePlan] = {}
    for scan in scans:
        for language in scan.documents:
            plans.setdefault(language, LanguagePlan(language)).scans.append(scan)
    return dict(sorted(plans.items()))


def chunk_documents(plans: list[LanguagePlan], corpus: list[Source]) -> Iterator[Chunk]:
    """The documents of `plans`' languages in corpus order, in chunks; each language's last chunk says so."""
    needed = {scan.source for plan in plans for scan in plan.scans}
    sources = [source for source in corpus if source in needed]
    ending_at = {source: [plan.language for plan in plans if plan.scans[-1].source == source] for source in sources}
    texts: dict[str, list[str]] = {plan.language: [] for plan in plans}
    chars = dict.fromkeys(texts, 0)
    for source in sources:
        for language, text in read_documents(source, HygieneStats()):
            if language not in texts:
                continue  # encoded by an earlier run
            texts[language].append(text)
            chars[language] += len(text)
            if chars[language] >= CHUNK_CHARS:
                yield Chunk(language, texts[language], last=False)
                texts[language], chars[language] = [], 0
        for language in ending_at[source]:
            yield Chunk(language, texts.pop(language), last=True)


def _ordered_map(
    pool: Executor | None, function: Callable[[Item], Result], items: Iterable[Item], in_flight: int
) -> Iterator[Result]:
    """`function` over `items`, results in order; the pool never holds more than `in_flight` items at once."""
    if pool is None:
        yield from map(function, items)
        return
    pending: deque[Future[Result]] = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextmanager
def _worker_pool(workers: int) -> Iterator[Executor | None]:
    """None for a single worker: everything then runs in this process, leaving no child behind if it is killed.

    A process pool from concurrent.futures rather than multiprocessing.Pool: a worker killed (e.g. out of memory)
    fails the run instead of hanging it.
    """
    if workers == 1:
        yield None
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _scan_corpus(
    sources: list[Source], pool: Executor | None, in_flight: int, log: Callable[[str], None]
) -> dict[str, LanguagePlan]:
    results = _ordered_map(pool, scan_source, sources, in_flight)
    scans = list(tqdm(results, total=len(sources), unit="file", desc="scanning corpus", disable=None, leave=False))
    hygiene = HygieneStats()
    for scan in scans:
        hygiene.add(scan.hygiene)
    for warning in hygiene.warnings():
        log(f"corpus: {warning}")
    return plan_languages(scans)


def _read_manifest(output: Path, log: Callable[[str], None]) -> dict | None:
    """The previous run's manifest; None for a new or empty directory. Refuses a directory corolla did not write."""
    path = output / MANIFEST_NAME
    if not path.is_file():
        if output.is_dir() and any(output.iterdir()):
            raise ValueError(f"output_dir {output} holds files but no {MANIFEST_NAME}: choose a new or empty directory")
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    keys = {"format_version", "tokenizer", "append_eos", "languages"}
    if not isinstance(manifest, dict) or not keys <= set(manifest) or "fingerprint" not in manifest["tokenizer"]:
        raise ValueError(f"{path} is not a token manifest corolla wrote: choose a new or empty output_dir")
    if manifest["format_version"] != MANIFEST_VERSION:
        log(f"{path} has format version {manifest['format_version']}, not {MANIFEST_VERSION}: re-encoding everything")
        return None
    return manifest


def _remove_stale_files(previous: dict | None, kept: dict[str, dict], output: Path) -> None:
    """Deletes the token files of the previous run's languages that are not reused (after the manifest dropped them)."""
    for language in set((previous or {}).get("languages", {})) - set(kept):
        for path in token_file_paths(output / language):
            path.unlink(missing_ok=True)


def _is_intact(prefix: Path, entry: dict) -> bool:
    try:
        tokens = TokenFile(prefix)
    except ValueError:
        return False
    return len(tokens) == entry["documents"] and tokens.num_tokens == entry["tokens"]


def _reusable_languages(
    previous: dict | None, manifest: Manifest, plans: dict[str, LanguagePlan], output: Path, log: Callable[[str], None]
) -> dict[str, dict]:
    """The previous run's entries that stay valid: same tokenizer, append_eos and sources, files intact."""
    if previous is None:
        return {}
    old, new = previous["tokenizer"]["fingerprint"], manifest.tokenizer["fingerprint"]
    if old != new:
        log(f"tokenizer differs from the last run's (sha256 {old[:12]}…, now {new[:12]}…): re-encoding every language")
        return {}
    if previous["append_eos"] != manifest.append_eos:
        log(f"append_eos was {previous['append_eos']}, now {manifest.append_eos}: re-encoding every language")
        return {}
    return {
        language: entry
        for language, entry in previous["languages"].items()
        if language in plans
        and entry["source_fingerprint"] == plans[language].source_fingerprint
        and _is_intact(output / language, entry)
    }


def _encode_languages(
    plans: list[LanguagePlan], encoded_chunks: Iterable[EncodedChunk], manifest: Manifest, output: Path
) -> None:
    by_language = {plan.language: plan for plan in plans}
    writers: dict[str, TokenFileWriter] = {}
    total = sum(plan.documents for plan in plans)
    try:
        with tqdm(total=total, unit="doc", desc="encoding", disable=None, leave=False) as progress:
            for encoded in encoded_chunks:
                if encoded.language not in writers:
                    writers[encoded.language] = TokenFileWriter(
                        output / encoded.language, manifest.tokenizer["vocab_size"]
                    )
                writers[encoded.language].add_documents(encoded.tokens, encoded.lengths)
                progress.update(encoded.lengths.size)
                if encoded.last:
                    _finish_language(writers.pop(encoded.language), by_language[encoded.language], manifest, output)
    finally:
        for writer in writers.values():
            writer.abort()


def _finish_language(writer: TokenFileWriter, plan: LanguagePlan, manifest: Manifest, output: Path) -> None:
    if writer.documents != plan.documents:
        raise CorpusError(
            f"{plan.language}: {writer.documents} documents read, {plan.documents} when scanned: "
            "the corpus changed during encoding, run again"
        )
    writer.finish()
    manifest.languages[plan.language] = plan.manifest_entry(writer)
    manifest.write(output)


def encode_corpus(
    tokenizer: str | Path,
    corpus_dir: str | Path,
    output_dir: str | Path,
    append_eos: bool = True,
    workers: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Encodes every document of `corpus_dir` into `<lang>.bin`/`<lang>.idx` in `output_dir`; returns the manifest.

    workers=0 uses every core; workers=1 runs in this process.
    """
    if workers < 0:
        raise ValueError(f"workers={workers} must be 0 (every core) or more")
    text_tokenizer = load_tokenizer(tokenizer)
    sources = discover_sources(corpus_dir)
    output = Path(output_dir)
    workers = workers or os.cpu_count() or 1
    in_flight = CHUNKS_IN_FLIGHT_PER_WORKER * workers
    manifest = Manifest(
        tokenizer={
            "path": str(text_tokenizer.path.resolve()),
            "fingerprint": text_tokenizer.fingerprint,
            "vocab_size": text_tokenizer.vocab_size,
        },
        corpus=str(Path(corpus_dir).resolve()),
        append_eos=append_eos,
    )
    with _worker_pool(workers) as pool:
        plans = _scan_corpus(sources, pool, in_flight, log)
        previous = _read_manifest(output, log)
        output.mkdir(parents=True, exist_ok=True)
        manifest.languages = _reusable_languages(previous, manifest, plans, output, log)
        if manifest.languages:
            log(f"{len(manifest.languages)} of {len(plans)} languages already encoded in {output}: skipping them")
        # Written before anything is re-encoded, so that it never lists files that are about to be replaced.
        manifest.write(output)
        _remove_stale_files(previous, manifest.languages, output)
        todo = [plan for language, plan in plans.items() if language not in manifest.languages]
        if pool is None:
            encode = ChunkEncoder(text_tokenizer, append_eos)
        else:
            settings = EncoderSettings(text_tokenizer.path.resolve(), text_tokenizer.fingerprint, append_eos)
            encode = partial(_encode_in_worker, settings)
        encoded_chunks = _ordered_map(pool, encode, chunk_documents(todo, sources), in_flight)
        _encode_languages(todo, encoded_chunks, manifest, output)
    result = manifest.as_dict()
    totals = result["totals"]
    log(f"{output}: {totals['languages']} languages, {totals['documents']} documents, {totals['tokens']} tokens")
    return result
