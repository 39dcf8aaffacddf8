"""Bytes per token id (what bits per byte divide by): a text's ids add up to its size in UTF-8 bytes, for corolla's
SentencePiece tokenizers in both their formats and for a byte-level BPE `tokenizer.json` as BLOOM's is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import MULTILINGUAL, byte_level_bpe
from tokenizer.config import TokenizerConfig, TokenizerTrainJob
from tokenizer.loading import load_tokenizer
from tokenizer.train import train_tokenizer

LANGUAGES = ["eng_Latn", "khm_Khmr", "zho_Hans", "amh_Ethi"]  # Khmer and Amharic: rare characters, byte fallback


def texts(lines: int = 300) -> list[str]:
    found = []
    for language in LANGUAGES:
        with (MULTILINGUAL / f"{language}.txt").open(encoding="utf-8") as source:
            found += [next(source).rstrip("\n") for _ in range(lines)]
    return found


@pytest.fixture(scope="module")
def corolla_tokenizer(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=1_000_000)
    output = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TokenizerTrainJob(config, str(small_corpus), str(output)), log=lambda *_: None)
    return output


@pytest.mark.parametrize("name", ["tokenizer.model", "tokenizer.json"])
def test_corolla_tokenizers_count_every_byte_and_the_prefix_space(corolla_tokenizer: Path, name: str) -> None:
    tokenizer = load_tokenizer(corolla_tokenizer / name)
    table = tokenizer.token_bytes()
    assert tokenizer.prefix_space and table[:4].tolist() == [0, 0, 0, 0]  # <unk>, <s>, </s>, <pad>
    samples = texts()
    for text, ids in zip(samples, tokenizer.encode_batch(samples), strict=True):
        assert table[ids].sum() == len(text.encode()) + 1, text


def test_a_byte_level_bpe_counts_a_byte_per_character_of_its_pieces(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(byte_level_bpe(tmp_path / "tokenizer.json", texts()))
    table = tokenizer.token_bytes()
    assert not tokenizer.prefix_space and table[2] == 0  # </s> is special
    samples = texts()
    for text, ids in zip(samples, tokenizer.encode_batch(samples), strict=True):
        assert table[ids].sum() == len(text.encode()), text
