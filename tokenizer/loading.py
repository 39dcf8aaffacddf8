"""Load a trained tokenizer from a corolla output directory, a SentencePiece `.model` or a `tokenizer.json`."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Tokenizer

from tokenizer.files import HF_TOKENIZER_FILE, SPM_MODEL_FILE, first_line, sha256_of
from tokenizer.vocab import SPECIAL_IDS

BYTE_PIECE = re.compile(r"^<0x[0-9A-F]{2}>$")
SPACE_MARK = "\u2581"  # SentencePiece's ▁: a space


class TextTokenizer(ABC):
    """Encodes text without special tokens; the interface evaluation and encoding work against."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fingerprint = sha256_of(path)  # what tokenizer_file finds a tokenizer by

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def piece(self, token_id: int) -> str: ...

    def misplaced(self, token: str) -> str | None:
        """The piece at the special `token`'s id (tokenizer/vocab.py) where that is another one; None where it is it."""
        piece = self.piece(SPECIAL_IDS[token])
        return None if piece == token else piece

    def byte_piece_ids(self) -> frozenset[int]:
        return frozenset(i for i in range(self.vocab_size) if BYTE_PIECE.match(self.piece(i)))

    @property
    @abstractmethod
    def prefix_space(self) -> bool:
        """Whether encoding puts a space before each text (SentencePiece's dummy prefix): one byte of a text's ids
        that the text does not have."""

    def token_bytes(self) -> np.ndarray:
        """The bytes of UTF-8 text each id stands for, by id (0 for special tokens): a text's ids add up to its size
        in bytes, plus one if `prefix_space`. What bits per byte divide by."""
        return np.fromiter((self._piece_bytes(i) for i in range(self.vocab_size)), np.int64, self.vocab_size)

    @abstractmethod
    def _piece_bytes(self, token_id: int) -> int: ...


def _marked_piece_bytes(piece: str) -> int:
    """A SentencePiece-style piece's bytes: `<0xNN>` one, `▁` a space."""
    return 1 if BYTE_PIECE.match(piece) else len(piece.replace(SPACE_MARK, " ").encode())


class SentencePieceTokenizer(TextTokenizer):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.processor = spm.SentencePieceProcessor(model_proto=path.read_bytes())
        if not self.processor.get_piece_size():  # what SentencePiece makes of an empty file, without a word
            raise RuntimeError(f"{path.name} holds no vocabulary: an empty or cut file")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(texts)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def piece(self, token_id: int) -> str:
        return self.processor.id_to_piece(token_id)

    @property
    def prefix_space(self) -> bool:
        model = sentencepiece_model_pb2.ModelProto.FromString(self.path.read_bytes())
        return model.normalizer_spec.add_dummy_prefix

    def _piece_bytes(self, token_id: int) -> int:
        if self.processor.is_control(token_id) or self.processor.is_unknown(token_id):
            return 0
        return _marked_piece_bytes(self.processor.id_to_piece(token_id))


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

    @property
    def _components(self) -> list[dict]:
        """The normalizer's and pre-tokenizer's steps, sequences flattened."""
        config = json.loads(self.path.read_text(encoding="utf-8"))
        steps, found = [config.get("normalizer"), config.get("pre_tokenizer")], []
        while steps:
            step = steps.pop()
            if isinstance(step, dict):
                steps += step.get("normalizers", []) + step.get("pretokenizers", [])
                found.append(step)
        return found

    @property
    def byte_level(self) -> bool:
        """GPT-2-style byte-level BPE (BLOOM's): each character of a piece stands for one byte."""
        return any(step.get("type") == "ByteLevel" for step in self._components)

    @property
    def prefix_space(self) -> bool:
        for step in self._components:
            kind = step.get("type")
            if kind == "Prepend" and step.get("prepend") == SPACE_MARK:
                return True
            if kind in ("Metaspace", "ByteLevel") and (
                step.get("add_prefix_space") or step.get("prepend_scheme") in ("always", "first")
            ):
                return True
        return False

    def _piece_bytes(self, token_id: int) -> int:
        added = self.tokenizer.get_added_tokens_decoder().get(token_id)
        piece = self.piece(token_id)
        if (added is not None and added.special) or SPECIAL_IDS.get(piece) == token_id:  # corolla's export: in place
            return 0
        return len(piece) if self.byte_level else _marked_piece_bytes(piece)


def load_tokenizer(path: str | Path) -> TextTokenizer:
    try:
        return _load(Path(path))
    except ValueError:
        raise
    except Exception as error:  # sentencepiece and tokenizers raise bare RuntimeError/Exception on damaged files
        reason = first_line(error)
        raise ValueError(f"tokenizer {path} cannot be loaded ({reason}): retrain or re-export it") from None


def _load(path: Path) -> TextTokenizer:
    if path.is_dir():
        for name, kind in ((SPM_MODEL_FILE, SentencePieceTokenizer), (HF_TOKENIZER_FILE, HFTokenizer)):
            if (path / name).is_file():
                return kind(path / name)
        raise ValueError(
            f"tokenizer directory {path} holds neither tokenizer.model nor tokenizer.json: give a tokenizer's "
            "directory, or copy its tokenizer files into this one"
        )
    if not path.is_file():
        raise ValueError(f"tokenizer {path} does not exist: pass a corolla tokenizer directory, a .model or a .json")
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    if path.suffix == ".json":
        return HFTokenizer(path)
    raise ValueError(f"tokenizer {path} is neither a SentencePiece .model nor a tokenizer.json")
