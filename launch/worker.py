"""One training process: `python -m launch.worker RUN_DIR` on every rank (started by torchrun locally, srun on Slurm).

It reads the job that `corolla train` resolved and validated into RUN_DIR/job.yaml, joins the process group, and trains.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from megatron.core import parallel_state
from omegaconf import OmegaConf

from launch import checkpoint
from launch.data import BlendedDataset, TokenCorpus
from launch.device import init_distributed, seed_everything
from launch.launcher import CHECKPOINTS, JOB_FILE
from launch.layout import ParallelLayout
from launch.schemas import TrainJob
from launch.tracking import StepLogger
from launch.trainer import StepRecord, build_engine, train_steps

METRICS_FILE = "metrics.jsonl"


def load_job(run_dir: Path) -> TrainJob:
    schema = OmegaConf.structured(TrainJob)
    return OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.load(run_dir / JOB_FILE)))


def _reporter(run_dir: Path, rank: int):
    """Rank 0 prints one line a step, logs it to MLflow and appends it to metrics.jsonl; other ranks stay quiet."""
    if rank != 0:
        return lambda record: None
    mlflow = StepLogger(run_dir)

    def report(record: StepRecord) -> None:
        mlflow.log(record.step, asdict(record))
        print(
            f"step {record.step:>6}  loss {record.loss:.4f}  lr {record.lr:.3e}  grad norm {record.grad_norm:.3f}  "
            f"{record.tokens_per_second:,.0f} tokens/s",
            flush=True,
        )
        with (run_dir / METRICS_FILE).open("a") as metrics:
            metrics.write(json.dumps(asdict(record)) + "\n")

    return report


def main(run_dir: Path) -> None:
    job = load_job(run_dir)
    init_distributed()
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    layout = ParallelLayout.for_world(job.parallel.tp, job.parallel.pp, job.parallel.dp, world_size)
    parallel_state.initialize_model_parallel(layout.tp, layout.pp, create_gloo_process_groups=False)
    seed_everything(job.seed)
    corpus = TokenCorpus(job.data.tokens_dir, job.data.validation_documents)
    dataset = BlendedDataset(corpus, job.data, job.model.seq_length)
    engine = build_engine(job.model, layout, job.train, job.parallel.zero_stage, job.seed,
                          job.parallel.activation_checkpointing)  # fmt: skip
    directory = run_dir / CHECKPOINTS
    first_step = checkpoint.latest_step(directory) or 0
    if first_step:
        checkpoint.load(engine, directory, first_step)
        if rank == 0:
            print(f"resumed from {directory / checkpoint.tag_of(first_step)}", flush=True)

    def save(step: int) -> None:
        checkpoint.save(engine, directory, step, job.train.keep_checkpoints)

    train_steps(engine, dataset, layout, job.train, job.model.seq_length, first_step, _reporter(run_dir, rank), save)
    torch.distributed.barrier()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(Path(sys.argv[1]))
