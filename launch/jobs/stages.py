"""The main job's stages (`corolla pipeline`): what each does, where its output goes and whether that output is
current. The local pipeline (main_job.py) runs them in turn here; on a Slurm cluster each is a job of a chain
(slurm/chain.py), and encoding a job array, a task per group of corpus files.

    tokenizer → evaluation → encoding → preparation (manifest, plan, run directory, MLflow run) → training → export

Every stage skips what is current, so running one again, or resubmitting a chain, redoes only what had not finished.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path

from launch.config.compose import pasted
from launch.config.schemas import ExportJob, MainJob, TrainJob
from launch.jobs.prepare import PreparedRun, prepare_run
from launch.plan.weights import HF_CONFIG_FILE, holds_hf_weights, tokenizer_of
from launch.rundir.checkpoints import newest_intact
from launch.rundir.files import (
    CHECKPOINTS,
    COMPLETE,
    HF_DIR,
    REPORT_DIR,
    TOKENIZER_DIR,
    TOKENS_DIR,
    TRAIN_DIR,
    checkpoint_tag,
)
from launch.rundir.history import RunHistory
from launch.rundir.lock import writer
from tokenizer.config import REFERENCE_KEY, TokenizerTrainJob
from tokenizer.corpus import Source, discover_sources
from tokenizer.encode import EncoderSettings, current_record, encode_sources, write_manifest
from tokenizer.evaluate import evaluate, format_summary, load_parallel, report_paths, write_report
from tokenizer.files import HF_TOKENIZER_FILE, METADATA_FILE, SPM_MODEL_FILE, exclusively, sha256_of, tokenizer_file
from tokenizer.loading import load_tokenizer
from tokenizer.token_files import MANIFEST_NAME
from tokenizer.train import is_current, train_tokenizer


@dataclass(frozen=True)
class PipelinePaths:
    run_dir: Path
    tokenizer: Path
    report: Path
    tokens: Path
    train: Path
    hf: Path

    @classmethod
    def of(cls, job: MainJob) -> PipelinePaths:
        run_dir = Path(job.run_dir)
        return cls(
            run_dir,
            given_tokenizer(job) or run_dir / TOKENIZER_DIR,
            run_dir / REPORT_DIR,
            Path(job.data.tokens_dir or run_dir / TOKENS_DIR),
            run_dir / TRAIN_DIR,
            run_dir / HF_DIR,
        )


def given_tokenizer(job: MainJob) -> Path | None:
    """The tokenizer the pipeline encodes with instead of training one: data.tokenizer_dir, else init_from's own."""
    if job.data.tokenizer_dir:
        return Path(job.data.tokenizer_dir)
    return tokenizer_of(job.init_from) if job.init_from else None


def tokenizer_job(job: MainJob) -> TokenizerTrainJob:
    return TokenizerTrainJob(job.tokenizer, job.data.corpus, str(PipelinePaths.of(job).tokenizer), job.seed, True)


def training_job(job: MainJob) -> TrainJob:
    training = {field.name: getattr(job, field.name) for field in fields(TrainJob)}
    return TrainJob(**{**training, "run_dir": str(PipelinePaths.of(job).train)})


def tokenizer_is_current(job: MainJob) -> bool:
    return given_tokenizer(job) is not None or is_current(tokenizer_job(job))


def train_tokenizer_stage(job: MainJob) -> None:
    if given := given_tokenizer(job):
        print(f"      {given}, given (data.tokenizer_dir, or init_from's own): nothing to train")
        return
    tokenizer = tokenizer_job(job)
    if is_current(tokenizer):
        print(f"      up to date: {tokenizer.output_dir}")
    else:
        train_tokenizer(tokenizer)
    metadata = json.loads((Path(tokenizer.output_dir) / METADATA_FILE).read_text())
    held_out = metadata.get("parity", {}).get("held_out")
    if held_out:
        print(
            f"      on parallel sentences parity did not tune on: max premium {held_out['max_premium']:.2f}, "
            f"mean {held_out['mean_premium']:.2f}"
        )


def _is_tokenizer(path: Path, fingerprint: str) -> bool:
    """Whether `path` is, or is a directory that holds, the tokenizer whose SHA-256 is `fingerprint`."""
    return sha256_of(path) == fingerprint if path.is_file() else tokenizer_file(path, fingerprint) is not None


def evaluation_is_current(job: MainJob) -> bool:
    """The report is of this tokenizer on this parallel set and reference language, and newer than the tokenizer
    (its metadata, or its model where it has none)."""
    paths = PipelinePaths.of(job)
    report = report_paths(paths.report)["json"]
    written = [paths.tokenizer / name for name in (METADATA_FILE, SPM_MODEL_FILE, HF_TOKENIZER_FILE)]
    tokenizer = next((path for path in written if path.is_file()), None)
    if not (report.is_file() and tokenizer is not None and report.stat().st_mtime_ns >= tokenizer.stat().st_mtime_ns):
        return False
    asked = (Path(job.parallel_set).resolve(), job.tokenizer.reference_language, [str(paths.tokenizer.resolve())])
    try:
        said = json.loads(report.read_text())
        return (Path(said["parallel"]).resolve(), said["reference"], list(said["paths"].values())) == asked
    except (ValueError, KeyError, TypeError, AttributeError):  # damaged, or of an older corolla: evaluated again
        return False


@contextmanager
def one_pipeline(run_dir: Path) -> Iterator[None]:
    """This process runs the pipeline of `run_dir` here, or submits it to Slurm, while the context lasts: a second
    `corolla pipeline` on it meanwhile is refused (one submitting finds the first's chain, submitted, once it ends)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    running = f"run_dir={run_dir} is being run or submitted by another `corolla pipeline`: wait for it to end"
    with exclusively(run_dir, running):
        yield


def check_inputs(job: MainJob) -> None:
    """Before any stage: the corpus and the parallel set (a missing one would otherwise fail the evaluation or the
    encoding after the tokenizer is trained; on a cluster, a job later), and that a run trained on the pipeline's
    tokenizer does not see it trained anew (the training's relaunch would then be refused, hours later)."""
    discover_sources(job.data.corpus)
    load_parallel(job.parallel_set, job.tokenizer.reference_language, REFERENCE_KEY)
    paths, trained = PipelinePaths.of(job), trained_steps(job)
    if trained and not tokenizer_is_current(job):
        raise ValueError(
            f"{paths.train} holds checkpoints trained on the tokenizer in {paths.tokenizer}, which this pipeline would "
            "train anew (its corpus or tokenizer settings changed, or it is gone): give a new run_dir, or the run's "
            "corpus and settings"
        )
    learnt = RunHistory(paths.train).tokenizer_fingerprint() if trained else None
    if learnt and not _is_tokenizer(paths.tokenizer, learnt):
        copy = paths.train / TOKENIZER_DIR
        given = (
            f"{pasted('data.tokenizer_dir', str(copy))} (a copy of it)"
            if _is_tokenizer(copy, learnt)
            else f"data.tokenizer_dir=DIR, DIR the tokenizer whose SHA-256 is {learnt[:12]}..."
        )
        raise ValueError(
            f"{paths.train} holds checkpoints trained on a tokenizer that is not in {paths.tokenizer}, whose token "
            f"files this pipeline would encode in place of theirs: give the run's, {given}, or a new run_dir"
        )
    held = writer(paths.train)
    if held and held[1] is not False and not (tokenizer_is_current(job) and data_is_current(job)):
        raise ValueError(
            f"{paths.train} is being trained by {held[0]}: this pipeline would make its tokenizer or token files anew "
            "under it; wait for it to end, or give a new run_dir"
        )


def evaluate_stage(job: MainJob) -> dict[str, Path]:
    """The tokenizer's report on the parallel set, unless the one there is current."""
    paths = PipelinePaths.of(job)
    if evaluation_is_current(job):
        print(f"      up to date: {paths.report}")
        return report_paths(paths.report)
    report = evaluate([str(paths.tokenizer)], job.parallel_set, job.tokenizer.reference_language)
    written = write_report(report, paths.report)
    print(format_summary(report))
    return written


def encoding_groups(job: MainJob) -> list[list[Source]]:
    """The corpus files in corpus order, cut into groups of about encode_task_mb MB: an encoding task each."""
    limit = job.encode_task_mb * 1e6
    groups: list[list[Source]] = [[]]
    size = 0
    for source in discover_sources(job.data.corpus):
        file_size = source.path.stat().st_size
        if groups[-1] and size + file_size > limit:
            groups.append([])
            size = 0
        groups[-1].append(source)
        size += file_size
    return groups


def groups_to_encode(job: MainJob, groups: list[list[Source]]) -> list[int]:
    """The groups with a file whose token files are not current (every group without a tokenizer yet). Judged by
    the files' sizes and times, not their contents: a login node does not read the corpus; the task checks more."""
    if not tokenizer_is_current(job):
        return list(range(len(groups)))
    encoded = _is_encoded(job)
    return [index for index, group in enumerate(groups) if not all(map(encoded, group))]


def encoded_files(job: MainJob, names: list[str]) -> int:
    """How many of the corpus files named (Source.label) have current token files."""
    encoded = _is_encoded(job)
    return sum(encoded(source) for source in discover_sources(job.data.corpus) if source.label in names)


def _is_encoded(job: MainJob) -> Callable[[Source], bool]:
    """Whether a corpus file's token files are current, with the pipeline's tokenizer (judged by the files' sizes and
    times)."""
    paths = PipelinePaths.of(job)
    settings = EncoderSettings.of(load_tokenizer(paths.tokenizer), append_eos=True)
    return lambda source: current_record(paths.tokens, source, settings, None) is not None


def encode_stage(job: MainJob, names: list[str]) -> None:
    """Encodes the corpus files named (Source.label) whose token files are not current."""
    paths = PipelinePaths.of(job)
    encode_sources(paths.tokenizer, job.data.corpus, paths.tokens, names)


def manifest_stage(job: MainJob) -> None:
    """The manifest over every corpus file's token files (a one-line error if one is missing)."""
    paths = PipelinePaths.of(job)
    write_manifest(paths.tokenizer, job.data.corpus, paths.tokens)


def prepare_training_stage(job: MainJob) -> PreparedRun | None:
    """On a cluster, before the training job: the manifest, then, unless the run is trained already, its plan,
    directory and MLflow run."""
    manifest_stage(job)
    return None if training_is_finished(job) else prepare_run(training_job(job))


def data_is_current(job: MainJob, groups_to_do: list[int] | None = None) -> bool:
    """The token files are this corpus's under this tokenizer, and the manifest lists them; `groups_to_do`:
    groups_to_encode's answer, where the caller has it already."""
    if not (PipelinePaths.of(job).tokens / MANIFEST_NAME).is_file():
        return False
    return not (groups_to_encode(job, encoding_groups(job)) if groups_to_do is None else groups_to_do)


def checkable_training_job(job: MainJob, data_current: bool) -> TrainJob:
    """The training job as a dry run can check it before its data is built: with the token files only when they are
    current (otherwise with the tokenizer config's vocabulary, and the data checked as the run is prepared)."""
    train = training_job(job)
    return train if data_current else replace(train, data=replace(train.data, tokens_dir=None))


def trained_steps(job: MainJob) -> int:
    """The step of the training run's newest complete checkpoint (0 before the first)."""
    return newest_intact(PipelinePaths.of(job).train / CHECKPOINTS) or 0


def training_is_finished(job: MainJob) -> bool:
    return trained_steps(job) >= job.train.steps


def export_is_current(job: MainJob) -> bool:
    """The export holds its weights and is newer than the training run's newest checkpoint."""
    paths = PipelinePaths.of(job)
    step, config = trained_steps(job), paths.hf / HF_CONFIG_FILE
    if not (step and config.is_file() and holds_hf_weights(paths.hf)):
        return False
    saved = paths.train / CHECKPOINTS / checkpoint_tag(step) / COMPLETE
    return config.stat().st_mtime_ns >= saved.stat().st_mtime_ns


def export_stage(job: MainJob) -> None:
    from launch.train.export import export_hf_model  # torch and transformers: only for this stage

    paths = PipelinePaths.of(job)
    if export_is_current(job):
        print(f"      up to date: {paths.hf}")
        return
    export_hf_model(ExportJob(str(paths.train), str(paths.hf), overwrite=True))  # the stage's own, replaced whole
