"""The training data pipeline on real token files: slicing, blend, determinism, resuming, sharding, held-out data."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MULTILINGUAL
from launch.config.data import DataConfig
from launch.data.blend import BLEND_PERIOD, BlendedDataset, BlendSchedule, LanguageSequences, Permutation
from launch.data.corpus import TokenCorpus, validation_sample_bytes
from launch.train.batches import micro_batches, validation_batches
from tokenizer.config import TokenizerConfig
from tokenizer.encode import MANIFEST_NAME, encode_corpus
from tokenizer.loading import load_tokenizer
from tokenizer.spm import train_sentencepiece
from tokenizer.token_files import TokenFile

# Lines (= documents) per language: unequal, so that natural and tempered mixes differ.
CORPUS_LINES = {"eng_Latn": 240, "fra_Latn": 160, "hin_Deva": 100, "rus_Cyrl": 60, "zho_Hans": 40}
SEQ = 32
HELD_OUT = 5


def head(language: str, lines: int) -> list[str]:
    with (MULTILINGUAL / f"{language}.txt").open(encoding="utf-8") as source:
        return [line for _, line in zip(range(lines), source, strict=False)]


def quiet(*_: object) -> None:
    pass


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = [line.rstrip("\n") for language in CORPUS_LINES for line in head(language, 300)]
    cfg = TokenizerConfig(vocab_size=2000, character_coverage=0.99)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    path.write_bytes(train_sentencepiece(lines, cfg, seed=1, languages=list(CORPUS_LINES)))
    return path


def encode(model: Path, target: Path, lines: dict[str, int], append_eos: bool = True) -> Path:
    corpus = target / "corpus"
    corpus.mkdir(parents=True)
    for language, count in lines.items():
        (corpus / f"{language}.txt").write_text("".join(head(language, count)), encoding="utf-8")
    encode_corpus(model, corpus, target / "tokens", append_eos=append_eos, workers=1, log=quiet)
    return target / "tokens"


@pytest.fixture(scope="module")
def tokens_dir(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode(model, tmp_path_factory.mktemp("data"), CORPUS_LINES)


def config(tokens_dir: Path, **overrides: object) -> DataConfig:
    return DataConfig(str(tokens_dir), **{"validation_documents": HELD_OUT, **overrides})


def dataset(tokens_dir: Path, seq_length: int = SEQ, **overrides: object) -> BlendedDataset:
    cfg = config(tokens_dir, **overrides)
    return BlendedDataset(TokenCorpus(cfg.tokens_dir, cfg.validation_documents), cfg, seq_length)


def test_the_corpus_splits_by_document_and_packs_documents_ending_in_eos(tokens_dir: Path) -> None:
    corpus = TokenCorpus(tokens_dir, HELD_OUT)
    assert corpus.languages == sorted(CORPUS_LINES)
    assert corpus.vocab_size == 2000
    for language, split in corpus.splits.items():
        file = TokenFile(tokens_dir / language / f"{language}.txt")
        assert (split.train_documents, split.validation_documents) == (len(file) - HELD_OUT, HELD_OUT)
        documents = [file.document(i) for i in range(len(file))]
        assert all(document[-1] == corpus.eos_id for document in documents)
        np.testing.assert_array_equal(split.train_tokens, np.concatenate(documents[:-HELD_OUT]))
        np.testing.assert_array_equal(split.validation_tokens, np.concatenate(documents[-HELD_OUT:]))
    # A language with no more documents than asked for keeps its first one for training.
    greedy = TokenCorpus(tokens_dir, 10**6)
    assert all(split.train_documents == 1 for split in greedy.splits.values())


def test_samples_are_slices_of_a_languages_training_stream(tokens_dir: Path) -> None:
    data = dataset(tokens_dir)
    files = {language: TokenFile(tokens_dir / language / f"{language}.txt") for language in CORPUS_LINES}
    for i in range(400):
        language, k = data.locate(i)
        sample = data[i]
        assert sample.shape == (SEQ + 1,) and sample.dtype == np.int64
        start = data.sequences[language].start(k)
        file = files[language]
        assert start + SEQ + 1 <= file.offsets[len(file) - HELD_OUT]
        np.testing.assert_array_equal(sample, file.tokens[start : start + SEQ + 1])


def test_an_epoch_takes_every_sample_once_and_the_next_reshuffles(tokens_dir: Path) -> None:
    sequences = dataset(tokens_dir).sequences["zho_Hans"]
    n = sequences.samples_per_epoch
    assert n == (sequences.tokens.size - 1) // SEQ and n > 10
    orders = []
    for epoch in range(3):
        starts = [sequences.start(k) for k in range(epoch * n, (epoch + 1) * n)]
        shift = min(starts)
        assert 0 <= shift <= sequences.leftover
        assert sorted(starts) == list(range(shift, shift + n * SEQ, SEQ))
        orders.append([(start - shift) // SEQ for start in starts])
    assert orders[0] != orders[1] != orders[2]
    fresh = LanguageSequences(sequences.tokens, SEQ, 1234, "zho_Hans")
    assert [fresh.start(k) for k in range(2 * n, 3 * n)] == [sequences.start(k) for k in range(2 * n, 3 * n)]


def test_permutations_are_bijections_chosen_by_their_key() -> None:
    for size in [1, 2, 3, 5, 16, 17, 100, 257, 1000]:
        assert sorted(map(Permutation(size, b"a"), range(size))) == list(range(size))
    assert list(map(Permutation(100, b"a"), range(100))) != list(map(Permutation(100, b"b"), range(100)))
    with pytest.raises(IndexError):
        Permutation(5, b"a")(5)


def count_languages(data: BlendedDataset, samples: int) -> dict[str, np.ndarray]:
    """counts[L][i]: samples of L among global samples 0..i."""
    languages = [data.language_of(i) for i in range(samples)]
    return {language: np.cumsum([seen == language for seen in languages]) for language in data.schedule.languages}


def assert_blend_follows(data: BlendedDataset, expected: dict[str, float], samples: int = 4000) -> None:
    assert data.schedule.languages == sorted(language for language, weight in expected.items() if weight > 0)
    for language, weight in data.schedule.shares.items():
        assert abs(weight - expected[language]) <= 1 / BLEND_PERIOD
    steps = np.arange(1, samples + 1)
    for language, counts in count_languages(data, samples).items():
        assert np.abs(counts - data.schedule.shares[language] * steps).max() < 1


def test_the_blend_follows_explicit_weights_within_one_sample(tokens_dir: Path) -> None:
    data = dataset(tokens_dir, weights={"eng_Latn": 3, "hin_Deva": 1.5, "zho_Hans": 0.5})
    assert_blend_follows(data, {"eng_Latn": 0.6, "hin_Deva": 0.3, "zho_Hans": 0.1})
    assert "fra_Latn" not in data.sequences


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_the_blend_follows_token_counts_to_the_power_alpha(tokens_dir: Path, alpha: float) -> None:
    data = dataset(tokens_dir, alpha=alpha)
    tokens = {}
    for language in CORPUS_LINES:
        file = TokenFile(tokens_dir / language / f"{language}.txt")
        tokens[language] = float(file.offsets[len(file) - HELD_OUT]) ** alpha
    assert_blend_follows(data, {language: value / sum(tokens.values()) for language, value in tokens.items()})


def random_weights(languages: int) -> dict[str, float]:
    shares = np.random.default_rng(languages).dirichlet(np.full(languages, 0.5))
    return {f"l{i:02}": float(share) for i, share in enumerate(shares)}


# Taking the language with the largest deficit drifts 1.002 samples from these shares at step 186.
LARGEST_DEFICIT_DRIFTS = {"a": 2, "b": 42, "c": 501, "d": 479}


@pytest.mark.parametrize("weights", [random_weights(1), random_weights(2), random_weights(30), LARGEST_DEFICIT_DRIFTS])
def test_the_schedule_stays_within_one_sample_repeats_and_numbers_each_languages_samples(
    weights: dict[str, float],
) -> None:
    schedule = BlendSchedule(weights, period=1024)
    located = [schedule.locate(i) for i in range(3 * 1024)]
    assert [language for language, _ in located[:1024]] * 3 == [language for language, _ in located]
    steps = np.arange(1, len(located) + 1)
    for language, per_period in zip(schedule.languages, schedule.counts, strict=True):
        assert [k for seen, k in located if seen == language] == list(range(3 * per_period))
        counts = np.cumsum([seen == language for seen, _ in located])
        assert np.abs(counts - schedule.shares[language] * steps).max() < 1


def test_the_same_seed_gives_the_same_samples_and_another_seed_others(tokens_dir: Path) -> None:
    first, again, other = dataset(tokens_dir), dataset(tokens_dir), dataset(tokens_dir, seed=7)
    samples = [first[i] for i in range(200)]
    assert all(np.array_equal(sample, again[i]) for i, sample in enumerate(samples))
    assert [first.language_of(i) for i in range(200)] == [other.language_of(i) for i in range(200)]
    assert sum(np.array_equal(sample, other[i]) for i, sample in enumerate(samples)) < 20


def take(batches: Iterator[torch.Tensor], n: int) -> list[torch.Tensor]:
    return list(islice(batches, n))


def test_resuming_from_a_sample_count_continues_an_uninterrupted_run(tokens_dir: Path) -> None:
    uninterrupted = take(micro_batches(dataset(tokens_dir), 0, 8, 2, 0, 1), 40)
    resumed = take(micro_batches(dataset(tokens_dir), 24, 8, 2, 0, 1), 28)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted[12:], resumed, strict=True))
    # A start between batches (e.g. after a batch size change): the next batches begin exactly there.
    data = dataset(tokens_dir)
    odd = torch.cat(take(micro_batches(data, 5, 4, 2, 0, 1), 10))
    assert torch.equal(odd, torch.from_numpy(np.stack([data[i] for i in range(5, 25)])))


def test_data_parallel_ranks_split_each_global_batch_into_disjoint_slices(tokens_dir: Path) -> None:
    data, global_batch, micro, batches = dataset(tokens_dir), 8, 2, 5
    expected = [np.stack([data[i] for i in range(b * 8 + 3, (b + 1) * 8 + 3)]) for b in range(batches)]
    for dp_size in [1, 2, 4]:
        per_rank = global_batch // dp_size // micro
        ranks = [
            take(micro_batches(data, 3, global_batch, micro, rank, dp_size), per_rank * batches)
            for rank in range(dp_size)
        ]
        for rank_batches in ranks:
            assert all(batch.shape == (micro, SEQ + 1) and batch.dtype == torch.int64 for batch in rank_batches)
        for b in range(batches):
            joined = torch.cat(
                [ranks[rank][i] for rank in range(dp_size) for i in range(b * per_rank, (b + 1) * per_rank)]
            )
            assert torch.equal(joined, torch.from_numpy(expected[b]))


def ngrams(tokens: np.ndarray, n: int = 8) -> set[tuple[int, ...]]:
    return {tuple(tokens[i : i + n].tolist()) for i in range(len(tokens) - n + 1)}


def test_validation_documents_never_reach_training(tokens_dir: Path) -> None:
    data = dataset(tokens_dir)
    for language, sequences in data.sequences.items():
        file = TokenFile(tokens_dir / language / f"{language}.txt")
        boundary = file.offsets[len(file) - HELD_OUT]
        held_out_only = ngrams(file.tokens[boundary:]) - ngrams(file.tokens[:boundary])
        assert len(held_out_only) > 50
        trained = set().union(*(ngrams(sequences.sample(k)) for k in range(2 * sequences.samples_per_epoch)))
        assert not trained & held_out_only


def test_validation_batches_cut_the_held_out_tokens_and_split_them_over_ranks(tokens_dir: Path) -> None:
    corpus = TokenCorpus(tokens_dir, HELD_OUT)
    whole = validation_batches(corpus, SEQ, micro_batch=2, samples=dict.fromkeys(CORPUS_LINES, 4))
    assert sorted(whole) == sorted(CORPUS_LINES)
    for language, batches in whole.items():
        tokens = corpus.splits[language].validation_tokens
        assert [len(batch) for batch in batches] == [2, 2]
        samples = torch.cat(batches)
        for j, sample in enumerate(samples):
            np.testing.assert_array_equal(sample.numpy(), tokens[j * SEQ : j * SEQ + SEQ + 1])
        ranks = [validation_batches(corpus, SEQ, 1, {language: 4}, rank, 2)[language] for rank in range(2)]
        assert [len(batches) for batches in ranks] == [2, 2]
        assert torch.equal(torch.cat(ranks[0] + ranks[1]), samples)
    # Each language's count is the plan's: fewer samples are the first ones, and a language planned 0 is left out.
    fewer = validation_batches(corpus, SEQ, 2, {"eng_Latn": 2, "zho_Hans": 0})
    assert list(fewer) == ["eng_Latn"] and torch.equal(fewer["eng_Latn"][0], whole["eng_Latn"][0])


def test_bad_input_fails_with_one_line_naming_the_fix(tokens_dir: Path, model: Path, tmp_path: Path) -> None:
    def fails(match: str, action: Callable[[], object]) -> None:
        with pytest.raises(ValueError, match=match) as error:
            action()
        assert "\n" not in str(error.value)

    fails("does not exist: run `corolla tokenizer encode", lambda: TokenCorpus(tmp_path / "missing", 5))
    fails(f"has no {MANIFEST_NAME}", lambda: TokenCorpus(tmp_path, 5))
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"languages": {}}))
    fails("not a token manifest", lambda: TokenCorpus(tmp_path, 5))
    real = json.loads((tokens_dir / MANIFEST_NAME).read_text())
    # Its keys, not their nesting; a language with no pairs, or a pair that is not a file with its counts.
    shard = {"file": "eng_Latn/eng_Latn.txt", "source": "eng_Latn.txt", "documents": 240, "tokens": 5}
    for languages in (
        {"eng_Latn": 5},
        ["eng_Latn"],
        {"eng_Latn": {"shards": 5}},
        {"eng_Latn": {"shards": []}},
        {"eng_Latn": {"shards": ["eng_Latn/eng_Latn.txt"]}},
        {"eng_Latn": {"shards": [{"file": "eng_Latn/eng_Latn.txt"}]}},
        {"eng_Latn": {"shards": [{**shard, "documents": "240"}]}},
    ):
        (tmp_path / MANIFEST_NAME).write_text(json.dumps({**real, "languages": languages}))
        fails("not a token manifest corolla wrote: re-run `corolla tokenizer encode`", lambda: TokenCorpus(tmp_path, 5))
    fails("do not hold: kor_Hang", lambda: dataset(tokens_dir, weights={"eng_Latn": 1, "kor_Hang": 1}))
    fails("every language weight 0", lambda: dataset(tokens_dir, weights={"eng_Latn": 0}))
    fails("eng_Latn must be finite", lambda: dataset(tokens_dir, weights={"eng_Latn": -1}))
    zho = TokenCorpus(tokens_dir, HELD_OUT).splits["zho_Hans"].train_tokens.size
    fails("zho_Hans: its training split holds", lambda: dataset(tokens_dir, seq_length=zho))
    assert "zho_Hans" not in dataset(tokens_dir, seq_length=zho, weights={"eng_Latn": 1}).sequences
    one_held_out = TokenCorpus(tokens_dir, 1)
    fails(
        "not the 1 planned: the token files changed", lambda: validation_batches(one_held_out, 4096, 1, {"eng_Latn": 1})
    )
    fails(
        "multiple of micro_batch=2 x dp_size=2", lambda: validation_batches(one_held_out, 8, 2, {"eng_Latn": 6}, 0, 2)
    )
    fails("not a multiple of micro_batch", lambda: micro_batches(dataset(tokens_dir), 0, 12, 4, 0, 2))
    fails("dp_rank=2 in", lambda: micro_batches(dataset(tokens_dir), 0, 8, 2, 2, 2))
    fails("seq_length=0", lambda: dataset(tokens_dir, seq_length=0))
    no_eos = encode(model, tmp_path / "no-eos", {"eng_Latn": 20}, append_eos=False)
    fails("append_eos=true", lambda: TokenCorpus(no_eos, 5))
    for suffix in (".idx", ".bin"):  # a file of a pair gone: the line said it does not exist, and no more
        pair = encode(model, tmp_path / f"pair{suffix}", {"eng_Latn": 20})
        next(pair.rglob(f"*{suffix}")).unlink()
        fails(rf"{suffix} is missing: re-run `corolla tokenizer encode` to rewrite it", partial(TokenCorpus, pair, 5))


def test_token_ids_past_the_vocabulary_are_refused_as_damaged_files(
    model: Path, tokens_dir: Path, tmp_path: Path
) -> None:
    """A .bin overwritten (same size, so its index and manifest still agree) holds ids the embedding does not have:
    named, for training samples and for the held-out ones the launcher measures, rather than an IndexError."""
    damaged = tmp_path / "tokens"
    shutil.copytree(tokens_dir, damaged)
    [bin_file] = (damaged / "eng_Latn").glob("*.bin")
    bin_file.write_bytes(b"\xff" * bin_file.stat().st_size)
    corpus = TokenCorpus(damaged, HELD_OUT)
    where = f"eng_Latn's sample 0 in {damaged} holds token id 65535, beyond the tokenizer's {corpus.vocab_size}"
    data = dataset(damaged, weights={"eng_Latn": 1})
    with pytest.raises(ValueError, match=re.escape(where) + ": the token files are damaged; encode the corpus again"):
        data[0]
    with pytest.raises(ValueError, match=re.escape(f"eng_Latn's held-out text in {damaged} holds token id 65535")):
        validation_sample_bytes(corpus, SEQ, {"eng_Latn": 1}, load_tokenizer(model))
    assert dataset(damaged, weights={"fra_Latn": 1})[0].max() < corpus.vocab_size  # the other languages read on


def test_a_language_in_many_shards_reads_as_one_stream(model: Path, tokens_dir: Path, tmp_path: Path) -> None:
    """eng_Latn cut into 7 shard files of a language directory: the same training and validation tokens, samples and
    validation batches as from one file, samples across shard boundaries included."""
    lines = head("eng_Latn", CORPUS_LINES["eng_Latn"])
    corpus = tmp_path / "corpus" / "eng_Latn"
    corpus.mkdir(parents=True)
    for shard, start in enumerate(range(0, len(lines), 37)):
        (corpus / f"part-{shard:02d}.txt").write_text("".join(lines[start : start + 37]), encoding="utf-8")
    sharded = tmp_path / "tokens"
    manifest = encode_corpus(model, corpus.parent, sharded, workers=1, log=quiet)
    assert len(manifest["languages"]["eng_Latn"]["shards"]) == 7

    whole, split = TokenCorpus(tokens_dir, 40).splits["eng_Latn"], TokenCorpus(sharded, 40).splits["eng_Latn"]
    assert (split.train_documents, split.validation_documents) == (whole.train_documents, 40)
    assert len(split.train_tokens.pieces) > 1  # the split falls inside a shard, and training spans several
    np.testing.assert_array_equal(np.asarray(split.train_tokens), np.asarray(whole.train_tokens))
    np.testing.assert_array_equal(np.asarray(split.validation_tokens), np.asarray(whole.validation_tokens))
    ends = [0, *split.stream.ends.tolist()]
    for start in (0, ends[1] - 3, ends[2] - 1, ends[-1] - 10):  # within a shard, and across boundaries
        np.testing.assert_array_equal(split.stream[start : start + 20], whole.stream[start : start + 20])
    cfg = DataConfig(str(sharded), validation_documents=40, weights={"eng_Latn": 1.0})
    one = dataset(tokens_dir, validation_documents=40, weights={"eng_Latn": 1.0})
    many = BlendedDataset(TokenCorpus(sharded, 40), cfg, SEQ)
    assert all(np.array_equal(many[i], one[i]) for i in range(300))
    batches = validation_batches(TokenCorpus(sharded, 40), SEQ, 2, {"eng_Latn": 4})["eng_Latn"]
    expected = validation_batches(TokenCorpus(tokens_dir, 40), SEQ, 2, {"eng_Latn": 4})["eng_Latn"]
    assert all(torch.equal(got, want) for got, want in zip(batches, expected, strict=True))


def test_validation_sample_bytes_are_the_held_out_texts_bytes(model: Path, tokens_dir: Path) -> None:
    """One sample as long as each language's held-out stream: its labels are every held-out token but the first, and
    their bytes the held-out documents' UTF-8 bytes less the first token's (whose dummy prefix decode drops). Cut into
    samples of SEQ tokens, the same labels: the samples' bytes add up to those of one sample over them all."""
    tokenizer = load_tokenizer(model)
    corpus = TokenCorpus(tokens_dir, HELD_OUT)
    for language, split in corpus.splits.items():
        tokens = np.asarray(split.validation_tokens)
        [whole] = validation_sample_bytes(corpus, tokens.size - 1, {language: 1}, tokenizer)[language]
        held_out = [line.rstrip("\n") for line in head(language, CORPUS_LINES[language])[-HELD_OUT:]]
        text_bytes = sum(len(document.encode()) for document in held_out)
        first = len(tokenizer.decode([int(tokens[0])]).encode())
        assert whole == text_bytes - first, language
        samples = (tokens.size - 1) // SEQ
        [covering] = validation_sample_bytes(corpus, samples * SEQ, {language: 1}, tokenizer)[language]
        assert sum(validation_sample_bytes(corpus, SEQ, {language: samples}, tokenizer)[language]) == covering
