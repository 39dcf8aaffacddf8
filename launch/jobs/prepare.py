"""Everything before a run's first process starts, for both backends: the whole job validated, its data prepared
(launch/data/prepare.py) and planned for every world size it may get (launch/plan/run_plan.py), and its run
directory written (job.yaml, plan.json, the history's launch, the MLflow run). Nothing is written until the job has
passed every check; a dry run writes nothing and builds no data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from launch.config.data import DataConfig
from launch.config.job_file import job_yaml
from launch.config.schemas import ImportJob, TrainJob
from launch.data.corpus import TokenCorpus
from launch.data.prepare import inspect_data, prepare_data
from launch.plan.run_plan import RunPlan, check_layouts, make_plans, validation_shortfall, write_plans
from launch.plan.weights import Weights, is_hf_directory, weights_of
from launch.rundir import outbox, tracking
from launch.rundir.files import IMPORT_FILE, JOB_FILE, RUN_FILE, STOP_FILE
from launch.rundir.history import RunHistory
from launch.rundir.tracking_state import TrackingState, write_state
from tokenizer.files import ADDED_PIECES_FILE, write_atomically
from tokenizer.loading import load_tokenizer
from tokenizer.train import METADATA_FILE


@dataclass(frozen=True)
class PreparedRun:
    job: TrainJob  # with its token files and the tokenizer's vocabulary filled in
    plans: list[RunPlan]  # the configured node count's first
    run_dir: Path
    tracked: tracking.TrackedRun | None  # None for a dry run

    @property
    def plan(self) -> RunPlan:
        return self.plans[0]


def prepare_run(job: TrainJob, dry_run: bool = False) -> PreparedRun:
    """Validates the job (a one-line ValueError otherwise); unless a dry run, writes its run directory and opens (or
    continues) its MLflow run."""
    run_dir = Path(job.run_dir)
    if (run_dir / IMPORT_FILE).is_file():
        raise ValueError(
            f"run_dir={run_dir} holds a model imported from Hugging Face: train from it in a new run directory, "
            f"with init_from={run_dir} run_dir=NEW"
        )
    new_run = not (run_dir / RUN_FILE).is_file()
    if job.tracking.uri and new_run:  # a run already open waits for a server that is away (launch/rundir/outbox.py)
        tracking.check_reachable(job.tracking.uri)
    job, start = initial_weights(job, dry_run)
    check_layouts(job)  # before the data, which may take minutes to build
    job, data = inspect_data(job) if dry_run else prepare_data(job)
    if start:
        data = replace(data, grown_from_vocab=start.grown_from_vocab)
    plans = make_plans(job, data)
    if shortfall := validation_shortfall(plans, job):
        print(shortfall)
    if dry_run:
        return PreparedRun(job, plans, run_dir, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / STOP_FILE).exists():
        (run_dir / STOP_FILE).unlink()
        print(f"removed {run_dir / STOP_FILE}, which stopped the previous launch")
    write_atomically(run_dir / JOB_FILE, job_yaml(job))
    write_plans(run_dir, plans)
    history = RunHistory(run_dir)
    history.record("launch", cluster=job.cluster.name)
    tags = {"layout": plans[0].layout.name, "model": job.model.name, "cluster": job.cluster.name}
    if start:
        tags |= start.tags()
    tracked = tracking.open_run(run_dir, job.tracking.experiment, job, tags, job.tracking.uri)
    if new_run:
        write_state(run_dir, TrackingState(sent={}))
    artifacts = [run_dir / JOB_FILE]
    if data.tokenizer_dir and (Path(data.tokenizer_dir) / METADATA_FILE).is_file():
        artifacts.append(Path(data.tokenizer_dir) / METADATA_FILE)
    launches = str(len([event for event in history.events() if event["event"] == "launch"]))
    outbox.update(run_dir, {"corolla.launches": launches}, "RUNNING", artifacts)
    return PreparedRun(job, plans, run_dir, tracked)


def _imported(source: Path, job: TrainJob, dry_run: bool) -> Path:
    """A Hugging Face directory's import, in the cache (made once, reused while its files are unchanged)."""
    from launch.train.import_hf import import_hf_model  # torch: only where an import is asked for

    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    target = Path(job.data.cache_dir) / "imports" / f"{source.resolve().name}-{key}"
    if not dry_run:
        import_hf_model(ImportJob(str(source), str(target)))
    return target


@dataclass(frozen=True)
class StartingWeights:
    weights: Weights
    grown_from_vocab: int  # the data's tokenizer extends the weights': the embedding grows from their vocabulary

    def tags(self) -> dict[str, str]:
        weights = self.weights
        tags = {
            "corolla.init_from": str(weights.imported_from or weights.run_dir),
            "corolla.init_step": str(weights.step),
        }
        if self.grown_from_vocab:
            tags["corolla.init_vocab_grown_from"] = str(self.grown_from_vocab)
        return tags


def _source_weights(job: TrainJob, dry_run: bool) -> Weights:
    source = Path(job.init_from)
    if not is_hf_directory(source):
        return weights_of(source)
    target = _imported(source, job, dry_run)
    if dry_run and not target.is_dir():  # not imported yet, and a dry run imports nothing: its config says enough
        from launch.train.import_hf import read_hf_model

        return Weights(target, 0, read_hf_model(source), source, str(source))
    return weights_of(target)


def initial_weights(job: TrainJob, dry_run: bool = False) -> tuple[TrainJob, StartingWeights | None]:
    """With init_from: the job with the weights' model shape (its sequence length, kernels and dropout stay the
    job's) and, unless data.tokens_dir or data.tokenizer_dir says otherwise, their tokenizer for data.corpus; the
    weights' checkpoint becomes init_from, which every rank reads. Data of a tokenizer that extends the weights'
    grows the vocabulary (the embedding padded for TP again)."""
    if not job.init_from:
        return job, None
    weights = _source_weights(job, dry_run)
    data = job.data
    if data.tokens_dir is None and data.tokenizer_dir is None:
        data = replace(data, tokenizer_dir=str(weights.tokenizer_dir))
    grown_from, vocab_size = _vocabulary_growth(weights, data)
    kept = job.model
    model = replace(
        weights.model,
        seq_length=kept.seq_length,
        attention=kept.attention,
        compile=kept.compile,
        hidden_dropout=kept.hidden_dropout,
        attention_dropout=kept.attention_dropout,
    )
    if grown_from:
        model = replace(model, vocab_size=vocab_size, embedding_rows=0)
    job = replace(job, model=model, data=data, init_from=str(weights.checkpoint.resolve()))
    return job, StartingWeights(weights, grown_from)


def _vocabulary_growth(weights: Weights, data: DataConfig) -> tuple[int, int]:
    """(the weights' vocabulary, the data's) when the data's tokenizer extends the weights' (`corolla tokenizer
    extend`); (0, 0) when it is theirs; a one-line ValueError for another one, whose ids mean other text."""
    ours = load_tokenizer(weights.tokenizer_dir)
    if data.tokens_dir:
        corpus = TokenCorpus(data.tokens_dir, data.validation_documents)
        fingerprint, vocab_size, tokenizer_dir = corpus.tokenizer_fingerprint, corpus.vocab_size, corpus.tokenizer_dir
        used = f"the token files in {data.tokens_dir} were encoded"
    else:
        theirs, tokenizer_dir = load_tokenizer(data.tokenizer_dir), Path(data.tokenizer_dir)
        fingerprint, vocab_size, used = theirs.fingerprint, theirs.vocab_size, f"data.tokenizer_dir={tokenizer_dir} is"
    if fingerprint == ours.fingerprint:
        return 0, 0
    added = tokenizer_dir / ADDED_PIECES_FILE
    if added.is_file() and json.loads(added.read_text())["base_fingerprint"] == ours.fingerprint:
        return ours.vocab_size, vocab_size
    raise ValueError(
        f"{used} with another tokenizer than that of init_from's weights ({ours.path}), and not one extended from "
        "it: encode data.corpus with it (drop data.tokens_dir and data.tokenizer_dir), or with its extension"
    )
