"""Checkpoints that are either complete or invisible.

Each checkpoint is a directory `checkpoints/step-00000010/` written by DeepSpeed (weights and optimizer shards per
rank) plus one RNG file per rank. Only when every rank has finished does rank 0 write `COMPLETE` into it and then
replace the `latest` pointer atomically; a crash mid-save leaves a directory without `COMPLETE` that nothing reads
and the next save removes. Resuming reads `latest`: weights, optimizer, LR schedule, step (hence data position)
and every rank's RNG states, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from launch.run_files import COMPLETE, LATEST
from tokenizer.files import write_atomically

# Fault injection for tests: a rank that reads its step here dies after writing its files, before COMPLETE.
CRASH_DURING_SAVE = "COROLLA_TEST_CRASH_DURING_SAVE"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names it and what to do."""


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


def _rng_states(engine) -> dict:
    """Every random state a step draws from. DeepSpeed reseeds each layer at each forward from a count of forward
    passes made by this process (`micro_offset`), so that count is part of the state too."""
    return {
        "micro_offset": engine.module.micro_offset,
        "torch": torch.get_rng_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _restore_rng(engine, states: dict) -> None:
    engine.module.micro_offset = states["micro_offset"]
    torch.set_rng_state(states["torch"])
    get_cuda_rng_tracker().set_states(states["tracker"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def latest_step(directory: Path) -> int | None:
    """The step of the newest complete checkpoint, or None when there is none; checks its files are all there."""
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    fix = f"restore its files, or write the tag of an older complete checkpoint into {pointer}"
    try:
        record = json.loads((directory / tag / COMPLETE).read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{pointer} names {tag}, which is not a complete checkpoint: {fix}") from None
    for name, size in record["files"].items():
        path = directory / tag / name
        if not path.is_file() or path.stat().st_size != size:
            raise CheckpointError(f"checkpoint file {path} is missing or truncated: {fix}")
    return record["step"]


def save(engine, directory: Path, step: int, keep: int) -> None:
    """Called on every rank at the same step."""
    tag, rank = tag_of(step), dist.get_rank()
    if rank == 0:
        shutil.rmtree(directory / tag, ignore_errors=True)  # a save of this step that crashed before
    dist.barrier()
    engine.save_checkpoint(str(directory), tag=tag, client_state={"step": step}, save_latest=False)
    torch.save(_rng_states(engine), directory / tag / f"rng-rank{rank:05d}.pt")
    first_run = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"  # a requeued Slurm job keeps its environment
    if os.environ.get(CRASH_DURING_SAVE) == str(step) and rank == 0 and first_run:
        os._exit(17)
    dist.barrier()
    if rank == 0:
        files = {
            str(p.relative_to(directory / tag)): p.stat().st_size for p in (directory / tag).rglob("*") if p.is_file()
        }
        (directory / tag / COMPLETE).write_text(json.dumps({"step": step, "files": files}, indent=1) + "\n")
        write_atomically(directory / LATEST, tag + "\n")
        _remove_old(directory, keep, current=tag)
    dist.barrier()


def _remove_old(directory: Path, keep: int, current: str) -> None:
    """Keeps the newest `keep` complete checkpoints; removes older ones and every incomplete one but `current`."""
    tags = sorted(path.name for path in directory.glob("step-*") if path.is_dir())
    complete = [tag for tag in tags if (directory / tag / COMPLETE).is_file()]
    doomed = set(complete[:-keep] if keep > 0 else []) | {tag for tag in tags if tag not in complete}
    for tag in doomed - {current}:
        shutil.rmtree(directory / tag, ignore_errors=True)


def load(engine, directory: Path, step: int) -> None:
    """Restores everything `save` wrote at `step` on this rank."""
    tag, rank = tag_of(step), dist.get_rank()
    try:
        path, client_state = engine.load_checkpoint(str(directory), tag=tag)
        rng = torch.load(directory / tag / f"rng-rank{rank:05d}.pt", weights_only=False)
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {directory / tag} cannot be loaded ({str(error).splitlines()[0]}): "
            "restore its files, or point `latest` at an older complete checkpoint"
        ) from None
    if path is None or client_state.get("step") != step:
        raise CheckpointError(f"checkpoint {directory / tag} is incomplete: point `latest` at an older one")
    _restore_rng(engine, rng)
