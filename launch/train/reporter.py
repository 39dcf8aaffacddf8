"""What rank 0 says of each step and validation: a line on its output, metrics.jsonl and validation.jsonl, and
MLflow through the background sender (launch/rundir/outbox.py), which no step waits on. Other ranks stay quiet."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from statistics import mean

from launch.rundir.files import METRICS_FILE, VALIDATION_FILE
from launch.rundir.outbox import Sender
from launch.rundir.records import append_record, keep_steps_up_to
from launch.rundir.tracking_state import how_to_send_the_rest
from launch.train.loop import StepRecord

CLOSE_TIMEOUT_S = 20.0  # what the end of a launch waits for MLflow to take the rest; then it is sent later


def bits_per_byte(losses: dict[str, float], bytes_per_token: dict[str, float]) -> dict[str, float]:
    """Nats per token x tokens / (bytes x ln 2): a language's loss that compares across tokenizers."""
    return {
        language: loss / (math.log(2) * bytes_per_token[language])
        for language, loss in losses.items()
        if bytes_per_token.get(language)
    }


class Reporter:
    def __init__(
        self,
        run_dir: Path,
        rank: int,
        total_steps: int,
        resumed_from: int,
        bytes_per_token: dict[str, float] | None = None,
    ) -> None:
        """On rank 0, drops the records after `resumed_from` (this launch redoes those steps) and starts the sender.
        `bytes_per_token` of each language's validation samples gives validations in bits per byte too."""
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.bytes_per_token = bytes_per_token or {}
        self.sender: Sender | None = None
        self.steps_redone = 0
        if rank == 0:
            last_step = keep_steps_up_to(run_dir / METRICS_FILE, resumed_from)
            keep_steps_up_to(run_dir / VALIDATION_FILE, resumed_from)
            self.steps_redone = max(0, last_step - resumed_from)
            self.sender = Sender(run_dir)

    def step(self, record: StepRecord) -> None:
        if self.sender is None:
            return
        print(
            f"step {record.step:>6}/{self.total_steps}  loss {record.loss:.4f}  lr {record.lr:.3e}  "
            f"grad norm {record.grad_norm:.3f}  batch {record.batch_size}  {record.tokens_per_second:,.0f} tokens/s",
            flush=True,
        )
        self._append(METRICS_FILE, asdict(record))

    def validation(self, step: int, losses: dict[str, float]) -> None:
        if self.sender is None:
            return
        ranked = sorted(losses, key=losses.__getitem__)
        bpb = bits_per_byte(losses, self.bytes_per_token)
        in_bits = f", {mean(bpb.values()):.4f} bits per byte" if bpb else ""
        print(
            f"validation at step {step}: loss {mean(losses.values()):.4f}{in_bits} over {len(losses)} languages "
            f"(lowest {ranked[0]} {losses[ranked[0]]:.4f}, highest {ranked[-1]} {losses[ranked[-1]]:.4f})",
            flush=True,
        )
        self._append(VALIDATION_FILE, {"step": step, "loss": losses, **({"bpb": bpb} if bpb else {})})

    def _append(self, series: str, record: dict) -> None:
        append_record(self.run_dir / series, {**record, "time": int(time.time() * 1000)})
        self.sender.notify()

    def tag(self, tags: dict[str, str] | None = None, status: str | None = None) -> None:
        if self.sender is not None:
            self.sender.set(tags, status)

    def close(self) -> None:
        """Gives MLflow a bounded time to take the rest; what it does not take stays for the next start or a sync."""
        if self.sender is not None and not self.sender.close(CLOSE_TIMEOUT_S):
            error = self.sender.state.error
            print(
                f"corolla: MLflow has not taken every record yet ({error or 'slow'}): "
                + how_to_send_the_rest(self.run_dir, error),
                flush=True,
            )
