"""The `corolla` command: Hydra overrides, printing the resolved config, one-line errors, the tokenizer flow."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from conftest import MULTILINGUAL, REPO_ROOT, cut_corpus
from launch.cli import main
from launch.config.cluster import READ_HERE, ClusterConfig
from launch.config.compose import quoted


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_cfg_prints_the_resolved_config_with_the_sample_corpus(capsys) -> None:
    code, out, _ = run(capsys, "tokenizer", "train", "--cfg")
    assert code == 0
    assert f"corpus: {MULTILINGUAL.resolve()}" in out
    assert "vocab_size: 64000" in out and "sampling: temperature" in out and "alpha: 0.3" in out


@pytest.mark.parametrize("command", ["tokenizer evaluate", "tokenizer encode", "tokenizer extend", "export hf"])
def test_cfg_shows_the_settings_still_to_give_as_such(capsys, command: str) -> None:
    """It refused with "missing value for ..." until they were all given; a bad setting is still refused."""
    code, out, err = run(capsys, *command.split(), "--cfg")
    assert code == 0 and "output_dir: ???" in out, err
    for bad in ("no_such_key=1", "+no_such_key=1", "output_dir="):
        code, _, err = run(capsys, *command.split(), "--cfg", bad)
        assert code == 2 and ("no_such_key" in err or "output_dir is empty" in err), (bad, err)
    if command == "tokenizer extend":  # a knob its sampling does not read, values out of range
        code, _, err = run(capsys, *command.split(), "--cfg", "tokenizer.sampling=unimax", "tokenizer.alpha=0.5")
        assert code == 2 and "tokenizer.alpha is read by tokenizer.sampling=temperature" in err
        for bad, said in (("added_pieces=10", "is too small"), ("tokenizer.alpha=1.5", "must be within [0, 1]")):
            code, _, err = run(capsys, *command.split(), "--cfg", bad)
            assert code == 2 and said in err, (bad, err)
    if command == "export hf":
        code, _, err = run(capsys, *command.split(), "--cfg", "step=-1")
        assert code == 2 and "give a checkpoint's step" in err
    code, _, err = run(capsys, *command.split(), "output_dir=o")
    assert code == 2 and "missing value for " in err


def test_a_group_option_and_a_value_override_compose(capsys) -> None:
    code, out, _ = run(capsys, "tokenizer", "train", "--cfg", "tokenizer=tiny", "tokenizer.alpha=0.5", "seed=9")
    assert code == 0
    assert "vocab_size: 8000" in out and "alpha: 0.5" in out and "seed: 9" in out
    code, out, _ = run(capsys, "tokenizer", "train", "tokenizer=tiny", "--cfg", "seed=9")  # options anywhere
    assert code == 0 and "vocab_size: 8000" in out and "seed: 9" in out


def test_evaluate_takes_one_tokenizer_or_a_list(capsys) -> None:
    code, out, _ = run(capsys, "tokenizer", "evaluate", "--cfg", "tokenizer=[a,b]", "output_dir=o")
    assert code == 0 and "- a\n" in out and "- b\n" in out
    code, out, _ = run(capsys, "tokenizer", "evaluate", "--cfg", "tokenizer=some/dir", "output_dir=o")
    assert code == 0 and "tokenizer: some/dir" in out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("tokenizer.vocab_sise=8000", "unknown config key 'tokenizer.vocab_sise'"),
        ("colour=blue", "unknown config key 'colour'"),
        ("tokenizer.vocab_size=many", "invalid value in tokenizer.vocab_size=many"),
        ("tokenizer.sampling=random", "expected one of [natural, temperature, uniform, unimax, weights, parity]"),
        ("tokenizer=huge", "unknown tokenizer option 'huge': choose one of bpe-64k, parity-250k, parity-64k, tiny"),
        ("tokenizer.alpha=1.5", "tokenizer.alpha=1.5 must be within [0, 1]"),
        ("tokenizer.sampling=parity", "needs tokenizer.parity_set=DIR"),
        ("tokenizer=", "unknown tokenizer option '': choose one of bpe-64k, parity-250k, parity-64k, tiny"),
        ("seed=1,2", "seed=1,2 holds a comma: give a list seed=[1,2] or a string seed='1,2'"),
        ("tokenizer.parity_strength=nan", "tokenizer.parity_strength=nan must be positive and finite"),
        ("tokenizer.parity_strength=inf", "tokenizer.parity_strength=inf must be positive and finite"),
        ("tokenizer.unimax_max_epochs=nan", "tokenizer.unimax_max_epochs=nan must be positive"),
        (
            "tokenizer.threads=5000",
            "tokenizer.threads=5000 must be 0 (every core) or a count up to 1024, SentencePiece's",
        ),
        ("+tokenizer.weights={fra_Latn: nan}", "tokenizer.weights of fra_Latn must be finite and 0 or more"),
        ("+tokenizer.weights={fra_Latn: inf, eng_Latn: -1}", "weights of eng_Latn, fra_Latn must be finite and 0 or"),
        (
            "+tokenizer.weights={fra_Latn: 2}",
            "tokenizer.weights are read by tokenizer.sampling=weights alone, not temperature: add tokenizer.sampling=",
        ),
        ("~corpus", "missing value for corpus: pass corpus=..."),
        ("seed.x=1", "seed is a single value in this command, with no seed.x: drop it"),
        (
            "tokenizer.parity_rounds=3",
            "tokenizer.parity_rounds is read by tokenizer.sampling=parity alone, not temperature: drop it, or choose",
        ),
    ],
)
def test_bad_overrides_give_one_line_naming_the_problem(capsys, override: str, expected: str) -> None:
    code, out, err = run(capsys, "tokenizer", "train", override, "--cfg")
    assert code == 2 and out == ""
    assert err.startswith("corolla: error: ") and expected in err and "\n" not in err


def test_per_language_training_weights_are_new_keys_of_data_weights(capsys) -> None:
    code, out, _ = run(capsys, "train", "--cfg", "+data.weights.eng_Latn=2", "+data.weights.fra_Latn=0.5")
    assert code == 0 and yaml.safe_load(out)["data"]["weights"] == {"eng_Latn": 2.0, "fra_Latn": 0.5}
    code, out, _ = run(capsys, "train", "--cfg", "+data.weights={hin_Deva: 1}")
    assert code == 0 and yaml.safe_load(out)["data"]["weights"] == {"hin_Deva": 1.0}
    code, _, err = run(capsys, "train", "--cfg", "data.weights.eng_Latn=2")
    assert code == 2 and err == "corolla: error: data.weights.eng_Latn takes new keys: write '+data.weights.eng_Latn=2'"
    code, _, err = run(capsys, "train", "--cfg", "data.weights={hin_Deva: 1, eng_Latn: 2}")  # the README's form
    assert (
        code == 2
        and err == "corolla: error: data.weights takes new keys: write '+data.weights={hin_Deva: 1, eng_Latn: 2}'"
    )


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (["train", "tracking.uri=ftp://alice:s3cret@host/x"], "tracking.uri has the scheme ftp:"),
        (["tracking", "sync", "run", "uri=s3://bucket"], "uri has the scheme s3:"),
        (["train", "tracking.uri=file:///tmp/mlruns"], "tracking.uri has the scheme file:"),  # MLflow 3 refuses it
        (["train", "--dry-run", "tracking.uri=garbage"], "tracking.uri has no scheme (a path: MLflow's file store)"),
    ],
)
def test_a_tracking_uri_mlflow_cannot_use_is_refused_in_one_line(capsys, command: list[str], problem: str) -> None:
    code, _, err = run(capsys, *command)
    assert code == 2 and err.startswith(f"corolla: error: {problem}, which MLflow cannot track to")
    assert "\n" not in err.strip() and "s3cret" not in err


@pytest.mark.parametrize(
    "command",
    [
        ["train", "run_dir="],
        ["tokenizer", "train", "output_dir="],
        ["tokenizer", "train", "output_dir=o", "corpus="],
        ["tokenizer", "train", "output_dir=o", "tokenizer=parity-64k", "tokenizer.parity_set="],
        ["tokenizer", "encode", "tokenizer=t", "output_dir=o", "corpus="],
        ["tokenizer", "encode", "corpus=c", "output_dir=o", "tokenizer="],
        ["tokenizer", "evaluate", "tokenizer=t", "output_dir=o", "parallel="],
        ["tokenizer", "extend", "corpus=c", "output_dir=o", "base="],
        ["train", "--dry-run", "data.corpus="],
        ["train", "--dry-run", "init_from="],
        ["pipeline", "--dry-run", "parallel_set="],
    ],
)
def test_an_empty_directory_is_refused_rather_than_writing_into_the_working_directory(
    capsys, tmp_path: Path, monkeypatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *command)
    key = command[-1].rstrip("=")
    assert code == 2
    assert err == f"corolla: error: {key} is empty, which would mean the working directory: pass {key}=DIR"
    assert list(tmp_path.iterdir()) == []


def test_an_empty_corpus_is_refused_rather_than_encoding_the_working_directory(
    capsys, tmp_path: Path, monkeypatch
) -> None:
    corpus = cut_corpus(tmp_path / "corpus", ["eng_Latn", "fra_Latn"], 100)
    tokenizer = tmp_path / "tok"
    train_args = [f"corpus={corpus}", f"output_dir={tokenizer}", "tokenizer.vocab_size=1000"]
    assert run(capsys, "tokenizer", "train", *train_args)[0] == 0
    monkeypatch.chdir(corpus)  # `corpus=` would be this directory's text, whatever it is
    code, _, err = run(
        capsys, "tokenizer", "encode", f"tokenizer={tokenizer}", "corpus=", f"output_dir={tmp_path / 't'}"
    )
    assert code == 2
    assert err == "corolla: error: corpus is empty, which would mean the working directory: pass corpus=DIR"
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("train +data.weight.fra_Latn=2", "unknown config key 'data.weight' (did you mean data.weights?)"),
        ("train ++train.stepz=5", "unknown config key 'train.stepz' (did you mean train.steps?)"),
        ("train +trian.steps=5", "unknown config key 'trian' (did you mean train?)"),
        ("plan +cluster.gpu_mem=10", "unknown config key 'cluster.gpu_mem' (did you mean cluster.gpu_memory_gib?)"),
    ],
)
def test_a_key_added_with_a_plus_must_be_one_the_schema_has(capsys, command: str, expected: str) -> None:
    """`+` adds any key, and the typed job would drop a misspelt one without a word (the natural mix trained where
    data.weights was meant); mappings such as data.weights still take new keys."""
    code, _, err = run(capsys, *command.split(), "--cfg")
    assert code == 2 and err.strip() == f"corolla: error: {expected}: `--cfg` prints every valid key"
    code, out, _ = run(capsys, "submit", "--cfg", "+data.weights.fra_Latn=2", "+cluster.env.SOME_FLAG=1")
    config = yaml.safe_load(out)
    assert code == 0 and config["data"]["weights"] == {"fra_Latn": 2.0} and config["cluster"]["env"]["SOME_FLAG"]


def test_a_list_key_given_one_value_is_shown_the_list_form(capsys) -> None:
    code, _, err = run(capsys, "submit", "--dry-run", "cluster=jean-zay-a100", "cluster.exclude=n7")
    assert code == 2 and err == "corolla: error: cluster.exclude takes a list: write cluster.exclude=[n7]"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.steps=0", "train.steps, train.micro_batch and train.global_batch must be at least 1"),
        ("train.min_lr=1", "train.min_lr=1.0 positive and at most train.lr"),
        ("train.lr=inf", "train.lr=inf must be finite"),
        ("train.eps=inf", "a positive train.eps=inf"),
        ("train.hang_timeout_s=5", "train.hang_timeout_s=5 must be at least 10 seconds"),
        ("train.beta2=1.5", "AdamW takes train.beta1=0.9 and train.beta2=1.5 in [0, 1)"),
        ("train.eps=0", "a positive train.eps=0.0"),
        ("train.weight_decay=-0.1", "a train.weight_decay=-0.1 of 0 or more"),
        ("train.grad_clip=-1", "train.grad_clip=-1.0 must be 0 (no clipping) or positive"),
        ("train.rampup.start=4", "train.rampup.start=4 needs a positive train.rampup.increment"),
        ("model.hidden_dropout=2", "model.hidden_dropout=2.0 and model.attention_dropout=0.0 are probabilities"),
        ("model.ffn_multiplier=0", "model.ffn_multiplier=0 must be at least 1"),
        ("model.layernorm_epsilon=-1", "model.layernorm_epsilon=-1.0 positive"),
        ("data.alpha=60", "data.alpha=60.0 must lie in [0, 10]"),
        ("+data.weights.fra_Latn=2 data.alpha=0.3", "data.alpha=0.3 sets the mix only where data.weights do not"),
        ("cluster.mem_per_node_gb=-5", "mem_per_node_gb=-5 (0: Slurm's default) must not be negative"),
    ],
)
def test_a_training_setting_out_of_range_is_refused_in_one_line(capsys, override: str, expected: str) -> None:
    code, out, err = run(capsys, "train", "--cfg", *override.split(" "))
    assert code == 2 and out == "" and expected in err and "\n" not in err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "tokenizer.vocab_size=4000",
            "tokenizer.vocab_size=4000: tokenizer extend trains added_pieces pieces, whatever tokenizer.vocab_size "
            "says: write added_pieces=4000",
        ),
        ("tokenizer=unigram-64k", "tokenizer.model_type=unigram: tokenizer extend appends BPE pieces to a BPE base"),
        ("tokenizer.language_tags=true", "tokenizer.language_tags=true: tokenizer extend appends trained pieces only"),
    ],
)
def test_an_extension_refuses_tokenizer_settings_it_would_not_follow(capsys, override: str, expected: str) -> None:
    """Its vocabulary is added_pieces, its pieces are BPE and only normal ones are appended: each of these was
    dropped, or (unigram) gave pieces the base's merges cannot all reach, without a word."""
    code, _, err = run(capsys, "tokenizer", "extend", "base=b", "output_dir=o", override, "--cfg")
    assert code == 2 and err.startswith(f"corolla: error: {expected}") and "\n" not in err
    code, _, _ = run(capsys, "tokenizer", "extend", "base=b", "output_dir=o", "added_pieces=4000", "--cfg")
    assert code == 0


def test_an_extension_premium_threshold_of_nan_is_refused_in_one_line(capsys) -> None:
    code, _, err = run(capsys, "tokenizer", "extend", "base=b", "output_dir=o", "premium_threshold=nan", "--cfg")
    assert code == 2 and err == "corolla: error: premium_threshold=nan must be at least 1 (the reference's own)"


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
@pytest.mark.parametrize(
    "command", ["tokenizer train", "tokenizer extend base=b output_dir=o", "train", "pipeline", "submit"]
)
def test_a_seed_sentencepiece_cannot_take_is_refused_in_one_line(capsys, command: str, seed: str) -> None:
    code, out, err = run(capsys, *command.split(), f"seed={seed}", "--cfg")
    assert code == 2 and out == ""
    assert err == f"corolla: error: seed={seed} is out of range: give a seed from 0 to 4294967295"


def test_a_negative_seed_trains_no_tokenizer_and_shows_no_traceback(capsys, tmp_path: Path) -> None:
    """SentencePiece took it only after the corpus was scanned and sampled, and failed with a TypeError."""
    corpus = cut_corpus(tmp_path / "corpus", ["eng_Latn", "fra_Latn"], 100)
    out = tmp_path / "tok"
    code, _, err = run(capsys, "tokenizer", "train", f"corpus={corpus}", f"output_dir={out}", "seed=-1")
    assert code == 2 and err.startswith("corolla: error: seed=-1 is out of range") and not out.exists()


@pytest.mark.parametrize(
    "command",
    [
        "train parallel.activation_checkpointing=2",
        "export hf run_dir=x output_dir=y overwrite=-1",
        "submit cluster.exclusive=7",
    ],
)
def test_a_switch_given_a_count_is_refused(capsys, command: str) -> None:
    """OmegaConf takes any number as true: `parallel.activation_checkpointing=2` switched it on without a word."""
    *words, setting = command.split()
    key, value = setting.split("=")
    code, _, err = run(capsys, *words, setting, "--cfg")
    assert (
        code == 2
        and err.strip() == f"corolla: error: {key}={value} is not a switch's value: write {key}=true or {key}=false"
    )
    code, out, _ = run(capsys, *words, f"{key}=1", "--cfg")
    assert code == 0 and f"{key.rsplit('.', 1)[-1]}: true" in out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("checkpoint reshard runs/x tp=-1", "tp=-1 pp=0 dp=0: each must be at least 1, or 0 for as saved"),
        ("checkpoint reshard runs/x step=-2", "step=-2: give a checkpoint's step, or 0 for the latest complete one"),
        ("checkpoint verify runs/x step=-1", "step=-1: give a checkpoint's step, or 0 for the latest complete one"),
        (
            "export hf run_dir=runs/x output_dir=out step=-1",
            "step=-1: give a checkpoint's step, or 0 for the latest complete one",
        ),
    ],
)
def test_a_checkpoint_command_refuses_a_negative_layout_or_step(capsys, command: str, expected: str) -> None:
    """Before it reads anything: a negative layout once deleted a checkpoint's weights in `reshard`."""
    code, _, err = run(capsys, *command.split(), "--cfg")
    assert code == 2 and err.strip() == f"corolla: error: {expected}"


@pytest.mark.parametrize("output", ["a-file", "a-file/tokenizer"])
def test_a_file_where_a_directory_belongs_is_said_so(capsys, tmp_path: Path, output: str) -> None:
    (tmp_path / "a-file").write_text("notes")
    code, _, err = run(capsys, "tokenizer", "train", f"output_dir={tmp_path / output}", "corpus=x")
    assert code == 2 and err.strip() == (
        f"corolla: error: output_dir={tmp_path / output} is, or lies under, the file {tmp_path / 'a-file'}: give a "
        "directory's path"
    )
    assert (tmp_path / "a-file").read_text() == "notes"


@pytest.mark.parametrize(
    ("run_dir", "problem"),
    [
        ("a-file", "exists where corolla needs a directory of its own: remove it, or give another path"),
        ("a-file/run", "is, or lies under, a file rather than a directory: give a directory's path"),
    ],
)
def test_a_run_directory_that_is_a_file_is_said_so(
    capsys, tokens: Path, tmp_path: Path, run_dir: str, problem: str
) -> None:
    """errno's words ("[Errno 17] File exists") name neither the problem nor the fix."""
    (tmp_path / "a-file").write_text("notes")
    code, _, err = run(capsys, "train", f"data.tokens_dir={tokens}", f"run_dir={tmp_path / run_dir}")
    where = tmp_path / run_dir
    assert code == 2 and err.strip().startswith(f"corolla: error: {where}") and err.strip().endswith(problem)
    assert (tmp_path / "a-file").read_text() == "notes"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("train --dry-run data.corpus=MISSING", "corpus directory MISSING does not exist"),
        ("submit --dry-run experiment=bloom-176b data.corpus=MISSING", "corpus directory MISSING does not exist"),
        ("pipeline --dry-run data.corpus=MISSING", "corpus directory MISSING does not exist"),
        ("pipeline --dry-run parallel_set=MISSING", "parallel directory MISSING does not exist"),
        ("pipeline --dry-run cluster=testcluster parallel_set=MISSING", "parallel directory MISSING does not exist"),
    ],
)
def test_a_dry_run_finds_a_missing_corpus_or_parallel_set(capsys, tmp_path: Path, command: str, expected: str) -> None:
    """What a real run would fail on later (for a pipeline, once its tokenizer is trained), a dry run finds now."""
    missing = str(tmp_path / "missing")
    arguments = [argument.replace("MISSING", missing) for argument in command.split()]
    code, _, err = run(capsys, *arguments, f"run_dir={tmp_path / 'run'}")
    assert code == 2 and err.startswith(f"corolla: error: {expected.replace('MISSING', missing)}: pass ")
    assert not (tmp_path / "run").exists()


def test_a_pipeline_without_a_corpus_is_told_to_give_one(capsys, tmp_path: Path) -> None:
    """Its training job reads the pipeline's token files instead, so nothing else asked for one: a TypeError."""
    code, _, err = run(capsys, "pipeline", "--dry-run", "data.corpus=null", f"run_dir={tmp_path / 'run'}")
    assert code == 2 and err == (
        "corolla: error: data.corpus is not set: the pipeline trains its tokenizer on it; give data.corpus=DIR"
    )


@pytest.mark.parametrize(
    ("command", "key"),
    [
        ("tokenizer train corpus=CORPUS output_dir=OUT tokenizer.sampling=parity tokenizer.parity_set=PARALLEL", None),
        ("tokenizer extend base=OUT corpus=CORPUS output_dir=EXT tokenizer.parity_set=PARALLEL", None),
        ("pipeline --dry-run data.corpus=CORPUS parallel_set=PARALLEL run_dir=OUT", None),
        ("tokenizer evaluate tokenizer=OUT parallel=PARALLEL output_dir=EXT", "reference"),
    ],
    ids=["train", "extend", "pipeline", "evaluate"],
)
def test_a_parallel_set_without_the_reference_names_the_key_that_sets_it(
    capsys, tmp_path: Path, command: str, key: str | None
) -> None:
    """Only `tokenizer evaluate` has a `reference=`; elsewhere the reference is tokenizer.reference_language."""
    corpus = cut_corpus(tmp_path / "corpus", ["eng_Latn", "fra_Latn"], 100)
    parallel = cut_corpus(tmp_path / "parallel", ["deu_Latn", "fra_Latn"], 20)
    out = tmp_path / "tok"
    if command.startswith(("tokenizer extend", "tokenizer evaluate")):
        assert (
            run(capsys, "tokenizer", "train", f"corpus={corpus}", f"output_dir={out}", "tokenizer.vocab_size=1000")[0]
            == 0
        )
    paths = {"CORPUS": corpus, "PARALLEL": parallel, "OUT": out, "EXT": tmp_path / "ext"}
    arguments = command.split()
    for name, path in paths.items():
        arguments = [argument.replace(name, str(path)) for argument in arguments]
    code, _, err = run(capsys, *arguments)
    assert code == 2
    assert err == (
        f"corolla: error: reference language eng_Latn has no file in {parallel}: add eng_Latn.txt or pass "
        f"{key or 'tokenizer.reference_language'}= one of deu_Latn, fra_Latn"
    )
    assert not (tmp_path / "ext").exists()


def test_a_tokenizer_path_hydra_reads_as_a_number_is_still_a_path(capsys, tmp_path: Path, monkeypatch) -> None:
    """It was 'Could not create instance of `TokenizerEvaluateJob`: 'int' object is not iterable'."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "tokenizer", "evaluate", "tokenizer=2024", "output_dir=r")
    assert code == 2 and err.startswith("corolla: error: tokenizer 2024 does not exist: pass a corolla tokenizer")
    code, out, _ = run(capsys, "tokenizer", "evaluate", "tokenizer=[2024,b]", "output_dir=r", "--cfg")
    assert code == 0 and "- 2024\n" in out


def test_missing_required_values_are_named(capsys) -> None:
    code, _, err = run(capsys, "tokenizer", "encode")
    assert code == 2 and "missing value for" in err and "tokenizer" in err and "output_dir" in err


def test_the_console_command_is_installed() -> None:
    corolla = Path(sys.executable).parent / "corolla"
    result = subprocess.run([corolla, "tokenizer", "train", "--cfg"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "vocab_size: 64000" in result.stdout


def test_train_evaluate_encode_through_the_cli(capsys, tmp_path: Path) -> None:
    corpus = cut_corpus(tmp_path / "corpus", ["eng_Latn", "fra_Latn", "hin_Deva", "zho_Hans"], 300)
    parallel = cut_corpus(tmp_path / "parallel", ["eng_Latn", "fra_Latn", "hin_Deva", "zho_Hans"], 50)
    small, large = tmp_path / "tok-2k", tmp_path / "tok-4k"
    for out, vocab in ((small, 2000), (large, 4000)):
        overrides = [f"corpus={corpus}", f"output_dir={out}", f"tokenizer.vocab_size={vocab}"]
        overrides.append("tokenizer.character_coverage=0.99")
        assert run(capsys, "tokenizer", "train", "tokenizer=tiny", *overrides)[0] == 0
    report_dir = tmp_path / "report"
    both = f"tokenizer=[{small},{large}]"
    code, out, _ = run(capsys, "tokenizer", "evaluate", both, f"parallel={parallel}", f"output_dir={report_dir}")
    assert code == 0 and "max premium" in out
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["tokenizers"]) == {"tok-2k", "tok-4k"}
    # A bigger vocabulary never needs more tokens on the same text.
    totals = {name: t["summary"]["total_tokens"] for name, t in report["tokenizers"].items()}
    assert totals["tok-4k"] < totals["tok-2k"]
    # The same evaluation again replaces its report; another's is kept unless overwrite=true.
    assert run(capsys, "tokenizer", "evaluate", both, f"parallel={parallel}", f"output_dir={report_dir}")[0] == 0
    before = (report_dir / "report.json").read_bytes()
    one = ["tokenizer", "evaluate", f"tokenizer={small}", f"parallel={parallel}", f"output_dir={report_dir}"]
    code, _, err = run(capsys, *one)
    assert code == 2 and err == (
        f"corolla: error: output_dir {report_dir} holds the report of {small}, {large}: choose another output_dir, "
        "or pass overwrite=true to replace it"
    )
    assert (report_dir / "report.json").read_bytes() == before
    assert run(capsys, *one, "overwrite=true")[0] == 0
    assert set(json.loads((report_dir / "report.json").read_text())["tokenizers"]) == {"tok-2k"}
    tokens = tmp_path / "tok"
    code, _, _ = run(capsys, "tokenizer", "encode", f"tokenizer={large}", f"corpus={corpus}", f"output_dir={tokens}")
    assert code == 0
    manifest = json.loads((tokens / "manifest.json").read_text())
    assert set(manifest["languages"]) == {"eng_Latn", "fra_Latn", "hin_Deva", "zho_Hans"}


@pytest.mark.parametrize(
    ("make", "command", "expected"),
    [
        (lambda d: None, ["tokenizer", "evaluate", "tokenizer={d}/none", "output_dir={d}/r"], "does not exist"),
        (
            lambda d: (d / "bad.model").write_bytes(b"garbage"),
            ["tokenizer", "evaluate", "tokenizer={d}/bad.model", "output_dir={d}/r"],
            "cannot be loaded",
        ),
        (  # SentencePiece takes an empty file for a model without a word, whose encodings then raise
            lambda d: (d / "tokenizer.model").write_bytes(b""),
            ["tokenizer", "encode", "tokenizer={d}", f"corpus={MULTILINGUAL}", "output_dir={d}/t"],
            "tokenizer.model holds no vocabulary: an empty or cut file): retrain or re-export it",
        ),
        (
            lambda d: (d / "out").write_text("a file"),
            ["tokenizer", "train", f"corpus={MULTILINGUAL}", "output_dir={d}/out/tok"],
            "out",
        ),
        (  # its report written among the tokenizer's files, which a training with overwrite=true then refused
            lambda d: (d / "tokenizer.model").write_bytes(b"garbage"),
            ["tokenizer", "evaluate", "tokenizer={d}", "output_dir={d}/report"],
            "output_dir={d}/report and tokenizer={d} lie one inside the other: give the report a directory of its own",
        ),
        (
            lambda d: None,
            ["tokenizer", "encode", "tokenizer={d}/none", f"corpus={MULTILINGUAL}", "output_dir={d}/t"],
            "does not exist",
        ),
    ],
    ids=[
        "evaluate-missing-tokenizer",
        "evaluate-garbage-model",
        "encode-empty-model",
        "train-output-under-a-file",
        "evaluate-report-inside-the-tokenizer",
        "encode-no-tokenizer",
    ],
)
def test_bad_paths_give_one_line(capsys, tmp_path: Path, make, command: list[str], expected: str) -> None:
    make(tmp_path)
    code, _, err = run(capsys, *(arg.format(d=tmp_path) for arg in command))
    assert code == 2 and err.startswith("corolla: error: ") and expected.format(d=tmp_path) in err and "\n" not in err


def test_encode_refuses_a_directory_it_did_not_write(capsys, tmp_path: Path) -> None:
    corpus = cut_corpus(tmp_path / "corpus", ["eng_Latn", "fra_Latn"], 100)
    tokenizer = tmp_path / "tok"
    train_args = [f"corpus={corpus}", f"output_dir={tokenizer}", "tokenizer.vocab_size=1000"]
    assert run(capsys, "tokenizer", "train", *train_args)[0] == 0
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, _, err = run(
        capsys, "tokenizer", "encode", f"tokenizer={tokenizer}", f"corpus={corpus}", f"output_dir={busy}"
    )
    assert code == 2 and "holds files but no manifest.json" in err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "command", ["status", "logs", "cancel", "tracking sync", "checkpoint verify", "checkpoint reshard", "export hf"]
)
def test_a_run_directory_may_be_given_as_the_first_argument(capsys, command: str) -> None:
    weird = 'runs/a "run" $(touch x) it\'s\\'
    swept = "runs/sweep/train.lr=0.001"  # a sweep's point
    for argument, expected in ((weird, weird), (f"run_dir={quoted(weird)}", weird), (swept, swept)):
        code, out, _ = run(capsys, *command.split(), "--cfg", argument)
        assert code == 0 and yaml.safe_load(out)["run_dir"] == expected


def test_a_value_hydra_cannot_read_is_refused_with_the_quoting_that_works(capsys) -> None:
    path = "/tmp/my run (copy)"
    code, _, err = run(capsys, "train", "--cfg", f"run_dir={path}")
    assert code == 2
    suggested = "run_dir='/tmp/my run (copy)'"
    assert err.strip() == (
        f"corolla: error: run_dir={path} cannot be read as key=value (mismatched input ' (' expecting <EOF>): quote "
        f'the value, as in "{suggested}" (the quotes outside for the shell)'
    )
    code, out, _ = run(capsys, "train", "--cfg", suggested)
    assert code == 0 and yaml.safe_load(out)["run_dir"] == path


def test_a_path_under_the_home_directory_is_the_home_directorys_as_a_shell_gives_or_not(
    capsys, monkeypatch, tmp_path: Path
) -> None:
    """A shell that does not expand `~` after `=` left `corpus=~/corp` to Hydra, which could not read it; quoted as
    the hint said, `output_dir='~/tok'` made a folder named `~` in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for corpus in ("~/corp", "'~/corp'"):
        code, out, _ = run(capsys, "tokenizer", "train", "--cfg", f"corpus={corpus}", "output_dir='~/my tok'")
        assert code == 0 and yaml.safe_load(out)["corpus"] == f"{tmp_path}/corp"
        assert yaml.safe_load(out)["output_dir"] == f"{tmp_path}/my tok"
    code, out, _ = run(capsys, "train", "--cfg", "run_dir='runs/~x'")  # not a home directory's
    assert code == 0 and yaml.safe_load(out)["run_dir"] == "runs/~x"


@pytest.mark.parametrize("override", ["model.hidden_size=128", "model=bloom-560m", "model.num_layers=4"])
def test_a_model_shape_given_with_init_from_is_refused_not_dropped(capsys, override: str) -> None:
    """The weights' shape is the model's: the override would be dropped without a word, the run another than asked."""
    code, _, err = run(capsys, "train", "--dry-run", "init_from=runs/none", override)
    assert code == 2 and err == (
        f"corolla: error: {override}: with init_from the model's shape is the weights' own; drop it (a job sets only "
        "model.seq_length, model.attention, model.compile, model.hidden_dropout, model.attention_dropout on weights "
        "it starts from)"
    )
    code, _, err = run(capsys, "train", "--dry-run", "init_from=runs/none", "model.seq_length=64")
    assert err == (  # a setting the job keeps: on to the weights' own check
        "corolla: error: runs/none does not exist: pass a run directory, an imported model or a Hugging Face model "
        "directory"
    )


@pytest.mark.parametrize("command", ["train", "submit", "pipeline"])
def test_init_new_rows_without_init_from_is_refused(capsys, command: str) -> None:
    """It starts the new embedding rows of weights a run starts from: with random weights it was dropped unread."""
    code, _, err = run(capsys, command, "--cfg", "init_new_rows=random")
    assert code == 2 and err == (
        "corolla: error: init_new_rows=random starts the rows an extended tokenizer adds to weights given with "
        "init_from, and none are: pass init_from=DIR, or drop init_new_rows"
    )
    code, out, _ = run(capsys, command, "--cfg", "init_new_rows=random", "init_from=runs/imported")
    assert code == 0 and "init_new_rows: random" in out


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """`corolla plan --json | head`: the rest of the output has nowhere to go, which is no error of the command's
    (it said 'corolla: error: [Errno 32] Broken pipe' and exited 2)."""
    # In fp32 every layout at both ZeRO stages: 84 kB, more than the pipe's buffer holds, once its reader is gone.
    command = [sys.executable, "-m", "launch.cli", "plan", "--json", "train.precision=fp32"]
    plan = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert plan.stdout.read(2) == b"[\n"
    plan.stdout.close()
    assert plan.wait(timeout=120) == 141 and plan.stderr.read() == b""


@pytest.mark.parametrize("command", ["tokenizer train", "pipeline", "train"])
def test_a_sampling_knob_the_sampling_does_not_read_is_refused(capsys, command: str) -> None:
    """tokenizer.alpha with sampling=unimax was dropped without a word (the tokenizer was trained as if not given)."""
    code, _, err = run(capsys, *command.split(), "tokenizer.sampling=unimax", "tokenizer.alpha=0.5", "--cfg")
    assert code == 2 and err.strip() == (
        "corolla: error: tokenizer.alpha is read by tokenizer.sampling=temperature or tokenizer.sampling=parity "
        "alone, not unimax: drop it, or choose that"
    )
    code, out, _ = run(capsys, *command.split(), "tokenizer.sampling=temperature", "tokenizer.alpha=0.5", "--cfg")
    assert code == 0 and "alpha: 0.5" in out


def test_tokenizer_extend_refuses_a_sampling_knob_but_the_parallel_set_it_always_reads(capsys) -> None:
    extend = ["tokenizer", "extend", "base=b", "corpus=c", "output_dir=o", "tokenizer.parity_set=p", "--cfg"]
    code, _, err = run(capsys, *extend, "tokenizer.sampling=unimax", "tokenizer.alpha=0.5")
    assert code == 2 and "tokenizer.alpha is read by tokenizer.sampling=temperature or" in err
    code, out, _ = run(capsys, *extend, "tokenizer.sampling=temperature", "tokenizer.parity_tune_fraction=0.4")
    assert code == 0 and "parity_tune_fraction: 0.4" in out


NO_TOKENIZER = "so this job trains no tokenizer: drop it, or give data.corpus alone for the job to encode with a "


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("data.tokens_dir=tokens", f"data.tokens_dir=tokens holds token files encoded already, {NO_TOKENIZER}"),
        ("data.tokenizer_dir=tok", f"data.tokenizer_dir=tok encodes data.corpus, {NO_TOKENIZER}"),
        ("init_from=runs/imported", "init_from's weights come with their tokenizer, so this job trains no tokenizer: "),
    ],
)
@pytest.mark.parametrize("command", ["train", "submit"])
def test_tokenizer_settings_are_refused_where_the_training_job_trains_no_tokenizer(
    capsys, command: str, given: str, reason: str
) -> None:
    """They choose the tokenizer the job trains to encode data.corpus: given with token files, a tokenizer or weights
    of its own, they were dropped without a word."""
    for tokenizer in ("tokenizer=bpe-64k", "tokenizer.vocab_size=1000"):
        code, _, err = run(capsys, command, given, tokenizer, "--cfg")
        assert code == 2 and err.startswith(f"corolla: error: {tokenizer}: {reason}") and "\n" not in err
        assert err.endswith("drop it" if "init_from" in given else "encode with a tokenizer of these settings")
    code, out, _ = run(capsys, command, "tokenizer.vocab_size=1000", "--cfg")
    assert code == 0 and "vocab_size: 1000" in out


@pytest.mark.parametrize(
    ("command", "setting", "on_slurm"),
    [
        ("train", "cluster.partition=gpu", "corolla submit cluster=NAME"),
        ("train", "+cluster.env.NCCL_DEBUG=INFO", "corolla submit cluster=NAME"),
        ("train", "cluster.nodes=2", "corolla submit cluster=NAME"),
        ("pipeline", "cluster.time_limit_min=5", "corolla pipeline cluster=NAME"),
    ],
)
def test_slurm_settings_are_refused_where_the_job_runs_on_this_machine(
    capsys, command: str, setting: str, on_slurm: str
) -> None:
    """A local run takes its world size from the layout and its environment from the command's, and asks Slurm for
    nothing: these were dropped without a word. The hardware, which plans the run, is still taken."""
    code, _, err = run(capsys, command, setting, "--cfg")
    assert code == 2 and err == (
        f"corolla: error: {setting}: corolla {command} on cluster.scheduler=local runs here, where Slurm's settings "
        f"do nothing: drop it, or run on a Slurm cluster ({on_slurm})"
    )
    code, out, _ = run(capsys, command, "cluster.gpus_per_node=8", "cluster.gpu_memory_gib=80", "--cfg")
    assert code == 0 and "gpu_memory_gib: 80" in out and "gpus_per_node: 8" in out
    code, out, _ = run(capsys, command, "cluster=testcluster", setting, "--cfg")
    assert code == 0


def test_the_cluster_settings_read_here_are_the_schemas() -> None:
    """What a local run reads is listed, and the rest of the schema is Slurm's (refused here): a name listed that the
    schema lacks (a typo, a setting renamed) would leave the setting it meant refused."""
    assert set(READ_HERE) <= {setting.name for setting in fields(ClusterConfig)}


SWEEP = ["submit", "--multirun", "--dry-run", "cluster=testcluster", "parallel=3d"]


def swept_run_dirs(out: str) -> list[str]:
    """The run directory of each point a sweep's dry run printed the sbatch script of, in order."""
    outputs = [line.split("=", 1)[1] for line in out.splitlines() if line.startswith("#SBATCH --output=")]
    return [output.removesuffix("/slurm/%j_0_log.out") for output in outputs]


def test_a_sweep_over_a_groups_options_by_glob_runs_each_one(capsys, tmp_path: Path) -> None:
    """glob() picks among a group's options, which Hydra reads from conf/: the sweep ended in Hydra's traceback."""
    code, out, err = run(capsys, *SWEEP, "model=glob(*,exclude=[bloom-1*,bloom-3b,bloom-7b1])", f"run_dir={tmp_path}")
    assert code == 0, err
    assert swept_run_dirs(out) == [f"{tmp_path}/model=bloom-560m", f"{tmp_path}/model=bloom-tiny"]


def test_an_interval_sweep_is_refused_with_the_values_to_give(capsys) -> None:
    code, _, err = run(capsys, *SWEEP, "train.lr=interval(0.0001,0.001)")
    assert code == 2 and err == (
        "corolla: error: train.lr=interval(0.0001,0.001): an interval is for a sweeper that draws values, and corolla "
        "runs every point of a sweep: list them, train.lr=a,b,c or train.lr=range(start,stop,step)"
    )


NO_GLOB_MATCH = (
    "glob() picks among a group's options: give a pattern that matches some (model=glob(bloom-*): conf/model/)"
)


@pytest.mark.parametrize(
    ("sweep", "fix"),
    [
        ("train.steps=range(5,1)", "give a range() whose start comes before its stop, in the direction of its step"),
        ("model=glob(gpt-*)", NO_GLOB_MATCH),
        ("train.lr=glob(*)", NO_GLOB_MATCH),
    ],
)
def test_a_sweep_of_no_value_is_refused_rather_than_running_nothing(capsys, sweep: str, fix: str) -> None:
    """It printed nothing and ended with 0, as if every point had been submitted."""
    code, out, err = run(capsys, *SWEEP, sweep)
    assert code == 2 and not out
    assert err == f"corolla: error: {sweep} gives no value, so the sweep would run nothing: {fix}"


@pytest.mark.parametrize(
    ("sweep", "problem"),
    [
        (
            ["train.lr=1e-3,0.001"],
            "the sweep gives train.lr=0.001 twice, two jobs for one run directory: give each value once (1e-3 and "
            "0.001 are one number)",
        ),
        (["seed=1,2,1"], "the sweep gives seed=1 twice, two jobs for one run directory: give each value once"),
        (
            ["data.tokens_dir=tokens/fr,tokens_fr"],
            "data.tokens_dir=tokens/fr and data.tokens_dir=tokens_fr would train one run directory, as '/' in a run "
            "directory's name is written '_': sweep them apart, each with a run_dir of its own",
        ),
    ],
)
def test_two_points_of_a_sweep_in_one_run_directory_are_refused(capsys, sweep: list[str], problem: str) -> None:
    """Both points were checked and printed with the one run directory; submitted, the second either failed on the
    first's job or resumed the first's checkpoints as its own."""
    code, out, err = run(capsys, *SWEEP, *sweep)
    assert code == 2 and not out and err == f"corolla: error: {problem}"


def test_a_sweeps_cfg_prints_each_points_config_and_submits_nothing(capsys, tmp_path: Path) -> None:
    """--cfg was passed over with --multirun: the sweep was submitted (here refused: cluster=local is not Slurm's)."""
    code, out, err = run(capsys, "submit", "--multirun", "--cfg", "train.lr=3e-4,1e-3", f"run_dir={tmp_path}")
    assert code == 0, err
    points = list(yaml.safe_load_all(out))
    assert [(point["train"]["lr"], point["run_dir"]) for point in points] == [
        (0.0003, f"{tmp_path}/train.lr=0.0003"),
        (0.001, f"{tmp_path}/train.lr=0.001"),
    ]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("command", "sweep"),
    [
        ("train", " or sweep it on Slurm with `corolla submit --multirun`"),
        ("submit", " or sweep it with `corolla submit --multirun`"),
        ("plan", ""),
        ("pipeline", ""),
    ],
)
def test_a_comma_is_shown_a_sweep_only_by_a_command_whose_jobs_sweep(capsys, command: str, sweep: str) -> None:
    """Every command was told to sweep with `corolla submit --multirun`: followed from `corolla plan`, it submitted
    training jobs where the user wanted plans."""
    code, _, err = run(capsys, command, "train.global_batch=512,1024", "--cfg")
    forms = "a list train.global_batch=[512,1024]" + (", a string" if sweep else " or a string")
    assert code == 2 and err == (
        f"corolla: error: train.global_batch=512,1024 holds a comma: give {forms} train.global_batch='512,1024'{sweep}"
    )


def test_a_sweep_typed_in_another_order_names_the_same_run_directories(capsys, tmp_path: Path) -> None:
    """The names followed the command line's order: the same sweep run again with its keys the other way round
    started every point anew in new directories, rather than resuming them."""
    run_dirs = []
    for sweep in (["train.lr=1e-3,3e-4", "seed=1,2"], ["seed=2,1", "train.lr=3e-4,1e-3"]):
        code, out, err = run(capsys, *SWEEP, *sweep, f"run_dir={tmp_path}")
        assert code == 0, err
        run_dirs.append(sorted(swept_run_dirs(out)))
    assert (
        run_dirs[0]
        == run_dirs[1]
        == [
            f"{tmp_path}/{name}"
            for name in (
                "seed=1,train.lr=0.0003",
                "seed=1,train.lr=0.001",
                "seed=2,train.lr=0.0003",
                "seed=2,train.lr=0.001",
            )
        ]
    )
    # A point an older corolla named in the command line's order resumes there.
    (tmp_path / "train.lr=0.001,seed=2").mkdir()
    code, out, err = run(capsys, *SWEEP, "train.lr=1e-3,3e-4", "seed=1,2", f"run_dir={tmp_path}")
    assert code == 0, err
    assert f"{tmp_path}/train.lr=0.001,seed=2" in swept_run_dirs(out)
    assert f"{tmp_path}/seed=2,train.lr=0.001" not in swept_run_dirs(out)
