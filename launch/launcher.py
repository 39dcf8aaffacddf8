"""`corolla train`: validate the whole job before any process starts, write it to the run directory, run the ranks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from launch import checkpoint, tracking
from launch.data import BlendedDataset, TokenCorpus, validation_batches
from launch.layout import ParallelLayout
from launch.local import run_local
from launch.schemas import TrainJob
from tokenizer.cache import cached_token_files

JOB_FILE = "job.yaml"
CHECKPOINTS = "checkpoints"


def resolve(job: TrainJob) -> tuple[TrainJob, ParallelLayout, TokenCorpus]:
    """The job with its token files and the tokenizer's vocabulary filled in, its layout and data; a one-line
    ValueError if it cannot run."""
    if job.data.tokens_dir is None:
        tokens_dir = cached_token_files(job.tokenizer, job.data.corpus, job.data.cache_dir, job.seed)
        job = replace(job, data=replace(job.data, tokens_dir=str(tokens_dir)))
    corpus = TokenCorpus(job.data.tokens_dir, job.data.validation_documents)
    if job.model.vocab_size and job.model.vocab_size != corpus.vocab_size:
        raise ValueError(
            f"model.vocab_size={job.model.vocab_size} but the tokenizer of {job.data.tokens_dir} has "
            f"{corpus.vocab_size} tokens: drop model.vocab_size (0 takes the tokenizer's) or re-encode the data"
        )
    job = replace(job, model=replace(job.model, vocab_size=corpus.vocab_size))
    layout = ParallelLayout.for_world(job.parallel.tp, job.parallel.pp, job.parallel.dp or 1, None)
    problems = layout.problems(job.model, job.train)
    if problems:
        raise ValueError("impossible layout: " + "; ".join(problems))
    BlendedDataset(corpus, job.data, job.model.seq_length)  # every weighted language holds a sample
    if job.train.eval_interval and not validation_batches(
        corpus, job.model.seq_length, job.train.micro_batch, job.train.eval_samples, 0, layout.dp
    ):
        raise ValueError(
            f"train.eval_interval={job.train.eval_interval} but data.validation_documents=0 holds nothing out for "
            "validation: raise data.validation_documents or set train.eval_interval=0"
        )
    return job, layout, corpus


def launch_training(job: TrainJob) -> None:
    job, layout, corpus = resolve(job)
    run_dir = Path(job.run_dir)
    resume_step = checkpoint.latest_step(run_dir / CHECKPOINTS)
    if resume_step and resume_step >= job.train.steps:
        print(f"{run_dir} is already trained to step {resume_step} of {job.train.steps}: nothing to do")
        return
    if resume_step:
        print(f"{run_dir} holds a checkpoint at step {resume_step}: resuming from it")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JOB_FILE).write_text(OmegaConf.to_yaml(OmegaConf.structured(job)))
    layout_tag = f"tp{layout.tp}-pp{layout.pp}-dp{layout.dp}"
    tracked = tracking.open_run(run_dir, job.tracking.experiment, job, {"layout": layout_tag, "model": job.model.name},
                                job.tracking.uri)  # fmt: skip
    tracking.log_artifact(tracked, run_dir / JOB_FILE)
    if (corpus.tokenizer_dir / "metadata.json").is_file():
        tracking.log_artifact(tracked, corpus.tokenizer_dir / "metadata.json")
    print(f"training {job.model.name} on {layout.tp} x {layout.pp} x {layout.dp} (TP x PP x DP) ranks in {run_dir}")
    status = run_local(run_dir, layout.world_size)
    tracking.finish(tracked, succeeded=status == 0)
    if status:
        raise RuntimeError(f"training failed (a rank exited with status {status}): see its log above")
    print(f"done: checkpoints in {run_dir / CHECKPOINTS}; MLflow run {tracked.run_id}: {tracking.ui_command(tracked)}")
