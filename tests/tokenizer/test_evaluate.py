"""Parity evaluation on a tiny parallel set, with character-level tokenizers whose counts are checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from tokenizer.evaluate import evaluate, language_stats, load_parallel, split_parallel, summarize, write_report
from tokenizer.loading import load_tokenizer

SHARED_PARALLEL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "parallel-dev"
PARALLEL = {
    "eng_Latn": ["a cat", "the dog"],
    "fra_Latn": ["le chat", "un été"],
    "tha_Thai": ["กขค", "งจฉช"],
}
LOWERCASE = "abcdefghijklmnopqrstuvwxyz"


def write_parallel(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return directory


@pytest.fixture
def parallel_dir(tmp_path: Path) -> Path:
    files = {f"{code}.txt": "\n".join(lines) + "\n" for code, lines in PARALLEL.items()}
    return write_parallel(tmp_path / "parallel", {**files, "MANIFEST.tsv": "file\tlanguage\n"})


def char_tokenizer(directory: Path, characters: str) -> Path:
    """One token per character in `characters`, every other character as its UTF-8 bytes; spaces are dropped."""
    vocab = {"<unk>": 0} | {f"<0x{byte:02X}>": 1 + byte for byte in range(256)}
    vocab |= {char: len(vocab) + i for i, char in enumerate(characters)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory.mkdir(parents=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture
def latin_tokenizer(tmp_path: Path) -> Path:
    return char_tokenizer(tmp_path / "latin", LOWERCASE)


@pytest.fixture
def wide_tokenizer(tmp_path: Path) -> Path:
    return char_tokenizer(tmp_path / "wide", LOWERCASE + "é" + "กขคงจฉช")


def test_load_parallel_reads_lang_files_and_ignores_others(parallel_dir: Path) -> None:
    # A checksum, an editor's backup and swap file, a folder: none is a language's file, all passed over.
    write_parallel(parallel_dir, {"eng_Latn.txt.md5": "0123  eng_Latn.txt\n", "fra_Latn.txt~": "x\n"})
    write_parallel(parallel_dir, {".eng_Latn.txt.swp": b"\x00", "MANIFEST.tsv": "file\n"})
    (parallel_dir / "old.txt.d").mkdir()
    assert load_parallel(parallel_dir) == PARALLEL


def test_a_byte_order_mark_is_no_part_of_a_parallel_files_first_line(parallel_dir: Path) -> None:
    """It was counted as text: three byte-fallback tokens more for the language whose file a Windows tool wrote."""
    english = parallel_dir / "eng_Latn.txt"
    english.write_bytes("\ufeff".encode() + english.read_bytes())
    assert load_parallel(parallel_dir) == PARALLEL


def test_split_parallel_cuts_every_language_at_the_same_line() -> None:
    tune, held_out = split_parallel(PARALLEL, 0.5)
    assert tune == {code: lines[:1] for code, lines in PARALLEL.items()}
    assert held_out == {code: lines[1:] for code, lines in PARALLEL.items()}
    assert split_parallel(PARALLEL, 1.0) == (PARALLEL, {code: [] for code in PARALLEL})


def test_language_stats_match_hand_counts(latin_tokenizer: Path) -> None:
    stats = language_stats(load_tokenizer(latin_tokenizer), PARALLEL, "eng_Latn")
    # eng: a,c,a,t + t,h,e,d,o,g = 10 tokens; 4 words; 12 characters with the spaces.
    assert stats["eng_Latn"] == {
        "tokens": 10,
        "premium": 1.0,
        "fertility": 10 / 4,
        "byte_fallback_rate": 0.0,
        "chars_per_token": 12 / 10,
    }
    # fra: l,e,c,h,a,t = 6; u,n,é,t,é = 7 because é is not in the vocabulary and falls back to two bytes (C3 A9).
    assert stats["fra_Latn"] == {
        "tokens": 13,
        "premium": 13 / 10,
        "fertility": 13 / 4,
        "byte_fallback_rate": 4 / 13,
        "chars_per_token": 13 / 13,
    }
    # tha: 7 characters of 3 UTF-8 bytes each, all byte tokens; Thai has no spaces between words, so no fertility.
    assert stats["tha_Thai"] == {
        "tokens": 21,
        "premium": 21 / 10,
        "fertility": None,
        "byte_fallback_rate": 1.0,
        "chars_per_token": 7 / 21,
    }


def test_summary_of_hand_counts(latin_tokenizer: Path) -> None:
    summary = summarize(language_stats(load_tokenizer(latin_tokenizer), PARALLEL, "eng_Latn"), "eng_Latn")
    assert summary == {
        "max_premium": 21 / 10,
        "max_premium_language": "tha_Thai",
        "mean_premium": pytest.approx((13 / 10 + 21 / 10) / 2),
        "languages_above_1_5": ["tha_Thai"],
        "languages_above_2": ["tha_Thai"],
        "total_tokens": 10 + 13 + 21,
    }


def test_evaluate_compares_two_tokenizers(parallel_dir: Path, latin_tokenizer: Path, wide_tokenizer: Path) -> None:
    report = evaluate([latin_tokenizer, wide_tokenizer], parallel_dir)
    assert report["reference"] == "eng_Latn"
    assert report["parallel"] == str(parallel_dir)
    assert list(report["tokenizers"]) == ["latin", "wide"]
    assert "languages" not in report and "summary" not in report
    latin, wide = report["tokenizers"]["latin"], report["tokenizers"]["wide"]
    assert latin["languages"]["tha_Thai"]["premium"] == 21 / 10
    # With é and the Thai letters in the vocabulary: fra 6 + 5 tokens, tha 7 tokens, no byte fallback.
    assert wide["languages"]["fra_Latn"]["premium"] == 11 / 10
    assert wide["languages"]["tha_Thai"]["premium"] == 7 / 10
    assert wide["languages"]["tha_Thai"]["byte_fallback_rate"] == 0.0
    assert wide["summary"]["max_premium_language"] == "fra_Latn"
    assert wide["summary"]["languages_above_1_5"] == []
    assert wide["vocab_size"] == latin["vocab_size"] + 8
    assert wide["path"] == str(wide_tokenizer / "tokenizer.json")
    assert len(wide["fingerprint"]) == 64 and wide["fingerprint"] != latin["fingerprint"]


def test_evaluate_names(parallel_dir: Path, latin_tokenizer: Path, wide_tokenizer: Path) -> None:
    files = [latin_tokenizer / "tokenizer.json", wide_tokenizer / "tokenizer.json"]
    assert list(evaluate(files, parallel_dir)["tokenizers"]) == ["latin/tokenizer.json", "wide/tokenizer.json"]
    twice = f"{latin_tokenizer.parent.name}/latin"
    assert list(evaluate([latin_tokenizer, latin_tokenizer], parallel_dir)["tokenizers"]) == [twice, f"{twice}-2"]
    named = evaluate([latin_tokenizer, wide_tokenizer], parallel_dir, names=["a", "b"])
    assert list(named["tokenizers"]) == ["a", "b"]


def test_write_report_single_tokenizer(parallel_dir: Path, latin_tokenizer: Path, tmp_path: Path) -> None:
    paths = write_report(evaluate([latin_tokenizer], parallel_dir), tmp_path / "out")
    assert paths == {
        "json": tmp_path / "out" / "report.json",
        "markdown": tmp_path / "out" / "report.md",
        "chart": tmp_path / "out" / "premium.png",
    }
    report = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert report["languages"]["fra_Latn"]["premium"] == 13 / 10
    assert report["languages"]["tha_Thai"]["fertility"] is None
    assert report["summary"]["max_premium"] == 21 / 10
    assert report["summary"] == report["tokenizers"]["latin"]["summary"]
    assert paths["chart"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "| tha_Thai | 2.10 |" in markdown
    assert "| max premium | 2.10 (tha_Thai) |" in markdown
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["premium.png", "report.json", "report.md"]


def test_write_report_side_by_side(parallel_dir: Path, latin_tokenizer: Path, wide_tokenizer: Path, tmp_path: Path):
    paths = write_report(evaluate([latin_tokenizer, wide_tokenizer], parallel_dir), tmp_path / "out")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "| language | latin | wide |" in markdown
    assert "| fra_Latn | 1.30 | 1.10 |" in markdown
    assert paths["chart"].read_bytes().startswith(b"\x89PNG")


def test_a_report_cut_short_leaves_no_report_json(parallel_dir: Path, latin_tokenizer: Path, tmp_path: Path) -> None:
    """report.json, by which a pipeline's rerun takes the report as current, is written last: a write that fails
    before it (a full disk) leaves a report the rerun writes again."""
    (tmp_path / "out" / "premium.png").mkdir(parents=True)  # where the chart cannot be written
    with pytest.raises(IsADirectoryError):
        write_report(evaluate([latin_tokenizer], parallel_dir), tmp_path / "out")
    assert not (tmp_path / "out" / "report.json").exists()


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        write_report({"reference": "eng_Latn", "tokenizers": {}}, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


ENG = "a cat\nthe dog\n"


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"MANIFEST.tsv": "file\n"}, "has no <lang>.txt files"),
        ({"eng_Latn.txt": ENG, "english.txt": ENG}, "unknown language code 'english'"),
        ({"eng_Latn.txt": ENG, "fra_Latn.txt": "le chat\n"}, "fra_Latn.txt has 1 lines but eng_Latn.txt has 2"),
        ({"fra_Latn.txt": "le chat\n"}, "reference language eng_Latn has no file"),
        ({"eng_Latn.txt": ENG, "fra_Latn.txt": ""}, "fra_Latn.txt is empty"),
        ({"eng_Latn.txt": ENG, "fra_Latn.txt": "\n\n"}, "fra_Latn.txt is empty"),
        ({"eng_Latn.txt": ENG, "fra_Latn.txt": b"le ch\xe2t\n"}, "fra_Latn.txt is not UTF-8"),
        # Passed over, its language left unmeasured without a word.
        (
            {"eng_Latn.txt": ENG, "fra_Latn.txt.gz": b"\x1f\x8b"},
            "fra_Latn.txt.gz is compressed with .gz, which corolla",
        ),
        ({"eng_Latn.txt": ENG, "fra_Latn.TXT": "le chat\n"}, "fra_Latn.TXT is named in capitals"),
    ],
)
def test_bad_parallel_dir(tmp_path: Path, files: dict[str, str | bytes], problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as error:
        load_parallel(write_parallel(tmp_path / "parallel", files))
    assert "\n" not in str(error.value)


def test_missing_parallel_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist") as error:
        load_parallel(tmp_path / "missing")
    assert "\n" not in str(error.value)


def test_a_parallel_file_given_for_its_directory_is_said_to_be_a_file(tmp_path: Path) -> None:
    (tmp_path / "eng_Latn.txt").write_text(ENG)
    with pytest.raises(ValueError, match=r"eng_Latn\.txt is a file, not a directory: pass a directory of <lang>\.txt"):
        load_parallel(tmp_path / "eng_Latn.txt")


@pytest.mark.parametrize(
    ("count", "names", "problem"),
    [(0, None, "no tokenizer to evaluate"), (2, ["a"], "1 names for 2 tokenizers"), (2, ["a", "a"], "repeat a name")],
)
def test_bad_evaluate_arguments(
    parallel_dir: Path, latin_tokenizer: Path, count: int, names: list[str] | None, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem) as error:
        evaluate([latin_tokenizer] * count, parallel_dir, names=names)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_bad_split_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="must be within"):
        split_parallel(PARALLEL, fraction)


@pytest.mark.skipif(not SHARED_PARALLEL.is_dir(), reason="shared parallel-dev data not present")
def test_load_shared_parallel_dev() -> None:
    parallel = load_parallel(SHARED_PARALLEL)
    assert len(parallel) == 60
    assert {len(lines) for lines in parallel.values()} == {997}
