"""Text in: find a corpus's per-language sources and stream clean documents out of them.

A corpus directory holds, in any mix:
- `<lang>.txt` files, one document per line;
- JSONL files whose records have `text` and `lang` fields;
- per-language directories of shards, as today's open corpora come (FineWeb-2's `fra_Latn/train/000_00000.parquet`):
  every `.txt`, `.jsonl` and `.parquet` file under a directory named with a language code is of that language
  (JSONL records then need `text` only, parquet files a `text` column);
- parquet files elsewhere, whose rows name their language in a `lang` or `language` column.
Text files may be `.gz` or `.zst` compressed; links to directories are followed. Every file is read streaming, never
whole. Language codes are
FLORES-200 style: ISO 639-3 + ISO 15924 (`fra_Latn`).
"""

from __future__ import annotations

import codecs
import functools
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pycountry
import zstandard
from tqdm import tqdm

from tokenizer.config import SizeMeasure
from tokenizer.files import not_a_directory
from tokenizer.hygiene import HygieneStats, clean_text

LANGUAGE_CODE = re.compile(r"^([a-z]{3})_([A-Z][a-z]{3})$")
COMPRESSIONS = (".gz", ".zst")
# Compressions corolla does not read: a file of a corpus format compressed with one is refused, not passed over.
OTHER_COMPRESSIONS = (".bz2", ".xz", ".lzma", ".lz4", ".br", ".zip", ".7z", ".Z")
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


# ISO 639-3 codes retired since FLORES-200 named its languages, which pycountry no longer knows: South Levantine
# Arabic, merged into North Levantine's apc in 2023.
RETIRED_IN_FLORES = frozenset({"ajp"})


@functools.cache
def is_language_code(code: str) -> bool:
    match = LANGUAGE_CODE.match(code)
    language = match and (match[1] in RETIRED_IN_FLORES or pycountry.languages.get(alpha_3=match[1]))
    return bool(language and pycountry.scripts.get(alpha_4=match[2]))


def check_language_code(code: str, where: str) -> str:
    if not is_language_code(code):
        raise CorpusError(
            f"unknown language code {code!r} in {where}: name languages FLORES-200 style, ISO 639-3 + ISO 15924 "
            "script (e.g. fra_Latn.txt)"
        )
    return code


TEXT, JSONL, PARQUET = ".txt", ".jsonl", ".parquet"
FORMATS = (TEXT, JSONL, PARQUET)
LANGUAGE_COLUMNS = ("lang", "language")  # a parquet file outside a language directory: where rows name theirs
PARQUET_ROWS_PER_BATCH = 1024


@dataclass(frozen=True)
class Source:
    path: Path
    language: str | None  # None where each record names its language
    name: str = ""  # the path inside the corpus directory: tells apart shards of the same file name

    @property
    def format(self) -> str:
        return _format_of(self.path.name)

    @property
    def label(self) -> str:
        return self.name or self.path.name


def _format_of(name: str) -> str:
    """The suffix a file's name gives its format, past a compression corolla reads (`.txt` of `x.txt.gz`)."""
    return Path(_strip_compression(name)).suffix


def _strip_compression(name: str) -> str:
    for suffix in COMPRESSIONS:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _language_directory(relative: Path) -> Path | None:
    """The nearest enclosing directory named with a language code, if any."""
    return next((parent for parent in relative.parents if LANGUAGE_CODE.match(parent.name)), None)


# What a file beside the data may be named for its language without being data: a checksum list, a description.
CHECKSUMS = (".md5", ".sha1", ".sha256", ".sha512", ".md5sum", ".sha1sum", ".sha256sum", ".sha512sum", ".md")
READ = ".txt, .jsonl (each also .gz or .zst) and .parquet"


def _unread_data(relative: Path) -> str | None:
    """Why a file corolla does not read would leave a language out without a word: at the top, it is named for one
    (fra_Latn.json); None where it is no language's (a README, a checksum list)."""
    language, _, suffixes = relative.name.partition(".")
    if len(relative.parts) > 1 or not is_language_code(language) or ("." + suffixes).endswith(CHECKSUMS):
        return None
    return f"is named for {language} but is no format corolla reads ({READ}): convert it, or move it out of the corpus"


def unread_format(path: Path, compressions: tuple[str, ...] = COMPRESSIONS) -> str | None:
    """Why a file named as a corpus format is not read as one (compressed otherwise than `compressions`, named in
    capitals), and what to do; None for one that is read, or is no corpus file at all (a checksum list)."""
    name, lower = path.name, path.name.lower()
    other = next((suffix for suffix in OTHER_COMPRESSIONS + COMPRESSIONS if lower.endswith(suffix.lower())), "")
    bare = lower.removesuffix(other.lower())
    fmt = Path(bare).suffix
    if fmt not in FORMATS:
        return None
    if fmt == PARQUET and other:
        return "is a compressed parquet file, which corolla reads as it is (parquet compresses itself): decompress it"
    if other and other not in compressions:
        known = " or ".join(compressions)
        return f"is compressed with {other}, which corolla does not read here: " + (
            f"recompress it ({known})" if compressions else "decompress it"
        )
    if not name.endswith(fmt + other):
        return f"is named in capitals, which corolla does not read: rename it to end in {fmt + other}"
    return None


def _source(corpus: Path, path: Path) -> Source | None:
    """The source a corpus file is, None for a file that is not text (a README, a checksum list)."""
    relative = path.relative_to(corpus)
    name, where = relative.as_posix(), str(path)
    if problem := unread_format(path):
        raise CorpusError(f"corpus file {path} {problem}")
    fmt = _format_of(path.name)
    if fmt not in FORMATS:
        if problem := _unread_data(relative):
            raise CorpusError(f"corpus file {path} {problem}")
        return None
    directory = _language_directory(relative)
    if directory:
        return Source(path, check_language_code(directory.name, where), name)
    if fmt == TEXT and len(relative.parts) == 1:
        return Source(path, check_language_code(_strip_compression(path.name)[: -len(TEXT)], where), name)
    if fmt == TEXT:
        raise CorpusError(
            f"{path} is in no language directory: name one of its enclosing directories with its language code "
            "(e.g. fra_Latn/), or put it at the top as <lang>.txt"
        )
    return Source(path, None, name)


def discover_sources(corpus_dir: str | Path) -> list[Source]:
    corpus = Path(corpus_dir)
    if problem := not_a_directory(corpus):
        raise CorpusError(
            f"corpus directory {corpus} {problem}: pass corpus=DIR with <lang>.txt or .jsonl files, or "
            "per-language directories of shards"
        )
    files = _corpus_files(corpus)
    sources = [source for source in (_source(corpus, path) for path in files) if source is not None]
    _check_no_twins(sources)
    _check_language_directories_read(corpus, files, sources)
    if not sources:
        raise CorpusError(
            f"corpus directory {corpus} has no <lang>.txt[.gz|.zst], .jsonl or .parquet files, nor per-language "
            "directories of them"
        )
    for source in sources:
        if source.path.stat().st_size == 0:
            raise CorpusError(f"corpus file {source.path} is empty: remove it or fill it")
    return sources


def _corpus_files(corpus: Path) -> list[Path]:
    """Every file under `corpus`, in path order, through links to directories too (shards linked in from another
    filesystem), each directory once however many links lead to it, hidden directories aside."""
    files, seen = [], set()
    for directory, subdirectories, names in os.walk(corpus, followlinks=True):
        if (real := os.path.realpath(directory)) in seen:
            subdirectories.clear()
            continue
        seen.add(real)
        # Hidden ones are a tool's (Hugging Face's .cache/ of a download, holding its files' .lock and .metadata);
        # sorted: the same path for a directory two links lead to, run after run.
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for path in (Path(directory, name) for name in names):
            if path.is_symlink() and not path.exists() and _named_as_corpus(path.name):  # its target purged
                raise CorpusError(
                    f"corpus entry {path} links to {os.readlink(path)}, which is gone: restore it or remove the link"
                )
            files += [path] if path.is_file() else []
    return sorted(files)


def shard_name(label: str) -> str:
    """A corpus file's name among the token files: its path inside the corpus (Source.label), `/` written `~`."""
    return label.replace("/", "~")


def _named_as_corpus(name: str) -> bool:
    """A language directory's name or a corpus file's: an editor's lock link (.#fra_Latn.txt) is neither."""
    return is_language_code(name) or (not name.startswith(".") and _format_of(name) in FORMATS)


def _check_language_directories_read(corpus: Path, files: list[Path], sources: list[Source]) -> None:
    """A language directory none of whose files corolla reads (mC4's c4-fr.*.json.gz) leaves the language out."""
    read = {_language_directory(source.path.relative_to(corpus)) for source in sources}
    for path in files:
        directory = _language_directory(path.relative_to(corpus))
        if directory is not None and directory not in read:
            raise CorpusError(
                f"corpus directory {corpus / directory} holds no file corolla reads ({READ}; e.g. {path.name}): "
                "convert its files (JSON lines are read as .jsonl), or move it out of the corpus"
            )


def _check_no_twins(sources: list[Source]) -> None:
    """Two files of one name but for their compression (fra_Latn.txt and fra_Latn.txt.gz) are one text twice; two
    whose paths differ only where one has `/` and the other `~` would write the same token files."""
    by_name: dict[Path, Source] = {}
    by_shard: dict[str, Source] = {}
    for source in sources:
        bare = source.path.with_name(_strip_compression(source.path.name))
        if (twin := by_name.setdefault(bare, source)) is not source:
            raise CorpusError(
                f"corpus files {twin.path} and {source.path} differ only in their compression: keep one of them"
            )
        if (twin := by_shard.setdefault(shard_name(source.label), source)) is not source:
            raise CorpusError(
                f"corpus files {twin.path} and {source.path} would be encoded into the same token files "
                f"({shard_name(source.label)}): rename one of them"
            )


def open_binary(path: Path) -> BinaryIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(path.open("rb")))
    return path.open("rb")


def _decode_record(source: Source, raw: bytes, line_number: int) -> tuple[str, str] | None:
    """(language, text) of one line, or None where the line is blank."""
    text = raw.decode("utf-8").rstrip("\r\n")
    if not text.strip():
        return None
    if source.format == TEXT:
        return source.language, text  # type: ignore[return-value]
    where = f"{source.path}:{line_number}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise CorpusError(f"{where} is not valid JSON ({error.msg}): each line must be one JSON object") from None
    language = source.language or (record.get("lang") if isinstance(record, dict) else None)
    if not (isinstance(record, dict) and isinstance(record.get("text"), str) and isinstance(language, str)):
        needed = "'text'" if source.language else "'text' and 'lang'"
        raise CorpusError(f"{where} lacks string fields {needed}: each record needs them")
    return check_language_code(language, where), record["text"]


def _raw_lines(path: Path) -> Iterator[bytes]:
    try:
        with open_binary(path) as handle:
            yield from handle
    except (OSError, EOFError, zstandard.ZstdError) as error:
        raise CorpusError(f"corpus file {path} cannot be read ({error}): replace the damaged file") from None


def _line_records(source: Source, stats: HygieneStats) -> Iterator[tuple[str, str]]:
    """(language, text) per line of a text or JSONL file; lines that are not UTF-8 are counted and skipped."""
    invalid = lines = 0
    for line_number, raw in enumerate(_raw_lines(source.path), start=1):
        lines += 1
        if line_number == 1 and raw[:2] in UTF16_MARKS:
            # Not UTF-8, though text in ASCII letters is UTF-8 byte for byte (its NULs too): no share of lines tells.
            raise CorpusError(
                f"corpus file {source.path} is UTF-16 (it begins with UTF-16's byte-order mark): convert it, e.g. "
                "iconv -f UTF-16 -t UTF-8"
            )
        if line_number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # which JSON refuses, and is no text of a document
        try:
            record = _decode_record(source, raw, line_number)
        except UnicodeDecodeError:
            invalid += 1
            stats.count_invalid_utf8(source.language or "?")
            continue
        if record is not None:
            yield record
    if lines and invalid > MAX_INVALID_SHARE * lines:
        raise CorpusError(
            f"corpus file {source.path} is not UTF-8 ({invalid} of {lines} lines invalid): convert it, "
            "e.g. iconv -f <encoding> -t UTF-8"
        )


UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")  # the byte-order marks a UTF-16 file begins with, either endianness


def _parquet_records(source: Source) -> Iterator[tuple[str, str]]:
    """(language, text) per row of a parquet file, a batch of rows in memory at a time."""
    import pyarrow.parquet  # here: a second to import, and only parquet corpora need it

    try:
        table = pyarrow.parquet.ParquetFile(source.path)
        columns = table.schema_arrow.names
    except (OSError, pyarrow.ArrowException) as error:
        raise CorpusError(f"corpus file {source.path} cannot be read as parquet ({error}): replace it") from None
    language_column = next((name for name in LANGUAGE_COLUMNS if name in columns), None)
    if "text" not in columns or (source.language is None and language_column is None):
        needed = "a 'text' column" if source.language else "a 'text' and a 'lang' (or 'language') column"
        raise CorpusError(
            f"{source.path} has columns {', '.join(columns)}, not {needed}: rename them, or put the file in a "
            "directory named with its language code (e.g. fra_Latn/)"
        )
    text_type = table.schema_arrow.field("text").type
    if not (pyarrow.types.is_string(text_type) or pyarrow.types.is_large_string(text_type)):
        raise CorpusError(
            f"{source.path}: its 'text' column holds {text_type}, not strings: write it as UTF-8 strings (pyarrow's "
            "string type; bytes decoded), or leave the file out of the corpus"
        )
    wanted = ["text"] if source.language else ["text", language_column]
    for number, batch in enumerate(table.iter_batches(PARQUET_ROWS_PER_BATCH, columns=wanted)):
        texts = batch.column("text").to_pylist()
        languages = [source.language] * len(texts) if source.language else batch.column(1).to_pylist()
        for row, (language, text) in enumerate(zip(languages, texts, strict=True)):
            if text and text.strip():
                where = f"{source.path}: row {number * PARQUET_ROWS_PER_BATCH + row + 1}"
                yield (source.language or check_language_code(str(language), where)), text


def read_documents(source: Source, stats: HygieneStats) -> Iterator[tuple[str, str]]:
    """Yields (language, clean NFC text) per document, counting what hygiene skipped or repaired in `stats`."""
    records = _parquet_records(source) if source.format == PARQUET else _line_records(source, stats)
    for language, text in records:
        clean = clean_text(language, text, stats)
        if clean:
            yield language, clean


def iter_corpus(sources: list[Source], hygiene: HygieneStats, desc: str) -> Iterator[tuple[str, str]]:
    """Every (language, document) of the corpus, streamed, with a progress bar over the files' bytes."""
    total = sum(source.path.stat().st_size for source in sources)
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None, leave=False) as progress:
        for source in sources:
            yield from read_documents(source, hygiene)
            progress.update(source.path.stat().st_size)
