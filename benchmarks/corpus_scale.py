"""Corpus scale: tokenizer training's memory as the corpus grows, and encoding throughput against Hugging Face
`tokenizers` with the same vocabulary, in one run.

Builds corpora of 1 GB and of --gb GB (default 5) from the sample corpus (../shared/data/multilingual), each
language's share of bytes kept (its text repeated to size): half the languages as parquet shards in FineWeb-2's
layout (`<lang>/train/000_NNNNN.parquet`), half as `<lang>/part-NNNNN.jsonl.zst` shards. Then:
1. `corolla tokenizer train tokenizer=bpe-64k` on each, in a fresh process with an empty measurement cache: peak
   memory (the process tree's RSS, sampled) and wall time; target: peak memory flat (within 10%);
2. on --encode-mb MB of the sample corpus's documents (cycled through), cleaned, in memory: MB/s per core of the trained
   tokenizer through SentencePiece (what `corolla tokenizer encode` runs) and through `tokenizers` loading its
   export (`tokenizer.json`, one thread); target >= 1.0x: the two encode identically, so corolla may use either;
3. `corolla tokenizer encode` of that text with 1 and 2 processes: MB/s and the speed-up;
4. the training data index: the sample corpus as --index-files shard files (default 600: 10 a language), encoded,
   then opened as training opens it (the manifest, every pair's header, each language's stream, the blend and a
   sample of every language); baseline: the same documents as one file a language; target: under 10 s.

    .venv/bin/python benchmarks/corpus_scale.py [--gb 5] [--encode-mb 100] [--index-files 600] [--only index]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers on one core, as SentencePiece encodes

import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import zstandard  # noqa: E402

from launch.config.compose import shared_data_dir  # noqa: E402
from tokenizer.corpus import discover_sources, read_documents  # noqa: E402
from tokenizer.files import HF_TOKENIZER_FILE, SPM_MODEL_FILE  # noqa: E402
from tokenizer.hygiene import HygieneStats  # noqa: E402
from tokenizer.loading import HFTokenizer, SentencePieceTokenizer  # noqa: E402

SHARD_BYTES = 64 * 10**6


def sample_documents() -> dict[str, list[str]]:
    """The sample corpus's clean documents, per language."""
    documents: dict[str, list[str]] = {}
    for source in discover_sources(shared_data_dir() / "multilingual"):
        for language, text in read_documents(source, HygieneStats()):
            documents.setdefault(language, []).append(text)
    return documents


def shards(documents: list[str], target_bytes: int) -> list[list[str]]:
    """The documents repeated to `target_bytes` of UTF-8, cut into shards of about SHARD_BYTES."""
    cut, current, size, written, index = [], [], 0, 0, 0
    while written < target_bytes:
        text = documents[index % len(documents)]
        index += 1
        current.append(text)
        size += len(text.encode()) + 1
        written += len(text.encode()) + 1
        if size >= SHARD_BYTES:
            cut.append(current)
            current, size = [], 0
    return [*cut, current] if current else cut


def build_corpus(root: Path, documents: dict[str, list[str]], total_bytes: int) -> int:
    """Writes the corpus; returns its number of shard files."""
    sample_bytes = {language: sum(len(text.encode()) + 1 for text in texts) for language, texts in documents.items()}
    total_sample = sum(sample_bytes.values())
    files = 0
    for number, (language, texts) in enumerate(sorted(documents.items())):
        for index, shard in enumerate(shards(texts, total_bytes * sample_bytes[language] // total_sample)):
            if number % 2 == 0:
                path = root / language / "train" / f"000_{index:05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table({"text": shard}), path, row_group_size=10_000)
            else:
                path = root / language / f"part-{index:05d}.jsonl.zst"
                path.parent.mkdir(parents=True, exist_ok=True)
                lines = "".join(json.dumps({"text": document}, ensure_ascii=False) + "\n" for document in shard)
                path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
            files += 1
    return files


def peak_rss_of(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Runs `command` (output to `log`); its wall seconds and the peak RSS of its process tree in GiB, sampled every
    0.1 s."""
    started = time.monotonic()
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        root, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            with contextlib.suppress(psutil.Error):  # a child that ended between the listing and the reading
                peak = max(peak, sum(member.memory_info().rss for member in [root, *root.children(recursive=True)]))
            time.sleep(0.1)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")
    return time.monotonic() - started, peak / 2**30


def corolla(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", *arguments]


def train_tokenizer(corpus: Path, output: Path, cache: Path) -> tuple[float, float]:
    env = {**os.environ, "COROLLA_CACHE": str(cache)}
    command = corolla("tokenizer", "train", "tokenizer=bpe-64k", f"corpus={corpus}", f"output_dir={output}")
    return peak_rss_of(command, env, output.with_suffix(".log"))


def memory_as_the_corpus_grows(work: Path, documents: dict[str, list[str]], sizes_gb: tuple[float, float]) -> Path:
    """Trains a tokenizer on a corpus of each size; returns the last one."""
    memory = {}
    for gigabytes in sizes_gb:
        corpus, started = work / f"corpus-{gigabytes:g}gb", time.monotonic()
        files = build_corpus(corpus, documents, int(gigabytes * 10**9))
        print(f"built {corpus.name}: {files} shard files in {time.monotonic() - started:.0f} s", flush=True)
        tokenizer = work / f"tokenizer-{gigabytes:g}gb"
        seconds, memory[gigabytes] = train_tokenizer(corpus, tokenizer, work / f"cache-{gigabytes:g}")
        print(f"tokenizer training on {gigabytes:g} GB: {seconds:.0f} s, peak memory {memory[gigabytes]:.2f} GiB")
        shutil.rmtree(corpus)
    small, large = sizes_gb
    print(f"peak memory at {large:g} GB / at {small:g} GB: {memory[large] / memory[small]:.3f} (target: within 10%)\n")
    return tokenizer


def megabytes_per_second(encode, texts: list[str], megabytes: float) -> float:
    started = time.perf_counter()
    for start in range(0, len(texts), 1000):
        encode(texts[start : start + 1000])
    return megabytes / (time.perf_counter() - started)


def engines(tokenizer: Path, documents: dict[str, list[str]], megabytes: float) -> None:
    """SentencePiece against tokenizers on the same text in memory, one core each."""
    cycle = [text for language in sorted(documents) for text in documents[language]]
    texts, size = [], 0
    while size < megabytes * 10**6:
        texts.append(cycle[len(texts) % len(cycle)])
        size += len(texts[-1].encode())
    sentencepiece = SentencePieceTokenizer(tokenizer / SPM_MODEL_FILE)
    hf = HFTokenizer(tokenizer / HF_TOKENIZER_FILE)
    assert sentencepiece.encode_batch(texts[:500]) == hf.encode_batch(texts[:500]), "the export encodes otherwise"
    spm_rate = megabytes_per_second(sentencepiece.encode_batch, texts, size / 10**6)
    hf_rate = megabytes_per_second(hf.encode_batch, texts, size / 10**6)
    print(f"encoding {size / 10**6:.0f} MB in memory, one core: SentencePiece {spm_rate:.2f} MB/s, ", end="")
    print(f"tokenizers {hf_rate:.2f} MB/s; SentencePiece / tokenizers: {spm_rate / hf_rate:.2f}x (target >= 1.0x)\n")


def encoding_processes(work: Path, tokenizer: Path, documents: dict[str, list[str]], megabytes: float) -> None:
    """`corolla tokenizer encode` end to end (reading, cleaning, writing) with 1 and 2 processes."""
    corpus = work / "encode-corpus"
    build_corpus(corpus, documents, int(megabytes * 10**6))
    rates = {}
    for workers in (1, 2):
        output = work / f"tokens-{workers}"
        command = corolla("tokenizer", "encode", f"tokenizer={tokenizer}", f"corpus={corpus}", f"output_dir={output}")
        env = {**os.environ, "COROLLA_CACHE": str(work / f"cache-encode-{workers}")}
        started = time.monotonic()
        subprocess.run([*command, f"workers={workers}"], cwd=REPO_ROOT, check=True, capture_output=True, env=env)
        rates[workers] = megabytes / (time.monotonic() - started)
        print(f"corolla tokenizer encode of {megabytes:g} MB, {workers} process(es): {rates[workers]:.2f} MB/s")
    print(f"speed-up from 1 to 2 processes: {rates[2] / rates[1]:.2f}x")


def write_language_shards(corpus: Path, documents: dict[str, list[str]], per_language: int) -> int:
    """Each language's documents cut into `per_language` .txt shards in its own directory; the file count."""
    for language, texts in documents.items():
        directory = corpus / language
        directory.mkdir(parents=True)
        step = -(-len(texts) // per_language)
        for index in range(per_language):
            part = texts[index * step : (index + 1) * step] or texts[-1:]
            (directory / f"part-{index:05d}.txt").write_text("\n".join(part) + "\n", encoding="utf-8")
    return len(documents) * per_language


def open_for_training(tokens: Path) -> float:
    """Seconds to open token files as a training rank does, until it holds a sample of every language."""
    from launch.config.data import DataConfig
    from launch.data.blend import BlendedDataset
    from launch.data.corpus import TokenCorpus

    started = time.perf_counter()
    config = DataConfig(str(tokens))
    dataset = BlendedDataset(TokenCorpus(tokens, config.validation_documents), config, seq_length=128)
    seen = set()
    for index in range(10**6):
        seen.add(dataset.language_of(index))
        dataset[index]
        if len(seen) == len(dataset.sequences):
            break
    return time.perf_counter() - started


def training_index(work: Path, tokenizer: Path, documents: dict[str, list[str]], files: int) -> None:
    from tokenizer.encode import encode_corpus

    times = {}
    for per_language in (1, -(-files // len(documents))):
        corpus, tokens = work / f"index-corpus-{per_language}", work / f"index-tokens-{per_language}"
        count = write_language_shards(corpus, documents, per_language)
        encode_corpus(tokenizer, corpus, tokens, workers=1, log=lambda _: None)
        times[count] = min(open_for_training(tokens) for _ in range(3))
        print(f"training data index over {count} token file pairs: {times[count]:.3f} s (best of 3)")
    few, many = sorted(times)
    print(f"{many} files: {times[many]:.2f} s (target: under 10 s), {times[many] / times[few]:.2f}x the time of {few}")


def sample_tokenizer(work: Path) -> Path:
    """A small tokenizer of the sample corpus, for --only index."""
    output = work / "sample-tokenizer"
    command = corolla("tokenizer", "train", "tokenizer=tiny", f"output_dir={output}")
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=5.0)
    parser.add_argument("--small-gb", type=float, default=1.0, help="the corpus the --gb one is compared with")
    parser.add_argument("--encode-mb", type=float, default=100.0)
    parser.add_argument("--index-files", type=int, default=600)
    parser.add_argument("--only", choices=["index"], help="only the training data index (with a small tokenizer)")
    arguments = parser.parse_args()
    documents = sample_documents()
    with tempfile.TemporaryDirectory(prefix="corolla-corpus-scale-") as tmp:
        work = Path(tmp)
        if arguments.only == "index":
            training_index(work, sample_tokenizer(work), documents, arguments.index_files)
            return
        tokenizer = memory_as_the_corpus_grows(work, documents, (arguments.small_gb, arguments.gb))
        engines(tokenizer, documents, arguments.encode_mb)
        encoding_processes(work, tokenizer, documents, arguments.encode_mb)
        training_index(work, tokenizer, documents, arguments.index_files)


if __name__ == "__main__":
    main()
