"""Token files built on first use: a tokenizer trained on a corpus and the corpus encoded with it, kept in a cache.

One entry per (tokenizer config, seed, corpus path): `<cache_dir>/<key>/tokenizer` and `<key>/tokens`. Each use checks
them against their inputs (the tokenizer's config and corpus fingerprint, the token files' tokenizer fingerprint and
source files) and rebuilds what is stale, so an edited corpus or config never trains on old tokens. A lock file keeps
two jobs starting at once from building the same entry together.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from tokenizer.config import TokenizerConfig, TokenizerTrainJob
from tokenizer.encode import encode_corpus
from tokenizer.train import config_record, is_current, train_tokenizer


def cache_key(tokenizer: TokenizerConfig, corpus: str | Path, seed: int) -> str:
    record = {"tokenizer": config_record(tokenizer), "seed": seed, "corpus": str(Path(corpus).resolve())}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def cached_token_files(
    tokenizer: TokenizerConfig, corpus: str | Path, cache_dir: str | Path, seed: int, log: Callable[[str], None] = print
) -> Path:
    """The token files of `corpus` under `tokenizer`, built or refreshed in `cache_dir` as needed; their directory."""
    entry = Path(cache_dir) / cache_key(tokenizer, corpus, seed)
    entry.mkdir(parents=True, exist_ok=True)
    with (entry / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        job = TokenizerTrainJob(tokenizer, str(corpus), str(entry / "tokenizer"), seed, overwrite=True)
        if is_current(job):
            log(f"tokenizer: cached in {entry / 'tokenizer'}")
        else:
            log(f"tokenizer: training on {corpus} into {entry / 'tokenizer'} (once; cached for later runs)")
            train_tokenizer(job, log=log)
        encode_corpus(entry / "tokenizer", corpus, entry / "tokens", log=log)
    return entry / "tokens"
