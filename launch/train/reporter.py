"""What rank 0 says of each step and validation: a line on its output, and a record in metrics.jsonl and
validation.jsonl, which MLflow is sent in the background (launch/rundir/outbox.py), never waited on by a step: by
rank 0's own sender on a cluster, by `corolla train` for local ranks. Other ranks stay quiet, but learn whether rank 0
found no room for a record: every rank then stops, as on a checkpoint with no room."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from statistics import mean

from launch.rundir.files import DROPPED_FIGURES, HEALTH_FILE, METRICS_FILE, VALIDATION_FILE
from launch.rundir.outbox import Sender, resend
from launch.rundir.records import append_record, keep_steps_up_to
from launch.rundir.tracking_state import read_state
from launch.train.checkpoint import NoSpace, filesystem, from_rank_0
from launch.train.health import Verdict
from launch.train.loop import StepRecord
from tokenizer.files import is_no_space, no_room, write_atomically


def bits_per_byte(losses: dict[str, float], bytes_per_token: dict[str, float]) -> dict[str, float]:
    """Nats per token x tokens / (bytes x ln 2): a language's loss that compares across tokenizers."""
    return {
        language: loss / (math.log(2) * bytes_per_token[language])
        for language, loss in losses.items()
        if bytes_per_token.get(language)
    }


# The figures of a step or validation record that its training decides (not its speed): a step redone with any of
# them otherwise than the record it replaces was trained anew (another train.lr, another batch ramp), and MLflow is
# sent it again. Relative: a margin for a GPU's nondeterministic sums, which move a step redone alike a little.
TRAINED_FIGURES = {METRICS_FILE: ("loss", "lr", "batch_size"), VALIDATION_FILE: ("loss",)}
RETRAINED_TOLERANCE = 1e-3


def _alike(old: object, new: object) -> bool:
    if isinstance(old, dict) and isinstance(new, dict):
        return old.keys() == new.keys() and all(_alike(old[key], new[key]) for key in old)
    if isinstance(old, tuple | list) and isinstance(new, tuple | list):
        return len(old) == len(new) and all(map(_alike, old, new))
    numbers = all(type(value) in (int, float) for value in (old, new))
    return old == new or (numbers and math.isclose(old, new, rel_tol=RETRAINED_TOLERANCE))  # type: ignore[arg-type]


def trained_figures(series: str, record: dict) -> tuple:
    return tuple(record.get(key) for key in TRAINED_FIGURES[series])


def _read_dropped(run_dir: Path) -> dict[str, dict[int, tuple]]:
    """DROPPED_FIGURES as written; none where it is missing or not what corolla wrote (steps then compare with
    nothing)."""
    try:
        kept = json.loads((run_dir / DROPPED_FIGURES).read_text())
        return {series: {int(step): tuple(each) for step, each in steps.items()} for series, steps in kept.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def written_by_rank_0(writes: bool, run_dir: Path, written: Path, write: Callable[[], None]) -> None:
    """Runs `write` where `writes` (rank 0); then, on every rank (a collective), NoSpace where it found no room on the
    filesystem of the run directory for what it writes (`written`, said)."""
    problem = None
    if writes:
        try:
            write()
        except OSError as error:
            if not is_no_space(error):
                raise
            problem = (
                f"{no_room(error.errno, filesystem(run_dir))} for {written}: free space there or move run_dir, then "
                "launch again to resume from the last checkpoint"
            )
    if problem := from_rank_0(problem):
        raise NoSpace(problem)


class Reporter:
    def __init__(
        self,
        run_dir: Path,
        rank: int,
        total_steps: int,
        bytes_per_token: dict[str, float] | None = None,
        sends: bool = True,
    ) -> None:
        """`bytes_per_token` of each language's validation samples gives validations in bits per byte too; rank 0
        `sends` MLflow the records once it begins."""
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.bytes_per_token = bytes_per_token or {}
        self.writes = rank == 0
        self.sends = sends
        self.sender: Sender | None = None
        self.steps_redone = 0
        self.resumed_from = 0
        self.held: dict[str, int] = {}  # series -> the last step MLflow held when this launch began
        self.replaced: dict[str, dict[int, tuple]] = {}  # series -> step -> the figures of its dropped record

    def begin(self, resumed_from: int) -> None:
        """Rank 0: drops the records after `resumed_from` (this launch redoes those steps), keeping their trained
        figures, with those launches before it dropped of steps not trained since (DROPPED_FIGURES), to tell the
        steps trained alike from those trained anew; then, if it sends, starts the sender."""
        self.resumed_from = resumed_from
        self.held = read_state(self.run_dir).sent or {}  # not known (tracking.json lost): as if none
        earlier = _read_dropped(self.run_dir)
        for series in (METRICS_FILE, VALIDATION_FILE):
            dropped = keep_steps_up_to(self.run_dir / series, resumed_from)
            before = {step: figures for step, figures in earlier.get(series, {}).items() if step > resumed_from}
            self.replaced[series] = before | {old["step"]: trained_figures(series, old) for old in dropped}
            if series == METRICS_FILE:
                self.steps_redone = dropped[-1]["step"] - resumed_from if dropped else 0
        keep_steps_up_to(self.run_dir / HEALTH_FILE, resumed_from)
        write_atomically(self.run_dir / DROPPED_FIGURES, json.dumps(self.replaced))
        self.sender = Sender(self.run_dir) if self.sends else None

    def _trained_anew(self, series: str, record: dict) -> bool:
        """Whether MLflow holds, or is to be sent, other figures of the record's step: those of the record a launch
        dropped of it, or, where none is known, any (it held the step when this launch began)."""
        if series not in self.replaced:
            return False
        old = self.replaced[series].pop(record["step"], None)
        if old is not None:
            return not _alike(old, trained_figures(series, record))
        return record["step"] <= self.held.get(series, 0)

    def step(self, record: StepRecord) -> None:
        """Called on every rank (a collective): NoSpace on every rank where rank 0 found no room for the record."""
        if self.writes:
            print(
                f"step {record.step:>6}/{self.total_steps}  loss {record.loss:.4f}  lr {record.lr:.3e}  "
                f"grad norm {record.grad_norm:.3f}  batch {record.batch_size}  "
                f"{record.tokens_per_second:,.0f} tokens/s",
                flush=True,
            )
        self._append(METRICS_FILE, asdict(record))

    def validation(self, step: int, losses: dict[str, float]) -> None:
        """Called on every rank, as `step`."""
        bpb = bits_per_byte(losses, self.bytes_per_token)
        if self.writes:
            ranked = sorted(losses, key=losses.__getitem__)
            in_bits = f", {mean(bpb.values()):.4f} bits per byte" if bpb else ""
            print(
                f"validation at step {step}: loss {mean(losses.values()):.4f}{in_bits} over {len(losses)} languages "
                f"(lowest {ranked[0]} {losses[ranked[0]]:.4f}, highest {ranked[-1]} {losses[ranked[-1]]:.4f})",
                flush=True,
            )
        self._append(VALIDATION_FILE, {"step": step, "loss": losses, **({"bpb": bpb} if bpb else {})})

    def health(self, step: int, verdict: Verdict) -> None:
        """Called on every rank, as `step`: the health check after the checkpoint of `step`."""
        if self.writes and (slowest := verdict.slowest()):
            print(
                f"health after step {step}: slowest node {slowest[0]}, {slowest[1]:.2f}x the fastest rank", flush=True
            )
        self._append(HEALTH_FILE, {"step": step, **verdict.record()})

    def _append(self, series: str, record: dict) -> None:
        """Rank 0 appends the record; every rank raises NoSpace if its filesystem had no room for it."""
        path, stamped = self.run_dir / series, {**record, "time": int(time.time() * 1000)}
        anew = self._trained_anew(series, stamped)

        def write() -> None:
            if anew:  # first: a record written alone, it would be taken for MLflow's by the next launch
                resend(self.run_dir, series, stamped, self.resumed_from)
            append_record(path, stamped)

        written_by_rank_0(self.writes, self.run_dir, path, write)

    def close(self) -> None:
        """Gives MLflow a bounded time to take the rest, the run's start and end included (its history says them);
        what it does not take stays for the next start or a sync."""
        if self.sender is not None:
            self.sender.close()
