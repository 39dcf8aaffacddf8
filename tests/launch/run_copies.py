"""Copies of a trained run directory as an earlier stop would have left it, so that a test can start from a state
another run already reached instead of training to it again."""

from __future__ import annotations

import shutil
from pathlib import Path

from launch.rundir.checkpoints import point_latest
from launch.rundir.files import CHECKPOINTS, METRICS_FILE, VALIDATION_FILE, checkpoint_tag
from launch.rundir.records import keep_steps_up_to


def stopped_copy(run_dir: Path, target: Path, step: int) -> Path:
    """`run_dir` copied to `target` as a launch that stopped after `step` leaves it: the checkpoints after `step`
    gone, `latest` naming that step's, no record of a later step. The copy has its own MLflow store, whose artifact
    folder is still the original's (MLflow keeps its absolute path): a launch of the copy logs its job.yaml there."""
    shutil.copytree(run_dir, target)
    checkpoints, tag = target / CHECKPOINTS, checkpoint_tag(step)
    assert (checkpoints / tag).is_dir(), f"{run_dir} keeps no checkpoint of step {step}"
    for later in checkpoints.glob("step-*"):
        if later.name > tag:
            shutil.rmtree(later)
    point_latest(checkpoints, tag)
    for records in (METRICS_FILE, VALIDATION_FILE):
        if (target / records).is_file():
            keep_steps_up_to(target / records, step)
    return target
