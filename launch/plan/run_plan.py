"""The run's plan: what every rank trains with, decided once before any rank starts and written into the run
directory, where each rank reads it instead of deciding again.

`make_plan` is a pure function of the job, the world size and the facts of the data (launch/data/facts.py): the
layout (launch/plan/policy.py), the ZeRO stage, the pipeline stage cut, the padded vocabulary and, on a GPU cluster
that gives its figures, the memory a GPU needs, which must fit. A job is planned for every world size it may get (an
elastic one for each node count of its range), so that whatever a start gets, its plan was checked before anything
was submitted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from launch.config.cluster import Scheduler
from launch.config.schemas import TrainJob
from launch.data.facts import DataFacts
from launch.plan.layout import ParallelLayout
from launch.plan.policy import layout_for, world_sizes
from launch.plan.report import check_memory
from launch.plan.stages import stage_cut
from launch.plan.zero import effective_zero_stage
from launch.rundir.files import PLAN_FILE
from model.config import FLEX_NEEDS_GPU, Attention
from tokenizer.files import write_atomically

Planned = TypeVar("Planned")


@dataclass(frozen=True)
class RunPlan:
    world_size: int
    layout: ParallelLayout
    zero_stage: int  # the one DeepSpeed gets (launch/plan/zero.py)
    micro_batch: int
    micro_batches: int  # a step at the full global batch, per data-parallel rank
    stage_bounds: tuple[int, ...]  # the first layer of each pipeline stage, then the layer count (model/layers.py)
    vocab_size: int  # the tokenizer's
    padded_vocab_size: int  # the embedding's rows under this TP
    memory_gib: float | None  # the planner's estimate a GPU, on a cluster that gives its GPUs' figures
    # Per language, how many held-out samples each validation uses: train.eval_samples, or what the language holds
    # cut to whole micro-batches of every data-parallel rank of every world size the run may get, so that each
    # validates the same samples (0: not validated). Empty: train.eval_interval=0. Required: a plan.json of an older
    # corolla, without it, is refused (launch again, which plans anew) rather than read as one that validates nothing.
    validation_samples: dict[str, int]
    # Bytes of text per predicted token of those samples (DataFacts): for bits per byte.
    validation_bytes_per_token: dict[str, float] = field(default_factory=dict)
    # init_from's embedding grows from this vocabulary to this run's (DataFacts); 0: it does not grow.
    grown_from_vocab: int = 0
    # The tokenizer the token files were encoded with (DataFacts), which every start finds them still encoded with
    # ("": not known, a plan of an older corolla's).
    tokenizer_fingerprint: str = ""

    @property
    def stages(self) -> list[range]:
        return [range(start, stop) for start, stop in zip(self.stage_bounds, self.stage_bounds[1:], strict=False)]

    def record(self) -> dict:
        return {**asdict(self), "layout": asdict(self.layout), "stage_bounds": list(self.stage_bounds)}

    @classmethod
    def from_record(cls, record: dict) -> RunPlan:
        bounds = tuple(record["stage_bounds"])
        return cls(**{**record, "layout": ParallelLayout(**record["layout"]), "stage_bounds": bounds})


def _layout(job: TrainJob, world_size: int) -> ParallelLayout:
    layout = layout_for(job, world_size)
    problems = layout.problems(job.model, job.train)
    if problems:
        raise ValueError("impossible layout: " + "; ".join(problems))
    return layout


def make_plan(job: TrainJob, world_size: int, data: DataFacts, validation_batch: int = 0) -> RunPlan:
    """The plan of a start on `world_size` ranks; a one-line ValueError when the job cannot train so. Each language's
    validation samples are cut to a multiple of `validation_batch` (make_plans: one for every world size), or of
    this layout's micro_batch x dp."""
    layout = _layout(job, world_size)
    model = replace(job.model, vocab_size=data.vocab_size)
    train = job.train
    cut = stage_cut(model, layout.pp)
    samples, bytes_per_token = _validation(job, validation_batch or train.micro_batch * layout.dp, data)
    return RunPlan(
        world_size=world_size,
        layout=layout,
        zero_stage=effective_zero_stage(job.parallel.zero_stage, layout.dp, train.precision),
        micro_batch=train.micro_batch,
        micro_batches=layout.gradient_accumulation(train.micro_batch, train.global_batch),
        stage_bounds=(*(stage.start for stage in cut), cut[-1].stop),
        vocab_size=data.vocab_size,
        padded_vocab_size=model.padded_vocab_size(layout.tp),
        memory_gib=check_memory(replace(job, model=model), layout),
        validation_samples=samples,
        validation_bytes_per_token=bytes_per_token,
        grown_from_vocab=data.grown_from_vocab,
        tokenizer_fingerprint=data.tokenizer_fingerprint or "",
    )


def _validation(job: TrainJob, batch: int, data: DataFacts) -> tuple[dict[str, int], dict[str, float]]:
    """Every language's held-out samples cut to a multiple of `batch`, and their bytes of text per predicted
    token."""
    samples = {language: held // batch * batch for language, held in data.validation_samples.items()}
    seq_length = job.model.seq_length
    bytes_per_token = {
        language: sum(data.validation_sample_bytes[language][:count]) / (count * seq_length)
        for language, count in samples.items()
        if count and language in data.validation_sample_bytes
    }
    return samples, bytes_per_token


def _validation_batch(job: TrainJob, layouts: list[ParallelLayout]) -> int:
    """The fewest validation samples that make whole micro-batches of every data-parallel rank of every layout."""
    return math.lcm(*(job.train.micro_batch * layout.dp for layout in layouts))


def validation_shortfall(plans: list[RunPlan], job: TrainJob) -> str | None:
    """A line naming the languages validated on fewer than train.eval_samples samples, if any (every plan validates
    the same): validation is a measurement, so a language whose held-out documents are too short is measured on
    what they hold, or not at all, rather than refusing the run."""
    eval_samples, counts = job.train.eval_samples, plans[0].validation_samples
    short = {language: count for language, count in counts.items() if count < eval_samples}
    if not short:
        return None
    if not any(counts.values()):
        batch = _validation_batch(job, [plan.layout for plan in plans])
        return (
            f"corolla: warning: no language's held-out documents hold {batch} validation samples of seq_length + 1 = "
            f"{job.model.seq_length + 1} tokens (whole micro-batches of every data-parallel rank), so the run "
            "validates nothing: raise data.validation_documents, or set train.eval_interval=0"
        )
    counts = ", ".join(f"{language} {count}" for language, count in short.items())
    return (
        f"corolla: validation on fewer held-out samples than train.eval_samples={eval_samples} in {len(short)} "
        f"language(s), whose held-out documents are too short (0: not validated; raise data.validation_documents "
        f"for more): {counts}"
    )


def _for_each_world_size(job: TrainJob, plan: Callable[[int], Planned]) -> list[Planned]:
    """`plan` of every world size the job may get, the configured node count's first; an error names the node
    count of an elastic job that has no plan."""
    sizes = world_sizes(job.parallel, job.cluster)
    planned = []
    for nodes in sorted(sizes, key=lambda count: count != job.cluster.nodes):
        try:
            planned.append(plan(sizes[nodes]))
        except ValueError as error:
            if len(sizes) == 1:
                raise
            fewer = f", or raise cluster.min_nodes above {nodes}" if nodes < job.cluster.nodes else ""
            raise ValueError(f"parallel.elastic on {nodes} nodes: {error}{fewer}") from None
    return planned


def check_layouts(job: TrainJob) -> None:
    """What can be checked before the data exists: the nodes can run the attention kernel, and every world size has a
    layout that can train the job."""
    cluster = job.cluster
    if job.model.attention == Attention.flex and cluster.scheduler == Scheduler.slurm and not cluster.gpus_per_node:
        raise ValueError(f"cluster {cluster.name} has CPU nodes (cluster.gpus_per_node=0): {FLEX_NEEDS_GPU}")
    _for_each_world_size(job, lambda world_size: _layout(job, world_size))


def make_plans(job: TrainJob, data: DataFacts) -> list[RunPlan]:
    """A plan for every world size the job may get, the configured node count's first."""
    validation_batch = _validation_batch(job, _for_each_world_size(job, lambda world_size: _layout(job, world_size)))
    return _for_each_world_size(job, lambda world_size: make_plan(job, world_size, data, validation_batch))


def write_plans(run_dir: Path, plans: list[RunPlan]) -> None:
    write_atomically(run_dir / PLAN_FILE, json.dumps({"plans": [plan.record() for plan in plans]}, indent=1) + "\n")


def read_plans(run_dir: Path) -> list[RunPlan]:
    return _parsed(run_dir, lambda records: [RunPlan.from_record(record) for record in records])


def planned_layout(run_dir: Path) -> ParallelLayout:
    """The layout on the configured nodes, which the plan of every corolla records: what `corolla status` shows, also
    of a run an older corolla trains, whose plan the ranks of this one would refuse."""
    return _parsed(run_dir, lambda records: ParallelLayout(**records[0]["layout"]))


def _parsed(run_dir: Path, parse: Callable[[list[dict]], Planned]) -> Planned:
    path = run_dir / PLAN_FILE
    try:
        return parse(json.loads(path.read_text())["plans"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise ValueError(
            f"{path} cannot be read ({type(error).__name__}: {error}): launch the run again (corolla train or "
            "corolla submit), which plans it anew"
        ) from None


def read_plan(run_dir: Path, world_size: int) -> RunPlan:
    """The plan of a start on `world_size` ranks, as the launch wrote it."""
    plans = read_plans(run_dir)
    for plan in plans:
        if plan.world_size == world_size:
            return plan
    planned = ", ".join(str(plan.world_size) for plan in plans)
    raise ValueError(
        f"{run_dir} was planned for {planned} ranks, not the {world_size} this start has: launch it again for "
        "these nodes, or with parallel.elastic=true and cluster.min_nodes"
    )
