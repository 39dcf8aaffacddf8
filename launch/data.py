"""The training data pipeline: token files → fixed-length samples, blended across languages, sharded across ranks.

Reads what `corolla tokenizer encode` writes (tokenizer/encode.py): one `<lang>.bin`/`<lang>.idx` pair per language
and manifest.json.

- TokenCorpus: the token files of a tokens_dir, each language split by document into training and validation.
- LanguageSequences: one language's training tokens packed back to back and cut into samples of seq_length + 1 tokens,
  in an order reshuffled every epoch; any sample of any epoch in O(1).
- BlendSchedule: which language global sample i comes from, every language's count within one sample of its share.
- BlendedDataset: the two together, global sample i → token ids.
- micro_batches, validation_batches: what one data-parallel rank feeds its model.

Every sample is a pure function of the config, the token files and its global index, so the only state a checkpoint
needs is the number of samples consumed: resuming from it gives what an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import count, islice
from pathlib import Path

import numpy as np
import torch

from tokenizer.encode import MANIFEST_NAME
from tokenizer.token_files import TokenFile

# The blend repeats after this many samples; the weights are rounded to multiples of 1 / BLEND_PERIOD.
BLEND_PERIOD = 1 << 20
# Blend positions computed at once. Reaching position p of a period computes those before it, once: ~1.5 s for a
# whole period with 60 languages.
BLEND_CHUNK = 1 << 14
_MASK64 = (1 << 64) - 1


@dataclass
class DataConfig:
    """What the trainer reads and how (the schema behind conf/data/*.yaml).

    tokens_dir: the output_dir of a `corolla tokenizer encode`. None: `corpus` encoded with the job's tokenizer
    config, both built on first use in `cache_dir` and reused while their inputs are unchanged.
    weights: explicit per-language weights (normalised; languages left out get 0). None: p(L) ∝ tokens(L)^alpha over
    the training split's token counts (alpha=1: the natural mix, 0: uniform).
    validation_documents: per language, the last n documents are held out for validation; a language with n or fewer
    documents holds out all but its first, which it keeps for training.
    """

    tokens_dir: str | None = None
    corpus: str | None = None
    cache_dir: str = "runs/cache"
    weights: dict[str, float] | None = None
    alpha: float = 1.0
    validation_documents: int = 50
    seed: int = 1234

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"data.alpha={self.alpha} must be 0 (uniform) or more (1: the natural mix)")
        if self.validation_documents < 0:
            raise ValueError(f"data.validation_documents={self.validation_documents} must be 0 or more")
        if self.tokens_dir is None and self.corpus is None:
            raise ValueError("set data.tokens_dir (encoded token files) or data.corpus (a corpus to encode)")


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


def blend_weights(
    train_tokens: Mapping[str, int], weights: Mapping[str, float] | None, alpha: float
) -> dict[str, float]:
    """Each language's share of the training samples, summing to 1, by language code.

    `weights` normalised, languages it leaves out getting 0; without weights, p(L) ∝ train_tokens(L)^alpha.
    """
    if weights is None:
        raw = {language: float(tokens) ** alpha for language, tokens in train_tokens.items()}
    else:
        unknown = sorted(set(weights) - set(train_tokens))
        if unknown:
            raise ValueError(
                f"data.weights names languages the token files do not hold: {', '.join(unknown)} "
                f"(they hold {', '.join(sorted(train_tokens))})"
            )
        bad = sorted(language for language, weight in weights.items() if not (math.isfinite(weight) and weight >= 0))
        if bad:
            raise ValueError(f"data.weights of {', '.join(bad)} must be finite and 0 or more")
        raw = {language: float(weights.get(language, 0.0)) for language in train_tokens}
    total = sum(raw.values())
    if not total > 0:
        raise ValueError("data.weights gives every language weight 0: give at least one a positive weight")
    return {language: raw[language] / total for language in sorted(raw)}


def _mix(x: int) -> int:
    """splitmix64's finaliser: a 64-bit hash in which every output bit depends on every input bit."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class Permutation:
    """A pseudo-random bijection of range(size) chosen by `key`, without materialising it: O(1) memory.

    A Feistel network on the smallest even number of bits that holds size - 1, applied again while the result falls
    outside the range (cycle walking: under 4 times on average).
    """

    ROUNDS = 6

    def __init__(self, size: int, key: bytes) -> None:
        self.size = size
        self._half = max(1, ((size - 1).bit_length() + 1) // 2)
        self._mask = (1 << self._half) - 1
        digest = hashlib.blake2b(key, digest_size=8 * self.ROUNDS).digest()
        self._round_keys = [int.from_bytes(digest[i : i + 8], "little") for i in range(0, len(digest), 8)]

    def __call__(self, index: int) -> int:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} outside a permutation of {self.size}")
        while True:
            index = self._encrypt(index)
            if index < self.size:
                return index

    def _encrypt(self, x: int) -> int:
        left, right = x >> self._half, x & self._mask
        for round_key in self._round_keys:
            left, right = right, left ^ (_mix(right ^ round_key) & self._mask)
        return (left << self._half) | right


class LanguageSequences:
    """One language's training tokens, packed back to back and cut into samples of seq_length + 1 tokens.

    Documents already end with EOS. Sample j of an epoch starts at shift + j * seq_length: consecutive samples share
    one token, so that every next-token pair of the stream is a label once an epoch (input = sample[:-1], labels =
    sample[1:]). An epoch leaves (tokens - 1) % seq_length tokens over, at the ends of the stream; each epoch draws a
    new shift in [0, leftover] so that it is not always the same ones. Sample k is sample k % samples_per_epoch of
    epoch k // samples_per_epoch, in that epoch's order: a permutation seeded by (seed, language, epoch).
    """

    def __init__(self, tokens: np.ndarray, seq_length: int, seed: int, language: str) -> None:
        self.tokens, self.seq_length, self.seed, self.language = tokens, seq_length, seed, language
        self.samples_per_epoch = max(0, (tokens.size - 1) // seq_length)
        if self.samples_per_epoch == 0:
            raise ValueError(
                f"{language}: its training split holds {tokens.size} tokens, fewer than one sample of seq_length + 1 "
                f"= {seq_length + 1}: lower model.seq_length or data.validation_documents, encode more {language} "
                "text, or give it weight 0 in data.weights"
            )
        self.leftover = tokens.size - 1 - self.samples_per_epoch * seq_length
        self._epoch: tuple[int, Permutation, int] | None = None

    def start(self, k: int) -> int:
        """Where sample k starts in the stream."""
        if k < 0:
            raise IndexError(f"{self.language}: sample {k} is negative")
        epoch, position = divmod(k, self.samples_per_epoch)
        order, shift = self._order(epoch)
        return shift + order(position) * self.seq_length

    def sample(self, k: int) -> np.ndarray:
        start = self.start(k)
        return self.tokens[start : start + self.seq_length + 1]

    def _order(self, epoch: int) -> tuple[Permutation, int]:
        if self._epoch is None or self._epoch[0] != epoch:
            key = f"{self.seed}/{self.language}/{epoch}".encode()
            shift = int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"shift").digest(), "little")
            self._epoch = (epoch, Permutation(self.samples_per_epoch, key), shift % (self.leftover + 1))
        return self._epoch[1], self._epoch[2]


def round_weights(weights: list[float], period: int) -> list[int]:
    """Samples per period for each (positive) weight, summing to `period`: largest remainders, at least 1 each."""
    quotas = np.asarray(weights, dtype=np.float64) / sum(weights) * period
    counts = np.maximum(np.floor(quotas), 1).astype(np.int64)
    short = period - int(counts.sum())
    if short >= 0:
        counts[np.argsort(counts - quotas, kind="stable")[:short]] += 1
    for _ in range(-short):  # more weights bumped up to 1 than flooring left over
        counts[np.argmax(counts)] -= 1
    return counts.tolist()


def chairman_assignment(counts: list[int], period: int) -> Iterator[int]:
    """The language (index into counts) of steps 1, 2, ... for shares counts[L] / period, which sum to 1.

    Tijdeman's chairman assignment (1980): at step n, among the languages whose deficit share·n − taken is at least
    1/d (d = 2k − 2), take the one whose deficit reaches 1 − 1/d first; ties go to the lower index. Every language's
    count then stays within 1 − 1/d of share·n at every n. (Taking the largest deficit does not: 1.17 samples off on
    random weights.) With those fixed release and due steps, this is earliest-deadline-first on two heaps.
    """
    d = max(2 * len(counts) - 2, 1)  # a single language is eligible at every step with d = 1
    scale = 2 * period.bit_length() + 1  # distinct deadlines a / counts[L] stay distinct as integers, equal stay equal

    def release(language: int, taken: int) -> int:  # the first step at which its deficit is at least 1/d
        return -(-((taken * d + 1) * period) // (d * counts[language]))

    def deadline(language: int, taken: int) -> int:  # when its deficit would reach 1 − 1/d, scaled
        return (((taken + 1) * d - 1) << scale) // counts[language]

    taken = [0] * len(counts)
    waiting = [(release(language, 0), language) for language in range(len(counts))]
    heapq.heapify(waiting)
    ready: list[tuple[int, int]] = []
    for step in count(1):
        while waiting and waiting[0][0] <= step:
            language = heapq.heappop(waiting)[1]
            heapq.heappush(ready, (deadline(language, taken[language]), language))
        language = heapq.heappop(ready)[1]
        taken[language] += 1
        heapq.heappush(waiting, (release(language, taken[language]), language))
        yield language


class BlendSchedule:
    """Which language each global sample comes from, and which of that language's samples it is.

    The weights are rounded to multiples of 1/period (`shares`, at least one sample a period for a positive weight);
    the chairman assignment then keeps every language's count within one sample of share × i at every i, so that a
    period holds exactly its count of each language and the schedule repeats. It does not depend on the seed.
    """

    def __init__(self, weights: Mapping[str, float], period: int = BLEND_PERIOD) -> None:
        self.languages = [language for language in sorted(weights) if weights[language] > 0]
        if len(self.languages) > period // 2:
            raise ValueError(f"{len(self.languages)} languages do not fit a blend period of {period} samples")
        self.period = period
        self.counts = round_weights([weights[language] for language in self.languages], period)
        self._steps = chairman_assignment(self.counts, period)
        self._taken = [0] * len(self.languages)
        self._language = np.empty(period, np.int32)
        self._rank = np.empty(period, np.int64)
        self._computed = 0

    @property
    def shares(self) -> dict[str, float]:
        return {language: n / self.period for language, n in zip(self.languages, self.counts, strict=True)}

    def locate(self, index: int) -> tuple[str, int]:
        """(language, which of its samples) of global sample `index`."""
        if index < 0:
            raise IndexError(f"sample {index} is negative")
        cycle, position = divmod(index, self.period)
        self._compute(position + 1)
        language = int(self._language[position])
        return self.languages[language], cycle * self.counts[language] + int(self._rank[position])

    def _compute(self, positions: int) -> None:
        while self._computed < positions:
            stop = min(self.period, self._computed + BLEND_CHUNK)
            languages = list(islice(self._steps, stop - self._computed))
            ranks = []
            for language in languages:
                ranks.append(self._taken[language])
                self._taken[language] += 1
            self._language[self._computed : stop] = languages
            self._rank[self._computed : stop] = ranks
            self._computed = stop


class BlendedDataset:
    """Global sample i → seq_length + 1 token ids (int64) of one language, by the blend. Every i >= 0 is valid."""

    def __init__(self, corpus: TokenCorpus, config: DataConfig, seq_length: int) -> None:
        if seq_length < 1:
            raise ValueError(f"model.seq_length={seq_length} must be at least 1")
        self.seq_length = seq_length
        train_tokens = {language: split.train_tokens.size for language, split in corpus.splits.items()}
        self.weights = blend_weights(train_tokens, config.weights, config.alpha)
        self.schedule = BlendSchedule(self.weights)
        self.sequences = {
            language: LanguageSequences(corpus.splits[language].train_tokens, self.seq_length, config.seed, language)
            for language in self.schedule.languages
        }

    def locate(self, index: int) -> tuple[str, int]:
        return self.schedule.locate(index)

    def language_of(self, index: int) -> str:
        return self.locate(index)[0]

    def __getitem__(self, index: int) -> np.ndarray:
        language, k = self.locate(index)
        return self.sequences[language].sample(k).astype(np.int64)


def micro_batches(
    dataset: BlendedDataset, start_sample: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int
) -> Iterator[torch.Tensor]:
    """This rank's micro-batches, [micro_batch, seq_length + 1] int64, from global sample `start_sample` on, endlessly.

    Global batch b is samples [start_sample + b·global_batch, start_sample + (b + 1)·global_batch); rank r takes the
    contiguous slice r of global_batch // dp_size of them, in global_batch // (micro_batch·dp_size) micro-batches.
    So ranks are disjoint, their slices concatenated by rank are the global batch whatever dp_size is, and resuming
    with start_sample = samples consumed so far gives what an uninterrupted run would have.
    """
    if min(global_batch, micro_batch, dp_size) < 1 or start_sample < 0 or not 0 <= dp_rank < dp_size:
        raise ValueError(
            f"global_batch={global_batch}, micro_batch={micro_batch}, dp_size={dp_size} must be positive, "
            f"start_sample={start_sample} 0 or more and dp_rank={dp_rank} in [0, dp_size)"
        )
    if global_batch % (micro_batch * dp_size):
        raise ValueError(
            f"global_batch={global_batch} is not a multiple of micro_batch × dp_size = {micro_batch} × {dp_size}: "
            "change one of them"
        )
    return _micro_batches(dataset, start_sample, global_batch, micro_batch, dp_rank, dp_size)


def _micro_batches(
    dataset: BlendedDataset, start_sample: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int
) -> Iterator[torch.Tensor]:
    per_rank = global_batch // dp_size
    for first in count(start_sample + dp_rank * per_rank, global_batch):
        for begin in range(first, first + per_rank, micro_batch):
            yield torch.from_numpy(np.stack([dataset[i] for i in range(begin, begin + micro_batch)]))


def validation_batches(
    corpus: TokenCorpus, seq_length: int, micro_batch: int, samples: int, dp_rank: int = 0, dp_size: int = 1
) -> dict[str, list[torch.Tensor]]:
    """Per language, this rank's validation micro-batches, [micro_batch, seq_length + 1] int64; fixed for a corpus.

    A language's validation samples are the first `samples` of its held-out tokens cut like training samples; rank r
    takes the contiguous slice r of samples // dp_size of them. Every rank gets the same number of full micro-batches
    of every language, so the mean over micro-batches and ranks is the mean over the samples, whatever the layout.
    Empty when the corpus holds no documents out (validation_documents=0).
    """
    if micro_batch < 1 or not 0 <= dp_rank < dp_size or samples % (micro_batch * dp_size):
        raise ValueError(
            f"validation samples={samples} must be a multiple of micro_batch={micro_batch} x dp_size={dp_size}, "
            f"with dp_rank={dp_rank} in [0, dp_size)"
        )
    if all(split.validation_documents == 0 for split in corpus.splits.values()):
        return {}
    return {
        language: _validation_language(split, seq_length, micro_batch, samples, dp_rank, dp_size)
        for language, split in corpus.splits.items()
    }


def _validation_language(
    split: LanguageSplit, seq_length: int, micro_batch: int, samples: int, dp_rank: int, dp_size: int
) -> list[torch.Tensor]:
    tokens = split.validation_tokens
    available = (tokens.size - 1) // seq_length if tokens.size else 0
    if available < samples:
        raise ValueError(
            f"{split.language}: its {split.validation_documents} held-out documents hold {available} validation "
            f"samples of seq_length + 1 = {seq_length + 1} tokens, fewer than train.eval_samples={samples}: lower "
            "train.eval_samples, raise data.validation_documents, or set train.eval_interval=0 to skip validation"
        )
    per_rank = samples // dp_size
    starts = range(dp_rank * per_rank * seq_length, (dp_rank + 1) * per_rank * seq_length, seq_length)
    mine = [tokens[start : start + seq_length + 1].astype(np.int64) for start in starts]
    return [torch.from_numpy(np.stack(mine[i : i + micro_batch])) for i in range(0, len(mine), micro_batch)]
