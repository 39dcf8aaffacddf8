"""Checkpoints that are either complete or invisible.

Each checkpoint is a directory `checkpoints/step-00000010/`: weights and Adam moments by parameter name, one file
per tensor x pipeline rank pair (`launch.shards`), the trainer's counters and LR schedule, and one RNG file per rank.
Only when every rank has finished does rank 0 write `COMPLETE` into it (the layout, the files and their sizes) and
then replace the `latest` pointer atomically; a crash mid-save leaves a directory without `COMPLETE` that nothing
reads and the next save removes. Resuming reads `latest`: weights, optimizer, LR schedule, step (hence data
position) and every rank's RNG states, so a resumed run continues exactly as an uninterrupted one. Resuming on
another layout reads the same files (resharding needs no conversion); only the RNG states, which belong to ranks,
cannot carry over, so with dropout the masks then differ from those of a run that kept its layout.
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

from launch import shards
from launch.device import seed_tensor_parallel
from launch.layout import ParallelLayout
from launch.run_files import COMPLETE, LATEST
from tokenizer.files import write_atomically

# Fault injection for tests: a rank that reads its step here dies after writing its files, before COMPLETE.
CRASH_DURING_SAVE = "COROLLA_TEST_CRASH_DURING_SAVE"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names it and what to do."""


TRAINER_FILE = "trainer.pt"


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


def _record(directory: Path, tag: str) -> dict:
    """What COMPLETE says of checkpoint `tag` (step, layout, files), its files checked to be all there."""
    fix = f"restore its files, or write the tag of an older complete checkpoint into {directory / LATEST}"
    try:
        record = json.loads((directory / tag / COMPLETE).read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{directory / LATEST} names {tag}, which is not a complete checkpoint: {fix}") from None
    for name, size in record["files"].items():
        path = directory / tag / name
        if not path.is_file() or path.stat().st_size != size:
            raise CheckpointError(f"checkpoint file {path} is missing or truncated: {fix}")
    return record


def latest_tag(directory: Path) -> str | None:
    pointer = directory / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def latest_step(directory: Path) -> int | None:
    """The step of the newest complete checkpoint, or None when there is none; checks its files are all there."""
    tag = latest_tag(directory)
    return _record(directory, tag)["step"] if tag else None


def _layout_of(directory: Path, step: int, key: str) -> ParallelLayout:
    record = _record(directory, tag_of(step))
    if key not in record:
        raise CheckpointError(
            f"checkpoint {directory / tag_of(step)} was saved in DeepSpeed's format by a corolla before resharding: "
            "resume it with that version, or start the run again"
        )
    return ParallelLayout(**record[key])


def saved_layout(directory: Path, step: int) -> ParallelLayout:
    """The layout the checkpoint's parameter files are laid out for."""
    return _layout_of(directory, step, "layout")


def rng_layout(directory: Path, step: int) -> ParallelLayout:
    """The layout of the ranks that wrote its RNG files (an offline reshard changes the other, not this)."""
    return _layout_of(directory, step, "rng_layout")


def write_complete(
    directory: Path,
    tag: str,
    step: int,
    layout: ParallelLayout,
    rng_layout: ParallelLayout,
    leave_out: set[str] = frozenset(),
) -> None:
    """Marks `tag` complete: its step, the layouts of its parameter and RNG files, and every file with its size but
    those in `leave_out` (atomically)."""
    files = {str(p.relative_to(directory / tag)): p.stat().st_size for p in (directory / tag).rglob("*") if p.is_file()}
    for name in {COMPLETE, *leave_out}:
        files.pop(name, None)
    layouts = {key: {"tp": value.tp, "pp": value.pp, "dp": value.dp} for key, value in
               (("layout", layout), ("rng_layout", rng_layout))}  # fmt: skip
    record = {"step": step, **layouts, "files": files}
    write_atomically(directory / tag / COMPLETE, json.dumps(record, indent=1) + "\n")


def _trainer_state(engine) -> dict:
    """The engine's counters and the LR schedule; the same on every rank."""
    return {
        "adam_steps": shards.adam_steps(engine),
        "lr_steps": engine.lr_scheduler.last_epoch,
        "global_steps": engine.global_steps,
        "global_samples": engine.global_samples,
        "skipped_steps": engine.skipped_steps,
    }


def _restore_trainer(engine, state: dict) -> None:
    """The LR schedule is a function of its step count (`LambdaLR`); it is the count that is restored, since a
    stage of another layout may hold another number of parameter groups (ZeRO drops a stage's empty group)."""
    scheduler = engine.lr_scheduler
    scheduler.last_epoch, scheduler._step_count = state["lr_steps"], state["lr_steps"] + 1
    factors = zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    scheduler._last_lr = [base * factor(scheduler.last_epoch) for base, factor in factors]
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler._last_lr, strict=True):
        group["lr"] = lr
    engine.global_steps = state["global_steps"]
    engine.global_samples = state["global_samples"]
    engine.skipped_steps = state["skipped_steps"]


def _rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.pt"


def save(engine, directory: Path, step: int, keep: int, layout: ParallelLayout) -> None:
    """Called on every rank at the same step."""
    tag, rank = tag_of(step), dist.get_rank()
    if rank == 0:
        shutil.rmtree(directory / tag, ignore_errors=True)  # a save of this step that crashed before
        (directory / tag).mkdir(parents=True)
    dist.barrier()
    shards.write(engine, directory / tag, layout)
    if rank == 0:
        torch.save(_trainer_state(engine), directory / tag / TRAINER_FILE)
    torch.save(_rng_states(engine), directory / tag / _rng_file(rank))
    first_run = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"  # a requeued Slurm job keeps its environment
    if os.environ.get(CRASH_DURING_SAVE) == str(step) and rank == 0 and first_run:
        os._exit(17)
    dist.barrier()
    if rank == 0:
        write_complete(directory, tag, step, layout, rng_layout=layout)
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


def load(engine, directory: Path, step: int, layout: ParallelLayout, seed: int) -> ParallelLayout:
    """Restores everything `save` wrote at `step` on this rank, whatever layout saved it; returns that layout.

    On the layout that saved it, each rank takes back its own RNG states. On another, rank r takes those of the old
    rank r (rank 0's where there was none), and a tensor-parallel RNG seeded anew from `seed`, the step and its TP
    rank, since borrowed ones could coincide on two TP ranks.
    """
    tag, rank = tag_of(step), dist.get_rank()
    saved = saved_layout(directory, step)
    rngs = rng_layout(directory, step)
    rng_rank = rank if rngs == layout or rank < rngs.world_size else 0
    try:
        trainer = torch.load(directory / tag / TRAINER_FILE, weights_only=False)
        shards.restore(engine, shards.ShardReader(directory / tag, saved), trainer["adam_steps"])
        _restore_trainer(engine, trainer)
        rng = torch.load(directory / tag / _rng_file(rng_rank), weights_only=False)
    except shards.ShardError as error:
        raise CheckpointError(f"checkpoint {directory / tag} does not fit this model: {error}") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {directory / tag} cannot be loaded ({str(error).splitlines()[0]}): "
            "restore its files, or point `latest` at an older complete checkpoint"
        ) from None
    _restore_rng(engine, rng)
    if rngs != layout:
        seed_tensor_parallel(seed + step)
    return saved
