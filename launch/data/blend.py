"""Fixed-length samples blended across languages: global sample i → seq_length + 1 token ids, in O(1).

- LanguageSequences: one language's training tokens packed back to back and cut into samples of seq_length + 1 tokens,
  in an order reshuffled every epoch; any sample of any epoch in O(1).
- BlendSchedule: which language global sample i comes from, every language's count within one sample of its share.
- BlendedDataset: the two together.

Every sample is a pure function of the config, the token files and its global index, so the only state a checkpoint
needs is the number of samples consumed: resuming from it gives what an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterator, Mapping
from itertools import count, islice

import numpy as np

from launch.config.data import DataConfig
from launch.data.corpus import TokenCorpus, checked_ids

# The blend repeats after this many samples; the weights are rounded to multiples of 1 / BLEND_PERIOD.
BLEND_PERIOD = 1 << 20
# Blend positions computed at once. Reaching position p of a period computes those before it, once: ~1.5 s for a
# whole period with 60 languages.
BLEND_CHUNK = 1 << 14
_MASK64 = (1 << 64) - 1


def blend_weights(
    train_tokens: Mapping[str, int], weights: Mapping[str, float] | None, alpha: float
) -> dict[str, float]:
    """Each language's share of the training samples, summing to 1, by language code.

    `weights` normalised, languages it leaves out getting 0; without weights, p(L) ∝ train_tokens(L)^alpha.
    """
    if not weights:
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
        self.seq_length, self.vocab_size, self.tokens_dir = seq_length, corpus.vocab_size, corpus.tokens_dir
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
        sample = self.sequences[language].sample(k).astype(np.int64)
        return checked_ids(sample, self.vocab_size, f"{language}'s sample {k} in {self.tokens_dir}")
