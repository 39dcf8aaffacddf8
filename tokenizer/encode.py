"""`corolla tokenizer encode`: a corpus → token files (token_files.py), a pair per corpus file and language, and a
manifest that lists them:

    output_dir/<lang>/<shard>.bin, .idx    one corpus file's documents in one language, in file order
    output_dir/records/<shard>.json        written once the file's pairs are in place: what they hold, from which
                                           corpus file (its size, time and digest), under which tokenizer
    output_dir/manifest.json               written last: every language's pairs in corpus order, token counts, the
                                           tokenizer's fingerprint; it copies no token data

A language's training stream is its pairs in corpus order (launch/data/corpus.py). The work is split by corpus file:
`encode_corpus` does every file here and writes the manifest; on a cluster each task of a Slurm array encodes a group
of files (`encode_sources`) and a last step writes the manifest (`write_manifest`). A file whose record is current is
never encoded again, so a rerun, a requeued task or a resubmitted pipeline redoes only what had not finished.
Half-written pairs exist only under temporary names, and the manifest is removed before anything is re-encoded: a
reader sees a complete, consistent directory or none.

Within a run, documents are read in this process and handed to the workers in chunks; their tokens are written in
the order the chunks were handed out, so the output does not depend on the worker count.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from tokenizer.children import LEFT_TO_PARENT, worker_of
from tokenizer.corpus import CorpusError, Source, discover_sources, is_language_code, read_documents, shard_name
from tokenizer.corpus_scan import corpus_fingerprint, source_facts
from tokenizer.files import Log, exclusively, write_atomically
from tokenizer.hygiene import HygieneStats
from tokenizer.loading import TextTokenizer, load_tokenizer
from tokenizer.token_files import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    TokenFile,
    TokenFileWriter,
    token_dtype,
    token_file_paths,
)
from tokenizer.vocab import EOS, SPECIAL_IDS

RECORDS_DIR = "records"
EOS_ID = SPECIAL_IDS[EOS]
# Text per task: enough to amortise handing it to a worker, little enough to spread one file over all workers.
CHUNK_CHARS = 1 << 18
# Chunks handed out ahead per worker: keeps the workers busy while bounding the text held in memory.
CHUNKS_IN_FLIGHT_PER_WORKER = 4

Item = TypeVar("Item")
Result = TypeVar("Result")


def pair_prefix(output: Path, language: str, source: Source) -> Path:
    return output / language / shard_name(source.label)


def record_path(output: Path, source: Source) -> Path:
    return output / RECORDS_DIR / f"{shard_name(source.label)}.json"


def file_stamp(source: Source) -> list[int]:
    stat = source.path.stat()
    return [stat.st_size, stat.st_mtime_ns]


@dataclass(frozen=True)
class SourceScan:
    source: Source
    documents: Counter[str]  # per language
    fingerprint: str
    hygiene: HygieneStats


def scan_source(source: Source) -> SourceScan:
    facts = source_facts(source)
    documents: Counter[str] = Counter({language: size.documents for language, size in facts.sizes.items()})
    if not documents:
        raise CorpusError(f"corpus file {source.path} has no usable text: remove it or fill it")
    return SourceScan(source, documents, corpus_fingerprint([source]), facts.hygiene)


@dataclass(frozen=True)
class EncoderSettings:
    tokenizer_path: Path
    tokenizer_fingerprint: str
    vocab_size: int
    append_eos: bool

    @classmethod
    def of(cls, tokenizer: TextTokenizer, append_eos: bool) -> EncoderSettings:
        """A one-line ValueError for a tokenizer whose EOS_ID is another piece (a tokenizer.json whose special tokens
        are elsewhere, as GPT-2's): the documents would be joined by that piece, running together."""
        if append_eos and (piece := tokenizer.misplaced(EOS)):
            raise ValueError(
                f"tokenizer {tokenizer.path} has {piece!r} at id {EOS_ID}, where token files put {EOS} after each "
                f"document: they would run together; encode with a tokenizer whose id {EOS_ID} is {EOS} (a corolla "
                "tokenizer, BLOOM's)"
            )
        return cls(tokenizer.path.resolve(), tokenizer.fingerprint, tokenizer.vocab_size, append_eos)


def _read_record(output: Path, source: Source) -> dict | None:
    try:
        record = json.loads(record_path(output, source).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format_version") == MANIFEST_VERSION else None


def _pairs_intact(output: Path, source: Source, languages: dict[str, dict]) -> bool:
    for language, entry in languages.items():
        try:
            tokens = TokenFile(pair_prefix(output, language, source))
        except ValueError:
            return False
        if (len(tokens), tokens.num_tokens) != (entry["documents"], entry["tokens"]):
            return False
    return True


def current_record(output: Path, source: Source, settings: EncoderSettings, fingerprint: str | None) -> dict | None:
    """The file's record if its pairs are current: same tokenizer and append_eos, same file (by its digest, or
    without one, by its size and modification time: what a login node can check without reading the corpus) and
    pairs intact."""
    record = _read_record(output, source)
    if record is None or (record["tokenizer"], record["append_eos"]) != (
        settings.tokenizer_fingerprint,
        settings.append_eos,
    ):
        return None
    same_file = record["fingerprint"] == fingerprint if fingerprint else record["stamp"] == file_stamp(source)
    return record if same_file and _pairs_intact(output, source, record["languages"]) else None


@dataclass
class Chunk:
    index: int  # of the file among those being encoded
    language: str
    texts: list[str]
    ends_file: bool  # the file's last chunk: its pairs can be finished after it


@dataclass
class EncodedChunk:
    index: int
    language: str
    tokens: np.ndarray  # the documents' ids back to back
    lengths: np.ndarray
    ends_file: bool


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
        return EncodedChunk(chunk.index, chunk.language, tokens, lengths, chunk.ends_file)


_worker_encoder: ChunkEncoder | None = None


def _encode_in_worker(settings: EncoderSettings, chunk: Chunk) -> EncodedChunk:
    # Loaded at the first chunk rather than by a pool initializer, whose errors would not say what went wrong.
    global _worker_encoder
    if _worker_encoder is None:
        _worker_encoder = ChunkEncoder.load(settings)
    return _worker_encoder(chunk)


def file_chunks(scans: list[SourceScan]) -> Iterator[Chunk]:
    """The documents of each file in chunks per language; every language of a file gets at least its last chunk."""
    for index, scan in enumerate(scans):
        texts: dict[str, list[str]] = {language: [] for language in sorted(scan.documents)}
        chars = dict.fromkeys(texts, 0)
        for language, text in read_documents(scan.source, HygieneStats()):
            texts[language].append(text)
            chars[language] += len(text)
            if chars[language] >= CHUNK_CHARS:
                yield Chunk(index, language, texts[language], ends_file=False)
                texts[language], chars[language] = [], 0
        last = list(texts)[-1]
        for language, rest in texts.items():
            yield Chunk(index, language, rest, ends_file=language == last)


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
    """None for a single worker: everything then runs in this process. Workers end with this process, however it
    ends.

    A process pool from concurrent.futures rather than multiprocessing.Pool: a worker killed (e.g. out of memory)
    fails the run instead of hanging it.
    """
    if workers == 1:
        yield None
        return
    with _started_pool(workers) as pool:
        yield pool


def _started_pool(workers: int) -> ProcessPoolExecutor:
    """A pool with every worker started now (the pool starts one a task), and multiprocessing's resource tracker
    before them, each with the signals a worker leaves to this process blocked, a mask a child keeps across exec: a
    terminal's Ctrl-C while a worker still imports what it needs would print its traceback, and a time limit's USR2,
    which Slurm sends every process of the job step, would kill it (worker_of ignores both once it runs; the tracker
    keeps them blocked). Either reaches this process as soon as they are started."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, LEFT_TO_PARENT)
    try:
        spawn = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=worker_of, initargs=(os.getpid(),))
        # Having started its resource tracker, multiprocessing unblocks SIGINT and SIGTERM in this thread (Python 3.11).
        signal.pthread_sigmask(signal.SIG_BLOCK, LEFT_TO_PARENT)
        for _ in range(workers):
            pool.submit(os.getpid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return pool


def _scan(sources: list[Source], pool: Executor | None, in_flight: int, log: Log) -> list[SourceScan]:
    results = _ordered_map(pool, scan_source, sources, in_flight)
    scans = list(tqdm(results, total=len(sources), unit="file", desc="scanning corpus", disable=None, leave=False))
    hygiene = HygieneStats()
    for scan in scans:
        hygiene.add(scan.hygiene)
    for warning in hygiene.warnings():
        log(f"corpus: {warning}")
    return scans


def _open_output(output: Path, log: Log) -> None:
    """Creates output_dir or checks it is one corolla writes; the pairs of an older layout go."""
    manifest = output / MANIFEST_NAME
    if not manifest.is_file() and not (output / RECORDS_DIR).is_dir() and output.is_dir() and any(output.iterdir()):
        raise ValueError(f"output_dir {output} holds files but no {MANIFEST_NAME}: choose a new or empty directory")
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8"))
            version, languages = previous["format_version"], previous["languages"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                f"{manifest} is not a token manifest corolla wrote: choose a new or empty output_dir"
            ) from None
        if version != MANIFEST_VERSION:
            log(f"{manifest} has format version {version}, not {MANIFEST_VERSION}: re-encoding everything")
            manifest.unlink()
            for language in languages:
                for path in token_file_paths(output / language):
                    path.unlink(missing_ok=True)
    (output / RECORDS_DIR).mkdir(parents=True, exist_ok=True)


def _finish_file(scan: SourceScan, writers: dict[str, TokenFileWriter], settings: EncoderSettings, output: Path):
    for language, writer in writers.items():
        if writer.documents != scan.documents[language]:
            raise CorpusError(
                f"{scan.source.path}: {writer.documents} {language} documents read, {scan.documents[language]} when "
                "scanned: the corpus changed during encoding, run again"
            )
        writer.finish()
    record = {
        "format_version": MANIFEST_VERSION,
        "source": scan.source.label,
        "stamp": file_stamp(scan.source),
        "fingerprint": scan.fingerprint,
        "tokenizer": settings.tokenizer_fingerprint,
        "append_eos": settings.append_eos,
        "languages": {name: {"documents": pair.documents, "tokens": pair.num_tokens} for name, pair in writers.items()},
    }
    write_atomically(record_path(output, scan.source), json.dumps(record, indent=1, ensure_ascii=False) + "\n")


def _write_files(
    scans: list[SourceScan], encoded_chunks: Iterable[EncodedChunk], settings: EncoderSettings, output: Path
) -> None:
    writers: dict[str, TokenFileWriter] = {}
    total = sum(sum(scan.documents.values()) for scan in scans)
    try:
        with tqdm(total=total, unit="doc", desc="encoding", disable=None, leave=False) as progress:
            for encoded in encoded_chunks:
                scan = scans[encoded.index]
                if encoded.language not in writers:
                    prefix = pair_prefix(output, encoded.language, scan.source)
                    prefix.parent.mkdir(exist_ok=True)
                    writers[encoded.language] = TokenFileWriter(prefix, settings.vocab_size)
                writers[encoded.language].add_documents(encoded.tokens, encoded.lengths)
                progress.update(encoded.lengths.size)
                if encoded.ends_file:
                    _finish_file(scan, writers, settings, output)
                    writers = {}
    finally:
        for writer in writers.values():
            writer.abort()


@contextmanager
def encoding_alone(output: Path) -> Iterator[None]:
    """No other encoding into `output` meanwhile: two would write the same token files (each removing the other's
    temporary ones). The tasks of a pipeline's encoding stage on a cluster, which write files of their own, go without;
    the local pipeline holds it over its encoding and manifest."""
    output.mkdir(parents=True, exist_ok=True)
    with exclusively(output, f"output_dir {output} is being encoded by another command: wait for it to end"):
        yield


def _encode(
    sources: list[Source],
    output: Path,
    tokenizer: TextTokenizer,
    append_eos: bool,
    workers: int,
    log: Log,
    alone: bool = False,
) -> list[SourceScan]:
    """Encodes the files among `sources` whose pairs are not current; the scans of all of them. `alone`: refused
    while another encoding writes `output`."""
    settings = EncoderSettings.of(tokenizer, append_eos)
    workers = workers or len(os.sched_getaffinity(0))  # the cores this process may use: a Slurm task's, not the node's
    in_flight = CHUNKS_IN_FLIGHT_PER_WORKER * workers
    with _worker_pool(workers) as pool:
        scans = _scan(sources, pool, in_flight, log)
        output.mkdir(parents=True, exist_ok=True)
        with encoding_alone(output) if alone else nullcontext():
            _open_output(output, log)
            todo = [scan for scan in scans if current_record(output, scan.source, settings, scan.fingerprint) is None]
            if len(todo) < len(scans):
                log(f"{len(scans) - len(todo)} of {len(scans)} corpus files already encoded in {output}: skipping them")
            if not todo:
                return scans
            log(f"encoding {len(todo)} of {len(scans)} corpus files into {output}")
            # Gone before anything is rewritten: it is written again once every file's pairs are current.
            (output / MANIFEST_NAME).unlink(missing_ok=True)
            encode = ChunkEncoder(tokenizer, append_eos) if pool is None else partial(_encode_in_worker, settings)
            _write_files(todo, _ordered_map(pool, encode, file_chunks(todo), in_flight), settings, output)
    return scans


def encode_sources(
    tokenizer: str | Path,
    corpus_dir: str | Path,
    output_dir: str | Path,
    names: list[str],
) -> None:
    """Encodes the corpus files named (their paths inside the corpus) whose pairs are not current, with an end of
    document after each; no manifest."""
    sources = {source.label: source for source in discover_sources(corpus_dir)}
    missing = [name for name in names if name not in sources]
    if missing:
        raise CorpusError(
            f"{len(missing)} corpus files to encode are no longer in {corpus_dir} (first: {missing[0]}): submit the "
            "pipeline again, which regroups the files"
        )
    _encode([sources[name] for name in names], Path(output_dir), load_tokenizer(tokenizer), True, 0, print)


def manifest_of(records: list[dict], settings: EncoderSettings, corpus_dir: str | Path) -> dict:
    languages: dict[str, dict] = {}
    for record in records:
        for language, counts in sorted(record["languages"].items()):
            entry = languages.setdefault(language, {"documents": 0, "tokens": 0, "shards": []})
            entry["documents"] += counts["documents"]
            entry["tokens"] += counts["tokens"]
            shard = f"{language}/{shard_name(record['source'])}"
            entry["shards"].append({"file": shard, "source": record["source"], **counts})
    languages = dict(sorted(languages.items()))
    return {
        "format_version": MANIFEST_VERSION,
        "tokenizer": {
            "path": str(settings.tokenizer_path),
            "fingerprint": settings.tokenizer_fingerprint,
            "vocab_size": settings.vocab_size,
        },
        "corpus": str(Path(corpus_dir).resolve()),
        "append_eos": settings.append_eos,
        "eos_id": EOS_ID if settings.append_eos else None,
        "dtype": token_dtype(settings.vocab_size).name,
        "languages": languages,
        "totals": {
            "languages": len(languages),
            "documents": sum(entry["documents"] for entry in languages.values()),
            "tokens": sum(entry["tokens"] for entry in languages.values()),
        },
    }


def _check_same_encoding(output: Path, fingerprint: str, append_eos: bool, corpus: Path) -> None:
    """Token files of another corpus or tokenizer, or without the EOS these would have (or with the one they would
    not), are another dataset, one a training run may read (and resume on): encoding anew over them is refused."""
    encoded_corpus = None
    with suppress(OSError, ValueError, TypeError, KeyError):
        encoded_corpus = json.loads((output / MANIFEST_NAME).read_text(encoding="utf-8"))["corpus"]
    if encoded_corpus not in (None, str(corpus.resolve())):
        raise ValueError(
            f"output_dir {output} holds the token files of corpus {encoded_corpus}, which a training run may read: "
            f"choose another output_dir, or pass overwrite=true to make them {corpus}'s (files alike are kept)"
        )
    others, eos = set(), set()
    for path in (output / RECORDS_DIR).glob("*.json"):
        with suppress(OSError, ValueError, TypeError, KeyError):
            record = json.loads(path.read_text(encoding="utf-8"))
            others.add(record["tokenizer"])
            eos.add(record["append_eos"])
    others.discard(fingerprint)
    if others:
        raise ValueError(
            f"output_dir {output} holds token files of another tokenizer ({min(others)[:8]}), which a training run may "
            "read: choose another output_dir, or pass overwrite=true to encode them anew with this one"
        )
    if eos - {append_eos}:
        raise ValueError(
            f"output_dir {output} holds token files encoded with append_eos={str(not append_eos).lower()}, which a "
            "training run may read: choose another output_dir, or pass overwrite=true to encode them anew"
        )


def _remove_leftovers(output: Path, kept: set[str]) -> None:
    """The pairs and records of corpus files no longer in the corpus, the pairs of languages a file no longer holds
    (a JSONL file's records of one language removed), temporaries of writes that were killed, and the language
    directories this leaves empty. A folder that is not named as a language is a user's, and left alone."""
    language_dirs = [path for path in output.iterdir() if path.is_dir() and is_language_code(path.name)]
    for directory in [*language_dirs, output / RECORDS_DIR]:
        for temporary in directory.glob(".*.tmp"):
            temporary.unlink(missing_ok=True)
    for record in (output / RECORDS_DIR).glob("*.json"):
        languages = json.loads(record.read_text(encoding="utf-8")).get("languages", {}) if record.stem in kept else {}
        for directory in language_dirs:
            if directory.name not in languages:
                for pair in token_file_paths(directory / record.stem):
                    if pair.exists():  # not unlink(missing_ok): a read-only filesystem refuses even what is not there
                        pair.unlink()
        if record.stem not in kept:
            record.unlink()
    for directory in language_dirs:
        if not any(directory.iterdir()):
            directory.rmdir()


def write_manifest(
    tokenizer: str | Path,
    corpus_dir: str | Path,
    output_dir: str | Path,
    append_eos: bool = True,
    log: Log = print,
) -> dict:
    """Once every corpus file's pairs are current: the manifest, written (left untouched when identical, so that
    current token files keep their times) and returned; a one-line ValueError naming what is missing otherwise."""
    output = Path(output_dir)
    settings = EncoderSettings.of(load_tokenizer(tokenizer), append_eos)
    sources = discover_sources(corpus_dir)
    records = []
    for source in sources:
        record = current_record(output, source, settings, corpus_fingerprint([source]))
        if record is None:
            raise ValueError(
                f"{source.path} is not encoded (or not with this tokenizer, or it changed since): run the encoding "
                f"again into {output}"
            )
        records.append(record)
    manifest = manifest_of(records, settings, corpus_dir)
    _remove_leftovers(output, {shard_name(source.label) for source in sources})
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    path = output / MANIFEST_NAME
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_atomically(path, text)
    totals = manifest["totals"]
    log(f"{output}: {totals['languages']} languages, {totals['documents']} documents, {totals['tokens']} tokens")
    return manifest


def encode_corpus(
    tokenizer: str | Path,
    corpus_dir: str | Path,
    output_dir: str | Path,
    append_eos: bool = True,
    workers: int = 0,
    log: Log = print,
    overwrite: bool = False,
) -> dict:
    """Encodes every file of `corpus_dir` whose pairs are not current into `output_dir`, and writes the manifest,
    which it returns. workers=0 uses every core; workers=1 runs in this process. Token files of another tokenizer, or
    another append_eos, there are replaced only when `overwrite`."""
    if workers < 0:
        raise ValueError(f"workers={workers} must be 0 (every core) or more")
    text_tokenizer = load_tokenizer(tokenizer)
    sources = discover_sources(corpus_dir)  # bad input fails here, before output_dir is touched
    if not overwrite:
        _check_same_encoding(Path(output_dir), text_tokenizer.fingerprint, append_eos, Path(corpus_dir))
    _encode(sources, Path(output_dir), text_tokenizer, append_eos, workers, log, alone=True)
    with encoding_alone(Path(output_dir)):
        return write_manifest(tokenizer, corpus_dir, output_dir, append_eos, log)
