"""Data preparation, an explicit step before the plan: the token files a job trains on and what the plan needs to
know of them.

With data.tokens_dir unset, the tokenizer is trained on data.corpus and the corpus encoded with it on first use, into
a cache entry per (tokenizer config, seed, corpus path, corpus contents): `<cache_dir>/<key>/tokenizer` and
`<key>/tokens`. An edited corpus or config thus never trains on old tokens, and gets an entry of its own rather than
rebuilding one under the runs that trained on it, whose next start would find other token files. Each use checks an
entry against its inputs (the tokenizer's config and corpus fingerprint, the token files' tokenizer fingerprint and
source files) and rebuilds what is damaged or missing. A lock file keeps two jobs starting at once from building the
same entry together. A dry run builds nothing: it checks
token files that exist and takes the vocabulary from the tokenizer config otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from launch.config.schemas import TrainJob
from launch.data.blend import BlendedDataset
from launch.data.corpus import TokenCorpus, validation_sample_bytes, validation_samples
from launch.data.facts import DataFacts
from tokenizer.config import TokenizerConfig, TokenizerTrainJob
from tokenizer.corpus import discover_sources
from tokenizer.corpus_scan import corpus_fingerprint, measured_fingerprint
from tokenizer.encode import encode_corpus
from tokenizer.files import Log, directory_lock
from tokenizer.loading import load_tokenizer
from tokenizer.train import config_record, is_current, tokenizer_identity, train_tokenizer


def cache_key(tokenizer: TokenizerConfig | str, corpus: str | Path, seed: int, contents: str) -> str:
    """The cache entry of a corpus (its path and `contents`, its fingerprint) under a tokenizer config, or under a
    trained tokenizer (its fingerprint)."""
    record = {
        "tokenizer": tokenizer if isinstance(tokenizer, str) else tokenizer_identity(config_record(tokenizer)),
        "seed": seed,
        "corpus": str(Path(corpus).resolve()),
        "corpus_fingerprint": contents,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _cache_entry(job: TrainJob, contents: str) -> Path:
    """The job's cache entry, for data.corpus of fingerprint `contents`."""
    data = job.data
    tokenizer = load_tokenizer(data.tokenizer_dir).fingerprint if data.tokenizer_dir else job.tokenizer
    return Path(data.cache_dir) / cache_key(tokenizer, data.corpus, job.seed, contents)


def cached_token_files(job: TrainJob, log: Log = print) -> Path:
    """The token files of data.corpus under data.tokenizer_dir or the job's tokenizer config (trained first), built
    or refreshed in the cache as needed."""
    entry = _cache_entry(job, corpus_fingerprint(discover_sources(job.data.corpus)))
    entry.mkdir(parents=True, exist_ok=True)
    with directory_lock(entry):  # one process builds an entry; others wait, then find it built
        encode_corpus(
            job.data.tokenizer_dir or _cached_tokenizer(job, entry, log), job.data.corpus, entry / "tokens", log=log
        )
    return entry / "tokens"


def _cached_tokenizer(job: TrainJob, entry: Path, log: Log) -> Path:
    tokenizer = TokenizerTrainJob(job.tokenizer, str(job.data.corpus), str(entry / "tokenizer"), job.seed, True)
    if is_current(tokenizer):  # its files too, as written: a damaged one is the cache's to make again
        log(f"tokenizer: cached in {entry / 'tokenizer'}")
    else:
        log(f"tokenizer: training on {job.data.corpus} into {entry / 'tokenizer'} (once; cached for later runs)")
        train_tokenizer(tokenizer, log=log)
    return entry / "tokenizer"


def prepare_data(job: TrainJob) -> tuple[TrainJob, DataFacts]:
    """Builds what the job trains on if needed and checks the job against it: the job with its token files and the
    tokenizer's vocabulary filled in, and the facts; a one-line ValueError if the data cannot train it."""
    if job.data.tokens_dir is None:
        job = replace(job, data=replace(job.data, tokens_dir=str(cached_token_files(job))))
    return _checked(job, TokenCorpus(job.data.tokens_dir, job.data.validation_documents))


def inspect_data(job: TrainJob) -> tuple[TrainJob, DataFacts]:
    """As prepare_data, building nothing: token files that exist (given, or in the cache) are checked; otherwise the
    vocabulary is the tokenizer config's, and the data is checked when the job is prepared for real."""
    if job.data.tokens_dir is not None:
        return _checked(job, TokenCorpus(job.data.tokens_dir, job.data.validation_documents))
    # A dry run reads no corpus: one not measured as it is now has no entry (unless its measurements were deleted).
    contents = measured_fingerprint(discover_sources(job.data.corpus))
    entry = _cache_entry(job, contents) if contents else None
    try:
        cached = entry / "tokens" if entry else None
        corpus = TokenCorpus(cached, job.data.validation_documents) if cached and cached.is_dir() else None
    except ValueError:  # damaged: a real run encodes them again, as it builds missing ones
        corpus = None
    if corpus is not None:
        return _checked(job, corpus)
    vocab_size = job.model.vocab_size or _tokenizer_vocabulary(job)
    return replace(job, model=replace(job.model, vocab_size=vocab_size)), DataFacts(vocab_size, None)


def _tokenizer_vocabulary(job: TrainJob) -> int:
    return load_tokenizer(job.data.tokenizer_dir).vocab_size if job.data.tokenizer_dir else job.tokenizer.vocab_size


def _checked(job: TrainJob, corpus: TokenCorpus) -> tuple[TrainJob, DataFacts]:
    if job.model.vocab_size and job.model.vocab_size != corpus.vocab_size:
        raise ValueError(
            f"model.vocab_size={job.model.vocab_size} but the tokenizer of {corpus.tokens_dir} has "
            f"{corpus.vocab_size} tokens: drop model.vocab_size (0 takes the tokenizer's) or re-encode the data"
        )
    BlendedDataset(corpus, job.data, job.model.seq_length)  # every weighted language holds a sample
    # Absolute: the run's job.yaml is read from elsewhere too (an export, an init_from, a rank on another node).
    data = replace(job.data, tokens_dir=os.path.abspath(corpus.tokens_dir))
    job = replace(job, model=replace(job.model, vocab_size=corpus.vocab_size), data=data)
    facts = DataFacts(
        corpus.vocab_size, str(corpus.tokens_dir), str(corpus.tokenizer_dir), corpus.tokenizer_fingerprint
    )
    return job, _with_validation(facts, corpus, job) if job.train.eval_interval else facts


def _with_validation(facts: DataFacts, corpus: TokenCorpus, job: TrainJob) -> DataFacts:
    """The validation samples each language holds (the plan cuts them to whole micro-batches) and their bytes of
    text, computed here rather than in the ranks, which load no tokenizer; no bytes (validation in nats per token
    only) when the tokenizer is no longer where the token files say."""
    if all(split.validation_documents == 0 for split in corpus.splits.values()):
        raise ValueError(
            f"train.eval_interval={job.train.eval_interval} but data.validation_documents=0 holds nothing out for "
            "validation: raise data.validation_documents or set train.eval_interval=0"
        )
    seq_length = job.model.seq_length
    samples = {
        language: min(validation_samples(split, seq_length), job.train.eval_samples)
        for language, split in corpus.splits.items()
    }
    try:
        tokenizer = load_tokenizer(corpus.tokenizer_dir)
    except ValueError as error:
        print(f"corolla: validation without bits per byte ({error})")
        return replace(facts, validation_samples=samples)
    sample_bytes = validation_sample_bytes(corpus, seq_length, samples, tokenizer)
    return replace(facts, validation_samples=samples, validation_sample_bytes=sample_bytes)
