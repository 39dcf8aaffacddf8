"""The token files of a `corolla tokenizer encode` output directory (tokenizer/token_files.py: one `<lang>.bin` /
`<lang>.idx` pair per language and manifest.json), memory-mapped, each language split by document into training and
held-out validation documents."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenizer.token_files import MANIFEST_NAME, TokenFile


@dataclass(frozen=True, eq=False)
class LanguageSplit:
    """One language's token file: documents [0, train_documents) for training, the rest held out for validation."""

    language: str
    file: TokenFile
    train_documents: int

    @property
    def validation_documents(self) -> int:
        return len(self.file) - self.train_documents

    @property
    def train_tokens(self) -> np.ndarray:
        return self.file.tokens[: self.file.offsets[self.train_documents]]

    @property
    def validation_tokens(self) -> np.ndarray:
        return self.file.tokens[self.file.offsets[self.train_documents] :]


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


def _read_manifest(tokens_dir: Path) -> dict:
    if not tokens_dir.is_dir():
        raise ValueError(f"tokens_dir {tokens_dir} does not exist: run `corolla tokenizer encode output_dir=...` first")
    path = tokens_dir / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(
            f"tokens_dir {tokens_dir} has no {MANIFEST_NAME}: point it at an output_dir of `corolla tokenizer encode`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or not {"tokenizer", "append_eos", "eos_id", "languages"} <= set(manifest):
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
    file = TokenFile(tokens_dir / language)
    if (len(file), file.num_tokens) != (entry["documents"], entry["tokens"]):
        raise ValueError(
            f"token files of {language} in {tokens_dir} hold {len(file)} documents and {file.num_tokens} tokens, "
            f"{MANIFEST_NAME} says {entry['documents']} and {entry['tokens']}: re-run `corolla tokenizer encode`"
        )
    held_out = max(0, min(validation_documents, len(file) - 1))
    return LanguageSplit(language, file, len(file) - held_out)


def validation_samples(split: LanguageSplit, seq_length: int, wanted: int) -> int:
    """How many validation samples of seq_length + 1 tokens a language's held-out documents hold; a ValueError if
    fewer than `wanted`."""
    tokens = split.validation_tokens
    available = (tokens.size - 1) // seq_length if tokens.size else 0
    if available < wanted:
        raise ValueError(
            f"{split.language}: its {split.validation_documents} held-out documents hold {available} validation "
            f"samples of seq_length + 1 = {seq_length + 1} tokens, fewer than train.eval_samples={wanted}: lower "
            "train.eval_samples, raise data.validation_documents, or set train.eval_interval=0 to skip validation"
        )
    return available
