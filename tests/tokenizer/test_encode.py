"""`corolla tokenizer encode` on real text: round trips, manifest, resuming after a kill, bad input, token files."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import unicodedata
from contextlib import suppress
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import MULTILINGUAL, REPO_ROOT
from launch.cli import main
from launch.data.corpus import LanguageSplit, TokenCorpus
from tokenizer.config import TokenizerConfig
from tokenizer.encode import MANIFEST_NAME, encode_corpus
from tokenizer.loading import load_tokenizer
from tokenizer.spm import EOS, SPECIAL_IDS, train_sentencepiece
from tokenizer.token_files import HEADER, OFFSET_DTYPE, TokenFile, TokenFileWriter

EOS_ID = SPECIAL_IDS[EOS]
LINES = 200
TXT_LANGUAGES = ["eng_Latn", "hin_Deva", "rus_Cyrl", "zho_Hans"]
GZ_LANGUAGE = "fra_Latn"
# eng_Latn is in a .txt too: its documents must come from eng_Latn.txt, then from mixed.jsonl.
JSONL_LANGUAGES = ["eng_Latn", "kor_Hang"]
LANGUAGES = sorted({*TXT_LANGUAGES, GZ_LANGUAGE, *JSONL_LANGUAGES})


def sample_lines(language: str, start: int, stop: int) -> list[bytes]:
    with (MULTILINGUAL / f"{language}.txt").open("rb") as source:
        return [line.rstrip(b"\n") for _, line in zip(range(stop), source, strict=False)][start:]


def expected_document(line: bytes) -> str:
    return unicodedata.normalize("NFC", line.decode("utf-8").rstrip("\r"))


def write_corpus(target: Path) -> dict[str, list[str]]:
    """Writes the test corpus; returns the documents expected per language, in order."""
    target.mkdir()
    expected: dict[str, list[str]] = {language: [] for language in LANGUAGES}
    for language in TXT_LANGUAGES:
        lines = sample_lines(language, 0, LINES)
        (target / f"{language}.txt").write_bytes(b"\n".join(lines) + b"\n")
        expected[language] += map(expected_document, lines)
    lines = sample_lines(GZ_LANGUAGE, 0, LINES)
    (target / f"{GZ_LANGUAGE}.txt.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n", mtime=0))
    expected[GZ_LANGUAGE] += map(expected_document, lines)
    english, korean = sample_lines("eng_Latn", LINES, 2 * LINES), sample_lines("kor_Hang", 0, LINES)
    records = []
    for pair in zip(english, korean, strict=True):
        for language, line in zip(JSONL_LANGUAGES, pair, strict=True):
            records.append(json.dumps({"text": line.decode("utf-8"), "lang": language}, ensure_ascii=False))
            expected[language].append(expected_document(line))
    (target / "mixed.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    return expected


def train_model(path: Path, vocab_size: int) -> Path:
    lines = [line.decode("utf-8") for language in LANGUAGES for line in sample_lines(language, 0, 2000)]
    cfg = TokenizerConfig(vocab_size=vocab_size, character_coverage=0.999)
    path.write_bytes(train_sentencepiece(lines, cfg, seed=1, languages=LANGUAGES))
    return path


def quiet(_: str) -> None:
    pass


def files(directory: Path) -> list[Path]:
    return [path for path in sorted(directory.rglob("*")) if path.is_file()]


def file_identities(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(directory)): (path.stat().st_ino, path.stat().st_mtime_ns) for path in files(directory)
    }


def file_contents(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in files(directory)}


def pairs(output: Path, manifest: dict, language: str) -> list[TokenFile]:
    return [TokenFile(output / shard["file"]) for shard in manifest["languages"][language]["shards"]]


def documents(output: Path, manifest: dict, language: str) -> list[np.ndarray]:
    return [pair.document(i) for pair in pairs(output, manifest, language) for i in range(len(pair))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    directory = tmp_path_factory.mktemp("encode") / "corpus"
    return directory, write_corpus(directory)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_model(tmp_path_factory.mktemp("model") / "tokenizer.model", 4000)


@pytest.fixture(scope="module")
def encoded(corpus: tuple[Path, dict], model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("encoded") / "out"
    return output, encode_corpus(model, corpus[0], output, workers=1, log=quiet)


def test_every_document_decodes_to_its_text_followed_by_eos(encoded, corpus, model: Path) -> None:
    output, manifest = encoded
    tokenizer = load_tokenizer(model)
    for language, texts in corpus[1].items():
        assert all(pair.dtype == np.uint16 for pair in pairs(output, manifest, language))
        encoded_documents = documents(output, manifest, language)
        assert len(encoded_documents) == len(texts), language
        for i, (ids, text) in enumerate(zip(encoded_documents, texts, strict=True)):
            assert ids[-1] == EOS_ID and EOS_ID not in ids[:-1]
            assert tokenizer.decode(ids[:-1].tolist()) == text, (language, i)


def test_manifest_describes_the_token_files(encoded, corpus, model: Path) -> None:
    output, manifest = encoded
    assert json.loads((output / MANIFEST_NAME).read_text()) == manifest
    assert manifest["tokenizer"] == {
        "path": str(model.resolve()),
        "fingerprint": load_tokenizer(model).fingerprint,
        "vocab_size": 4000,
    }
    assert manifest["append_eos"] is True and manifest["eos_id"] == EOS_ID and manifest["dtype"] == "uint16"
    assert list(manifest["languages"]) == LANGUAGES
    for language, entry in manifest["languages"].items():
        assert entry["documents"] == len(corpus[1][language])
        assert entry["documents"] == sum(shard["documents"] for shard in entry["shards"])
        assert entry["tokens"] == sum(shard["tokens"] for shard in entry["shards"])
        for shard, pair in zip(entry["shards"], pairs(output, manifest, language), strict=True):
            assert (shard["documents"], shard["tokens"]) == (len(pair), pair.num_tokens)
            assert shard["tokens"] == (output / f"{shard['file']}.bin").stat().st_size // 2
    # A language's pairs in corpus order: eng_Latn.txt's documents, then mixed.jsonl's.
    assert [shard["file"] for shard in manifest["languages"]["eng_Latn"]["shards"]] == [
        "eng_Latn/eng_Latn.txt",
        "eng_Latn/mixed.jsonl",
    ]
    assert [shard["source"] for shard in manifest["languages"]["fra_Latn"]["shards"]] == ["fra_Latn.txt.gz"]
    entries = manifest["languages"].values()
    assert manifest["totals"] == {
        "languages": len(LANGUAGES),
        "documents": sum(entry["documents"] for entry in entries),
        "tokens": sum(entry["tokens"] for entry in entries),
    }
    sources = ["eng_Latn.txt", "fra_Latn.txt.gz", "hin_Deva.txt", "mixed.jsonl", "rus_Cyrl.txt", "zho_Hans.txt"]
    shards = [
        f"{shard['file']}{suffix}" for entry in entries for shard in entry["shards"] for suffix in (".bin", ".idx")
    ]
    assert sorted(file_identities(output)) == sorted(
        [MANIFEST_NAME, *shards, *(f"records/{source}.json" for source in sources)]
    )


def test_worker_pool_writes_the_same_bytes(encoded, corpus, model: Path, tmp_path: Path) -> None:
    encode_corpus(model, corpus[0], tmp_path / "out", workers=2, log=quiet)
    assert file_contents(tmp_path / "out") == file_contents(encoded[0])


def test_without_eos_documents_are_the_bare_tokens(encoded, corpus, model: Path, tmp_path: Path) -> None:
    manifest = encode_corpus(model, corpus[0], tmp_path / "out", append_eos=False, workers=1, log=quiet)
    assert manifest["eos_id"] is None
    assert manifest["totals"]["tokens"] == encoded[1]["totals"]["tokens"] - encoded[1]["totals"]["documents"]
    with_eos = documents(encoded[0], encoded[1], "kor_Hang")[3]
    assert np.array_equal(documents(tmp_path / "out", manifest, "kor_Hang")[3], with_eos[:-1])
    # Another dataset, which a training may read: encoded anew over it (it was) only when asked.
    with pytest.raises(ValueError, match="holds token files encoded with append_eos=false, which a training run may"):
        encode_corpus(model, corpus[0], tmp_path / "out", workers=1, log=quiet)
    assert encode_corpus(model, corpus[0], tmp_path / "out", workers=1, log=quiet, overwrite=True)["eos_id"] is not None


def test_rerun_encodes_only_the_file_that_changed(corpus, model: Path, tmp_path: Path) -> None:
    source = tmp_path / "corpus"
    shutil.copytree(corpus[0], source)
    output = tmp_path / "out"
    encode_corpus(model, source, output, workers=1, log=quiet)
    # A user's folders beside the token files, one holding a file named as a token file: the rerun deleted both.
    (output / "my_analysis").mkdir()
    (output / "my_analysis" / "rus_Cyrl.txt.bin").write_bytes(b"mine")
    (output / "empty").mkdir()
    before = file_identities(output)
    messages: list[str] = []
    encode_corpus(model, source, output, workers=1, log=messages.append)
    assert file_identities(output) == {**before, MANIFEST_NAME: file_identities(output)[MANIFEST_NAME]}
    assert "6 of 6 corpus files already encoded" in messages[0]
    assert (output / "empty").is_dir()

    russian = source / "rus_Cyrl.txt"
    russian.write_bytes(russian.read_bytes() + "Ещё одна строка.\n".encode())
    manifest = encode_corpus(model, source, output, workers=1, log=quiet)
    after = file_identities(output)
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {
        "rus_Cyrl/rus_Cyrl.txt.bin",
        "rus_Cyrl/rus_Cyrl.txt.idx",
        "records/rus_Cyrl.txt.json",
        MANIFEST_NAME,
    }
    assert manifest["languages"]["rus_Cyrl"]["documents"] == LINES + 1


def test_a_language_gone_from_a_file_leaves_no_token_files(corpus, model: Path, tmp_path: Path) -> None:
    source, output = tmp_path / "corpus", tmp_path / "out"
    shutil.copytree(corpus[0], source)
    encode_corpus(model, source, output, workers=1, log=quiet)
    assert (output / "kor_Hang" / "mixed.jsonl.bin").is_file()
    mixed = source / "mixed.jsonl"
    kept = [line for line in mixed.read_text(encoding="utf-8").splitlines() if '"kor_Hang"' not in line]
    mixed.write_text("\n".join(kept) + "\n", encoding="utf-8")
    manifest = encode_corpus(model, source, output, workers=1, log=quiet)
    assert "kor_Hang" not in manifest["languages"] and not (output / "kor_Hang").exists()
    assert manifest["languages"]["eng_Latn"]["documents"] == 2 * LINES


def test_changed_tokenizer_reencodes_every_language(encoded, corpus, tmp_path: Path) -> None:
    output = tmp_path / "out"
    shutil.copytree(encoded[0], output)
    before = file_identities(output)
    other = train_model(tmp_path / "other.model", 4500)
    messages: list[str] = []
    with pytest.raises(ValueError, match=r"holds token files of another tokenizer \(\w{8}\), which a training run"):
        encode_corpus(other, corpus[0], output, workers=1, log=messages.append)
    assert file_identities(output) == before and not messages
    manifest = encode_corpus(other, corpus[0], output, workers=1, log=messages.append, overwrite=True)
    assert "encoding 6 of 6 corpus files" in messages[0]
    after = file_identities(output)
    assert all(after[name] != before[name] for name in before)
    assert manifest["tokenizer"]["fingerprint"] == load_tokenizer(other).fingerprint
    ids = documents(output, manifest, "zho_Hans")[0]
    assert load_tokenizer(other).decode(ids[:-1].tolist()) == corpus[1]["zho_Hans"][0]


def greek_done_and_english_half_written(output: Path) -> bool:
    if not (output / "records" / "ell_Grek.txt.json").is_file() or not (output / "eng_Latn").is_dir():
        return False
    sizes = []
    for name in os.listdir(output / "eng_Latn"):
        with suppress(FileNotFoundError):  # renamed in the meantime
            sizes.append((output / "eng_Latn" / name).stat().st_size)
    return any(sizes)


def test_resumes_after_a_kill_without_redoing_finished_files(model: Path, tmp_path: Path) -> None:
    # A small language, then one big enough to be killed in the middle of, then another small one.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for language, lines in (("ell_Grek", LINES), ("eng_Latn", 16_000), ("fra_Latn", LINES)):
        (corpus / f"{language}.txt").write_bytes(b"\n".join(sample_lines(language, 0, lines)) + b"\n")
    output = tmp_path / "out"
    call = f"encode_corpus({str(model)!r}, {str(corpus)!r}, {str(output)!r}, workers=1)"
    interrupted = subprocess.Popen(
        [sys.executable, "-c", f"from tokenizer.encode import encode_corpus; {call}"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    try:
        while not greek_done_and_english_half_written(output):
            if interrupted.poll() is not None:
                pytest.fail(f"encoding ended before it could be interrupted: {interrupted.stderr.read().decode()}")
            assert time.monotonic() < deadline, "the first language never finished"
            time.sleep(0.001)
    finally:
        interrupted.kill()
        interrupted.wait()
    assert not (output / MANIFEST_NAME).exists()  # the directory is not complete: nothing may train on it
    assert not [path for path in (output / "eng_Latn").iterdir() if not path.name.endswith(".tmp")]
    greek = {name: identity for name, identity in file_identities(output).items() if "ell_Grek" in name}
    assert len(greek) == 3

    messages: list[str] = []
    encode_corpus(model, corpus, output, workers=1, log=messages.append)
    assert "1 of 3 corpus files already encoded" in messages[0]
    assert {name: file_identities(output)[name] for name in greek} == greek
    encode_corpus(model, corpus, tmp_path / "fresh", workers=1, log=quiet)
    assert file_contents(output) == file_contents(tmp_path / "fresh")


def long_corpus(corpus: Path) -> Path:
    """Three languages, each its sample four times over: seconds of encoding for two workers."""
    corpus.mkdir()
    for language in ("ell_Grek", "eng_Latn", "fra_Latn"):
        (corpus / f"{language}.txt").write_bytes((b"\n".join(sample_lines(language, 0, 16_000)) + b"\n") * 4)
    return corpus


def pool_workers(pid: int) -> list[psutil.Process]:
    """The process pool's workers among the children of `pid` (one that ended meanwhile is not among them)."""
    workers = []
    for child in psutil.Process(pid).children():
        with suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()):
                workers.append(child)
    return workers


def cpu_seconds(process: psutil.Process) -> float:
    try:
        return process.cpu_times().user
    except psutil.Error:  # ended meanwhile
        return 0.0


def test_the_workers_end_with_an_encoding_killed_outright(model: Path, tmp_path: Path) -> None:
    """Nothing else would end them: they wait on the queue of a parent that is gone (SIGKILL, or the OOM killer)."""
    corpus = long_corpus(tmp_path / "corpus")
    call = f"encode_corpus({str(model)!r}, {str(corpus)!r}, {str(tmp_path / 'out')!r}, workers=2)"
    command = [sys.executable, "-c", f"from tokenizer.encode import encode_corpus; {call}"]
    killed = subprocess.Popen(command, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while len(workers) < 2 and killed.poll() is None and time.monotonic() < deadline:
            workers = pool_workers(killed.pid)
            time.sleep(0.05)
        assert len(workers) == 2, "the pool never started its workers"
    finally:
        killed.kill()
        killed.wait()
    assert not psutil.wait_procs(workers, timeout=30)[1]


def working_workers(encoding: subprocess.Popen, worked: float) -> list[psutil.Process]:
    """The encoding's two pool workers, once each has worked `worked` CPU seconds (0: they may still import)."""
    deadline = time.monotonic() + 60
    workers: list[psutil.Process] = []
    while not (len(workers) == 2 and all(cpu_seconds(worker) > worked for worker in workers)):
        assert encoding.poll() is None and time.monotonic() < deadline, "the encoding ended before its signal"
        workers = pool_workers(encoding.pid)
        time.sleep(0.05)
    return workers


@pytest.mark.parametrize("worked", [0.0, 0.3], ids=["starting", "encoding"])
def test_a_ctrl_c_in_the_terminal_ends_an_encoding_and_its_workers_in_one_line(
    model: Path, tmp_path: Path, worked: float
) -> None:
    """A terminal's Ctrl-C goes to the whole process group, workers included, whether they still import what they
    need or encode (`worked` CPU seconds): they leave it to corolla, which says one line."""
    corpus = long_corpus(tmp_path / "corpus")
    arguments = [f"tokenizer={model}", f"corpus={corpus}", f"output_dir={tmp_path / 'out'}", "workers=2"]
    command = [sys.executable, "-m", "launch.cli", "tokenizer", "encode", *arguments]
    stopped = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        workers = working_workers(stopped, worked)
        os.killpg(stopped.pid, signal.SIGINT)
        err = stopped.communicate(timeout=120)[1]
    finally:
        stopped.kill()
    assert stopped.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "corolla: interrupted: run the same command again to go on"
    assert not psutil.wait_procs(workers, timeout=30)[1]


@pytest.mark.parametrize("worked", [0.0, 0.3], ids=["starting", "encoding"])
def test_a_time_limits_warning_to_every_process_of_a_job_leaves_the_workers_encoding(
    model: Path, tmp_path: Path, worked: float
) -> None:
    """Slurm sends USR2 to every process of a job's step before its time limit, the pool's workers too: they leave it
    to their parent, whose handler (submitit's, in a stage job) decides what follows. This one notes it and lets the
    encoding go on, which ends whole (a worker killed by it broke the pool)."""
    corpus, out, noted = long_corpus(tmp_path / "corpus"), tmp_path / "out", tmp_path / "noted"
    handler = f"signal.signal(signal.SIGUSR2, lambda *_: open({str(noted)!r}, 'a').write('USR2\\n'))"
    call = f"encode_corpus({str(model)!r}, {str(corpus)!r}, {str(out)!r}, workers=2)"
    command = [sys.executable, "-c", f"import signal; {handler}; from tokenizer.encode import encode_corpus; {call}"]
    warned = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        working_workers(warned, worked)
        encoding = psutil.Process(warned.pid)
        for process in (encoding, *encoding.children(recursive=True)):  # multiprocessing's resource tracker too
            process.send_signal(signal.SIGUSR2)
        err = warned.communicate(timeout=120)[1]
    finally:
        warned.kill()
    assert warned.returncode == 0 and "Traceback" not in err and "resource_tracker" not in err, err
    assert noted.read_text() == "USR2\n"
    assert sorted(json.loads((out / "manifest.json").read_text())["languages"]) == ["ell_Grek", "eng_Latn", "fra_Latn"]


def test_a_second_encoding_into_the_same_output_is_refused_while_the_first_runs(
    capsys, model: Path, tmp_path: Path
) -> None:
    """Two encodings would write the same token files (another tokenizer's ids into the first's, each removing the
    other's temporary files); a training on that directory is told to wait too."""
    corpus, out = long_corpus(tmp_path / "corpus"), tmp_path / "out"
    arguments = ["tokenizer", "encode", f"tokenizer={model}", f"corpus={corpus}", f"output_dir={out}", "workers=1"]
    first = subprocess.Popen([sys.executable, "-m", "launch.cli", *arguments], cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("*/.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert main(arguments) == 2
        assert capsys.readouterr().err.strip() == (
            f"corolla: error: output_dir {out} is being encoded by another command: wait for it to end"
        )
        with pytest.raises(ValueError, match=f"^tokens_dir {out} is being encoded by another command: wait for it"):
            TokenCorpus(out, 0)
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    assert len(TokenCorpus(out, 0).languages) == 3


def make_latin1_file(corpus: Path) -> None:
    lines = [f"Le café numéro {i} est fermé à Noël." for i in range(50)]
    (corpus / "fra_Latn.txt").write_bytes("\n".join(lines).encode("latin-1"))


def make_utf16_file(corpus: Path) -> None:
    lines = [f"Le café numéro {i} est fermé à Noël." for i in range(50)]
    (corpus / "fra_Latn.txt").write_bytes("\n".join(lines).encode("utf-16"))


def make_unknown_language_file(corpus: Path) -> None:
    (corpus / "xx_Yyyy.txt").write_text("hello\n", encoding="utf-8")


def make_unknown_language_record(corpus: Path) -> None:
    (corpus / "mixed.jsonl").write_text('{"text": "hello", "lang": "eng_Latn"}\n{"text": "x", "lang": "english"}\n')


@pytest.mark.parametrize(
    ("damage", "workers", "message"),
    [
        ("missing corpus", 1, "does not exist"),
        ("missing tokenizer", 1, "does not exist"),
        (make_unknown_language_file, 1, "unknown language code 'xx_Yyyy'"),
        (make_unknown_language_record, 1, "unknown language code 'english'"),
        (make_latin1_file, 1, "is not UTF-8.*iconv -f <encoding> -t UTF-8"),
        (make_latin1_file, 2, "is not UTF-8"),
        (make_utf16_file, 1, "is UTF-16.*iconv -f UTF-16 -t UTF-8"),
    ],
    ids=[
        "missing-corpus",
        "missing-tokenizer",
        "unknown-code-file",
        "unknown-code-record",
        "latin-1",
        "latin-1-pool",
        "utf-16",
    ],
)
def test_bad_input_fails_before_writing_anything(damage, workers: int, message: str, model: Path, tmp_path: Path):
    corpus, tokenizer, output = tmp_path / "corpus", model, tmp_path / "out"
    corpus.mkdir()
    (corpus / "eng_Latn.txt").write_bytes(b"\n".join(sample_lines("eng_Latn", 0, LINES)) + b"\n")
    if damage == "missing corpus":
        corpus = tmp_path / "absent"
    elif damage == "missing tokenizer":
        tokenizer = tmp_path / "absent.model"
    else:
        damage(corpus)
    with pytest.raises(ValueError, match=message) as error:
        encode_corpus(tokenizer, corpus, output, workers=workers, log=quiet)
    assert "\n" not in str(error.value)
    assert not output.exists()


def test_a_tokenizer_without_eos_at_its_id_is_refused_before_writing_anything(tmp_path: Path) -> None:
    """A byte-level BPE whose one special token comes first, as GPT-2's has it last: its id 2 is a byte, `"` here,
    which documents were joined by, run together; without EOS after documents it encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lines = [line.decode() for line in sample_lines("eng_Latn", 0, LINES)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(
        lines, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    )
    bpe.save(str(tmp_path / "tokenizer.json"))
    corpus, output = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    (corpus / "eng_Latn.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = f"tokenizer {tmp_path / 'tokenizer.json'} has '\"' at id {EOS_ID}, where token files put {EOS} after"
    with pytest.raises(ValueError, match=re.escape(expected)) as error:
        encode_corpus(tmp_path / "tokenizer.json", corpus, output, workers=1, log=quiet)
    assert "\n" not in str(error.value)
    assert not output.exists()
    encode_corpus(tmp_path / "tokenizer.json", corpus, output, append_eos=False, workers=1, log=quiet)


def truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda idx, _: idx.write_bytes(b"NOTMAGIC" + idx.read_bytes()[8:]), r"fra_Latn\.idx is not a corolla"),
        (lambda idx, _: idx.write_bytes(idx.read_bytes()[:8] + struct.pack("<I", 9) + idx.read_bytes()[12:]), "9"),
        (lambda idx, _: truncate(idx, 20), r"fra_Latn\.idx is truncated"),
        (lambda idx, _: truncate(idx, idx.stat().st_size - 8), r"fra_Latn\.idx is truncated"),
        (lambda _, bin_: truncate(bin_, bin_.stat().st_size - 2), r"fra_Latn\.bin is"),
    ],
    ids=["magic", "version", "header", "offsets", "bin"],
)
def test_damaged_token_files_are_refused_by_name(damage, message: str, encoded, tmp_path: Path) -> None:
    for suffix in (".bin", ".idx"):
        shutil.copy(encoded[0] / "fra_Latn" / f"fra_Latn.txt.gz{suffix}", tmp_path / f"fra_Latn{suffix}")
    damage(tmp_path / "fra_Latn.idx", tmp_path / "fra_Latn.bin")
    with pytest.raises(ValueError, match=message) as error:
        TokenFile(tmp_path / "fra_Latn")
    assert "\n" not in str(error.value)


def test_a_document_offset_out_of_order_is_refused_where_it_is_read(tmp_path: Path) -> None:
    """Only the first and last offsets are checked as a pair opens: a garbled one between them made a document of
    another's tokens, or cut the held-out documents of a language at the wrong place."""
    with TokenFileWriter(tmp_path / "x", 100) as writer:
        writer.add_documents([1, 2, 3, 4, 5, 6], [2, 2, 2])
        writer.finish()
    idx = tmp_path / "x.idx"
    offsets = HEADER.size + OFFSET_DTYPE.itemsize * np.arange(4)
    data = bytearray(idx.read_bytes())
    data[offsets[2] : offsets[2] + 8] = struct.pack("<q", 99)
    idx.write_bytes(bytes(data))
    tokens = TokenFile(tmp_path / "x")
    assert tokens.document(0).tolist() == [1, 2]
    for document in (1, 2):  # each ends or starts where document 2 starts
        with pytest.raises(ValueError, match=r"x\.idx is damaged \(documents start out of order: 1 at 2, 2 at 99, 3 "):
            tokens.document(document)
    with pytest.raises(ValueError, match="re-run `corolla tokenizer encode` to rewrite it"):
        LanguageSplit("eng_Latn", [tokens], 2)  # held out from where document 2 starts


@pytest.mark.parametrize(("vocab_size", "dtype"), [(65536, np.uint16), (65537, np.uint32)])
def test_token_file_round_trip(vocab_size: int, dtype: type, tmp_path: Path) -> None:
    documents = [[vocab_size - 1, 0, 7], [], [5]]
    with TokenFileWriter(tmp_path / "x", vocab_size) as writer:
        for ids in documents:
            writer.add_documents(ids, [len(ids)])
        writer.finish()
    tokens = TokenFile(tmp_path / "x")
    assert tokens.dtype == dtype and len(tokens) == 3 and tokens.num_tokens == 4
    assert [tokens.document(i).tolist() for i in range(3)] == documents
    with pytest.raises(IndexError):
        tokens.document(3)


def test_token_file_writer_leaves_nothing_when_interrupted(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), TokenFileWriter(tmp_path / "x", 100) as writer:
        writer.add_documents([1, 2, 3], [3])
        raise RuntimeError("interrupted")
    with pytest.raises(ValueError, match=r"must lie in \[0, 100\)"), TokenFileWriter(tmp_path / "y", 100) as writer:
        writer.add_documents([1, 100], [2])
    assert list(tmp_path.iterdir()) == []


def test_encoding_another_corpus_over_token_files_needs_overwrite(capsys, encoded, corpus, model, tmp_path) -> None:
    """Another corpus's token files were replaced without a word: the files it lacks removed, those of its names
    encoded anew from it, and a training run reading them lost its data."""
    output, other = tmp_path / "out", tmp_path / "other"
    shutil.copytree(encoded[0], output)
    other.mkdir()
    shutil.copy(corpus[0] / "eng_Latn.txt", other / "eng_Latn.txt")
    before = file_identities(output)
    arguments = ["tokenizer", "encode", f"tokenizer={model}", f"corpus={other}", f"output_dir={output}", "workers=1"]
    assert main(arguments) == 2
    assert capsys.readouterr().err.strip() == (
        f"corolla: error: output_dir {output} holds the token files of corpus {corpus[0].resolve()}, which a training "
        f"run may read: choose another output_dir, or pass overwrite=true to make them {other}'s (files alike are kept)"
    )
    assert file_identities(output) == before
    assert main([*arguments, "overwrite=true"]) == 0
    assert set(json.loads((output / MANIFEST_NAME).read_text())["languages"]) == {"eng_Latn"}
    assert main(arguments) == 0  # its own corpus again: current


def test_encoding_with_another_tokenizer_over_token_files_needs_overwrite(capsys, encoded, corpus, tmp_path) -> None:
    """Another tokenizer's token files are another dataset, one a training run may be reading."""
    output = tmp_path / "out"
    shutil.copytree(encoded[0], output)
    before = file_identities(output)
    other = train_model(tmp_path / "other.model", 4500)
    arguments = [
        "tokenizer",
        "encode",
        f"tokenizer={other}",
        f"corpus={corpus[0]}",
        f"output_dir={output}",
        "workers=1",
    ]
    assert main(arguments) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"corolla: error: output_dir {output} holds token files of another tokenizer"
    ) and err.endswith("pass overwrite=true to encode them anew with this one")
    assert file_identities(output) == before
    assert main([*arguments, "overwrite=true"]) == 0
    assert (
        json.loads((output / MANIFEST_NAME).read_text())["tokenizer"]["fingerprint"]
        == load_tokenizer(other).fingerprint
    )
