"""A run's loss curve as a PNG: each step's training loss and each language's validation loss, from the run
directory's metrics files. Drawn by the launcher once training ends, never on a rank."""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.figure import Figure

from launch.rundir.files import LOSS_CHART, METRICS_FILE, VALIDATION_FILE
from launch.rundir.records import last_record_per_step, last_value_per_step
from tokenizer.files import write_atomically

TRAIN_POINTS = 2000  # more than the chart's width in pixels shows


def _means(values: list[float], group: int) -> list[float]:
    return [sum(values[i : i + group]) / len(values[i : i + group]) for i in range(0, len(values), group)]


def _training_curve(run_dir: Path) -> tuple[list[float], list[float], str]:
    """Each step's training loss; past TRAIN_POINTS steps, the mean of each run of consecutive steps, so that a run of
    a million steps draws as fast as a short one."""
    steps, losses = last_value_per_step(run_dir / METRICS_FILE, "loss")
    group = -(-len(steps) // TRAIN_POINTS)
    if group <= 1:
        return steps, losses, "train"
    return _means(steps, group), _means(losses, group), f"train (mean of each {group:,} steps)"


def render_loss_chart(run_dir: Path, vocab_size: int) -> bytes:
    """Training loss per step, validation loss per language (dashed, its mean bold) and ln(vocab_size): what a model
    that learnt nothing scores."""
    steps, losses, train_label = _training_curve(run_dir)
    validations = last_record_per_step(run_dir / VALIDATION_FILE)
    figure = Figure(figsize=(12, 6), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(steps, losses, color="black", linewidth=1.5, label=train_label)
    languages = sorted({language for record in validations for language in record["loss"]})
    for language in languages:
        points = [(r["step"], r["loss"][language]) for r in validations if language in r["loss"]]
        axes.plot(*zip(*points, strict=True), linestyle="--", linewidth=0.8, alpha=0.6, label=f"val {language}")
    if validations:
        means = [sum(r["loss"].values()) / len(r["loss"]) for r in validations]
        axes.plot([r["step"] for r in validations], means, color="tab:red", linewidth=2, marker="o", label="val mean")
    axes.axhline(math.log(vocab_size), color="grey", linewidth=1, label=f"ln(vocabulary {vocab_size:,})")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per token)")
    axes.set_title(f"Loss of {run_dir}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=6, ncol=1 + len(languages) // 30, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_loss_chart(run_dir: Path, vocab_size: int) -> Path:
    """RUN_DIR/loss.png, replaced whole."""
    path = run_dir / LOSS_CHART
    write_atomically(path, render_loss_chart(run_dir, vocab_size))
    return path
