"""What rank 0 says of each step and validation: a line on its output, MLflow, metrics.jsonl and validation.jsonl.
Other ranks stay quiet."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from statistics import mean

from launch.rundir.files import METRICS_FILE, VALIDATION_FILE
from launch.rundir.records import append_record
from launch.rundir.tracking import StepLogger
from launch.train.loop import StepRecord


class Reporter:
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
        append_record(self.run_dir / METRICS_FILE, asdict(record))

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
        append_record(self.run_dir / VALIDATION_FILE, {"step": step, "loss": losses})
