"""`corolla tokenizer extend`: add languages to a trained tokenizer without changing what it does for the others.

The languages the base serves badly (premium above a threshold on the tuning half of a parallel set, or named) get
a BPE of their own, trained with the usual sampling (parity: re-weighted by the premiums the extended tokenizer gives
them), and what of it the base lacks is appended after the base's own, in its own order. A corolla SentencePiece
base gets the pieces, scored below every base piece (its Hugging Face export written as for any corolla tokenizer); a
byte-level BPE `tokenizer.json` (BLOOM's kind) gets the tokens as new ids and their merges after its own. Either way
every base id keeps its piece, byte fallback and special tokens are the base's, and the base's merges all come first:
on text of the base languages the new pieces only join what the base left as two pieces.
"""

from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import Tokenizer, pre_tokenizers, trainers

from tokenizer.added_pieces import AddedPieces
from tokenizer.config import REFERENCE_KEY, Sampling, TokenizerConfig, TokenizerExtendJob
from tokenizer.corpus import LanguageSize
from tokenizer.corpus_scan import CorpusScan, scan_corpus
from tokenizer.evaluate import language_stats, load_parallel, split_parallel
from tokenizer.files import (
    HF_CONFIG_FILES,
    HF_TOKENIZER_FILE,
    METADATA_FILE,
    SPM_MODEL_FILE,
    STAGED,
    Log,
    publish,
    read_json,
    staging_area,
)
from tokenizer.hf_export import write_hf_tokenizer
from tokenizer.loading import TextTokenizer, load_tokenizer
from tokenizer.parity import parity_search
from tokenizer.sampling import LanguageBudget, budgets, format_budget_table, sample_sentences
from tokenizer.train import (
    check_output_dir,
    config_record,
    record_files,
    train_on_plan,
    versions,
)

NORMAL = pb.ModelProto.SentencePiece.NORMAL


def append_pieces(base: pb.ModelProto, trained: bytes) -> tuple[bytes, int]:
    """`base` with the normal pieces of the `trained` model it lacks appended, best first, each scored below every
    base piece; the serialized model and the number of pieces added."""
    known = {piece.piece for piece in base.pieces}
    new = [p for p in pb.ModelProto.FromString(trained).pieces if p.type == NORMAL and p.piece not in known]
    lowest = min(piece.score for piece in base.pieces if piece.type == NORMAL)
    extended = pb.ModelProto()
    extended.CopyFrom(base)
    for rank, piece in enumerate(sorted(new, key=lambda piece: -piece.score), start=1):
        extended.pieces.add(piece=piece.piece, score=lowest - rank, type=NORMAL)
    extended.trainer_spec.vocab_size = len(extended.pieces)
    return extended.SerializeToString(), len(new)


def append_merges(base: dict, trained: dict) -> dict:
    """A `tokenizer.json` BPE `base` with the tokens of the `trained` one it lacks appended to its vocabulary (new
    ids after its last) and their merges after its own, in the trained order: the base's merges all come first."""
    extended = json.loads(json.dumps(base))
    vocab, merges = extended["model"]["vocab"], extended["model"]["merges"]
    next_id = max([*vocab.values(), *(token["id"] for token in extended.get("added_tokens", []))]) + 1
    for token, _ in sorted(trained["model"]["vocab"].items(), key=lambda item: item[1]):
        if token not in vocab:
            vocab[token], next_id = next_id, next_id + 1
    as_text = not merges or isinstance(merges[0], str)  # "a b", or ["a", "b"] (newer tokenizers)
    known = {tuple(_pair(merge)) for merge in merges}
    for merge in map(_pair, trained["model"]["merges"]):
        if tuple(merge) not in known:
            merges.append(" ".join(merge) if as_text else merge)
    return extended


def _pair(merge: str | list[str]) -> list[str]:
    return merge.split(" ", 1) if isinstance(merge, str) else list(merge)


class ExtensibleBase(ABC):
    """A base tokenizer of one kind: how pieces are trained for it, appended to it and written."""

    model_file: str

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tokenizer = load_tokenizer(path)

    @abstractmethod
    def train(
        self, scan: CorpusScan, plan: list[LanguageBudget], cfg: TokenizerConfig, seed: int, workdir: Path, log: Log
    ) -> tuple[bytes, dict[str, int]]:
        """A model of the languages' sample, serialized, and the bytes sampled per language."""

    @abstractmethod
    def append(self, trained: bytes) -> bytes: ...

    @abstractmethod
    def decompositions(self, extended: bytes) -> dict[int, list[int]]:
        """Each added id's text as the base tokenizer encodes it."""

    def write(self, extended: bytes, directory: Path) -> None:
        (directory / self.model_file).write_bytes(extended)
        added = AddedPieces(self.tokenizer.fingerprint, self.tokenizer.vocab_size, self.decompositions(extended))
        added.write(directory)


class SentencePieceBase(ExtensibleBase):
    model_file = SPM_MODEL_FILE

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.proto = pb.ModelProto.FromString(path.read_bytes())
        if self.proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
            raise ValueError(f"base={path.parent} is a unigram model: extension appends BPE pieces, train it with BPE")

    def train(
        self, scan: CorpusScan, plan: list[LanguageBudget], cfg: TokenizerConfig, seed: int, workdir: Path, log: Log
    ) -> tuple[bytes, dict[str, int]]:
        return train_on_plan(scan, plan, cfg, seed, workdir, log)

    def append(self, trained: bytes) -> bytes:
        return append_pieces(self.proto, trained)[0]

    def decompositions(self, extended: bytes) -> dict[int, list[int]]:
        plain = pb.ModelProto()  # no dummy prefix: a piece's own spaces only
        plain.CopyFrom(self.proto)
        plain.normalizer_spec.add_dummy_prefix = False
        processor = spm.SentencePieceProcessor(model_proto=plain.SerializeToString())
        pieces = pb.ModelProto.FromString(extended).pieces
        start = len(self.proto.pieces)
        return {
            index: processor.encode(pieces[index].piece.replace("\u2581", " ")) for index in range(start, len(pieces))
        }

    def write(self, extended: bytes, directory: Path) -> None:
        super().write(extended, directory)
        write_hf_tokenizer(extended, directory)


class ByteLevelBase(ExtensibleBase):
    """A byte-level BPE `tokenizer.json`, as BLOOM's: pieces trained with `tokenizers` and the base's pre-tokenizer."""

    model_file = HF_TOKENIZER_FILE

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.config = json.loads(path.read_text(encoding="utf-8"))
        if self.config["model"]["type"] != "BPE" or not self.tokenizer.byte_level:
            raise ValueError(
                f"base={path.parent} holds a tokenizer.json that is no byte-level BPE: extension appends to a "
                "SentencePiece BPE tokenizer.model or a byte-level BPE tokenizer.json (as BLOOM's)"
            )

    def train(
        self, scan: CorpusScan, plan: list[LanguageBudget], cfg: TokenizerConfig, seed: int, workdir: Path, log: Log
    ) -> tuple[bytes, dict[str, int]]:
        sample = workdir / "sample.txt"
        sampled = sample_sentences(scan, plan, seed, sample)
        tokenizer = Tokenizer.from_file(str(self.path))
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tokenizer.train([str(sample)], trainer)
        sample.unlink()
        log(f"byte-level BPE {cfg.vocab_size}: trained on {sum(sampled.values()) / 1e6:.1f} MB")
        return tokenizer.to_str().encode(), sampled

    def append(self, trained: bytes) -> bytes:
        return json.dumps(append_merges(self.config, json.loads(trained)), ensure_ascii=False).encode()

    def decompositions(self, extended: bytes) -> dict[int, list[int]]:
        base = Tokenizer.from_file(str(self.path))
        vocab = json.loads(extended)["model"]["vocab"]
        start = self.tokenizer.vocab_size
        # The base's BPE on the token's own byte symbols: exact even for a token that holds part of a character.
        return {
            index: [piece.id for piece in base.model.tokenize(token)]
            for token, index in vocab.items()
            if index >= start
        }

    def write(self, extended: bytes, directory: Path) -> None:
        super().write(extended, directory)
        for name in HF_CONFIG_FILES:
            if (self.path.parent / name).is_file():
                shutil.copy2(self.path.parent / name, directory / name)


def _base(base: Path) -> ExtensibleBase:
    if (base / SPM_MODEL_FILE).is_file():
        return SentencePieceBase(base / SPM_MODEL_FILE)
    if (base / HF_TOKENIZER_FILE).is_file():
        return ByteLevelBase(base / HF_TOKENIZER_FILE)
    raise ValueError(f"base={base} holds neither tokenizer.model nor tokenizer.json: pass a tokenizer directory")


def _premiums(tokenizer: TextTokenizer, parallel: dict[str, list[str]], reference: str) -> dict[str, float]:
    return {language: row["premium"] for language, row in language_stats(tokenizer, parallel, reference).items()}


def _languages(job: TokenizerExtendJob, scan: CorpusScan, premiums: dict[str, float], log: Log) -> list[str]:
    """The languages to add: those named, else those of the corpus above the threshold."""
    if job.languages:
        unknown = sorted(set(job.languages) - set(scan.sizes))
        if unknown:
            raise ValueError(f"languages={unknown} are not in corpus={job.corpus}: name languages it has")
        return sorted(job.languages)
    chosen = sorted(lang for lang in scan.sizes if premiums.get(lang, 0.0) > job.premium_threshold)
    unmeasured = sorted(set(scan.sizes) - set(premiums))
    untold = f"; {', '.join(unmeasured)} have none (the parallel set has no sentences of them)" if unmeasured else ""
    if not chosen:
        worst = max((lang for lang in scan.sizes if lang in premiums), key=premiums.get, default=None)
        highest = f" (the highest: {worst}, {premiums[worst]:.2f})" if worst else ""
        raise ValueError(
            f"no language of corpus={job.corpus} has a premium above premium_threshold={job.premium_threshold} under "
            f"base={job.base}{highest}{untold}: nothing to add; lower the threshold or name languages=[...]"
        )
    if unmeasured:
        log(f"premiums of the corpus's languages{untold}: name them in languages=[...] to add them")
    return chosen


def extend_tokenizer(job: TokenizerExtendJob, log: Log = print) -> Path:
    cfg = replace(job.tokenizer, vocab_size=job.added_pieces)
    if not cfg.parity_set:
        raise ValueError("tokenizer extend measures premiums on a parallel set: pass tokenizer.parity_set=DIR")
    base = _base(Path(job.base))
    inputs = {"base": job.base, "corpus": job.corpus, "tokenizer.parity_set": cfg.parity_set}
    out = check_output_dir(job.output_dir, job.overwrite, inputs)
    reference = cfg.reference_language
    tune, held_out = split_parallel(load_parallel(cfg.parity_set, reference, REFERENCE_KEY), cfg.parity_tune_fraction)
    scan = scan_corpus(job.corpus)
    before = _premiums(base.tokenizer, tune, reference)
    languages = _languages(job, scan, before, log)
    log("extending for " + ", ".join(f"{lang} (premium {before.get(lang, float('nan')):.2f})" for lang in languages))
    sizes = {lang: scan.sizes[lang] for lang in languages}
    with staging_area(out) as workdir:
        model, history = _extended_model(base, scan, sizes, cfg, job.seed, workdir, log)
        staging = workdir / STAGED
        staging.mkdir()
        base.write(model, staging)
        extended = load_tokenizer(staging / base.model_file)
        held_out = held_out if held_out.get(reference) else tune
        premiums = {
            "before": _premiums(base.tokenizer, held_out, reference),
            "after": _premiums(extended, held_out, reference),
        }
        metadata = record_files(staging, _metadata(job, base.tokenizer, extended, languages, before, premiums, history))
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
        publish(staging, out, job.overwrite)
    added = extended.vocab_size - base.tokenizer.vocab_size
    log(
        f"tokenizer written to {out}: {base.tokenizer.vocab_size} base pieces (ids unchanged) + {added} for "
        f"{len(languages)} languages; held-out premiums "
        + ", ".join(f"{lang} {premiums['after'][lang]:.2f}" for lang in languages if lang in premiums["after"])
    )
    return out


def _extended_model(
    base: ExtensibleBase,
    scan: CorpusScan,
    sizes: dict[str, LanguageSize],
    cfg: TokenizerConfig,
    seed: int,
    workdir: Path,
    log: Log,
) -> tuple[bytes, dict]:
    """The base with the pieces trained on the languages of `sizes` appended, sampled as `cfg` says (parity: over
    rounds, each measured against the reference language); and the parity search's history, if any."""

    def train_round(plan):
        try:
            trained, sampled = base.train(scan, plan, cfg, seed, workdir, log)
        except ValueError as error:  # said of the trained vocabulary, which is added_pieces here
            raise ValueError(str(error).replace("tokenizer.vocab_size", "added_pieces")) from None
        return base.append(trained), sampled

    if cfg.sampling == Sampling.parity:
        measured = frozenset(sizes) | {cfg.reference_language}
        suffix = Path(base.model_file).suffix
        result = parity_search(sizes, cfg, train_round, workdir, log, measured=measured, suffix=suffix)
        return result.model, {"parity": result.history}
    plan = budgets(sizes, cfg)
    log("sampling budget per language (before training):\n" + format_budget_table(plan))
    return train_round(plan)[0], {}


def _metadata(
    job: TokenizerExtendJob,
    base: TextTokenizer,
    extended: TextTokenizer,
    languages: list[str],
    chosen_by: dict[str, float],
    premiums: dict[str, dict[str, float]],
    history: dict,
) -> dict:
    base_metadata = Path(job.base) / METADATA_FILE
    recorded = read_json(base_metadata, "restore the base tokenizer's metadata") if base_metadata.is_file() else {}
    base_languages = recorded.get("languages", [])
    return {
        "languages": sorted(set(base_languages) | set(languages)),
        "corpus": str(Path(job.corpus).resolve()),
        "vocab_size": extended.vocab_size,
        "extension": {
            "base": str(base.path.resolve()),
            "base_fingerprint": base.fingerprint,
            "base_vocab_size": base.vocab_size,
            "added_languages": languages,
            "added_pieces": extended.vocab_size - base.vocab_size,
            "first_added_id": base.vocab_size,
            "premium_threshold": None if job.languages else job.premium_threshold,
            "tune_premiums": {lang: chosen_by[lang] for lang in languages if lang in chosen_by},
            "held_out_premiums_before": premiums["before"],
            "held_out_premiums_after": premiums["after"],
            **history,
        },
        "tokenizer_config": config_record(replace(job.tokenizer, vocab_size=job.added_pieces)),
        "seed": job.seed,
        "versions": versions(),
    }
