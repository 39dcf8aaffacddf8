"""Everything before a run's first process starts, for both backends: the whole job validated, its data prepared
(launch/data/prepare.py) and planned for every world size it may get (launch/plan/run_plan.py), and its run
directory written (job.yaml, plan.json, the history's launch, the MLflow run). Nothing is written until the job has
passed every check; a dry run writes nothing and builds no data.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from contextlib import nullcontext, redirect_stdout
from dataclasses import dataclass, fields, replace
from pathlib import Path

from launch.config.data import DataConfig
from launch.config.job_file import changed_settings, changes_text, job_settings, job_yaml, read_job
from launch.config.schemas import JOB_MODEL_SETTINGS, ImportJob, TrainJob
from launch.data.corpus import TokenCorpus
from launch.data.facts import DataFacts, TokenizerChanged
from launch.data.prepare import inspect_data, prepare_data
from launch.plan.hardware import bytes_text
from launch.plan.layout import ParallelLayout
from launch.plan.report import check_time_to_train, checkpoint_bytes, signal_shortfall
from launch.plan.run_plan import RunPlan, check_layouts, make_plans, validation_shortfall, write_plans
from launch.plan.weights import (
    Weights,
    checkpoint_layout,
    embedding_rows_problem,
    import_record,
    is_hf_directory,
    weights_of,
)
from launch.rundir import outbox, tracking
from launch.rundir.checkpoints import check_not_lost, newest_intact
from launch.rundir.directory import check_not_imported, holds_runs, runs_in
from launch.rundir.files import CHECKPOINTS, HISTORY_FILE, JOB_FILE, LOSS_CHART, RUN_FILE, STOP_FILE, TOKENIZER_DIR
from launch.rundir.history import CHANGED_RECORD, MLFLOW_RUN_RECORD, TOKENIZER_RECORD, Event, RunHistory
from launch.rundir.lock import LiveJob, RunLocked, check_unheld
from launch.rundir.run_record import as_recorded, keep_private, masked_setting, record_run, recorded_uri, tracked_run
from launch.rundir.tracking_state import TrackingState, write_state
from model.config import ModelConfig
from tokenizer.added_pieces import AddedPieces
from tokenizer.files import (
    ADDED_PIECES_FILE,
    HF_CONFIG_FILES,
    HF_TOKENIZER_FILE,
    METADATA_FILE,
    SPM_MODEL_FILE,
    STAGED,
    publish,
    staging_area,
    tokenizer_file,
    write_atomically,
)
from tokenizer.loading import load_tokenizer

WEIGHTS_MODEL_SETTINGS = tuple(f.name for f in fields(ModelConfig) if f.name not in (*JOB_MODEL_SETTINGS, "name"))


@dataclass(frozen=True)
class PreparedRun:
    job: TrainJob  # with its token files and the tokenizer's vocabulary filled in
    plans: list[RunPlan]  # the configured node count's first
    run_dir: Path
    tracked: tracking.TrackedRun | None  # None for a dry run

    @property
    def plan(self) -> RunPlan:
        return self.plans[0]


def prepare_run(job: TrainJob, dry_run: bool = False, live_job: LiveJob = lambda run_dir: None) -> PreparedRun:
    """Validates the job (a one-line ValueError otherwise); unless a dry run, writes its run directory and opens (or
    continues) its MLflow run. `live_job`: a Slurm job queued or running in a run directory, if any (init_from's)."""
    run_dir = Path(job.run_dir)
    check_not_imported(run_dir)
    if runs := runs_in(run_dir):
        raise ValueError(
            f"run_dir={run_dir} {holds_runs(runs)} ({runs[0].name}...): give this run a directory of its own"
        )
    lost = None if (run_dir / RUN_FILE).is_file() else RunHistory(run_dir).mlflow_run()
    new_run = not (run_dir / RUN_FILE).is_file() and lost is None
    if job.tracking.uri and new_run:  # a run already open waits for a server that is away (launch/rundir/outbox.py)
        tracking.check_reachable(job.tracking.uri)
    saved = saved_run(run_dir)
    job, start = initial_weights(job, dry_run, None if saved else live_job, saved)
    job = matched_to(job, saved)  # before the data, which may take minutes to build; again with it
    check_layouts(job)
    job, data = inspect_data(job) if dry_run else prepare_data(job)
    job = matched_to(job, saved, data)
    if start:
        data = replace(data, grown_from_vocab=start.grown_from_vocab)
    plans = make_plans(job, data)
    _check_embedding_rows(plans, saved)
    layouts = [plan.layout for plan in plans]
    check_time_to_train(job, layouts)
    for warning in (validation_shortfall(plans, job), signal_shortfall(job, layouts), _disk_shortfall(job, layouts)):
        if warning:
            print(warning)
    changed = _changed_since(saved, job)
    if changed:
        print(_changes_line(saved, changed, dry_run))
    if dry_run:
        return PreparedRun(job, plans, run_dir, None)
    _keep_tokenizer(run_dir, data)
    _write_job(run_dir, job, plans, lost)
    tags = {"layout": plans[0].layout.name, "model": job.model.name, "cluster": job.cluster.name}
    if start:
        tags |= start.tags()
    tracked = tracking.open_run(run_dir, job.tracking.experiment, job, tags, job.tracking.uri)
    _record_launch(run_dir, job, data, tracked, changed, new_run)
    return PreparedRun(job, plans, run_dir, tracked)


def _disk_shortfall(job: TrainJob, layouts: list[ParallelLayout]) -> str | None:
    """A warning where the checkpoints' filesystem cannot hold train.keep_checkpoints of them and the one being saved
    (which goes before the oldest does): the run would end out of space at a later checkpoint, hours in."""
    directory = Path(job.run_dir) / CHECKPOINTS
    existing = next((path for path in (directory, *directory.parents) if path.exists()), None)
    if existing is None:  # a link to storage not mounted: the start says so
        return None
    size = max(checkpoint_bytes(job.model, layout) for layout in layouts)
    needed = (job.train.keep_checkpoints + 1) * size
    held = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()) if directory.is_dir() else 0
    room = shutil.disk_usage(existing).free + held
    if room >= needed:
        return None
    return (
        f"corolla: warning: the filesystem of {directory} has room for {bytes_text(room)} of checkpoints (what is "
        f"free, and the run's own), and the run needs about {bytes_text(needed)}: train.keep_checkpoints="
        f"{job.train.keep_checkpoints} of about {bytes_text(size)} each and the one being saved; it would end "
        "out of space at a later checkpoint: free some, lower train.keep_checkpoints, or link checkpoints/ to larger "
        "storage"
    )


def _changed_since(saved: SavedRun | None, job: TrainJob) -> dict[str, tuple[str, str]]:
    """The settings the job changes of those its run's checkpoints were trained with, (old, new) as text, secrets
    masked; none for a run without checkpoints."""
    if saved is None:
        return {}
    changed = changed_settings(saved.job, job).items()
    return {name: (masked_setting(name, old), masked_setting(name, new)) for name, (old, new) in changed}


def _write_job(run_dir: Path, job: TrainJob, plans: list[RunPlan], lost: object | None) -> None:
    """The run directory, with the job and its plans, the previous launch's STOP file removed and a run.json that
    went missing written back from the history (`lost`, its record there)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    keep_private(run_dir, job_settings(job) | recorded_uri(run_dir))
    if (run_dir / STOP_FILE).exists():
        (run_dir / STOP_FILE).unlink()
        print(f"removed {run_dir / STOP_FILE}, which stopped the previous launch")
    write_atomically(run_dir / JOB_FILE, job_yaml(job))
    write_plans(run_dir, plans)
    if lost is not None:
        _restore_run_record(run_dir, lost)


def _keep_tokenizer(run_dir: Path, data: DataFacts) -> None:
    """The run's tokenizer, copied into RUN_DIR/tokenizer/ under its usual name, where export and init_from find it
    once its token files are gone (a scratch filesystem's purge) or encoded again in place with another. Only the very
    tokenizer the token files were encoded with (their manifest's fingerprint) is copied: none of one trained again in
    place since."""
    kept, fingerprint = run_dir / TOKENIZER_DIR, data.tokenizer_fingerprint
    if data.tokenizer_dir is None or fingerprint is None or tokenizer_file(kept, fingerprint):
        return
    if (model := tokenizer_file(source := Path(data.tokenizer_dir), fingerprint)) is None:
        return
    with staging_area(kept) as area:
        staging = area / STAGED
        staging.mkdir()
        shutil.copy2(model, staging / (SPM_MODEL_FILE if model.suffix == ".model" else HF_TOKENIZER_FILE))
        for name in (*HF_CONFIG_FILES, METADATA_FILE):
            if (source / name).is_file():
                shutil.copy2(source / name, staging / name)
        publish(staging, kept, replace=True)


def _record_launch(
    run_dir: Path,
    job: TrainJob,
    data: DataFacts,
    tracked: tracking.TrackedRun,
    changed: dict[str, tuple[str, str]],
    new_run: bool,
) -> None:
    """The history's launch (its tokenizer, MLflow run and changed settings), and what MLflow is to be sent of it: the
    launch count, the changes, the job file and the tokenizer's metadata."""
    history = RunHistory(run_dir)
    records = {TOKENIZER_RECORD: data.tokenizer_fingerprint, MLFLOW_RUN_RECORD: as_recorded(run_dir, tracked)}
    if changed:
        records[CHANGED_RECORD] = {name: list(values) for name, values in changed.items()}
    history.record(Event.launch, cluster=job.cluster.name, **records)
    if new_run:
        write_state(run_dir, TrackingState(sent={}))
    artifacts = [run_dir / JOB_FILE]
    if data.tokenizer_dir and (Path(data.tokenizer_dir) / METADATA_FILE).is_file():
        artifacts.append(Path(data.tokenizer_dir) / METADATA_FILE)
    launch_count = str(len(history.launches()))
    launch_tags = {tracking.LAUNCHES_TAG: launch_count}
    if changed:  # MLflow keeps the params the run was created with: the tag says what later launches changed
        launch_tags[f"{tracking.CHANGED_TAG}.{launch_count}"] = changes_text(changed)[:5000]
    outbox.update(run_dir, launch_tags, "RUNNING", artifacts)


def _changes_line(saved: SavedRun, changed: dict[str, tuple[str, str]], dry_run: bool) -> str:
    """What a relaunch changes of the settings its checkpoints were trained with: said, never silent, as a changed
    blend, seed or sequence length reorders the samples from the resumed step on."""
    verb = "would resume" if dry_run else "resumes"
    return (
        f"run_dir={saved.run_dir} {verb} step {saved.step} with settings changed since its last launch: "
        f"{changes_text(changed)} (the launch records them in {HISTORY_FILE})"
    )


def _restore_run_record(run_dir: Path, record: object) -> None:
    """run.json gone (deleted, or left out of a copy) from a run whose launches recorded its MLflow run: written back,
    so that the run goes on in that MLflow run, not in a new one that would hold its steps twice."""
    tracked = tracked_run(run_dir, record, run_dir / HISTORY_FILE)
    record_run(run_dir, tracked)
    print(f"corolla: {run_dir / RUN_FILE} was missing: written back from {HISTORY_FILE} (MLflow run {tracked.run_id})")


@dataclass(frozen=True)
class SavedRun:
    """What a run directory's own checkpoints were trained as, which a relaunch on it must match."""

    run_dir: Path
    step: int  # its newest intact checkpoint's
    job: TrainJob  # as its job.yaml says
    tokenizer_fingerprint: str | None  # of its token files, as its launches recorded it (None: an older corolla's)


def check_launch(job: TrainJob, live_job: LiveJob = lambda run_dir: None, quiet: bool = True) -> None:
    """What a launch of `job` would refuse, said now (a pipeline's, before its data stages): its whole preparation as a
    dry run (`quiet`: its notes left to the launch); for a run trained to its end, that it is still the run's model."""
    saved = saved_run(Path(job.run_dir))
    if saved is not None and saved.step >= job.train.steps:
        if not job.init_from:  # init_from's model is the weights'
            matched_to(job, saved)
        return
    with redirect_stdout(io.StringIO()) if quiet else nullcontext():
        prepare_run(job, True, live_job)


def trained_to_the_end(job: TrainJob, step: int | None) -> str | None:
    """Where the run directory's newest checkpoint (`step`) is the job's last step, what says its launch has nothing
    to do, the job checked to be still this run's (another model is refused; init_from's is the weights'); None
    where it has steps left."""
    if not step or step < job.train.steps:
        return None
    if not job.init_from:
        matched_to(job, saved_run(Path(job.run_dir)))
    return f"{job.run_dir} is already trained to step {step} of {job.train.steps}: nothing to do"


def finish_the_end(run_dir: Path, step: int) -> None:
    """What the end of a run trained to `step`, its last, may have left undone (its disk full, MLflow away): the
    history's end (its ranks found no room to record it), the loss chart drawn if it is missing, MLflow sent the
    records and the end it lacks (a warning if it does not take them: `corolla tracking sync` sends them later)."""
    from launch.rundir.loss_chart import write_loss_chart  # matplotlib: only here

    history, status = RunHistory(run_dir), None
    if [event["event"] for event in history.events()[-1:]] != [Event.finished]:
        history.record(Event.finished, step=step)
        status = outbox.END_STATUS[Event.finished]  # over the FAILED told when the ranks could not record it
    if not (run_dir / LOSS_CHART).is_file():
        print(f"loss curve {write_loss_chart(run_dir, read_job(run_dir / JOB_FILE).model.vocab_size)}")
    try:
        outbox.sync(run_dir, status=status)
    except ValueError as error:  # kept for the next sync: the run itself has nothing left to do
        print(f"corolla: warning: {error}")


def saved_run(run_dir: Path) -> SavedRun | None:
    """None where run_dir holds no checkpoint of its own: a launch there starts afresh (or from init_from)."""
    step = newest_intact(run_dir / CHECKPOINTS, log=lambda line: None)  # the start names those it passes over
    check_not_lost(run_dir / CHECKPOINTS, step or 0)
    if not step or not (run_dir / JOB_FILE).is_file():
        return None
    return SavedRun(run_dir, step, read_job(run_dir / JOB_FILE), RunHistory(run_dir).tokenizer_fingerprint())


def matched_to(job: TrainJob, saved: SavedRun | None, data: DataFacts | None = None) -> TrainJob:
    """The job, checked against the run whose checkpoints it resumes, if any: a one-line ValueError where it would
    train them as something else (another init_from, tokenizer, model shape or held-out documents). What is not
    known before the data (its tokenizer, the vocabulary) is checked when the job is matched again with `data`."""
    if saved is None:
        return job
    job = _same_start(job, saved)
    if data is not None:
        _check_tokenizer(saved, data)
    _check_shape(job.model, saved)
    _check_held_out(job.data.validation_documents, saved)
    return job


def _same_start(job: TrainJob, saved: SavedRun) -> TrainJob:
    """A relaunch resumes the run's own checkpoint, so init_from may only name the weights the run started from
    (from the same source, whose latest checkpoint may have moved on since): the job keeps the one it started from."""
    started = Path(saved.job.init_from) if saved.job.init_from else None
    if not job.init_from:
        if started:
            raise ValueError(
                f"run_dir={saved.run_dir} started from init_from={_source(started)}, whose model it trains: give it "
                "again (the command that started the run) to resume it"
            )
        return job
    if started and _source(started) == _source(Path(job.init_from)):
        # The weights it started from, whatever the source's latest checkpoint has become since (another TP pads
        # the vocabulary to other rows).
        weights = {name: getattr(saved.job.model, name) for name in WEIGHTS_MODEL_SETTINGS}
        return replace(job, init_from=saved.job.init_from, model=replace(job.model, **weights))
    if started:
        fix = f"to continue {saved.run_dir} give the init_from it started from ({_source(started)})"
    else:
        fix = f"to continue {saved.run_dir} drop init_from"
    raise ValueError(
        f"run_dir={saved.run_dir} already holds checkpoint step {saved.step} of its own: init_from starts a new run, "
        f"give a new run_dir; {fix}"
    )


def _source(checkpoint: Path) -> Path:
    """Where the weights of a checkpoint init_from resolved to (Weights.checkpoint) come from: its run directory, or
    the Hugging Face directory an import of it was made from (whose import in the cache is made anew when its files
    change)."""
    run_dir = checkpoint.resolve().parent.parent
    record = import_record(run_dir)
    return Path(record["source"]["hf_dir"]) if record else run_dir


def _check_tokenizer(saved: SavedRun, data: DataFacts) -> None:
    """The run's checkpoints learnt what its token ids meant: other token files must mean the same (same
    tokenizer). Nothing to compare with in a run directory of an older corolla, which recorded nothing, nor in a dry
    run whose token files are not built yet."""
    fingerprint = data.tokenizer_fingerprint
    if saved.tokenizer_fingerprint and fingerprint and fingerprint != saved.tokenizer_fingerprint:
        raise TokenizerChanged(
            saved.run_dir, saved.tokenizer_fingerprint, data.tokens_dir, fingerprint, saved.job.data.tokens_dir
        )


def _check_shape(model: ModelConfig, saved: SavedRun) -> None:
    """The model's shape (what decides its weights; the settings a job keeps for itself aside) is the checkpoints'.
    A vocabulary of 0 is not known yet: it comes with the data."""
    names = [name for name in WEIGHTS_MODEL_SETTINGS if name != "vocab_size" or model.vocab_size]
    differ = [name for name in names if getattr(model, name) != getattr(saved.job.model, name)]
    if not differ:
        return
    theirs = " ".join(f"model.{name}={getattr(saved.job.model, name)}" for name in differ)
    ours = " ".join(f"model.{name}={getattr(model, name)}" for name in differ)
    raise ValueError(
        f"run_dir={saved.run_dir} holds checkpoints of {theirs}, this job has {ours}: use the run's model settings "
        "(and data) or a new run_dir"
    )


def _check_held_out(validation_documents: int, saved: SavedRun) -> None:
    """The documents held out for validation are the run's: fewer would train its checkpoints on documents it
    validated on, more would validate them on documents they trained on."""
    held_out = saved.job.data.validation_documents
    if validation_documents != held_out:
        raise ValueError(
            f"run_dir={saved.run_dir} held out the last {held_out} documents of each language for validation "
            f"(data.validation_documents={held_out}), this job {validation_documents}: fewer would train on documents "
            f"it validated on, more validate on documents it trained on; keep data.validation_documents={held_out} "
            "or use a new run_dir"
        )


def _check_embedding_rows(plans: list[RunPlan], saved: SavedRun | None) -> None:
    """The checkpoint a relaunch resumes holds the embedding padded for the TP it was saved with: every layout the
    job may start on must pad the vocabulary to as many rows, or its ranks would start only to fail as they load."""
    if saved is None or not saved.job.model.vocab_size:
        return
    saved_tp = checkpoint_layout(saved.run_dir / CHECKPOINTS, saved.step).tp
    rows = saved.job.model.padded_vocab_size(saved_tp)
    for plan in plans:
        if plan.padded_vocab_size != rows:
            problem = embedding_rows_problem(saved.job.model, rows, saved_tp, plan.layout.tp)
            raise ValueError(f"run_dir={saved.run_dir} resumes step {saved.step}: {problem}")


def _imported(source: Path, job: TrainJob, dry_run: bool) -> Path:
    """A Hugging Face directory's import, in the cache: made once for each content of its weight files (their stamp),
    and reused while they are unchanged. Imports of earlier contents stay, for the runs that started from them."""
    from launch.train.import_hf import import_hf_model, weights_stamp  # torch: only where an import is asked for

    identity = json.dumps([str(source.resolve()), weights_stamp(source)])
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
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


def _source_weights(job: TrainJob, dry_run: bool, saved: SavedRun | None) -> Weights:
    source = Path(job.init_from)
    if not is_hf_directory(source):
        return weights_of(source)
    if (resumed := _import_resumed_from(source, saved)) is not None:
        return resumed
    target = _imported(source, job, dry_run)
    if dry_run and not target.is_dir():  # not imported yet, and a dry run imports nothing: its config says enough
        from launch.train.import_hf import read_hf_model

        return Weights(target, 0, read_hf_model(source), source, str(source))
    return weights_of(target)


def _import_resumed_from(source: Path, saved: SavedRun | None) -> Weights | None:
    """The import of Hugging Face directory `source` that a run with checkpoints of its own started from, where it is
    still in the cache: a resume takes the model's shape and tokenizer from it, whatever the directory's files' times
    became since (copied without them, each launch imported the model again, a copy of its size each time)."""
    if saved is None or not saved.job.init_from:
        return None
    started = Path(saved.job.init_from)  # IMPORT/checkpoints/step-00000000
    if _source(started) != source.resolve():  # another source (refused as the job is matched), or an import purged
        return None
    return weights_of(started.resolve().parent.parent)


def _check_not_training(weights: Weights, live_job: LiveJob) -> None:
    """The checkpoint a new run starts from is read as its ranks start, seconds later (hours, for a job queued in
    Slurm): a run that still trains removes it meanwhile, as it saves newer ones."""
    try:
        check_unheld(weights.run_dir, live_job)
    except RunLocked as error:
        raise ValueError(
            f"init_from: {error}; its checkpoint of step {weights.step}, which this run would start from, goes as it "
            "saves newer ones"
        ) from None


def initial_weights(
    job: TrainJob, dry_run: bool = False, live_job: LiveJob | None = None, saved: SavedRun | None = None
) -> tuple[TrainJob, StartingWeights | None]:
    """With init_from: the job with the weights' model shape (its sequence length, kernels and dropout stay the
    job's) and, unless data.tokens_dir or data.tokenizer_dir says otherwise, their tokenizer for data.corpus; the
    weights' checkpoint becomes init_from, which every rank reads (`live_job` given: it must not be a run that trains
    on, which would remove it). Data of a tokenizer that extends the weights' grows the vocabulary (the embedding
    padded for TP again). `saved`: the run's own checkpoints, whose resume reuses the import it started from."""
    if not job.init_from:
        return job, None
    weights = _source_weights(job, dry_run, saved)
    if live_job:  # the run starts from the weights: its ranks will read their checkpoint
        _check_not_training(weights, live_job)
    data = job.data
    if data.tokens_dir is None and data.tokenizer_dir is None:
        data = replace(data, tokenizer_dir=str(weights.tokenizer_dir))
    grown_from, vocab_size = _vocabulary_growth(weights, data)
    model = replace(weights.model, **{name: getattr(job.model, name) for name in JOB_MODEL_SETTINGS})
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
    extended = (tokenizer_dir / ADDED_PIECES_FILE).is_file()
    if extended and AddedPieces.read(tokenizer_dir).base_fingerprint == ours.fingerprint:
        return ours.vocab_size, vocab_size
    raise ValueError(
        f"{used} with another tokenizer than that of init_from's weights ({ours.path}), and not one extended from "
        "it: encode data.corpus with it (drop data.tokens_dir and data.tokenizer_dir), or with its extension"
    )
