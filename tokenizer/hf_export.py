"""Export a corolla SentencePiece model as a Hugging Face `tokenizer.json` that encodes exactly like SentencePiece.

Built with `tokenizers` only. SentencePiece (identity normalisation, no whitespace stripping) turns every space into
'▁' and puts one '▁' before the whole text, then segments the result:
- BPE repeatedly merges the adjacent pair whose concatenation is the best-scoring piece, leftmost first. A HF BPE
  whose merges hold every split of every piece into two pieces, ranked by the merged piece's score, does the same.
- Unigram takes the Viterbi path over the piece scores, as a HF `Unigram` does.
Both fall back to UTF-8 byte pieces for characters outside the vocabulary.

User-defined symbols (language tags) are whole tokens that never merge with their neighbours. They are not HF added
tokens: those are cut out of the raw text before normalisation, so a text that starts with a tag would lose its
dummy prefix. Instead a pre-tokenizer isolates them after the prefix is in place, and the model emits them whole.
Control tokens are not added tokens either: SentencePiece reads a literal "</s>" in text as characters, not as EOS.

Known differences: Unigram can differ on near ties, where SentencePiece's float32 path sums round differently from
HF's float64 ones. With tags, BPE emits a text between tags (or after the last) that spells exactly a control or
byte piece, such as "</s>", as that piece.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from tokenizer.files import HF_SPECIAL_TOKENS, HF_TOKENIZER_CONFIG, HF_TOKENIZER_FILE
from tokenizer.vocab import BOS, EOS, PAD, SPECIAL_IDS, UNK

SPACE = "▁"
Piece = pb.ModelProto.SentencePiece
_BPE, _UNIGRAM = pb.TrainerSpec.BPE, pb.TrainerSpec.UNIGRAM


# A tokenizer trained on its own knows no model's sequence length: BLOOM's, until an export of a model sets its own.
STANDALONE_MAX_LENGTH = 2048


def write_hf_tokenizer(model_proto: bytes, out_dir: Path) -> None:
    """Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` into `out_dir`."""
    proto = pb.ModelProto()
    proto.ParseFromString(model_proto)
    _check_supported(proto)
    tags = [p.piece for p in proto.pieces if p.type == Piece.USER_DEFINED]
    tokenizer = Tokenizer(_model(proto, has_tags=bool(tags)))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Replace(" ", SPACE), normalizers.Prepend(SPACE)])
    if tags:
        pattern = "|".join(re.escape(tag) for tag in sorted(tags, key=len, reverse=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.save(str(out_dir / HF_TOKENIZER_FILE))
    special = _special_tokens(proto)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": STANDALONE_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        # Like SentencePiece, read "<s>" in text as characters; special ids are only ever added explicitly.
        "split_special_tokens": True,
        "add_bos_token": False,
        "add_eos_token": False,
        **special,
    }
    _write_json(out_dir / HF_TOKENIZER_CONFIG, config)
    _write_json(out_dir / HF_SPECIAL_TOKENS, special)


def set_model_max_length(out_dir: Path, length: int) -> None:
    """The longest input the model that goes with the tokenizer in `out_dir` was trained on, as transformers reads it
    (truncation, warnings). A `tokenizer.json` alone (BLOOM's byte-level BPE, imported) gets a config of its own, which
    names its special tokens: transformers finds none in the file itself (no padding, no end of sequence)."""
    path = out_dir / HF_TOKENIZER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else _bare_config(out_dir)
    _write_json(path, {**config, "model_max_length": length})


def _bare_config(out_dir: Path) -> dict:
    """The tokenizer config of a `tokenizer.json` alone: the special tokens it holds at corolla's (BLOOM's) ids."""
    vocab = Tokenizer.from_file(str(out_dir / HF_TOKENIZER_FILE)).get_vocab()
    named = {"unk_token": UNK, "bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    special = {key: token for key, token in named.items() if vocab.get(token) == SPECIAL_IDS[token]}
    return {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **special}


def _check_supported(proto: pb.ModelProto) -> None:
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type not in (_BPE, _UNIGRAM):
        raise ValueError(f"cannot export SentencePiece model type {spec.model_type}: only bpe and unigram")
    if not spec.byte_fallback or spec.treat_whitespace_as_suffix:
        raise ValueError("export needs a SentencePiece model with byte_fallback and whitespace as a prefix")
    if norm.precompiled_charsmap or norm.remove_extra_whitespaces or not norm.add_dummy_prefix:
        raise ValueError("export needs identity normalisation, kept whitespace runs and add_dummy_prefix")


def _model(proto: pb.ModelProto, has_tags: bool) -> models.Model:
    unk = proto.trainer_spec.unk_id
    if proto.trainer_spec.model_type == _UNIGRAM:
        return models.Unigram(_unigram_vocab(proto), unk_id=unk, byte_fallback=True)
    return models.BPE(
        {p.piece: i for i, p in enumerate(proto.pieces)},
        _bpe_merges(proto),
        unk_token=proto.pieces[unk].piece,
        byte_fallback=True,
        # A tag is a chunk of its own that no merge builds: look chunks up whole. Every normal piece merges into
        # itself, so this only changes chunks that spell a tag, a control or a byte piece.
        ignore_merges=has_tags,
    )


def _bpe_merges(proto: pb.ModelProto) -> list[tuple[str, str]]:
    """Every split of every normal piece into two normal pieces, best-scoring merged piece first."""
    normal = {p.piece for p in proto.pieces if p.type == Piece.NORMAL}
    ranked = sorted(
        (-p.score, i, p.piece) for i, p in enumerate(proto.pieces) if p.type == Piece.NORMAL and len(p.piece) > 1
    )
    return [
        (piece[:k], piece[k:])
        for _, _, piece in ranked
        for k in range(1, len(piece))
        if piece[:k] in normal and piece[k:] in normal
    ]


def _unigram_vocab(proto: pb.ModelProto) -> list[tuple[str, float]]:
    """The piece scores, with control, unknown and byte pieces priced out of the Viterbi search.

    SentencePiece never matches those pieces in text ("<s>" is read as '<', 's', '>'), but a HF `Unigram` does, at
    their score of 0. Scoring a piece of n characters below n times the worst normal score makes every other path
    better. It also lowers the unknown-character score, which every path through such a character pays the same.
    """
    worst = min(p.score for p in proto.pieces if p.type == Piece.NORMAL)
    matched = (Piece.NORMAL, Piece.USER_DEFINED)
    return [(p.piece, p.score if p.type in matched else len(p.piece) * worst - 1.0) for p in proto.pieces]


def _special_tokens(proto: pb.ModelProto) -> dict[str, str]:
    spec = proto.trainer_spec
    ids = {"unk_token": spec.unk_id, "bos_token": spec.bos_id, "eos_token": spec.eos_id, "pad_token": spec.pad_id}
    return {name: proto.pieces[i].piece for name, i in ids.items() if i >= 0}


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
