"""Real corpus layouts: per-language directories of shards (.txt, .jsonl, .gz, .zst, parquet, as FineWeb-2 and
CulturaX ship them) and parquet files whose rows name their language read the same documents, in the same order, as
one `<lang>.txt` per language: the same sizes, the same tokenizer, byte-identical token files. A file is measured
once, while its size and modification time stay."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from conftest import cut_corpus
from tokenizer.config import TokenizerConfig, TokenizerTrainJob
from tokenizer.corpus import CorpusError, discover_sources, read_documents
from tokenizer.corpus_scan import measured_fingerprint, scan_corpus
from tokenizer.encode import encode_corpus
from tokenizer.hygiene import HygieneStats
from tokenizer.token_files import MANIFEST_NAME, TokenFile
from tokenizer.train import train_tokenizer

LANGUAGES = ["eng_Latn", "fra_Latn", "hin_Deva", "zho_Hans"]
DOCUMENTS = 240
QUIET = {"log": lambda *_: None}


def documents(flat: Path, language: str) -> list[str]:
    return (flat / f"{language}.txt").read_text(encoding="utf-8").splitlines()


def thirds(lines: list[str]) -> list[list[str]]:
    size = len(lines) // 3
    return [lines[:size], lines[size : 2 * size], lines[2 * size :]]


def write_parquet(path: Path, columns: dict[str, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=50)  # several row groups: read a batch at a time


def sharded(flat: Path, root: Path) -> Path:
    """The flat corpus's documents, each language's in order over three shards of another kind."""
    eng, fra, hin, zho = (thirds(documents(flat, language)) for language in LANGUAGES)
    # FineWeb-2: data/<lang>/train/000_0000N.parquet, a `text` column among others.
    for number, part in enumerate(eng):
        write_parquet(
            root / "data" / "eng_Latn" / "train" / f"000_{number:05d}.parquet", {"id": ["x"] * len(part), "text": part}
        )
    # jsonl.zst shards, records with `text` only: the directory names the language.
    for number, part in enumerate(fra):
        shard = root / "fra_Latn" / f"part-{number}.jsonl.zst"
        shard.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({"text": text, "url": "u"}, ensure_ascii=False) + "\n" for text in part)
        shard.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    # .txt and .txt.gz shards.
    (root / "hin_Deva").mkdir()
    (root / "hin_Deva" / "a.txt").write_text("\n".join(hin[0]) + "\n", encoding="utf-8")
    (root / "hin_Deva" / "b.txt.gz").write_bytes(gzip.compress(("\n".join(hin[1]) + "\n").encode()))
    (root / "hin_Deva" / "c.txt").write_text("\n".join(hin[2]) + "\n", encoding="utf-8")
    # Parquet outside any language directory: each row says its language.
    for number, part in enumerate(zho):
        write_parquet(root / "mixed" / f"{number}.parquet", {"text": part, "language": ["zho_Hans"] * len(part)})
    (root / "README.md").write_text("not corpus text\n")
    return root


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    flat = cut_corpus(tmp_path_factory.mktemp("flat"), LANGUAGES, DOCUMENTS)
    return flat, sharded(flat, tmp_path_factory.mktemp("sharded"))


def test_a_sharded_corpus_reads_as_the_flat_one(corpora) -> None:
    flat, shards = corpora
    assert len(discover_sources(shards)) == 12
    flat_scan, sharded_scan = scan_corpus(str(flat)), scan_corpus(str(shards))
    assert sharded_scan.sizes == flat_scan.sizes and sharded_scan.languages == LANGUAGES


def test_a_sharded_corpus_trains_the_same_tokenizer_and_encodes_identical_token_files(corpora, tmp_path) -> None:
    config = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=400_000)
    outputs = {}
    for name, corpus in zip(("flat", "sharded"), corpora, strict=True):
        tokenizer = train_tokenizer(TokenizerTrainJob(config, str(corpus), str(tmp_path / name / "tokenizer")), **QUIET)
        encode_corpus(tokenizer, corpus, tmp_path / name / "tokens", workers=1, **QUIET)
        outputs[name] = tmp_path / name
    flat, sharded_output = outputs["flat"], outputs["sharded"]
    assert (flat / "tokenizer" / "tokenizer.model").read_bytes() == (
        sharded_output / "tokenizer" / "tokenizer.model"
    ).read_bytes()
    for language in LANGUAGES:  # one pair per shard file, in corpus order: the same documents and tokens
        streams = [language_stream(output / "tokens", language) for output in (flat, sharded_output)]
        assert streams[0] == streams[1], language


def language_stream(tokens_dir: Path, language: str) -> tuple[bytes, list[int]]:
    """A language's tokens and document lengths, its pairs joined in the manifest's order."""
    manifest = json.loads((tokens_dir / MANIFEST_NAME).read_text())
    pairs = [TokenFile(tokens_dir / shard["file"]) for shard in manifest["languages"][language]["shards"]]
    tokens = b"".join(pair.tokens.tobytes() for pair in pairs)
    return tokens, [int(length) for pair in pairs for length in np.diff(pair.offsets)]


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ({"shards/a.txt": "text\n"}, "is in no language directory: name one of its enclosing directories"),
        ({"fra_Latm/a.txt": "text\n"}, "unknown language code 'fra_Latm'"),
        ({"fra_Latn/a.jsonl": '{"body": "x"}\n'}, "lacks string fields 'text': each record needs them"),
        ({"x.parquet": {"text": ["a"]}}, "not a 'text' and a 'lang' (or 'language') column"),
        ({"fra_Latn/x.parquet": {"content": ["a"]}}, "has columns content, not a 'text' column"),
        ({"x.parquet": {"text": ["a"], "lang": ["french"]}}, "unknown language code 'french' in"),
        ({"fra_Latn/x.parquet": b"PAR1 not really"}, "cannot be read as parquet"),
        ({"fra_Latn/x.parquet": {"text": [b"bonjour"]}}, "its 'text' column holds binary, not strings"),
        # Passed over without a word, the corpus then one language short.
        ({"fra_Latn.txt.bz2": b"BZh9", "eng_Latn.txt": "text\n"}, "is compressed with .bz2, which corolla does not"),
        ({"fra_Latn.TXT": "text\n", "eng_Latn.txt": "text\n"}, "is named in capitals, which corolla does not read"),
        ({"fra_Latn.TXT.GZ": b"\x1f\x8b", "eng_Latn.txt": "text\n"}, "rename it to end in .txt.gz"),
        ({"fra_Latn/x.parquet.gz": b"\x1f\x8b", "eng_Latn.txt": "text\n"}, "is a compressed parquet file"),
        ({"fra_Latn.json": '{"text": "a"}\n', "eng_Latn.txt": "a\n"}, "is named for fra_Latn but is no format corolla"),
        ({"fra_Latn/c4-fr.json.gz": b"\x1f\x8b", "eng_Latn.txt": "a\n"}, "fra_Latn holds no file corolla reads"),
        # Read twice, the language's share doubled.
        ({"fra_Latn.txt": "a\n", "fra_Latn.txt.gz": gzip.compress(b"a\n")}, "differ only in their compression"),
        # Each encoding wrote the other's token files, and found its own not current.
        ({"hin_Deva/a/b.txt": "a\n", "hin_Deva/a~b.txt": "b\n"}, "into the same token files (hin_Deva~a~b.txt)"),
    ],
)
def test_bad_shards_are_refused_in_one_line(tmp_path: Path, layout: dict, expected: str) -> None:
    for name, content in layout.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            write_parquet(path, content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    with pytest.raises(CorpusError) as error:
        scan_corpus(str(tmp_path))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_file_is_measured_once_while_its_size_and_time_stay(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COROLLA_CACHE", str(tmp_path / "cache"))
    corpus = cut_corpus(tmp_path / "corpus", ["fra_Latn"], 50)
    text = corpus / "fra_Latn.txt"
    first = scan_corpus(str(corpus))
    # Same size, same modification time, other bytes: what a second scan reads is the cache, not the file.
    stat = text.stat()
    text.write_bytes(text.read_bytes().replace(b"\n", b" ", 10))
    os.utime(text, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert scan_corpus(str(corpus)).sizes == first.sizes and scan_corpus(str(corpus)).fingerprint == first.fingerprint
    os.utime(text)  # touched: measured again
    assert measured_fingerprint(discover_sources(str(corpus))) is None  # what a dry run sees: not measured as it is
    second = scan_corpus(str(corpus))
    assert second.sizes["fra_Latn"].documents == 40 and second.fingerprint != first.fingerprint
    assert measured_fingerprint(discover_sources(str(corpus))) == second.fingerprint


def test_a_cache_that_cannot_be_written_costs_only_time(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv("COROLLA_CACHE", str(tmp_path / "not-a-directory"))
    corpus = cut_corpus(tmp_path / "corpus", ["fra_Latn"], 50)
    assert scan_corpus(str(corpus)).sizes["fra_Latn"].documents == 50


def test_language_directories_linked_in_are_read_and_checksums_passed_over(tmp_path: Path) -> None:
    """Shards linked in from another filesystem (scratch storage): rglob did not follow the link, and the language
    was left out without a word."""
    store, corpus = tmp_path / "store", tmp_path / "corpus"
    (store / "hin_Deva").mkdir(parents=True)
    (store / "hin_Deva" / "part-0.txt").write_text("नमस्ते दुनिया\n")
    corpus.mkdir()
    (corpus / "eng_Latn.txt").write_text("hello world\n")
    (corpus / "eng_Latn.txt.md5").write_text("0123456789abcdef  eng_Latn.txt\n")
    (corpus / "eng_Latn.txt.sha256sum").write_text("0123456789abcdef  eng_Latn.txt\n")  # refused as data in another
    (corpus / "hin_Deva.md").write_text("# Hindi: where it comes from\n")  # format, as these two were
    (corpus / "hin_Deva").symlink_to(store / "hin_Deva")
    (corpus / "again").symlink_to(corpus)  # a link back up is followed once, not for ever
    (corpus / ".#eng_Latn.txt").symlink_to("user@host.4242:1700000000")  # Emacs's lock on a file it edits
    hub_cache = corpus / ".cache" / "huggingface" / "download" / "hin_Deva"  # `huggingface-cli download`'s
    hub_cache.mkdir(parents=True)
    (hub_cache / "part-0.txt.metadata").write_text("0123\n")
    sources = discover_sources(corpus)
    assert [(source.name, source.language) for source in sources] == [
        ("eng_Latn.txt", "eng_Latn"),
        ("hin_Deva/part-0.txt", "hin_Deva"),
    ]
    (corpus / "tha_Thai").symlink_to(store / "tha_Thai")  # purged, as scratch storage is: the language was left out
    with pytest.raises(CorpusError, match=r"tha_Thai links to .*/store/tha_Thai, which is gone: restore it or remove"):
        discover_sources(corpus)


def test_a_flores_200_code_iso_639_3_has_since_retired_names_a_language(tmp_path: Path) -> None:
    """South Levantine Arabic, ajp_Arab in FLORES-200: pycountry no longer knows ajp, and a whole FLORES-200 parallel
    set was refused."""
    (tmp_path / "ajp_Arab.txt").write_text("كيفك اليوم؟\n")
    assert [source.language for source in discover_sources(tmp_path)] == ["ajp_Arab"]


def test_a_byte_order_mark_at_the_start_of_a_jsonl_file_is_no_part_of_its_first_record(tmp_path: Path) -> None:
    """JSON refused it: the file was said not to be JSON lines, though Windows tools write UTF-8 so."""
    (tmp_path / "web.jsonl").write_bytes('\ufeff{"text": "bonjour", "lang": "fra_Latn"}\n'.encode())
    (tmp_path / "eng_Latn.txt").write_bytes("\ufeffhello\n".encode())
    [english, web] = discover_sources(tmp_path)
    documents = [list(read_documents(source, HygieneStats())) for source in (english, web)]
    assert documents == [[("eng_Latn", "hello")], [("fra_Latn", "bonjour")]]
