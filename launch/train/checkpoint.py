"""Checkpoints that are either complete or invisible.

Each checkpoint is a directory `checkpoints/step-00000010/`: weights and Adam moments by parameter name, one file
per tensor x pipeline rank pair (launch/train/shards.py), the trainer's counters and LR schedule, and one RNG file per
rank. Only when every rank has finished does rank 0 write `COMPLETE` into it (launch/rundir/checkpoints.py: the
layout, the files and their sizes) and then replace the `latest` pointer atomically; a crash mid-save leaves a
directory without `COMPLETE` that nothing reads and the next save removes. Resuming reads the newest complete
checkpoint (`latest`'s, or a newer one whose save was cut off before it named it): weights,
optimizer, LR schedule, step (hence data position) and every rank's RNG states, so a resumed run continues exactly
as an uninterrupted one. Resuming on another layout reads the same files (resharding needs no conversion); only the
RNG states, which belong to ranks, cannot carry over, so with dropout the masks then differ from those of a run that
kept its layout.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from launch import compat
from launch.plan.hardware import bytes_text
from launch.plan.layout import ParallelLayout
from launch.plan.weights import checkpoint_layout
from launch.rundir.checkpoints import (
    CheckpointError,
    CheckpointRemoved,
    complete_record,
    complete_tags,
    file_entries,
    newest_intact,
    point_latest,
    reading,
    remove_checkpoints,
    unverified,
    write_complete,
)
from launch.rundir.files import COMPLETE, LATEST, TRAINER_FILE, checkpoint_step, checkpoint_tag, rng_file
from launch.train import shards
from launch.train.device import seed_tensor_parallel
from launch.train.hashed_save import save_hashed
from tokenizer.files import first_line, is_no_space, over_quota


def _rng_states(engine) -> dict:
    """Every random state a step draws from, the pipeline's count of forward passes included."""
    return {
        "micro_offset": compat.forward_count(engine),
        "torch": torch.get_rng_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _restore_rng(engine, states: dict) -> None:
    compat.set_forward_count(engine, states["micro_offset"])
    torch.set_rng_state(states["torch"])
    get_cuda_rng_tracker().set_states(states["tracker"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def rng_layout(directory: Path, step: int) -> ParallelLayout:
    """The layout of the ranks that wrote its RNG files (an offline reshard changes the other, not this)."""
    return checkpoint_layout(directory, step, "rng_layout")


def mark_complete(
    directory: Path,
    step: int,
    layout: ParallelLayout,
    rngs: ParallelLayout,
    checksums: Mapping[str, str],
    leave_out: frozenset[str] = frozenset(),
) -> None:
    """Marks the checkpoint of `step` complete: its step, the layouts of its parameter and RNG files, its files'
    hashes."""
    record = {"step": step, "layout": asdict(layout), "rng_layout": asdict(rngs)}
    write_complete(directory, checkpoint_tag(step), record, checksums, leave_out)


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
    compat.set_lr_schedule_step(engine.lr_scheduler, state["lr_steps"])
    engine.global_steps = state["global_steps"]
    engine.global_samples = state["global_samples"]
    engine.skipped_steps = state["skipped_steps"]


class NoSpace(Exception):
    """No room for a checkpoint (the previous one is kept) or for a record of the run directory: every rank stops."""


def filesystem(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def no_space_message(
    directory: Path, step: int, needed: int, then: str = "launch again to resume", number: int | None = None
) -> str:
    """The line for a checkpoint of `step` that `directory`'s filesystem (or, `number` EDQUOT, a quota there) has no
    room for: what is free (once a partial checkpoint is gone) against what it needs (`needed`, the estimate, unless
    it failed with that much free), what is kept, and what to do, `then`."""
    kept = _newest(directory)
    keeps = f"the step-{kept} checkpoint is kept" if kept else "there is no checkpoint yet"
    if number == errno.EDQUOT:  # what the filesystem has free says nothing of the quota's
        full = over_quota(filesystem(directory))
        return f"{full} for the step-{step} checkpoint of about {bytes_text(needed)} ({keeps}): free some, then {then}"
    free = shutil.disk_usage(directory).free
    needs = f"about {bytes_text(needed)}" if needed > free else f"more than {bytes_text(free)}"
    return (
        f"no space on {filesystem(directory)} for the step-{step} checkpoint: {bytes_text(free)} free, it needs "
        f"{needs} ({keeps}); free space there or move run_dir, then {then}"
    )


def _bytes_to_write(engine) -> int:
    """What this save writes on every rank together, about (a collective): the weights and Adam moments; the files of
    counters and RNG states are small."""
    every_rank = [0] * dist.get_world_size()
    dist.all_gather_object(every_rank, shards.bytes_to_write(engine))
    return sum(every_rank)


def _newest(directory: Path) -> int | None:
    return newest_intact(directory, log=lambda line: None)


def from_rank_0(value: object) -> object:
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def save(
    engine,
    directory: Path,
    step: int,
    keep: int,
    layout: ParallelLayout,
    before_commit: Callable[[int], None] = lambda step: None,
) -> None:
    """Called on every rank at the same step; `before_commit` runs on each once its files are written. NoSpace on
    every rank, the partial checkpoint removed, when its filesystem has no room for it."""
    tag, rank = checkpoint_tag(step), dist.get_rank()
    needed = _bytes_to_write(engine)
    problem = None
    if rank == 0:
        shutil.rmtree(directory / tag, ignore_errors=True)  # a save of this step that crashed before
        directory.mkdir(parents=True, exist_ok=True)
        if needed > shutil.disk_usage(directory).free:
            problem = no_space_message(directory, step, needed)
        else:
            (directory / tag).mkdir()
    if problem := from_rank_0(problem):
        raise NoSpace(problem)
    written: dict[str, str] | int  # an errno: no room for this rank's files
    try:
        written = shards.write(engine, directory / tag, layout)
        if rank == 0:
            written[TRAINER_FILE] = save_hashed(_trainer_state(engine), directory / tag / TRAINER_FILE)
        written[rng_file(rank)] = save_hashed(_rng_states(engine), directory / tag / rng_file(rank))
    except OSError as error:
        if not is_no_space(error):
            raise
        written = error.errno
    before_commit(step)
    every_rank: list[dict[str, str] | int] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(every_rank, written)  # also: every rank has written its files
    if full := [entry for entry in every_rank if isinstance(entry, int)]:
        if rank == 0:
            shutil.rmtree(directory / tag, ignore_errors=True)
            problem = no_space_message(directory, step, needed, number=errno.EDQUOT if errno.EDQUOT in full else None)
        raise NoSpace(from_rank_0(problem))  # once the partial checkpoint is gone
    if rank == 0:
        try:
            checksums = {name: sha for files in every_rank for name, sha in files.items()}
            mark_complete(directory, step, layout, layout, checksums)
            point_latest(directory, tag)
        except OSError as error:  # its record, or `latest`, the last bytes the filesystem had room for
            if not is_no_space(error):
                raise
            if (directory / tag / COMPLETE).is_file():  # a start resumes from it with `latest` or not
                problem = (
                    f"no space on {filesystem(directory)} to point {LATEST} at the step-{step} checkpoint, which is "
                    "complete and kept: free space there or move run_dir, then launch again to resume from it"
                )
            else:
                shutil.rmtree(directory / tag, ignore_errors=True)
                problem = no_space_message(directory, step, needed, number=error.errno)
    if problem := from_rank_0(problem):
        raise NoSpace(problem)
    if rank == 0:
        _remove_old(directory, keep, current=tag)
    dist.barrier()


def _remove_old(directory: Path, keep: int, current: str) -> None:
    """Keeps the newest `keep` complete checkpoints; removes older ones and every incomplete one but `current`."""
    complete, incomplete = complete_tags(directory)
    doomed = set(complete[:-keep] if keep > 0 else []) | set(incomplete)
    remove_checkpoints(directory, sorted(doomed - {current}))


def check_writable(directory: Path) -> None:
    """Before the first step rather than at the first save: every rank can write into `directory` (a collective; a
    CheckpointError on every rank where one cannot)."""
    probe = directory / f".writable-rank{dist.get_rank():05d}"
    problem = ""
    if directory.is_symlink() and not directory.exists():  # made here, it would be on the wrong filesystem
        problem = f"it links to {os.readlink(directory)}, which is not there on {socket.gethostname()}"
    else:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            problem = f"{error.strerror or error} on {socket.gethostname()}"
    problems: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    if reason := next((problem for problem in problems if problem), ""):
        raise CheckpointError(
            f"{directory} cannot be written ({reason}): make it writable, or give another run_dir; nothing was trained"
        )


def changed_files(directory: Path, tag: str) -> list[str]:
    """The files of checkpoint `tag` whose bytes are not what COMPLETE's hashes say, a few words each; each rank hashes
    its share of them. A collective: every rank gets the same answer."""
    rank, ranks = dist.get_rank(), dist.get_world_size()
    names = sorted(file_entries(complete_record(directory, tag)))
    bad: list[list[str]] = [[] for _ in range(ranks)]
    dist.all_gather_object(bad, unverified(directory, tag, names[rank::ranks]))
    return [name for names in bad for name in names]


def verified_step(directory: Path) -> int:
    """The step of the newest checkpoint, from `latest` (or a newer complete one it does not name yet) down, whose
    files are all there and hash to what COMPLETE says (each rank hashes its share of them); 0 when there is none. A
    collective: every rank gets the same answer. One that fails is passed over, in one line, and left as it is; a
    CheckpointError when there were some and none verifies."""
    log = print if dist.get_rank() == 0 else (lambda line: None)
    step = newest_intact(directory, log)
    failed = []
    while step:
        if not (bad := changed_files(directory, checkpoint_tag(step))):
            return step
        failed.append(f"{checkpoint_tag(step)} ({', '.join(bad)})")
        log(f"corolla: checkpoint {directory / failed[-1]} fails its checksums: passing over it")
        step = newest_intact(directory, log, below=checkpoint_tag(step))
    if failed:
        raise CheckpointError(
            f"no checkpoint in {directory} verifies ({'; '.join(failed)} fail their checksums): restore their files "
            "from a copy, or start the run again in a new run_dir"
        )
    return 0


def load(engine, directory: Path, step: int, layout: ParallelLayout, seed: int) -> ParallelLayout:
    """Restores everything `save` wrote at `step` on this rank, whatever layout saved it; returns that layout.

    On the layout that saved it, each rank takes back its own RNG states. On another, rank r takes those of the old
    rank r (rank 0's where there was none), and a tensor-parallel RNG seeded anew from `seed`, the step and its TP
    rank, since borrowed ones could coincide on two TP ranks.
    """
    tag, rank = checkpoint_tag(step), dist.get_rank()
    saved = checkpoint_layout(directory, step)
    rngs = rng_layout(directory, step)
    rng_rank = rank if rngs == layout or rank < rngs.world_size else 0
    try:
        trainer = torch.load(directory / tag / TRAINER_FILE, weights_only=False)
        shards.restore(engine, shards.ShardReader(directory / tag, saved), trainer["adam_steps"])
        _restore_trainer(engine, trainer)
        rng = torch.load(directory / tag / rng_file(rng_rank), weights_only=False)
    except shards.ShardError as error:
        raise CheckpointError(f"checkpoint {directory / tag} does not fit this model: {error}") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {directory / tag} cannot be loaded ({first_line(error)}): "
            "restore its files, or point `latest` at an older complete checkpoint"
        ) from None
    _restore_rng(engine, rng)
    if rngs != layout:
        seed_tensor_parallel(seed + step)
    return saved


def load_weights(engine, checkpoint_dir: Path, growth: shards.EmbeddingGrowth | None = None) -> ParallelLayout:
    """Sets this rank's weights from the checkpoint in `checkpoint_dir` (another run's, or an import's), whatever
    layout saved it, and nothing else: optimizer, LR schedule, step and RNG start afresh; with `growth`, the word
    embedding grows. Returns its layout."""
    directory, tag = checkpoint_dir.parent, checkpoint_dir.name
    try:
        with reading(directory, checkpoint_step(tag)):  # found there at the launch (initial_weights)
            step = complete_record(directory, tag)["step"]
            if bad := changed_files(directory, tag):  # what the run learns from must be what was saved
                raise CheckpointError(
                    f"init_from's checkpoint {checkpoint_dir} fails its checksums ({', '.join(bad)}): restore its "
                    "files from a copy (an imported model: import it again); nothing was trained"
                )
            layout = checkpoint_layout(directory, step)
            shards.restore_weights(engine, shards.ShardReader(checkpoint_dir, layout), growth)
    except CheckpointRemoved:  # its run, training on, saved newer ones since the launch
        raise CheckpointError(
            f"init_from's checkpoint {checkpoint_dir} is gone (its run saved newer ones, or it was deleted): launch "
            "again, to start from what is there now; nothing was trained"
        ) from None
    except shards.ShardError as error:
        raise CheckpointError(f"init_from's checkpoint {checkpoint_dir} does not fit this model: {error}") from None
    except (RuntimeError, OSError, EOFError, KeyError) as error:
        raise CheckpointError(
            f"init_from's checkpoint {checkpoint_dir} cannot be loaded ({first_line(error)}): restore its "
            "files, or import the model again"
        ) from None
    return layout
