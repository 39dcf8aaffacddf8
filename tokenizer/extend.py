"""`corolla tokenizer extend`: add languages to a trained tokenizer without changing what it does for the others.

The languages the base serves badly (premium above a threshold on the tuning half of a parallel set, or named) get
a SentencePiece BPE of their own, trained with the usual sampling (parity: re-weighted by the premiums the extended
tokenizer gives them). Its pieces that the base lacks are appended after the base's, scored below every base piece,
in their own order. So every base id keeps its piece, byte fallback and special tokens are the base's, and the base's
merges all come first: on text of the base languages the new pieces only join what the base left as two pieces. The
Hugging Face export is written from the extended model as for any corolla tokenizer.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from tokenizer.config import Sampling, TokenizerExtendJob
from tokenizer.corpus_scan import CorpusScan, scan_corpus
from tokenizer.evaluate import language_stats, load_parallel, split_parallel
from tokenizer.files import ADDED_PIECES_FILE
from tokenizer.hf_export import write_hf_tokenizer
from tokenizer.loading import SentencePieceTokenizer
from tokenizer.parity import parity_search
from tokenizer.sampling import budgets, format_budget_table
from tokenizer.train import METADATA_FILE, check_output_dir, config_record, publish, train_on_plan, versions

NORMAL = pb.ModelProto.SentencePiece.NORMAL


def _base_model(base: Path) -> tuple[SentencePieceTokenizer, pb.ModelProto]:
    path = base / "tokenizer.model" if base.is_dir() else base
    if not path.is_file():
        raise ValueError(
            f"base={base} has no tokenizer.model: extension appends to a corolla (SentencePiece) tokenizer; one "
            "that is only a tokenizer.json, such as BLOOM's byte-level BPE, cannot be extended yet"
        )
    proto = pb.ModelProto.FromString(path.read_bytes())
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise ValueError(f"base={base} is a unigram model: extension appends BPE pieces, train the base with BPE")
    return SentencePieceTokenizer(path), proto


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


def decompositions(base: pb.ModelProto, extended: bytes) -> dict[int, list[int]]:
    """Each added piece's text as the base tokenizer encodes it (no dummy prefix: a piece's own spaces only)."""
    plain = pb.ModelProto()
    plain.CopyFrom(base)
    plain.normalizer_spec.add_dummy_prefix = False
    processor = spm.SentencePieceProcessor(model_proto=plain.SerializeToString())
    pieces = pb.ModelProto.FromString(extended).pieces
    return {
        index: processor.encode(pieces[index].piece.replace("\u2581", " "))
        for index in range(len(base.pieces), len(pieces))
    }


def write_added_pieces(path: Path, base: SentencePieceTokenizer, proto: pb.ModelProto, extended: bytes) -> None:
    record = {
        "base_fingerprint": base.fingerprint,
        "base_vocab_size": base.vocab_size,
        "decompositions": {str(index): ids for index, ids in decompositions(proto, extended).items()},
    }
    path.write_text(json.dumps(record) + "\n")


def _premiums(tokenizer: SentencePieceTokenizer, parallel: dict[str, list[str]], reference: str) -> dict[str, float]:
    return {language: row["premium"] for language, row in language_stats(tokenizer, parallel, reference).items()}


def _languages(job: TokenizerExtendJob, scan: CorpusScan, premiums: dict[str, float]) -> list[str]:
    """The languages to add: those named, else those of the corpus above the threshold."""
    if job.languages:
        unknown = sorted(set(job.languages) - set(scan.sizes))
        if unknown:
            raise ValueError(f"languages={unknown} are not in corpus={job.corpus}: name languages it has")
        return sorted(job.languages)
    chosen = sorted(lang for lang in scan.sizes if premiums.get(lang, 0.0) > job.premium_threshold)
    if not chosen:
        worst = max((lang for lang in scan.sizes if lang in premiums), key=premiums.get, default=None)
        highest = f" (the highest: {worst}, {premiums[worst]:.2f})" if worst else ""
        raise ValueError(
            f"no language of corpus={job.corpus} has a premium above premium_threshold={job.premium_threshold} under "
            f"base={job.base}{highest}: nothing to add; lower the threshold or name languages=[...]"
        )
    return chosen


def extend_tokenizer(job: TokenizerExtendJob, log=print) -> Path:
    cfg = replace(job.tokenizer, vocab_size=job.added_pieces)
    if not cfg.parity_set:
        raise ValueError("tokenizer extend measures premiums on a parallel set: pass tokenizer.parity_set=DIR")
    base, proto = _base_model(Path(job.base))
    out = check_output_dir(job.output_dir, job.overwrite)
    reference = cfg.reference_language
    tune, held_out = split_parallel(load_parallel(cfg.parity_set, reference), cfg.parity_tune_fraction)
    scan = scan_corpus(job.corpus)
    before = _premiums(base, tune, reference)
    languages = _languages(job, scan, before)
    log("extending for " + ", ".join(f"{lang} (premium {before.get(lang, float('nan')):.2f})" for lang in languages))
    sizes = {lang: scan.sizes[lang] for lang in languages}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        workdir = Path(tmp)

        def train_round(plan):
            try:
                trained, sampled = train_on_plan(scan, plan, cfg, job.seed, workdir, log)
            except ValueError as error:  # said of the trained vocabulary, which is added_pieces here
                raise ValueError(str(error).replace("tokenizer.vocab_size", "added_pieces")) from None
            return append_pieces(proto, trained)[0], sampled

        if cfg.sampling == Sampling.parity:
            measured = frozenset(languages) | {reference}
            result = parity_search(sizes, cfg, train_round, workdir, log, measured=measured)
            model, history = result.model, {"parity": result.history}
        else:
            plan = budgets(sizes, cfg)
            log("sampling budget per language (before training):\n" + format_budget_table(plan))
            model, history = train_round(plan)[0], {}
        staging = workdir / "out"
        staging.mkdir()
        (staging / "tokenizer.model").write_bytes(model)
        write_hf_tokenizer(model, staging)
        write_added_pieces(staging / ADDED_PIECES_FILE, base, proto, model)
        extended = SentencePieceTokenizer(staging / "tokenizer.model")
        held_out = held_out if held_out.get(reference) else tune
        premiums = {"before": _premiums(base, held_out, reference), "after": _premiums(extended, held_out, reference)}
        metadata = _metadata(job, base, proto, extended, languages, before, premiums, history)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
        publish(staging, out)
    added = extended.vocab_size - base.vocab_size
    log(
        f"tokenizer written to {out}: {base.vocab_size} base pieces (ids unchanged) + {added} for "
        f"{len(languages)} languages; held-out premiums "
        + ", ".join(f"{lang} {premiums['after'][lang]:.2f}" for lang in languages if lang in premiums["after"])
    )
    return out


def _metadata(job, base, proto, extended, languages, chosen_by, premiums, history) -> dict:
    base_metadata = Path(job.base) / METADATA_FILE
    base_languages = json.loads(base_metadata.read_text()).get("languages", []) if base_metadata.is_file() else []
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
            "first_added_id": len(proto.pieces),
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
