"""The token files of a `corolla tokenizer encode` output directory (tokenizer/encode.py: a `.bin` / `.idx` pair per
corpus file and language, listed by manifest.json), memory-mapped: each language's pairs in corpus order are one
stream of documents, split by document into training and held-out validation documents.

Opening it reads the manifest and each pair's 24-byte header, nothing of the tokens: hundreds of pairs a language
open in well under a second.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tokenizer.files import exclusively, not_a_directory
from tokenizer.token_files import MANIFEST_NAME, MANIFEST_VERSION, TokenFile

if TYPE_CHECKING:  # a rank loads no tokenizer library
    from tokenizer.loading import TextTokenizer


class TokenStream:
    """Token arrays back to back as one sequence: a slice reads only the arrays it covers (one array: a view)."""

    def __init__(self, pieces: Sequence[np.ndarray], dtype: np.dtype) -> None:
        self.pieces = [piece for piece in pieces if piece.size]
        self.ends = np.cumsum([piece.size for piece in self.pieces], dtype=np.int64)
        self.size = int(self.ends[-1]) if self.pieces else 0
        self.dtype = dtype

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.size)
        if step != 1:
            raise ValueError("a token stream is sliced with step 1 only")
        parts = []
        index = int(np.searchsorted(self.ends, start, side="right"))
        while start < stop:
            piece_start = int(self.ends[index]) - self.pieces[index].size
            end = min(stop, int(self.ends[index]))
            parts.append(self.pieces[index][start - piece_start : end - piece_start])
            start, index = end, index + 1
        if not parts:
            return np.empty(0, self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def window(self, start: int, stop: int) -> TokenStream:
        """Tokens [start, stop) as a stream of their own."""
        pieces, offset = [], 0
        for piece in self.pieces:
            low, high = max(start - offset, 0), min(stop - offset, piece.size)
            if low < high:
                pieces.append(piece[low:high])
            offset += piece.size
        return TokenStream(pieces, self.dtype)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return self[:].astype(dtype or self.dtype, copy=False)


class LanguageSplit:
    """One language's pairs as a stream of documents: [0, train_documents) for training, the rest held out."""

    def __init__(self, language: str, files: list[TokenFile], train_documents: int) -> None:
        self.language, self.files, self.train_documents = language, files, train_documents
        self.documents = sum(len(file) for file in files)
        self.stream = TokenStream([file.tokens for file in files], files[0].dtype)
        boundary = self._token_offset(train_documents)
        self.train_tokens = self.stream.window(0, boundary)
        self.validation_tokens = self.stream.window(boundary, self.stream.size)

    @property
    def validation_documents(self) -> int:
        return self.documents - self.train_documents

    def _token_offset(self, document: int) -> int:
        """Where document `document` starts in the stream (the stream's size for one past the last)."""
        tokens = 0
        for file in self.files:
            if document <= len(file):
                return tokens + file.start(document)
            document -= len(file)
            tokens += file.num_tokens
        return tokens


class TokenCorpus:
    """The token files of a `corolla tokenizer encode` output directory, memory-mapped and split by document."""

    def __init__(self, tokens_dir: str | Path, validation_documents: int) -> None:
        self.tokens_dir = Path(tokens_dir)
        manifest = _read_manifest(self.tokens_dir)
        self.vocab_size: int = manifest["tokenizer"]["vocab_size"]
        self.tokenizer_fingerprint: str = manifest["tokenizer"]["fingerprint"]
        # The directory `corolla tokenizer train` wrote (tokenizer.model, tokenizer.json, metadata.json).
        self.tokenizer_dir = Path(manifest["tokenizer"]["path"]).parent
        self.eos_id: int = manifest["eos_id"]
        self.splits = {
            language: _open_split(self.tokens_dir, language, entry, validation_documents)
            for language, entry in sorted(manifest["languages"].items())
        }

    @property
    def languages(self) -> list[str]:
        return list(self.splits)


def _manifest_shaped(manifest: object) -> bool:
    """The keys and nesting a manifest of `corolla tokenizer encode` has (its values are checked as they are used)."""
    keys = {"format_version", "tokenizer", "append_eos", "eos_id", "languages"}
    if not isinstance(manifest, dict) or not keys <= set(manifest):
        return False
    tokenizer, languages = manifest["tokenizer"], manifest["languages"]
    return (
        isinstance(tokenizer, dict)
        and {"vocab_size", "fingerprint", "path"} <= set(tokenizer)
        and isinstance(languages, dict)
        and all(isinstance(entry, dict) and _shards_shaped(entry.get("shards")) for entry in languages.values())
    )


def _shards_shaped(shards: object) -> bool:
    """A language's pairs as encode lists them: at least one, each a file with its document and token counts."""
    return (
        isinstance(shards, list)
        and bool(shards)
        and all(
            isinstance(shard, dict)
            and isinstance(shard.get("file"), str)
            and all(type(shard.get(count)) is int for count in ("documents", "tokens"))
            for shard in shards
        )
    )


def _read_manifest(tokens_dir: Path) -> dict:
    if problem := not_a_directory(tokens_dir):
        raise ValueError(f"tokens_dir {tokens_dir} {problem}: run `corolla tokenizer encode output_dir=...` first")
    path = tokens_dir / MANIFEST_NAME
    if not path.is_file():
        encoding = f"tokens_dir {tokens_dir} is being encoded by another command: wait for it to end"
        with exclusively(tokens_dir, encoding):
            pass  # no encoding holds it: the manifest is missing for good
        raise ValueError(
            f"tokens_dir {tokens_dir} has no {MANIFEST_NAME}: point it at an output_dir of `corolla tokenizer encode`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    # The version first: an older corolla's manifest has another shape, and is no less corolla's.
    if isinstance(manifest, dict) and manifest.get("format_version", MANIFEST_VERSION) != MANIFEST_VERSION:
        raise ValueError(
            f"{path} has format version {manifest['format_version']}, this corolla reads {MANIFEST_VERSION}: "
            "re-run `corolla tokenizer encode` into the same output_dir, which rewrites it"
        )
    if not _manifest_shaped(manifest):
        raise ValueError(f"{path} is not a token manifest corolla wrote: re-run `corolla tokenizer encode`")
    if not manifest["languages"]:
        raise ValueError(f"{path} lists no languages (did the encode finish?): re-run `corolla tokenizer encode`")
    if not manifest["append_eos"]:
        raise ValueError(
            f"token files in {tokens_dir} have no EOS after each document, so packed documents would run together: "
            "re-encode with append_eos=true"
        )
    return manifest


def _open_split(tokens_dir: Path, language: str, entry: dict, validation_documents: int) -> LanguageSplit:
    files = []
    for shard in entry["shards"]:
        file = TokenFile(tokens_dir / shard["file"])
        if (len(file), file.num_tokens) != (shard["documents"], shard["tokens"]):
            raise ValueError(
                f"token files {tokens_dir / shard['file']}.* hold {len(file)} documents and {file.num_tokens} tokens, "
                f"{MANIFEST_NAME} says {shard['documents']} and {shard['tokens']}: re-run `corolla tokenizer encode`"
            )
        files.append(file)
    documents = sum(len(file) for file in files)
    held_out = max(0, min(validation_documents, documents - 1))
    return LanguageSplit(language, files, documents - held_out)


def checked_ids(tokens: np.ndarray, vocab_size: int, where: str) -> np.ndarray:
    """`tokens`, whose ids must be the tokenizer's: those of a damaged token file would index past the embedding."""
    if tokens.size and (largest := int(tokens.max())) >= vocab_size:
        raise ValueError(
            f"{where} holds token id {largest}, beyond the tokenizer's {vocab_size}: the token files are damaged; "
            "encode the corpus again (corolla tokenizer encode, or remove them from data.cache_dir)"
        )
    return tokens


def validation_samples(split: LanguageSplit, seq_length: int) -> int:
    """How many validation samples of seq_length + 1 tokens a language's held-out documents hold."""
    tokens = split.validation_tokens
    return (tokens.size - 1) // seq_length if tokens.size else 0


def validation_sample_bytes(
    corpus: TokenCorpus, seq_length: int, samples: dict[str, int], tokenizer: TextTokenizer
) -> dict[str, list[int]]:
    """Bytes of text each of a language's first `samples[language]` validation samples predicts: what turns a
    validation loss into bits per byte, a figure that does not depend on the tokenizer. Sample i's labels are the
    held-out tokens [i x seq_length + 1, (i + 1) x seq_length]; their bytes are their ids' (token_bytes), less the
    space a tokenizer with a prefix space put before each document."""
    table = tokenizer.token_bytes()
    sample_bytes = {}
    for language, count in samples.items():
        tokens = np.asarray(corpus.splits[language].validation_tokens[: count * seq_length + 1])
        checked_ids(tokens, len(table), f"{language}'s held-out text in {corpus.tokens_dir}")
        labels, before = tokens[1:].reshape(count, seq_length), tokens[:-1].reshape(count, seq_length)
        label_bytes = table[labels].sum(axis=1)
        if tokenizer.prefix_space:
            label_bytes -= np.count_nonzero(before == corpus.eos_id, axis=1)
        sample_bytes[language] = [int(size) for size in label_bytes]
    return sample_bytes
