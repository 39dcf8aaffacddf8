"""The exported `tokenizer.json` encodes and decodes like the SentencePiece model, through transformers and corolla."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it; the tokenizer must load from disk alone

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from conftest import MULTILINGUAL, PARALLEL_DEV
from tokenizer.config import ModelType, TokenizerConfig
from tokenizer.hf_export import set_model_max_length, write_hf_tokenizer
from tokenizer.loading import load_tokenizer
from tokenizer.spm import train_sentencepiece

EDGE_CASES = [
    "",
    " ",
    "   ",
    " one leading space",
    "   three leading spaces",
    "trailing space ",
    "runs  of   spaces    inside",
    "\ttab\tseparated\t",
    "line\nbreak",
    "digits 1234567890, 3.14159 and 2024-01-31",
    "emoji 😀🎉👍🏽 and math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "rare CJK 龘靐齉 and Linear B 𐀀𐀁",
    "a literal \u2581 meta symbol",
    "<fra_Latn>",
    "<fra_Latn>Bonjour le monde",
    "<fra_Latn> Bonjour",
    " <eng_Latn> leading space then tag",
    "Hello <eng_Latn> world",
    "x<fra_Latn><deu_Latn>y",
    "ends with a tag <zho_Hans>",
    "<fra_Latn> \u2581",
    "control text <s> </s> <unk> <pad> and a byte piece <0x41>",
    "mixed 中文 العربية हिन्दी ไทย ျမန်မာ",
]


@dataclass
class Exported:
    model_type: ModelType
    model: bytes
    out: Path

    @cached_property
    def sp(self) -> spm.SentencePieceProcessor:
        return spm.SentencePieceProcessor(model_proto=self.model)

    @cached_property
    def hf(self) -> PreTrainedTokenizerBase:
        return AutoTokenizer.from_pretrained(self.out, local_files_only=True)


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    lines = []
    for path in sorted(MULTILINGUAL.glob("*.txt")):
        with path.open(encoding="utf-8") as source:
            lines += [next(source).rstrip("\n") for _ in range(120)]
    return lines


@pytest.fixture(scope="module")
def parallel() -> list[str]:
    lines = [line for path in sorted(PARALLEL_DEV.glob("*.txt")) for line in path.read_text("utf-8").splitlines()]
    assert len(lines) == 60 * 997
    return lines


@pytest.fixture(
    scope="module",
    # Unigram trains ten times slower than BPE: half the sentences keep the module within a minute on two cores.
    params=[(ModelType.bpe, False, 1), (ModelType.bpe, True, 1), (ModelType.unigram, True, 2)],
    ids=["bpe", "bpe-tags", "unigram-tags"],
)
def exported(
    request: pytest.FixtureRequest, sentences: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Exported:
    model_type, tags, stride = request.param
    languages = sorted(path.stem for path in MULTILINGUAL.glob("*.txt"))
    cfg = TokenizerConfig(model_type=model_type, vocab_size=8000, character_coverage=0.9995, language_tags=tags)
    model = train_sentencepiece(sentences[::stride], cfg, seed=1, languages=languages)
    out = tmp_path_factory.mktemp(model_type.value)
    write_hf_tokenizer(model, out)
    return Exported(model_type, model, out)


@pytest.fixture(scope="module")
def expected(exported: Exported, parallel: list[str]) -> list[list[int]]:
    return exported.sp.encode(parallel)


def assert_same_ids(exported: Exported, texts: list[str], want: list[list[int]], got: list[list[int]]) -> None:
    """BPE must match exactly. Unigram may differ only where SentencePiece's float32 Viterbi misses the best path."""
    differ = [i for i, (w, g) in enumerate(zip(want, got, strict=True)) if w != g]
    if exported.model_type == ModelType.bpe:
        assert [texts[i] for i in differ] == []
        return
    assert len(differ) <= len(texts) // 5000, [texts[i] for i in differ]
    for i in differ:
        gain = path_score(exported.sp, got[i]) - path_score(exported.sp, want[i])
        assert 0 <= gain < 1e-3, (texts[i], gain)


def path_score(sp: spm.SentencePieceProcessor, ids: list[int]) -> float:
    return sum(sp.get_score(i) for i in ids)


def test_transformers_encodes_the_parallel_set_like_sentencepiece(
    exported: Exported, parallel: list[str], expected: list[list[int]]
) -> None:
    assert_same_ids(exported, parallel, expected, exported.hf(parallel, add_special_tokens=False)["input_ids"])


def test_transformers_decodes_like_sentencepiece(exported: Exported, expected: list[list[int]]) -> None:
    sample = expected[::4]
    assert [exported.hf.decode(ids) for ids in sample] == exported.sp.decode(sample)


def test_corolla_loader_encodes_and_decodes_like_sentencepiece(
    exported: Exported, parallel: list[str], expected: list[list[int]]
) -> None:
    """The same backend as above, so a sample of the parallel set suffices."""
    tok = load_tokenizer(exported.out / "tokenizer.json")
    texts, want = parallel[::10], expected[::10]
    assert_same_ids(exported, texts, want, tok.encode_batch(texts))
    assert [tok.decode(ids) for ids in want] == exported.sp.decode(want)


def test_edge_cases_match_exactly(exported: Exported) -> None:
    want = exported.sp.encode(EDGE_CASES)
    got = exported.hf(EDGE_CASES, add_special_tokens=False)["input_ids"]
    differ = [
        (text, exported.hf.convert_ids_to_tokens(g)) for text, g, w in zip(EDGE_CASES, got, want, strict=True) if g != w
    ]
    assert differ == []
    assert load_tokenizer(exported.out / "tokenizer.json").encode_batch(EDGE_CASES) == want
    assert [exported.hf.decode(ids) for ids in want] == exported.sp.decode(want)


def test_every_piece_written_after_a_tag_encodes_like_sentencepiece(exported: Exported) -> None:
    """With tags, BPE looks a chunk up whole before merging it: a piece must still come out as SentencePiece has it."""
    sp = exported.sp
    normal = [i for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i))]
    texts = ["<fra_Latn>" + sp.id_to_piece(i).replace("\u2581", " ") for i in normal]
    assert_same_ids(exported, texts, sp.encode(texts), exported.hf(texts, add_special_tokens=False)["input_ids"])


def test_language_tags_are_single_tokens_only_when_trained_with_them(exported: Exported) -> None:
    tag = exported.sp.piece_to_id("<fra_Latn>")
    if exported.sp.is_unknown(tag):
        assert len(exported.hf("<fra_Latn>", add_special_tokens=False)["input_ids"]) > 2
        return
    assert exported.hf.convert_tokens_to_ids("<fra_Latn>") == tag
    ids = exported.hf("<fra_Latn>Salut", add_special_tokens=False)["input_ids"]
    assert ids[:2] == [exported.sp.piece_to_id("\u2581"), tag]


def test_special_tokens_and_max_length_are_configured(exported: Exported, tmp_path: Path) -> None:
    tok = exported.hf
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert tok.model_max_length == 2048
    assert len(tok) == exported.sp.get_piece_size()
    ids = exported.sp.encode("Bonjour le monde")
    assert tok("Bonjour le monde")["input_ids"] == ids  # like SentencePiece, no BOS/EOS unless asked
    assert tok.decode([tok.bos_token_id, *ids, tok.eos_token_id], skip_special_tokens=True) == "Bonjour le monde"
    write_hf_tokenizer(exported.model, tmp_path)
    set_model_max_length(tmp_path, 4096)  # an export's, for its model's sequence length
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["model_max_length"] == 4096 and config["eos_token"] == "</s>"


def test_unsupported_model_types_are_refused(tmp_path: Path) -> None:
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.CHAR
    proto.trainer_spec.byte_fallback = True
    with pytest.raises(ValueError, match="only bpe and unigram"):
        write_hf_tokenizer(proto.SerializeToString(), tmp_path)
    assert list(tmp_path.iterdir()) == []
