"""Load a trained tokenizer from a corolla output directory, a SentencePiece `.model` or a `tokenizer.json`."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from pathlib import Path

import sentencepiece as spm
from tokenizers import Tokenizer

BYTE_PIECE = re.compile(r"^<0x[0-9A-F]{2}>$")


class TextTokenizer(ABC):
    """Encodes text without special tokens; the interface evaluation and encoding work against."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def piece(self, token_id: int) -> str: ...

    def byte_piece_ids(self) -> frozenset[int]:
        return frozenset(i for i in range(self.vocab_size) if BYTE_PIECE.match(self.piece(i)))


class SentencePieceTokenizer(TextTokenizer):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.processor = spm.SentencePieceProcessor(model_proto=path.read_bytes())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(texts)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def piece(self, token_id: int) -> str:
        return self.processor.id_to_piece(token_id)


class HFTokenizer(TextTokenizer):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.tokenizer = Tokenizer.from_file(str(path))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def piece(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id) or ""


def load_tokenizer(path: str | Path) -> TextTokenizer:
    try:
        return _load(Path(path))
    except ValueError:
        raise
    except Exception as error:  # sentencepiece and tokenizers raise bare RuntimeError/Exception on damaged files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"tokenizer {path} cannot be loaded ({reason}): retrain or re-export it") from None


def _load(path: Path) -> TextTokenizer:
    if path.is_dir():
        for name, kind in (("tokenizer.model", SentencePieceTokenizer), ("tokenizer.json", HFTokenizer)):
            if (path / name).is_file():
                return kind(path / name)
        raise ValueError(f"tokenizer directory {path} holds neither tokenizer.model nor tokenizer.json")
    if not path.is_file():
        raise ValueError(f"tokenizer {path} does not exist: pass a corolla tokenizer directory, a .model or a .json")
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    if path.suffix == ".json":
        return HFTokenizer(path)
    raise ValueError(f"tokenizer {path} is neither a SentencePiece .model nor a tokenizer.json")
