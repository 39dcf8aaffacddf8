"""A relaunch on a run directory that holds checkpoints resumes them as what they are, or is refused in one line
before any file of the run directory changes: token files of another tokenizer, an init_from other than the one the
run started from, another model shape, other held-out documents. The same command again (a requeue) still resumes,
init_from runs included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_training import SHORT_RUN

from conftest import SHARED_DATA, byte_level_bpe, cut_corpus
from launch.cli import main
from launch.config.job_file import read_job
from launch.data.corpus import TokenCorpus
from launch.jobs.local import run_ranks
from launch.jobs.monitor import describe_event
from launch.plan.run_plan import read_plans
from launch.rundir.history import Event, RunHistory
from launch.rundir.run_record import recorded_run
from tokenizer.added_pieces import ADDED_PIECES_FIX
from tokenizer.loading import load_tokenizer

RUN = [*SHORT_RUN, "train.steps=1", "train.eval_interval=0"]


def train(*overrides: str) -> int:
    return main(["train", "data.tokens_dir=tokens", *RUN, *overrides])


@pytest.fixture(scope="module")
def trained(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding token files (a copy of `tokens`) and `run`, trained on them for a step; both named
    relative to the directory, so that a copy of it is a run with data of its own."""
    root = tmp_path_factory.mktemp("relaunch")
    shutil.copytree(tokens, root / "tokens")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert train("run_dir=run") == 0
    return root


@pytest.fixture
def workspace(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of `trained`, the working directory of the test; its run names the copy's token files (job.yaml holds
    them by an absolute path)."""
    copy = shutil.copytree(trained, tmp_path / "workspace")
    job = copy / "run" / "job.yaml"
    job.write_text(job.read_text().replace(str(trained), str(copy)))
    monkeypatch.chdir(copy)
    return copy


@pytest.fixture(scope="module")
def other_tokenizer(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE trained on the same corpus: another tokenizer than that of `tokens`."""
    corpus = tokens.parent / "corpus"
    texts = [line for path in sorted(corpus.glob("*.txt")) for line in path.read_text(encoding="utf-8").splitlines()]
    return byte_level_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json", texts)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run directory and its bytes (job.yaml, plan, history, checkpoints, MLflow's store...)."""
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}


def refused(capsys: pytest.CaptureFixture, run_dir: Path, *arguments: str) -> str:
    """The one line a `corolla train` on `run_dir` to a step it has not reached is refused with; the run directory
    is left as it was."""
    before = snapshot(run_dir)
    capsys.readouterr()
    assert main(["train", f"run_dir={run_dir}", *RUN, "train.steps=3", *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("corolla: error: ") and err.count("\n") == 1, err
    assert snapshot(run_dir) == before
    return err


def fingerprint(tokens_dir: Path) -> str:
    return TokenCorpus(tokens_dir, 0).tokenizer_fingerprint


def test_token_files_of_another_tokenizer_are_refused_whether_re_encoded_in_place_or_elsewhere(
    capsys, workspace: Path, other_tokenizer: Path, tokens: Path
) -> None:
    ours, corpus = fingerprint(workspace / "tokens"), tokens.parent / "corpus"
    encode = ["tokenizer", "encode", f"tokenizer={other_tokenizer}", f"corpus={corpus}", "workers=1"]
    assert main([*encode, "output_dir=elsewhere"]) == 0
    theirs = fingerprint(workspace / "elsewhere")
    err = refused(capsys, Path("run"), "data.tokens_dir=elsewhere")
    assert (
        f"run_dir=run was trained on token files of tokenizer {ours[:8]}, those in elsewhere were encoded with "
        f"{theirs[:8]}: use the run's data (data.tokens_dir={workspace / 'tokens'}) or start a new run_dir"
    ) in err
    # Its tokenizer with the corpus, encoded into the cache: the same refusal.
    cache = f"data.cache_dir={workspace / 'cache'}"
    arguments = [f"data.tokenizer_dir={other_tokenizer.parent}", f"data.corpus={corpus}", cache, "data.tokens_dir=null"]
    ours_given = f"use the run's data (data.tokens_dir={workspace / 'tokens'})"
    assert ours_given in refused(capsys, Path("run"), *arguments)
    assert ours_given in refused(capsys, Path("run"), "--dry-run", *arguments)
    # The run's own token files encoded again, in place, with the other tokenizer.
    assert main([*encode, "output_dir=tokens", "overwrite=true"]) == 0
    err = refused(capsys, Path("run"), "data.tokens_dir=tokens")
    assert (
        f"encoded with {theirs[:8]}: they were encoded again in place: encode tokens again with the run's tokenizer "
        f"({ours[:8]}) and overwrite=true where it still exists, or train them in a new run_dir"
    ) in err


def test_a_start_without_a_launch_refuses_the_runs_token_files_encoded_again_since(
    capsys, workspace: Path, other_tokenizer: Path, tokens: Path
) -> None:
    """As a requeued Slurm job starts: the ranks alone, on what the launch wrote, no launch to check the data. A start
    on the run's token files encoded again in place (by hand, or by a data cache another run shares) ends at once, its
    checkpoints untouched, and exits 2, which a Slurm task does not requeue."""
    ours = fingerprint(workspace / "tokens")
    encode = ["tokenizer", "encode", f"tokenizer={other_tokenizer}", f"corpus={tokens.parent / 'corpus'}", "workers=1"]
    assert main([*encode, "output_dir=tokens", "overwrite=true"]) == 0
    run_dir = workspace / "run"
    checkpoints = snapshot(run_dir / "checkpoints")
    end = run_ranks(run_dir, read_plans(run_dir)[0].world_size)
    assert end.status != 0 and end.cause is not None
    assert f"run_dir={run_dir} was trained on token files of tokenizer {ours[:8]}" in end.cause, end.cause
    assert f"they were encoded again in place: encode {workspace / 'tokens'} again" in end.cause
    assert "failed (exitcode: 2) local_rank: 0" in capsys.readouterr().err  # torchrun's log line of the rank
    assert snapshot(run_dir / "checkpoints") == checkpoints
    refusal = RunHistory(run_dir).events()[-1]  # what keeps a Slurm job from requeueing it, whatever srun's status
    assert refusal["event"] == Event.refused and refusal["reason"] in end.cause
    assert describe_event(refusal) == f"refused   {refusal['reason']}"


def test_an_export_ships_the_tokenizer_the_checkpoints_learnt_whatever_the_token_files_now_hold(
    capsys, workspace: Path, other_tokenizer: Path, tokens: Path
) -> None:
    """The token files encoded again in place with another tokenizer (by hand, or by a second pipeline on the same
    run_dir), or purged: the run keeps its own tokenizer, which an export ships with its weights. A run of an older
    corolla keeps none: its export refuses the other tokenizer, whose ids mean other pieces."""
    ours = fingerprint(workspace / "tokens")
    encode = ["tokenizer", "encode", f"tokenizer={other_tokenizer}", f"corpus={tokens.parent / 'corpus'}", "workers=1"]
    assert main([*encode, "output_dir=tokens", "overwrite=true"]) == 0
    assert main(["export", "hf", "run_dir=run", "output_dir=hf"]) == 0
    assert load_tokenizer(Path("hf")).fingerprint == ours != fingerprint(workspace / "tokens")
    shutil.rmtree("tokens")
    assert main(["export", "hf", "run_dir=run", "output_dir=hf", "overwrite=true"]) == 0

    assert main([*encode, "output_dir=tokens"]) == 0
    shutil.rmtree("run/tokenizer")  # as an older corolla left it
    capsys.readouterr()
    assert main(["export", "hf", "run_dir=run", "output_dir=hf2"]) == 2
    theirs = fingerprint(workspace / "tokens")
    assert capsys.readouterr().err.strip() == (
        f"corolla: error: run was trained on tokenizer {ours[:8]}, but {other_tokenizer.parent} now holds tokenizer "
        f"{theirs[:8]} (trained again since): its weights do not go with it; put the run's tokenizer back there, or "
        "use a run trained on this one"
    )
    assert not Path("hf2").exists()


def test_a_run_of_an_older_corolla_without_the_record_resumes_and_a_launch_records_it(workspace: Path) -> None:
    history = workspace / "run" / "history.jsonl"
    events = [json.loads(line) for line in history.read_text().splitlines()]
    assert [event["tokenizer_fingerprint"] for event in events if event["event"] == "launch"] == [
        fingerprint(workspace / "tokens")
    ]
    for event in events:
        event.pop("tokenizer_fingerprint", None)
    history.write_text("".join(json.dumps(event) + "\n" for event in events))
    # What a resume may change: the steps, the sequence length and the dropout.
    assert train("run_dir=run", "train.steps=2", "model.seq_length=16", "model.hidden_dropout=0.1") == 0
    assert RunHistory(workspace / "run").starts()[-1]["resumed_from_step"] == 1
    launches = [event for event in RunHistory(workspace / "run").events() if event["event"] == "launch"]
    assert launches[-1]["tokenizer_fingerprint"] == fingerprint(workspace / "tokens")


def test_a_relaunch_that_changes_settings_says_which_and_records_them(capsys, workspace: Path) -> None:
    """A resume may change the data's seed or blend, the sequence length, the steps: each reorders or extends what the
    checkpoints train on from there, so it is said, recorded in the history and tagged on the MLflow run (whose
    params stay the first launch's). The same command again changes nothing and says nothing."""
    capsys.readouterr()
    relaunch = ["run_dir=run", "train.steps=2", "data.seed=7", "model.seq_length=16"]
    assert main(["train", "--dry-run", "data.tokens_dir=tokens", *RUN, *relaunch]) == 0
    said = "run_dir=run would resume step 1 with settings changed since its last launch: "
    assert said in capsys.readouterr().out
    assert train(*relaunch) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "with settings changed" in line)
    assert line == (
        "run_dir=run resumes step 1 with settings changed since its last launch: model.seq_length 32 -> 16, "
        "data.seed 1234 -> 7, train.steps 1 -> 2 (the launch records them in history.jsonl)"
    )
    launch = RunHistory(workspace / "run").launches()[-1]
    assert launch["changed"] == {
        "model.seq_length": ["32", "16"],
        "train.steps": ["1", "2"],
        "data.seed": ["1234", "7"],
    }
    tracked = recorded_run(workspace / "run")
    run = MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).data
    assert run.tags["corolla.changed_at_launch.2"] == line.split(": ", 1)[1].split(" (")[0]
    assert run.params["data.seed"] == "1234"
    stopped_early = [*relaunch, "train.steps=6", "train.exit_after=1", "+data.weights.eng_Latn=1"]
    assert train(*stopped_early) == 0
    said = "with settings changed since its last launch: data.weights.eng_Latn unset -> 1.0, train.steps 2 -> 6, "
    assert said in capsys.readouterr().out
    # A language's weight dropped is a change too (the blend goes back to data.alpha).
    stopped_early.remove("+data.weights.eng_Latn=1")
    assert train(*stopped_early) == 0
    assert "since its last launch: data.weights.eng_Latn 1.0 -> unset (" in capsys.readouterr().out
    assert train(*stopped_early) == 0
    assert "with settings changed" not in capsys.readouterr().out
    launches = RunHistory(workspace / "run").launches()
    assert len(launches) == 5 and "changed" not in launches[-1]


def test_token_files_of_an_older_corolla_a_pair_per_language_are_refused_with_the_encode_that_rewrites_them(
    capsys, workspace: Path
) -> None:
    """Before manifest format 2, encode wrote one `<lang>.bin` / `<lang>.idx` pair per language, listed under `files`:
    the refusal names the format and the fix, not 'a manifest corolla did not write'."""
    tokens = workspace / "tokens"
    manifest = json.loads((tokens / "manifest.json").read_text())
    for language, entry in manifest["languages"].items():
        (shard,) = entry.pop("shards")
        for suffix in (".bin", ".idx"):
            (tokens / f"{shard['file']}{suffix}").rename(tokens / f"{language}{suffix}")
        entry |= {"files": [f"{language}.bin", f"{language}.idx"], "sources": [shard["source"]]}
    (tokens / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    err = refused(capsys, workspace / "run", "data.tokens_dir=tokens")
    assert err.endswith(
        "manifest.json has format version 1, this corolla reads 2: re-run `corolla tokenizer encode` into the same "
        "output_dir, which rewrites it\n"
    )


def test_a_job_yaml_of_an_older_corolla_whose_data_weights_are_null_resumes_with_no_change_said(
    capsys, workspace: Path
) -> None:
    """A corolla before per-language weights wrote `data.weights: null` for none: the blend the relaunch keeps."""
    job = workspace / "run" / "job.yaml"
    written = yaml.safe_load(job.read_text())
    written["data"]["weights"] = None
    job.write_text(yaml.safe_dump(written))
    capsys.readouterr()
    assert train("run_dir=run", "train.steps=2") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "with settings changed" in line)
    assert line.endswith("since its last launch: train.steps 1 -> 2 (the launch records them in history.jsonl)")
    assert RunHistory(workspace / "run").launches()[-1]["changed"] == {"train.steps": ["1", "2"]}


def test_status_shows_the_layout_of_a_plan_an_older_corolla_wrote(capsys, workspace: Path) -> None:
    """Before 747c4d5 a plan had no validation_samples: the ranks of this corolla refuse it (a launch plans anew), but
    the run may still be training under the older one, and its layout is there to show."""
    plan = workspace / "run" / "plan.json"
    records = json.loads(plan.read_text())["plans"]
    older = [{key: record[key] for key in ("world_size", "layout", "zero_stage", "stage_bounds")} for record in records]
    plan.write_text(json.dumps({"plans": older}))
    capsys.readouterr()
    assert main(["status", "run"]) == 0
    assert "model      bloom-tiny, TP 1 x PP 1 x DP 1, 8 sequences x 32 tokens a step\n" in capsys.readouterr().out


def test_init_from_is_refused_on_a_run_with_checkpoints_of_its_own_and_the_same_init_from_resumes(
    capsys, workspace: Path, trained: Path
) -> None:
    err = refused(capsys, Path("run"), "data.tokens_dir=tokens", f"init_from={trained / 'run'}")
    assert (
        "run_dir=run already holds checkpoint step 1 of its own: init_from starts a new run, give a new run_dir; "
        "to continue run drop init_from"
    ) in err

    # A run started from `run`'s weights, stopped after a step as a preemption stops it; meanwhile `run` trains on.
    continued = ["run_dir=continued", "init_from=run", "train.steps=2", "train.exit_after=1"]
    assert train(*continued) == 0
    started_from = read_job(workspace / "continued" / "job.yaml").init_from
    assert started_from == str((workspace / "run" / "checkpoints" / "step-00000001").resolve())
    assert train("run_dir=run", "train.steps=2") == 0
    # Another init_from is refused ...
    err = refused(capsys, Path("continued"), "data.tokens_dir=tokens", f"init_from={trained / 'run'}")
    assert f"to continue continued give the init_from it started from ({(workspace / 'run').resolve()})" in err
    # ... the same command again resumes, from its own checkpoint, and still says where it started.
    assert train(*continued) == 0
    assert RunHistory(workspace / "continued").starts()[-1]["resumed_from_step"] == 1
    assert read_job(workspace / "continued" / "job.yaml").init_from == started_from
    # Without it, the relaunch would train the weights as the job's own model: it is asked for.
    err = refused(capsys, Path("continued"), "data.tokens_dir=tokens")
    source = (workspace / "run").resolve()
    assert f"run_dir=continued started from init_from={source}, whose model it trains: give it again" in err


def test_an_init_from_run_whose_vocabulary_grew_resumes(workspace: Path, tokens: Path, capsys) -> None:
    """Its data's tokenizer extends that of the weights (`corolla tokenizer extend`): neither its vocabulary nor its
    tokenizer is the weights', and a relaunch resumes all the same."""
    corpus = cut_corpus(workspace / "corpus", ["eng_Latn", "ell_Grek", "amh_Ethi"], 300)
    extend = ["tokenizer", "extend", f"base={tokens.parent / 'tokenizer'}", f"corpus={corpus}", "output_dir=extended"]
    extend += ["languages=[ell_Grek,amh_Ethi]", "added_pieces=1000", "tokenizer=tiny"]
    assert main([*extend, f"tokenizer.parity_set={SHARED_DATA / 'parallel-dev'}"]) == 0
    grown = ["run_dir=grown", "init_from=run", "data.tokenizer_dir=extended", f"data.corpus={corpus}"]
    grown += ["data.tokens_dir=null", "data.cache_dir=cache", "train.steps=2", "train.exit_after=1"]
    # Its record of the base damaged: named, with the fix, before anything is written.
    record = workspace / "extended" / "added_pieces.json"
    kept = record.read_text()
    record.write_text('{"decompositions": {}}')
    err = refused(capsys, Path("grown"), *grown[1:])
    said = f"{record.relative_to(workspace)} is not the record of an extension corolla wrote: {ADDED_PIECES_FIX}"
    assert err == f"corolla: error: {said}\n"
    record.write_text(kept)
    assert train(*grown) == 0
    assert read_job(workspace / "grown" / "job.yaml").model.vocab_size > 2000
    assert train(*grown) == 0
    assert RunHistory(workspace / "grown").starts()[-1]["resumed_from_step"] == 1


def test_another_model_shape_is_refused_before_job_yaml_changes(capsys, workspace: Path) -> None:
    err = refused(capsys, Path("run"), "data.tokens_dir=tokens", "model.hidden_size=128")
    assert "run_dir=run holds checkpoints of model.hidden_size=64, this job has model.hidden_size=128: use the " in err
    err = refused(capsys, Path("run"), "data.tokens_dir=tokens", "model.num_layers=3", "model.num_heads=8")
    assert "holds checkpoints of model.num_layers=2 model.num_heads=4, this job has model.num_layers=3 " in err
    # A dry run says so too.
    assert "this job has model.hidden_size=128" in refused(capsys, Path("run"), "--dry-run", "model.hidden_size=128")


def test_another_number_of_held_out_documents_is_refused(capsys, workspace: Path) -> None:
    """Fewer would train the run on documents it validated on, more validate it on documents it trained on."""
    for held_out in (5, 80):
        err = refused(capsys, Path("run"), "data.tokens_dir=tokens", f"data.validation_documents={held_out}")
        assert (
            "run_dir=run held out the last 50 documents of each language for validation (data.validation_documents=50)"
            f", this job {held_out}: " in err
        )
    assert "data.validation_documents=50)" in refused(capsys, Path("run"), "--dry-run", "data.validation_documents=5")
    assert train("run_dir=run", "train.steps=2", "data.validation_documents=50") == 0
