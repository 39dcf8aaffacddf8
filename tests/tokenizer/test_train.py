"""`corolla tokenizer train` on real text: reproducible output, every input format, hygiene, parity, bad input."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from conftest import MULTILINGUAL, PARALLEL_DEV, REPO_ROOT, SMALL_LANGUAGES, cut_corpus, small_filesystem
from launch.cli import main
from tokenizer.config import ModelType, Sampling, TokenizerConfig, TokenizerTrainJob
from tokenizer.corpus import Source, read_documents
from tokenizer.hygiene import HygieneStats
from tokenizer.train import DESCRIPTIVE_KEYS, config_record, is_current, tokenizer_identity, train_tokenizer

# Zawgyi byte-for-byte looks like Burmese Unicode with the wrong meaning; the Unicode spelling of each follows.
ZAWGYI_LINES = ["ျမန္မာစာ", "ေက်ာင္းသား", "ျမန္မာႏိုင္ငံ", "ကၽြန္ေတာ္"]
UNICODE_LINES = ["မြန်မာစာ", "ကျောင်းသား", "မြန်မာနိုင်ငံ", "ကျွန်တော်"]


def train(corpus: Path, out: Path, seed: int = 5, **tokenizer) -> Path:
    cfg = TokenizerConfig(**{"vocab_size": 2000, "character_coverage": 0.99, "sample_bytes": 400_000, **tokenizer})
    return train_tokenizer(TokenizerTrainJob(cfg, str(corpus), str(out), seed), log=lambda *_: None)


@pytest.fixture(scope="module")
def trained(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(small_corpus, tmp_path_factory.mktemp("tok") / "out", tensor_parallel=2)


def test_output_directory_holds_model_hf_files_and_metadata(trained: Path, small_corpus: Path) -> None:
    assert {p.name for p in trained.iterdir()} >= {
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "metadata.json",
    }
    metadata = json.loads((trained / "metadata.json").read_text())
    assert metadata["languages"] == sorted(SMALL_LANGUAGES)
    assert set(metadata["bytes_sampled"]) == set(SMALL_LANGUAGES)
    assert sum(metadata["bytes_sampled"].values()) == pytest.approx(400_000, rel=0.05)
    assert metadata["alpha"] == 0.3 and metadata["seed"] == 5 and metadata["sampling"] == "temperature"
    assert metadata["vocab_size"] == 2000
    assert metadata["padded_vocab_size"] == 2048  # a multiple of 128 x TP=2
    assert len(metadata["corpus_fingerprint"]) == 64
    assert {"sentencepiece", "tokenizers", "python", "corolla"} <= set(metadata["versions"])


def test_a_tokenizer_is_current_for_its_own_job_and_not_once_its_record_is_damaged(
    trained: Path, small_corpus: Path, tmp_path: Path
) -> None:
    """What decides whether a cached tokenizer is reused: a garbled metadata.json means train again, not an error."""
    cfg = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=400_000, tensor_parallel=2)
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    job = TokenizerTrainJob(cfg, str(small_corpus), str(copy), 5)
    assert is_current(job) and not is_current(TokenizerTrainJob(cfg, str(small_corpus), str(copy), 6))
    (copy / "metadata.json").write_text('{"seed": 5,')
    assert not is_current(job)


def test_same_seed_gives_a_byte_identical_tokenizer(trained: Path, small_corpus: Path, tmp_path: Path) -> None:
    again = train(small_corpus, tmp_path / "again", tensor_parallel=2)
    for name in ("tokenizer.model", "tokenizer.json"):
        assert (again / name).read_bytes() == (trained / name).read_bytes(), name


def test_bpe_gives_the_same_file_on_any_number_of_threads(small_corpus: Path, tmp_path: Path) -> None:
    one = train(small_corpus, tmp_path / "one", threads=1)
    two = train(small_corpus, tmp_path / "two", threads=2)
    assert (one / "tokenizer.model").read_bytes() == (two / "tokenizer.model").read_bytes()
    assert json.loads((two / "metadata.json").read_text())["training_threads"] == 2
    # So the trained one is current for any thread count (and a training job's cache entry the same): it was
    # trained again when a job ran on a machine with more cores, or was given another tokenizer.threads.
    for threads in (0, 2, 3):
        cfg = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=400_000, threads=threads)
        assert is_current(TokenizerTrainJob(cfg, str(small_corpus), str(one), 5))


def test_the_thread_count_decides_a_unigram_model() -> None:
    """Unigram trains other pieces on other thread counts, and on one where none is given."""
    identity = [
        tokenizer_identity(config_record(TokenizerConfig(model_type=ModelType.unigram, threads=threads)))
        for threads in (0, 1, 2)
    ]
    assert identity[0] == identity[1] != identity[2]


@pytest.mark.parametrize("model_type", list(ModelType))
def test_a_default_configs_identity_is_the_one_an_older_corolla_keyed_its_cache_entries_by(model_type) -> None:
    """Every config's record as it stands, the descriptive keys aside: a key of another form for the same tokenizer
    would orphan every data cache entry, its corpus trained and encoded again at the next launch."""
    record = config_record(TokenizerConfig(model_type=model_type))
    assert tokenizer_identity(record) == {key: value for key, value in record.items() if key not in DESCRIPTIVE_KEYS}


def test_explicit_weights_leave_unweighted_languages_out(capsys, small_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [f"corpus={small_corpus}", f"output_dir={out}", "tokenizer.sampling=weights", "tokenizer.vocab_size=2000"]
    code, err = run_cli(capsys, "tokenizer", "train", *args, "+tokenizer.weights={eng_Latn:1,hin_Deva:3}")
    assert code == 0, err
    sampled = json.loads((out / "metadata.json").read_text())["bytes_sampled"]
    assert {lang for lang, size in sampled.items() if size} == {"eng_Latn", "hin_Deva"}
    before = (out / "tokenizer.model").read_bytes()
    code, err = run_cli(capsys, "tokenizer", "train", *args, "overwrite=true", "+tokenizer.weights={xho_Latn:3}")
    assert code == 2 and "corpus lacks (xho_Latn)" in err
    assert (out / "tokenizer.model").read_bytes() == before


def test_unigram_is_reproducible_too(small_corpus: Path, tmp_path: Path) -> None:
    first = train(small_corpus, tmp_path / "a", model_type=ModelType.unigram)
    second = train(small_corpus, tmp_path / "b", model_type=ModelType.unigram)
    assert (first / "tokenizer.model").read_bytes() == (second / "tokenizer.model").read_bytes()


def test_reads_compressed_text_and_jsonl(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    english = (MULTILINGUAL / "eng_Latn.txt").read_bytes().splitlines(keepends=True)[:300]
    french = (MULTILINGUAL / "fra_Latn.txt").read_bytes().splitlines(keepends=True)[:300]
    (corpus / "eng_Latn.txt.gz").write_bytes(gzip.compress(b"".join(english)))
    (corpus / "fra_Latn.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"".join(french)))
    records = [
        {"lang": lang, "text": line}
        for lang in ("deu_Latn", "rus_Cyrl")
        for line in (MULTILINGUAL / f"{lang}.txt").read_text().splitlines()[:300]
    ]
    (corpus / "web.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    out = train(corpus, tmp_path / "out", vocab_size=1000, sample_bytes=200_000)
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["languages"] == ["deu_Latn", "eng_Latn", "fra_Latn", "rus_Cyrl"]
    assert metadata["corpus_bytes"]["eng_Latn"] == sum(len(line) - 1 for line in english)


def test_zawgyi_burmese_is_detected_and_converted(tmp_path: Path) -> None:
    path = tmp_path / "mya_Mymr.txt"
    unicode_text = (MULTILINGUAL / "mya_Mymr.txt").read_text().splitlines()[:20]
    path.write_text("\n".join(ZAWGYI_LINES + unicode_text) + "\n")
    stats = HygieneStats()
    documents = [text for _, text in read_documents(Source(path, "mya_Mymr"), stats)]
    assert documents[:4] == UNICODE_LINES
    assert documents[4:] == unicode_text
    assert stats.zawgyi_converted["mya_Mymr"] == len(ZAWGYI_LINES)
    assert any("Zawgyi" in warning for warning in stats.warnings())


def test_decomposed_text_is_normalised_to_nfc(tmp_path: Path) -> None:
    path = tmp_path / "fra_Latn.txt"
    path.write_text("cafe\u0301 au lait\n")
    stats = HygieneStats()
    assert [text for _, text in read_documents(Source(path, "fra_Latn"), stats)] == ["caf\u00e9 au lait"]
    assert stats.nfc_changed["fra_Latn"] == 1
    # Said, as every repair is (it was recorded in metadata.json alone).
    said = "fra_Latn: 1 documents were not in Unicode's composed form (NFC) and were normalized to it"
    assert stats.warnings() == [said]


def test_a_few_invalid_utf8_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "fra_Latn.txt"
    good = [f"ligne numéro {i}".encode() for i in range(30)]
    path.write_bytes(b"\n".join([*good, b"caf\xe9 cass\xe9"]) + b"\n")
    stats = HygieneStats()
    assert len(list(read_documents(Source(path, "fra_Latn"), stats))) == 30
    assert stats.invalid_utf8["fra_Latn"] == 1


def test_parity_sampling_searches_and_records_its_rounds(small_corpus: Path, tmp_path: Path) -> None:
    parallel = tmp_path / "parallel"
    parallel.mkdir()
    for language in SMALL_LANGUAGES[:-1]:  # the last one untuned
        lines = (PARALLEL_DEV / f"{language}.txt").read_text().splitlines()[:200]
        (parallel / f"{language}.txt").write_text("\n".join(lines) + "\n")
    settings = {"sampling": Sampling.parity, "parity_set": str(parallel), "parity_rounds": 3}
    cfg = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=400_000, **settings)
    messages: list[str] = []
    out = train_tokenizer(TokenizerTrainJob(cfg, str(small_corpus), str(tmp_path / "out"), 5), log=messages.append)
    untuned = f"parity: {parallel} has no sentences of {SMALL_LANGUAGES[-1]}: their shares are sampled, not tuned"
    assert untuned in messages
    parity = json.loads((out / "metadata.json").read_text())["parity"]
    rounds = parity["rounds"]
    assert 1 <= len(rounds) <= 3 and parity["tune_lines"] == 100
    kept = rounds[parity["kept_round"] - 1]
    first = rounds[0]
    assert parity["kept_round"] > 1, "re-weighting by premium should beat plain temperature sampling"
    assert kept["max_premium"] + kept["mean_premium"] < first["max_premium"] + first["mean_premium"]
    assert kept["total_tokens"] <= first["total_tokens"]
    assert set(parity["held_out"]) == {"max_premium", "mean_premium", "total_tokens"}


def test_parity_needs_parallel_sentences_of_corpus_languages(small_corpus: Path, tmp_path: Path) -> None:
    parallel = cut_corpus(tmp_path / "parallel", ["eng_Latn", "swh_Latn"], 20)
    with pytest.raises(ValueError, match="shares no language with the corpus besides eng_Latn"):
        train(small_corpus, tmp_path / "out", sampling=Sampling.parity, parity_set=str(parallel))
    assert not (tmp_path / "out").exists()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err.strip()


def utf16_file(path: Path) -> None:
    path.write_bytes("".join(f"नमस्ते दुनिया {i}\n" for i in range(50)).encode("utf-16"))


def latin1_file(path: Path) -> None:
    path.write_bytes("\n".join(f"été numéro {i}, déjà là" for i in range(50)).encode("latin-1"))


@pytest.mark.parametrize(
    ("make_corpus", "expected"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.write_text("hello\n"), "corpus directory {} is a file, not a directory: pass corpus=DIR"),
        (lambda d: (d.mkdir(), (d / "fra_Latn.txt").write_text("")), "is empty"),
        (lambda d: (d.mkdir(), latin1_file(d / "fra_Latn.txt")), "is not UTF-8"),
        # Most of its lines read as UTF-8: a tokenizer of NULs and control characters was trained on it.
        (lambda d: (d.mkdir(), utf16_file(d / "hin_Deva.txt")), "is UTF-16 (it begins with UTF-16's byte-order mark)"),
        (lambda d: (d.mkdir(), (d / "xx_Latn.txt").write_text("hello\n")), "unknown language code 'xx_Latn'"),
        (lambda d: (d.mkdir(), (d / "english.txt").write_text("hello\n")), "unknown language code 'english'"),
        (lambda d: cut_corpus(d, ["eng_Latn", "fra_Latn"], 30), "more than this corpus sample allows"),
        (lambda d: (d.mkdir(), (d / "web.jsonl").write_text('{"lang": "fra_Latn"}\n')), "lacks string fields"),
        (lambda d: (d.mkdir(), (d / "fra_Latn.txt.gz").write_bytes(b"\x1f\x8b not gzip")), "cannot be read"),
        (lambda d: (d.mkdir(), (d / "fra_Latn.txt.zst").write_bytes(b"not zstd")), "cannot be read"),
    ],
    ids=[
        "missing",
        "a-file",
        "empty",
        "latin1",
        "utf16",
        "unknown-code",
        "bad-name",
        "vocab-too-big",
        "jsonl-no-text",
        "gz",
        "zst",
    ],
)
def test_bad_input_gives_one_clear_line_and_no_output(capsys, tmp_path: Path, make_corpus, expected: str) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "runs" / "tok"
    make_corpus(corpus)
    code, err = run_cli(
        capsys, "tokenizer", "train", f"corpus={corpus}", f"output_dir={out}", "tokenizer.vocab_size=8000"
    )
    assert code == 2
    assert err.startswith("corolla: error: ") and expected.format(corpus) in err and "\n" not in err
    assert not out.exists()
    assert not (out.parent.exists() and list(out.parent.iterdir()))


@pytest.mark.parametrize("sample_bytes", [1, 100])
def test_a_sample_too_small_to_hold_a_sentence_is_said_in_one_line(
    capsys, small_corpus: Path, tmp_path: Path, sample_bytes: int
) -> None:
    """SentencePiece was handed an empty sample and failed with its internal check's text."""
    out = tmp_path / "tok"
    code, err = run_cli(
        capsys,
        "tokenizer",
        "train",
        f"corpus={small_corpus}",
        f"output_dir={out}",
        f"tokenizer.sample_bytes={sample_bytes}",
    )
    assert code == 2
    assert err == (
        f"corolla: error: tokenizer.sample_bytes={sample_bytes} drew no text from the corpus: raise it "
        "(40000000 by default)"
    )
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_overwrite_replaces_an_earlier_tokenizer_and_nothing_else(capsys, small_corpus: Path, tmp_path: Path) -> None:
    """overwrite=true replaces the output directory whole: it deleted a user's files there, and the corpus itself
    when output_dir was the corpus or a folder above it."""
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in ("false", "true"):
        arguments = [f"corpus={small_corpus}", f"output_dir={out}", f"overwrite={overwrite}"]
        code, err = run_cli(capsys, "tokenizer", "train", *arguments)
        assert code == 2 and "holds files that are not a tokenizer's (keep.txt)" in err, err
    assert (out / "keep.txt").read_text() == "mine"
    corpus = sorted(path.relative_to(small_corpus) for path in small_corpus.rglob("*"))
    for around in (small_corpus, small_corpus.parent):
        arguments = [f"corpus={small_corpus}", f"output_dir={around}", "overwrite=true"]
        code, err = run_cli(capsys, "tokenizer", "train", *arguments)
        assert code == 2 and f"output_dir={around} and corpus={small_corpus} lie one inside the other" in err, err
    assert sorted(path.relative_to(small_corpus) for path in small_corpus.rglob("*")) == corpus


def test_a_tokenizer_is_trained_again_only_when_asked_or_when_its_job_changed(
    small_corpus: Path, tmp_path: Path
) -> None:
    out, messages = tmp_path / "tok", []
    cfg = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=400_000)
    job = TokenizerTrainJob(cfg, str(small_corpus), str(out), 5)
    train_tokenizer(job, log=lambda *_: None)
    trained = (out / "tokenizer.model").stat().st_mtime_ns
    train_tokenizer(job, log=messages.append)  # the same job: its output is current
    assert messages == [f"{out} already holds this tokenizer (the same settings, seed and corpus): nothing to do"]
    assert (out / "tokenizer.model").stat().st_mtime_ns == trained
    # Its files lost or cut, the same job was told there was nothing to do, and its evaluation then failed.
    model = (out / "tokenizer.model").read_bytes()
    for damage in (lambda: (out / "tokenizer.model").unlink(), lambda: (out / "tokenizer.json").write_text("{")):
        damage()
        messages.clear()
        train_tokenizer(job, log=messages.append)
        assert f"{out} holds this tokenizer, its files missing or changed since written: training it again" in messages
        assert (out / "tokenizer.model").read_bytes() == model and is_current(job)
    with pytest.raises(ValueError, match="already holds a tokenizer: choose another, or pass overwrite=true"):
        train_tokenizer(replace(job, seed=6), log=lambda *_: None)
    train_tokenizer(replace(job, seed=6, overwrite=True), log=lambda *_: None)
    assert json.loads((out / "metadata.json").read_text())["seed"] == 6
    # The reference language decides parity sampling alone: another, for this temperature-sampled tokenizer (the
    # pipeline's evaluation reads it), trains the same one.
    assert is_current(replace(job, seed=6, tokenizer=replace(cfg, reference_language="fra_Latn")))
    assert not is_current(replace(job, seed=6, tokenizer=replace(cfg, alpha=0.5)))


def test_a_language_written_as_one_huge_line_is_cut_into_pieces_and_sampled(small_corpus: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in small_corpus.iterdir():
        (corpus / path.name).write_bytes(path.read_bytes())
    french = (MULTILINGUAL / "fra_Latn.txt").read_text().splitlines()
    (corpus / "fra_Latn.txt").write_text(" ".join(french) + "\n")  # the whole file on one line
    said: list[str] = []
    cfg = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=400_000)
    out = train_tokenizer(TokenizerTrainJob(cfg, str(corpus), str(tmp_path / "out"), 5), log=said.append)
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["bytes_sampled"]["fra_Latn"] == pytest.approx(metadata["budget_bytes"]["fra_Latn"], rel=0.2)
    cut = "corpus: fra_Latn: 1 documents over 16,384 characters were cut into pieces of at most that to be sampled"
    assert cut in said


@pytest.mark.parametrize("number", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda number: number.name)
def test_a_training_stopped_by_a_signal_leaves_the_output_as_it_was_and_nothing_beside_it(
    small_corpus: Path, tmp_path: Path, number: signal.Signals
) -> None:
    """SIGTERM and Ctrl-C end the command in one line, its staging area (samples, models) removed; SIGKILL leaves
    no chance to clean up, and the next training of that output removes what the killed one left."""
    out = tmp_path / "tok"
    out.mkdir()
    (out / "tokenizer.model").write_text("the old one")
    arguments = ["tokenizer", "train", f"corpus={small_corpus}", f"output_dir={out}", "tokenizer=tiny"]
    arguments.append("overwrite=true")
    command = [sys.executable, "-m", "launch.cli", *arguments]
    stopped = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".tok.staging-*/*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped.send_signal(number)
        err = stopped.communicate(timeout=120)[1]
    finally:
        stopped.kill()
    assert [path.name for path in out.iterdir()] == ["tokenizer.model"]
    assert (out / "tokenizer.model").read_text() == "the old one"
    left = list(tmp_path.glob(".tok.*"))
    if number == signal.SIGKILL:
        assert len(left) == 1
    else:
        assert stopped.returncode == 130 and not left
        assert err.strip().splitlines()[-1] == "corolla: interrupted: run the same command again to go on", err
    assert main(arguments) == 0
    assert not list(tmp_path.glob(".tok.*"))
    assert (out / "metadata.json").is_file() and (out / "tokenizer.model").read_bytes() != b"the old one"


def test_a_disk_that_fills_while_the_sample_is_written_is_named_in_one_line(
    capsys, small_corpus: Path, tmp_path: Path
) -> None:
    """The sample's write() fails, naming no file: the line names it, on the filesystem of output_dir."""
    with small_filesystem(tmp_path / "disk", "300k") as disk:
        arguments = ["tokenizer", "train", f"corpus={small_corpus}", f"output_dir={disk / 'tok'}", "tokenizer=tiny"]
        code, err = run_cli(capsys, *arguments)
        assert code == 2 and "\n" not in err
        # Named by the output it is written for, not by the hidden staging area beside it.
        full = f"no space left on the filesystem of {disk}/tok: free some, or give a path on another one"
        assert err == f"corolla: error: {full}"
        assert not list(disk.iterdir())


def test_a_disk_that_fills_under_a_write_that_names_no_file_is_said_in_one_line(
    capsys, trained: Path, small_corpus: Path, tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "disk", "100k") as disk:
        arguments = ["tokenizer", "encode", f"tokenizer={trained}", f"corpus={small_corpus}", f"output_dir={disk}/t"]
        assert run_cli(capsys, *arguments) == (
            2,
            "corolla: error: no space left on a filesystem this command writes to: free some there, or give its "
            "output paths on another one",
        )


def test_a_language_the_sample_has_no_room_for_is_said_to_be_left_out(small_corpus: Path, tmp_path: Path) -> None:
    """Natural sampling of a small sample gave a language no text at all, and the tokenizer nothing of it, unsaid."""
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    (corpus / "lao_Laoo.txt").write_text((MULTILINGUAL / "lao_Laoo.txt").read_text().splitlines()[0] + "\n")
    cfg = TokenizerConfig(vocab_size=1000, character_coverage=0.99, sample_bytes=100_000, sampling=Sampling.natural)
    said: list[str] = []
    out = train_tokenizer(TokenizerTrainJob(cfg, str(corpus), str(tmp_path / "out"), 5), log=said.append)
    assert json.loads((out / "metadata.json").read_text())["bytes_sampled"].get("lao_Laoo", 0) == 0
    assert "corpus: lao_Laoo got no text into the sample: the tokenizer learns nothing of them" in "\n".join(said)


def test_an_output_dir_that_links_to_scratch_storage_is_written_there_and_stays_a_link(
    small_corpus: Path, tmp_path: Path
) -> None:
    """The link was replaced by a directory, the tokenizer it led to kept old; one to an empty directory failed after
    the whole training, saying the output was a file."""
    scratch, link = tmp_path / "scratch" / "tok", tmp_path / "tok"
    scratch.mkdir(parents=True)
    link.symlink_to(scratch)
    assert train(small_corpus, link) == link and link.is_symlink() and (scratch / "tokenizer.model").is_file()
    cfg = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=400_000)
    train_tokenizer(TokenizerTrainJob(cfg, str(small_corpus), str(link), 6, True), log=lambda *_: None)
    assert link.is_symlink() and json.loads((scratch / "metadata.json").read_text())["seed"] == 6
