"""`corolla checkpoint reshard`: rewrite a checkpoint's shards for another TP x PP layout, offline.

Not needed to change layouts (a run resumed on another layout reads the old shards directly); it moves the cost of
cutting slices out of the way of the next start and lets the old layout's files go. The new files are written beside
the old ones and `COMPLETE` is replaced atomically to name them, so a crash at any point leaves one complete
checkpoint: the old one or the new one.
"""

from __future__ import annotations

import time
from pathlib import Path

from launch.config.schemas import ReshardJob
from launch.plan.layout import ParallelLayout
from launch.plan.stages import stage_cut
from launch.plan.weights import checkpoint_layout, embedding_rows_problem
from launch.rundir.checkpoints import CheckpointError, file_entries, latest_step, step_record, verified
from launch.rundir.directory import RunDirectory
from launch.rundir.files import CHECKPOINTS, COMPLETE, checkpoint_tag, shard_file
from launch.train import checkpoint
from launch.train.hashed_save import save_hashed
from launch.train.shards import KEYS, ShardError, ShardReader, shard_files
from model.config import ModelConfig
from model.layers import EMBEDDING, TIED_PREFIX, holds
from tokenizer.files import is_no_space, sha256_of

TIED_EMBEDDING = TIED_PREFIX + EMBEDDING


def reshard_checkpoint(checkpoints: Path, step: int, target: ParallelLayout, model: ModelConfig) -> ParallelLayout:
    """Writes `target`'s shards of the checkpoint of `step` beside its own, then names them in COMPLETE; returns the
    layout it had. One that fails (a full disk: a CheckpointError that says so) removes what it wrote."""
    directory, saved = checkpoints / checkpoint_tag(step), checkpoint_layout(checkpoints, step)
    reader = ShardReader(directory, saved)
    if problem := embedding_rows_problem(model, reader.full_size(TIED_EMBEDDING, 0), saved.tp, target.tp):
        raise ShardError(problem)
    old = frozenset(shard_files(saved)) - frozenset(shard_files(target))
    # Those an older corolla recorded by size alone, and the reshard keeps, are hashed as they are: COMPLETE's form
    # now has a hash for each.
    entries = file_entries(step_record(checkpoints, step))
    checksums = {name: sha or sha256_of(directory / name) for name, (_, sha) in entries.items() if name not in old}
    for path in directory.rglob("*"):  # written by a reshard stopped halfway: no layout's, whatever it was for
        if path.is_file() and str(path.relative_to(directory)) not in {*entries, COMPLETE}:
            path.unlink()
    new = [name for name in shard_files(target) if name not in entries]
    try:
        checksums |= _write_shards(reader, directory, target, model)
        rngs = checkpoint.rng_layout(checkpoints, step)
        checkpoint.mark_complete(checkpoints, step, target, rngs, checksums, leave_out=old)
    except BaseException as error:
        if checkpoint_layout(checkpoints, step) == saved:  # COMPLETE not replaced: the new files are no one's
            for name in new:
                (directory / name).unlink(missing_ok=True)
        if isinstance(error, OSError) and is_no_space(error):
            raise CheckpointError(_no_space_message(checkpoints, step, saved, error.errno)) from None
        raise
    for name in old:
        (directory / name).unlink()
    return saved


def _no_space_message(checkpoints: Path, step: int, saved: ParallelLayout, number: int) -> str:
    """The new layout's shards need about as much room as the old one's."""
    entries = file_entries(step_record(checkpoints, step))
    needed = sum(entries[name][0] for name in shard_files(saved))
    return checkpoint.no_space_message(checkpoints, step, needed, then=f"reshard step {step} again", number=number)


def _write_shards(reader: ShardReader, directory: Path, target: ParallelLayout, model: ModelConfig) -> dict[str, str]:
    """`target`'s shard files, cut from `reader`'s, written into `directory`; their SHA-256s by name."""
    checksums = {}
    for pp_rank, layers in enumerate(stage_cut(model, target.pp)):
        names = [name for name in reader.names() if holds(name, layers, model.num_layers)]
        for tp_rank in range(target.tp):
            states = {
                name: {key: reader.local(name, key, target.tp, tp_rank).clone() for key in KEYS} for name in names
            }
            file = shard_file(tp_rank, target.tp, pp_rank, target.pp)
            checksums[file] = save_hashed(states, directory / file)
    return checksums


def reshard(job: ReshardJob) -> None:
    run = RunDirectory.open(job.run_dir)
    run_dir, train_job = run.path, run.train_job()
    directory = run_dir / CHECKPOINTS
    step = job.step or latest_step(directory)
    if not step:
        raise ValueError(f"{run_dir} has no complete checkpoint to reshard: train it first")
    verified(directory, step, "reshard")
    saved = checkpoint_layout(directory, step)
    target = ParallelLayout(job.tp or saved.tp, job.pp or saved.pp, job.dp or saved.dp)
    problems = target.problems(train_job.model, train_job.train)
    if problems:
        raise ValueError("impossible layout: " + "; ".join(problems))
    if (saved.tp, saved.pp) == (target.tp, target.pp):
        print(f"{directory / checkpoint_tag(step)} is already laid out for TP={target.tp} x PP={target.pp}")
        return
    start = time.perf_counter()
    reshard_checkpoint(directory, step, target, train_job.model)
    print(
        f"resharded step {step} of {run_dir} from {saved.name} to {target.name} in "
        f"{time.perf_counter() - start:.1f} s: resume it with parallel.tp={target.tp} parallel.pp={target.pp}"
    )
