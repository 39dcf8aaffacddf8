"""One training process: `python -m launch.worker RUN_DIR` on every rank (started by torchrun locally, srun on Slurm).

It reads the job that `corolla train` resolved and validated into RUN_DIR/job.yaml, joins the process group, and trains.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from statistics import mean

import torch
from megatron.core import parallel_state
from omegaconf import OmegaConf

from launch import checkpoint, tracking
from launch.data import BlendedDataset, TokenCorpus, validation_batches
from launch.device import device, init_distributed, seed_everything
from launch.history import RunHistory
from launch.launcher import layout_for
from launch.layout import ParallelLayout
from launch.run_files import CHECKPOINTS, JOB_FILE, METRICS_FILE, VALIDATION_FILE
from launch.schemas import TrainJob
from launch.stopping import STOP_FILE, StopSignals, Watchdog
from launch.tracking import StepLogger
from launch.trainer import Callbacks, StepRecord, build_engine, train_steps


def load_job(run_dir: Path) -> TrainJob:
    schema = OmegaConf.structured(TrainJob)
    return OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.load(run_dir / JOB_FILE)))


class Reporter:
    """Rank 0 prints one line a step, logs it to MLflow and appends it to metrics.jsonl (validation: to
    validation.jsonl); other ranks stay quiet."""

    def __init__(self, run_dir: Path, rank: int, total_steps: int) -> None:
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.mlflow = StepLogger(run_dir) if rank == 0 else None

    def logged_up_to(self) -> int:
        """The last step the MLflow history holds (0 on ranks other than 0)."""
        return self.mlflow.logged_up_to["train_loss"] if self.mlflow else 0

    def step(self, record: StepRecord) -> None:
        if self.mlflow is None:
            return
        self.mlflow.log_step(record.step, asdict(record))
        print(
            f"step {record.step:>6}/{self.total_steps}  loss {record.loss:.4f}  lr {record.lr:.3e}  "
            f"grad norm {record.grad_norm:.3f}  batch {record.batch_size}  {record.tokens_per_second:,.0f} tokens/s",
            flush=True,
        )
        self._append(METRICS_FILE, asdict(record))

    def validation(self, step: int, losses: dict[str, float]) -> None:
        if self.mlflow is None:
            return
        self.mlflow.log_validation(step, losses)
        ranked = sorted(losses, key=losses.__getitem__)
        print(
            f"validation at step {step}: loss {mean(losses.values()):.4f} over {len(losses)} languages "
            f"(lowest {ranked[0]} {losses[ranked[0]]:.4f}, highest {ranked[-1]} {losses[ranked[-1]]:.4f})",
            flush=True,
        )
        self._append(VALIDATION_FILE, {"step": step, "loss": losses})

    def _append(self, name: str, record: dict) -> None:
        with (self.run_dir / name).open("a") as file:
            file.write(json.dumps(record) + "\n")


class Outcome(Enum):
    finished = "finished"  # trained to train.steps
    stopped = "stopped"  # stopped early with a checkpoint: a stop signal, or train.exit_after


def _record_start(run_dir: Path, origin: dict[str, object], resumed_from: int, logged_up_to: int,
                  layout: ParallelLayout, saved_layout: ParallelLayout) -> None:  # fmt: skip
    """History and MLflow: where this start runs, what it resumed, its layout and the one it was resharded from."""
    history = RunHistory(run_dir)
    change = {"layout": layout.name}
    if saved_layout != layout:
        change["resharded_from"] = saved_layout.name
        print(f"resharded the step-{resumed_from} checkpoint from {saved_layout.name} to {layout.name}", flush=True)
    history.record("start", **origin, resumed_from_step=resumed_from, steps_redone=max(0, logged_up_to - resumed_from),
                   **change)  # fmt: skip
    tracking.tag_layout(run_dir, **change)
    starts = len(history.starts())
    if starts > 1:
        tracking.tag_restart(run_dir, restarts=starts - 1, failures=history.failures())


def main(run_dir: Path, origin: dict[str, object] | None = None, on_stall: Callable[[], None] = lambda: None,
         stop: StopSignals | None = None) -> Outcome:  # fmt: skip
    """Trains this rank; `origin` says where (recorded in the run's history), `on_stall` runs if the watchdog fires,
    `stop` holds the stop signals received so far (installed here if not given)."""
    stop = stop or StopSignals(run_dir / STOP_FILE)
    job = load_job(run_dir)
    watchdog = Watchdog(job.train.hang_timeout_s, on_stall)
    init_distributed(job.train.hang_timeout_s)
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    layout = layout_for(job, world_size)
    parallel_state.initialize_model_parallel(layout.tp, layout.pp, create_gloo_process_groups=False)
    seed_everything(job.seed)
    corpus = TokenCorpus(job.data.tokens_dir, job.data.validation_documents)
    dataset = BlendedDataset(corpus, job.data, job.model.seq_length)
    validation = {}
    if job.train.eval_interval:
        validation = validation_batches(corpus, job.model.seq_length, job.train.micro_batch, job.train.eval_samples,
                                        parallel_state.get_data_parallel_rank(), layout.dp)  # fmt: skip
    engine = build_engine(job.model, layout, job.train, job.parallel, job.seed)
    directory = run_dir / CHECKPOINTS
    first_step = checkpoint.latest_step(directory) or 0
    saved_layout = checkpoint.load(engine, directory, first_step, layout, job.seed) if first_step else layout
    watchdog.progress()  # start-up and a large checkpoint's load may take long; the steps start the clock again
    reporter = Reporter(run_dir, rank, job.train.steps)
    if rank == 0:
        if first_step:
            print(f"resumed from {directory / checkpoint.tag_of(first_step)}", flush=True)
        _record_start(run_dir, origin or {"host": socket.gethostname()}, first_step, reporter.logged_up_to(),
                      layout, saved_layout)  # fmt: skip

    def save(step: int) -> None:
        checkpoint.save(engine, directory, step, job.train.keep_checkpoints, layout)
        watchdog.progress()

    callbacks = Callbacks(
        on_step=reporter.step,
        on_validation=reporter.validation,
        save=save,
        should_stop=lambda: stop.agreed(device()),
        progress=watchdog.progress,
    )
    last, stopped = train_steps(engine, dataset, validation, layout, job.train, job.model.seq_length, first_step,
                                callbacks)  # fmt: skip
    torch.distributed.barrier()
    outcome = Outcome.stopped if stopped or last < job.train.steps else Outcome.finished
    if rank == 0:
        reason = {"signal": stop.received.name} if stop.received else {}
        if (run_dir / STOP_FILE).exists():
            reason = {"signal": STOP_FILE}
        RunHistory(run_dir).record(outcome.value, step=last, **reason)
        if outcome == Outcome.finished:
            tracking.finish(tracking.recorded_run(run_dir), succeeded=True)
    watchdog.stop()
    return outcome


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(Path(sys.argv[1]))
