"""`corolla tokenizer train`: corpus → language budgets → sample → SentencePiece → output directory.

The output directory appears whole or not at all: everything is written to a temporary sibling and renamed.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, fields, replace
from enum import Enum
from importlib.metadata import version
from pathlib import Path

from tqdm import tqdm

from tokenizer.config import (
    DEFAULT_SAMPLE_BYTES,
    SAMPLING_KNOBS,
    ModelType,
    Sampling,
    TokenizerConfig,
    TokenizerTrainJob,
)
from tokenizer.corpus import discover_sources
from tokenizer.corpus_scan import CorpusScan, corpus_fingerprint, scan_corpus
from tokenizer.files import (
    ADDED_PIECES_FILE,
    METADATA_FILE,
    SPM_MODEL_FILE,
    STAGED,
    TOKENIZER_FILES,
    Log,
    check_replaceable,
    publish,
    read_json,
    sha256_of,
    staging_area,
)
from tokenizer.hf_export import write_hf_tokenizer
from tokenizer.loading import load_tokenizer
from tokenizer.parity import parity_search
from tokenizer.sampling import LanguageBudget, budgets, format_budget_table, sample_sentences
from tokenizer.spm import train_sentencepiece, training_threads
from tokenizer.vocab import padded_vocab_size

FILES_RECORD = "files"  # metadata's: the SHA-256 of each file beside it, which a tokenizer current holds as written


def _read_sentences(path: Path) -> Iterator[str]:
    """The sample, line by line, with a progress bar while SentencePiece loads it (training follows)."""
    with (
        path.open(encoding="utf-8") as sample,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc="loading sample", disable=None, leave=False
        ) as progress,
    ):
        for line in sample:
            progress.update(len(line.encode("utf-8")))
            yield line.rstrip("\n")


def train_on_plan(
    scan: CorpusScan, plan: list[LanguageBudget], cfg: TokenizerConfig, seed: int, workdir: Path, log: Log = print
) -> tuple[bytes, dict[str, int]]:
    """Samples by `plan` and trains; returns the serialized model and the bytes sampled per language."""
    sample_path = workdir / "sample.txt"
    sampled = sample_sentences(scan, plan, seed, sample_path)
    start = time.perf_counter()
    try:
        if not any(sampled.values()):
            raise ValueError(
                f"tokenizer.sample_bytes={cfg.sample_bytes} drew no text from the corpus: raise it "
                f"({DEFAULT_SAMPLE_BYTES} by default)"
            )
        model = train_sentencepiece(_read_sentences(sample_path), cfg, seed, scan.languages)
    except RuntimeError as error:
        raise ValueError(_explain_sentencepiece_error(str(error), cfg)) from None
    finally:
        sample_path.unlink()
    seconds, megabytes = time.perf_counter() - start, sum(sampled.values()) / 1e6
    log(f"SentencePiece {cfg.model_type.value} {cfg.vocab_size}: trained on {megabytes:.1f} MB in {seconds:.0f} s")
    return model, sampled


def _explain_sentencepiece_error(message: str, cfg: TokenizerConfig) -> str:
    if "Vocabulary size too high" in message:
        limit = message.rsplit("<=", 1)[-1].strip(" .")
        return (
            f"tokenizer.vocab_size={cfg.vocab_size} is more than this corpus sample allows (at most {limit}): "
            "lower tokenizer.vocab_size or give more text"
        )
    if "smaller than required_chars" in message:
        return (
            f"tokenizer.vocab_size={cfg.vocab_size} cannot hold the corpus's characters at "
            f"tokenizer.character_coverage={cfg.character_coverage}: raise the vocabulary or lower the coverage"
        )
    return "SentencePiece failed: " + message.splitlines()[0]


# Config keys that describe the output without changing the tokenizer (pad_multiple: recorded by older corollas).
DESCRIPTIVE_KEYS = ("tensor_parallel", "pad_multiple")


def config_record(cfg: TokenizerConfig) -> dict:
    """The config as plain JSON values, as recorded in metadata.json."""
    return {key: value.value if isinstance(value, Enum) else value for key, value in asdict(cfg).items()}


def tokenizer_identity(record: dict) -> dict:
    """What in a config record decides the trained tokenizer: two configs with the same identity train the same. The
    thread count decides a unigram model (0 trains it on one), not a BPE one (training_threads), and a knob its
    sampling does not read (the reference language, which the evaluation reads too, only parity's) decides nothing:
    each is counted as its default where it trains the same, so that the identity of a default config, a cache
    entry's key (launch/data/prepare.py), stays what it was."""
    identity = {key: value for key, value in record.items() if key not in DESCRIPTIVE_KEYS}
    bpe = identity.get("model_type") == ModelType.bpe.value
    if "threads" in identity and (bpe or identity["threads"] == 1):
        identity["threads"] = 0
    readers = {**SAMPLING_KNOBS, "reference_language": (Sampling.parity,)}
    for knob, samplings in readers.items():
        if knob in identity and identity.get("sampling") not in {sampling.value for sampling in samplings}:
            identity[knob] = KNOB_DEFAULTS[knob]
    return identity


KNOB_DEFAULTS = {field.name: field.default for field in fields(TokenizerConfig)}


def versions() -> dict[str, str]:
    packages = ("corolla", "sentencepiece", "tokenizers", "myanmartools", "paraencoder", "pycountry")
    return {"python": platform.python_version(), **{name: version(name) for name in packages}}


def _metadata(job: TokenizerTrainJob, scan: CorpusScan, plan, sampled: dict[str, int], extra: dict) -> dict:
    cfg = job.tokenizer
    return {
        "languages": scan.languages,
        "corpus": str(Path(job.corpus).resolve()),
        "corpus_fingerprint": scan.fingerprint,
        "corpus_bytes": {lang: size.bytes for lang, size in scan.sizes.items()},
        "bytes_sampled": sampled,
        "budget_bytes": {row.language: round(row.budget_bytes) for row in plan},
        "sampling": cfg.sampling.value,
        "alpha": cfg.alpha,
        "seed": job.seed,
        "vocab_size": cfg.vocab_size,
        "padded_vocab_size": padded_vocab_size(cfg.vocab_size, cfg.tensor_parallel),
        "tokenizer_config": config_record(cfg),
        "training_threads": training_threads(cfg),
        "hygiene": scan.hygiene.as_dict(),
        "versions": versions(),
        **extra,
    }


def _metadata_of_job(job: TokenizerTrainJob) -> dict | None:
    """`job.output_dir`'s metadata where it records `job`: same config, seed and corpus; else None."""
    metadata_path = Path(job.output_dir) / METADATA_FILE
    if not metadata_path.is_file():
        return None
    try:
        metadata = read_json(metadata_path, "train the tokenizer again")
    except ValueError:  # damaged: what it holds is not known to be current
        return None
    same = (
        tokenizer_identity(metadata.get("tokenizer_config", {})) == tokenizer_identity(config_record(job.tokenizer))
        and metadata.get("seed") == job.seed
        and metadata.get("corpus_fingerprint") == corpus_fingerprint(discover_sources(job.corpus))
    )
    return metadata if same else None


def is_current(job: TokenizerTrainJob) -> bool:
    """Whether `job.output_dir` already holds what `job` would train, its files as written."""
    metadata = _metadata_of_job(job)
    return metadata is not None and _files_intact(Path(job.output_dir), metadata)


def _files_intact(out: Path, metadata: dict) -> bool:
    """Whether the tokenizer's files are those its metadata records the SHA-256 of (FILES_RECORD); where it records
    none (an older corolla's), whether the tokenizer loads."""
    recorded = metadata.get(FILES_RECORD)
    if not isinstance(recorded, dict):
        try:
            load_tokenizer(out)
        except ValueError:
            return False
        return True
    return all((out / name).is_file() and sha256_of(out / name) == digest for name, digest in recorded.items())


def record_files(staging: Path, metadata: dict) -> dict:
    """`metadata` with the SHA-256 of each tokenizer file in `staging`, written before it."""
    return {**metadata, FILES_RECORD: {path.name: sha256_of(path) for path in sorted(staging.iterdir())}}


# What a tokenizer's output_dir holds: train and extend replace it whole, and only when it holds nothing else.
OUTPUT_FILES = frozenset({*TOKENIZER_FILES, METADATA_FILE, ADDED_PIECES_FILE})


def check_output_dir(output_dir: str, overwrite: bool, inputs: dict[str, str | None]) -> Path:
    """train's and extend's output_dir, checked before anything is read."""
    out = Path(output_dir)
    check_replaceable(out, "a tokenizer", lambda name: name in OUTPUT_FILES, inputs, overwrite)
    return out


def train_tokenizer(job: TokenizerTrainJob, log: Log = print) -> Path:
    cfg = job.tokenizer
    if not job.overwrite and (metadata := _metadata_of_job(job)) is not None:
        if _files_intact(Path(job.output_dir), metadata):
            log(f"{job.output_dir} already holds this tokenizer (the same settings, seed and corpus): nothing to do")
            return Path(job.output_dir)
        log(f"{job.output_dir} holds this tokenizer, its files missing or changed since written: training it again")
        job = replace(job, overwrite=True)
    inputs = {"corpus": job.corpus, "tokenizer.parity_set": cfg.parity_set}
    out = check_output_dir(job.output_dir, job.overwrite, inputs)
    scan = scan_corpus(job.corpus)
    for warning in scan.hygiene.warnings():
        log(f"corpus: {warning}")
    with staging_area(out) as workdir:
        if cfg.sampling == Sampling.parity:
            result = parity_search(
                scan.sizes, cfg, lambda plan: train_on_plan(scan, plan, cfg, job.seed, workdir, log), workdir, log
            )
            plan, model, sampled, extra = result.plan, result.model, result.sampled, {"parity": result.history}
        else:
            plan = budgets(scan.sizes, cfg)
            log("sampling budget per language (before training):\n" + format_budget_table(plan))
            model, sampled = train_on_plan(scan, plan, cfg, job.seed, workdir, log)
            extra = {}
        if unsampled := [language for language in scan.languages if not sampled.get(language)]:
            log(
                f"corpus: {', '.join(unsampled)} got no text into the sample: the tokenizer learns nothing of them; "
                f"raise tokenizer.sample_bytes (now {cfg.sample_bytes:,}), or their weight"
            )
        staging = workdir / STAGED
        staging.mkdir()
        (staging / SPM_MODEL_FILE).write_bytes(model)
        write_hf_tokenizer(model, staging)
        metadata = record_files(staging, _metadata(job, scan, plan, sampled, extra))
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
        publish(staging, out, job.overwrite)
    log(f"tokenizer written to {out} (vocab {cfg.vocab_size}, padded {metadata['padded_vocab_size']})")
    return out
