"""One training rank: `main` on every rank (`python -m launch.train RUN_DIR` under torchrun locally, the Slurm task on
a cluster).

It reads what the launch wrote into RUN_DIR: the job (job.yaml) and the plan for its world size (plan.json), joins
the process group, checks that the libraries lay the ranks out as planned, and trains.
"""

from __future__ import annotations

import math
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
from deepspeed.runtime.pipe.engine import PipelineEngine
from megatron.core import parallel_state

from launch import compat
from launch.config.job_file import read_job
from launch.config.schemas import NewRows, TrainJob
from launch.data.blend import BlendedDataset
from launch.data.corpus import TokenCorpus
from launch.data.facts import TokenizerChanged
from launch.plan.layout import ParallelLayout
from launch.plan.run_plan import RunPlan, read_plan
from launch.rundir.checkpoints import CheckpointError, check_not_lost, set_aside_newer
from launch.rundir.files import CHECKPOINTS, HISTORY_FILE, JOB_FILE, STOP_FILE, checkpoint_tag
from launch.rundir.history import RESUMED_FROM, UNFIT_NODES, Event, RunHistory
from launch.train import checkpoint
from launch.train.batches import validation_batches
from launch.train.device import device, init_distributed, seed_everything
from launch.train.engine import build_engine, check_groups
from launch.train.faults import Faults
from launch.train.health import HealthCheck, check
from launch.train.loop import Callbacks, DataShard, NonFiniteStep, train_steps
from launch.train.reporter import Reporter, written_by_rank_0
from launch.train.shards import EmbeddingGrowth
from launch.train.stopping import ERROR_PREFIX, REFUSED_EXIT, StopSignals, Watchdog
from tokenizer.added_pieces import AddedPieces
from tokenizer.files import is_no_space


def _record_start(
    reporter: Reporter,
    origin: dict[str, object],
    resumed_from: int,
    layout: ParallelLayout,
    saved_layout: ParallelLayout,
    set_aside: list[str],
) -> None:
    """The history's start (MLflow's tags are taken from it, launch/rundir/outbox.py): where this start runs, what it
    resumed (and the newer checkpoints it set aside), its layout and the one it was resharded from."""
    history = RunHistory(reporter.run_dir)
    change: dict[str, object] = {"layout": layout.name}
    if set_aside:
        change["set_aside"] = set_aside
    if saved_layout != layout:
        change["resharded_from"] = saved_layout.name
        print(f"resharded the step-{resumed_from} checkpoint from {saved_layout.name} to {layout.name}", flush=True)
    redone = reporter.steps_redone
    history.record(Event.start, **origin, **{RESUMED_FROM: resumed_from}, steps_redone=redone, **change)


def _record_if_room(run_dir: Path, event: Event, **details: object) -> None:
    """Records how the start ended, unless the run directory's filesystem is full: the line it says then is
    the record that matters."""
    try:
        RunHistory(run_dir).record(event, **details)
    except OSError as error:
        if not is_no_space(error):
            raise


def _record_divergence(run_dir: Path, rank: int, error: NonFiniteStep, ranks: list[int]) -> None:
    """History (MLflow: failed) and one line: which step, and the ranks whose gradients were not finite."""
    if rank != 0:
        return
    record = error.record
    if ranks:
        where = f"non-finite gradients on ranks {', '.join(map(str, ranks))}"
    elif not math.isfinite(record.loss):
        where = "non-finite loss"
    else:  # each rank's gradients finite, their norm past what a float holds
        where = "gradients too large for their norm to be held"
    diverged = {"step": record.step, "loss": str(record.loss), "grad_norm": str(record.grad_norm), "ranks": ranks}
    _record_if_room(run_dir, Event.diverged, **diverged)
    print(
        f"{ERROR_PREFIX}{error} ({where}): stopped without saving it; the weights are those before it. Lower "
        "train.lr, or let steps pass with train.skip_nonfinite=N, and launch again to resume from the last checkpoint",
        file=sys.stderr,
        flush=True,
    )


def _refuse(run_dir: Path, error: ValueError, says: bool) -> NoReturn:
    """Ends the start on what no restart would mend: one line and the history's refused, from the ranks that `says`
    (rank 0, of what every rank meets), and exit status REFUSED_EXIT. The history is what keeps a Slurm job from being
    requeued: a refusal that some ranks alone meet leaves the others to be killed, and srun ends with their signal."""
    if says:
        print(f"{ERROR_PREFIX}{error}", file=sys.stderr, flush=True)
        _record_if_room(run_dir, Event.refused, reason=str(error))
    raise SystemExit(REFUSED_EXIT) from None


def _record_no_space(run_dir: Path, rank: int, error: checkpoint.NoSpace) -> None:
    """One line and, where the full filesystem leaves room for it, the history's no_space (MLflow: failed)."""
    if rank != 0:
        return
    print(f"{ERROR_PREFIX}{error}", file=sys.stderr, flush=True)
    _record_if_room(run_dir, Event.no_space, reason=str(error))


def _data(run_dir: Path, job: TrainJob, plan: RunPlan) -> DataShard:
    """This rank's share of the token files, which must still be those the run was launched on: files encoded again
    in place since (by hand, or by a data cache other runs share) would train the checkpoints on other ids."""
    corpus = TokenCorpus(job.data.tokens_dir, job.data.validation_documents)
    found, tokens_dir = corpus.tokenizer_fingerprint, job.data.tokens_dir
    if plan.tokenizer_fingerprint and found != plan.tokenizer_fingerprint:
        raise TokenizerChanged(run_dir, plan.tokenizer_fingerprint, tokens_dir, found, tokens_dir)
    dp_rank = parallel_state.get_data_parallel_rank()
    validation = validation_batches(
        corpus, job.model.seq_length, job.train.micro_batch, plan.validation_samples, dp_rank, plan.layout.dp
    )
    dataset = BlendedDataset(corpus, job.data, job.model.seq_length)
    return DataShard(dataset, dp_rank, plan.layout.dp, validation)


def _growth(job: TrainJob, plan: RunPlan) -> EmbeddingGrowth | None:
    """How init_from's embedding grows to this run's vocabulary, if it does."""
    if not plan.grown_from_vocab:
        return None
    if job.init_new_rows == NewRows.random:
        return EmbeddingGrowth(plan.grown_from_vocab, None)
    tokenizer_dir = TokenCorpus(job.data.tokens_dir, job.data.validation_documents).tokenizer_dir
    return EmbeddingGrowth(plan.grown_from_vocab, AddedPieces.read(tokenizer_dir).decompositions)


def _starting_weights(engine, job: TrainJob, plan: RunPlan, directory: Path, first_step: int) -> ParallelLayout:
    """The run's own checkpoint of `first_step` in `directory` (returns the layout that saved it), else init_from's
    weights (grown as the plan says), else the random ones the engine has."""
    layout = plan.layout
    if first_step:
        return checkpoint.load(engine, directory, first_step, layout, job.seed)
    if job.init_from:
        saved = checkpoint.load_weights(engine, Path(job.init_from), _growth(job, plan))
        if torch.distributed.get_rank() == 0:
            print(f"starting from the weights of {job.init_from} ({saved.name}), optimizer afresh", flush=True)
    return layout


def _gives_way(health: HealthCheck, rank: int, unfit: dict[str, str]) -> bool:
    """After a health check: whether the start gives way to a job without the nodes it found unfit (rank 0 decides,
    and every rank follows)."""
    if not unfit:
        return False
    decision = [health.on_unfit(unfit) if rank == 0 else None]
    torch.distributed.broadcast_object_list(decision, src=0)
    return bool(decision[0])


@dataclass(frozen=True)
class RankStart:
    """What every part of a rank's start reads: the run, its job and plan, this rank, and what watches over it."""

    run_dir: Path
    job: TrainJob
    plan: RunPlan
    rank: int
    faults: Faults
    watchdog: Watchdog
    stop: StopSignals

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / CHECKPOINTS


def main(
    run_dir: Path,
    origin: dict[str, object] | None = None,
    on_stall: Callable[[], None] = lambda: None,
    stop: StopSignals | None = None,
    health: HealthCheck | None = None,
    sends: bool = True,
    gpu_per_task: bool = False,
) -> Event:
    """Trains this rank; `origin` says where (recorded in the run's history), `on_stall` runs if the watchdog fires,
    `stop` holds the stop signals received so far (installed here if not given), `health` checks the nodes first (on
    a cluster); rank 0 `sends` MLflow what the run writes, unless a launcher waiting on the ranks does;
    `gpu_per_task`: a rank that sees one GPU was given it (a Slurm task: device.gpu_of). Returns how the start ended:
    finished, stopped (a stop signal or train.exit_after), diverged, no_space or unfit (before it trained, or after a
    checkpoint: a GPU may break at any time, and a synchronous job goes at its slowest GPU's pace)."""
    stop = stop or StopSignals(run_dir / STOP_FILE)
    job = read_job(run_dir / JOB_FILE)
    watchdog = Watchdog(job.train.hang_timeout_s, on_stall, stop)
    compat.check_versions()
    try:
        init_distributed(job.train.hang_timeout_s, gpu_per_task)
    except ValueError as error:  # too few GPUs, which only ranks past the first meet: each says so
        _refuse(run_dir, error, says=True)
    rank = torch.distributed.get_rank()
    plan = read_plan(run_dir, torch.distributed.get_world_size())
    start = RankStart(run_dir, job, plan, rank, Faults.from_environment(rank), watchdog, stop)
    if health is not None and _gives_way(health, rank, check(health, start.faults.self_test(health.node)).unfit):
        watchdog.stop()
        # Every rank leaves the group before any exits: a process ending with the group's threads alive aborts.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        return Event.unfit
    data, engine, first_step, saved_layout = _set_up(start)
    start.faults.install(engine.module, first_step)
    watchdog.progress()  # start-up and a large checkpoint's load may take long; the steps start the clock again
    reporter = Reporter(run_dir, rank, job.train.steps, plan.validation_bytes_per_token, sends)
    origin = origin or {"host": socket.gethostname()}
    try:
        written_by_rank_0(
            rank == 0, run_dir, run_dir, lambda: _announce(start, reporter, origin, first_step, saved_layout)
        )
        return _train(start, engine, data, reporter, first_step, health)
    except checkpoint.NoSpace as error:
        _record_no_space(start.run_dir, start.rank, error)
        return Event.no_space
    finally:
        watchdog.stop()  # a stop that came in time is not to be taken for one that did not while MLflow lags
        reporter.close()


def _set_up(start: RankStart) -> tuple[DataShard, PipelineEngine, int, ParallelLayout]:
    """The model-parallel groups, this rank's data, the engine, and its weights: (data, engine, the checkpoint step
    it resumed from or 0, the layout that saved that checkpoint). What no restart would mend ends the start."""
    job, plan = start.job, start.plan
    parallel_state.initialize_model_parallel(plan.layout.tp, plan.layout.pp, create_gloo_process_groups=False)
    check_groups(plan, start.rank)
    seed_everything(job.seed)
    try:
        data = _data(start.run_dir, job, plan)
    except TokenizerChanged as error:  # another start would find the same files
        _refuse(start.run_dir, error, says=start.rank == 0)
    engine = build_engine(job.model, plan, job.train, job.parallel.activation_checkpointing, job.seed)
    try:
        checkpoint.check_writable(start.checkpoints)
        first_step = checkpoint.verified_step(start.checkpoints)
        check_not_lost(start.checkpoints, first_step)
        saved_layout = _starting_weights(engine, job, plan, start.checkpoints, first_step)
    except CheckpointError as error:
        _refuse(start.run_dir, error, says=start.rank == 0)
    return data, engine, first_step, saved_layout


def _announce(
    start: RankStart, reporter: Reporter, origin: dict[str, object], first_step: int, saved_layout: ParallelLayout
) -> None:
    """Rank 0: drops the records of the steps this start redoes, sets aside the checkpoints newer than the one
    resumed, says what it resumed, records the start."""
    reporter.begin(first_step)
    set_aside = set_aside_newer(start.checkpoints, first_step)
    for path in set_aside:
        print(f"corolla: set {path} aside: the steps after {first_step} are trained again", flush=True)
    if first_step:
        print(f"resumed from {start.checkpoints / checkpoint_tag(first_step)}", flush=True)
    _record_start(reporter, origin, first_step, start.plan.layout, saved_layout, set_aside)


def _train(
    start: RankStart,
    engine: PipelineEngine,
    data: DataShard,
    reporter: Reporter,
    first_step: int,
    health: HealthCheck | None,
) -> Event:
    """The steps from `first_step` on, until the last, a stop, a divergence, a full disk or unfit nodes found after a
    checkpoint; recorded in the history."""
    job, faults, watchdog = start.job, start.faults, start.watchdog
    gave_way = False

    def save(step: int) -> None:
        checkpoint.save(
            engine, start.checkpoints, step, job.train.keep_checkpoints, start.plan.layout, faults.before_commit
        )
        watchdog.progress()

    def gives_way(step: int) -> bool:
        """The health check after the checkpoint of `step`, in the run's health series: whether the start gives way."""
        nonlocal gave_way
        if health is not None:
            verdict = check(health, faults.self_test(health.node, mid_run=True), mid_run=True)
            reporter.health(step, verdict)
            gave_way = _gives_way(health, start.rank, verdict.unfit)
        watchdog.progress()
        return gave_way

    callbacks = Callbacks(
        on_step=reporter.step,
        on_validation=reporter.validation,
        save=save,
        should_stop=lambda: start.stop.agreed(device()),
        progress=watchdog.progress,
        gives_way=gives_way,
    )
    try:
        # The samples the checkpoint's steps trained (its engine counters; 0 for a fresh start): not first_step x
        # train.global_batch, which a resume with another batch size would skip or repeat samples by.
        consumed, seq_length = engine.global_samples, job.model.seq_length
        last, stopped = train_steps(engine, data, job.train, seq_length, first_step, consumed, faults.wrap(callbacks))
    except NonFiniteStep as error:
        _record_divergence(start.run_dir, start.rank, error, compat.adam_optimizer(engine).nonfinite_ranks)
        return Event.diverged
    torch.distributed.barrier()
    outcome = Event.stopped if stopped or last < job.train.steps else Event.finished
    history = start.run_dir / HISTORY_FILE
    written_by_rank_0(start.rank == 0, start.run_dir, history, lambda: _record_end(start, outcome, last, gave_way))
    return Event.unfit if gave_way else outcome


def _record_end(start: RankStart, outcome: Event, last: int, gave_way: bool) -> None:
    reason = {"signal": start.stop.received.name} if start.stop.received else {}
    if (start.run_dir / STOP_FILE).exists():
        reason = {"signal": STOP_FILE}
    if gave_way:
        reason = {"signal": UNFIT_NODES}
    RunHistory(start.run_dir).record(outcome, step=last, **reason)
