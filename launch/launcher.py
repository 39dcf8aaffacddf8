"""`corolla train`: validate the whole job before any process starts, prepare its run directory, run the ranks.

`prepare_run` is shared with `corolla submit` (slurm/submit.py): the job, its layout for the world size it will
get, and a run directory holding job.yaml and the MLflow run, or one clear line saying why it cannot run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import OmegaConf

from launch import checkpoint, tracking
from launch.data import BlendedDataset, TokenCorpus, validation_batches
from launch.history import RunHistory
from launch.layout import ParallelLayout
from launch.local import run_local
from launch.run_files import CHECKPOINTS, JOB_FILE
from launch.schemas import TrainJob
from launch.stopping import STOP_FILE
from model.pipeline import stage_problems
from slurm.config import Scheduler
from tokenizer.cache import cached_token_files


@dataclass(frozen=True)
class PreparedRun:
    job: TrainJob
    layout: ParallelLayout
    run_dir: Path
    tracked: tracking.TrackedRun | None  # None for a dry run


def elastic_layout(job: TrainJob, world_size: int) -> ParallelLayout:
    """The layout of an elastic job on `world_size` ranks: TP as configured (it stays within a node), the pipeline
    depth nearest the configured one that leaves a whole DP and can train this model and these batches."""
    tp, model, train = job.parallel.tp, job.model, job.train
    for pp in sorted(range(1, model.num_layers + 1), key=lambda depth: (abs(depth - job.parallel.pp), -depth)):
        if world_size % (tp * pp) == 0:
            layout = ParallelLayout(tp, pp, world_size // (tp * pp))
            if not layout.problems(model, train) + stage_problems(model, pp):
                return layout
    raise ValueError(
        f"parallel.elastic: no layout with tp={tp} trains this model and batch on {world_size} ranks: change "
        f"cluster.min_nodes, or make train.global_batch a multiple of train.micro_batch x every DP the nodes allow"
    )


def elastic_layouts(job: TrainJob) -> dict[int, ParallelLayout]:
    """The layout of an elastic job on each node count it may get; a one-line error naming a count that has none."""
    cluster, layouts = job.cluster, {}
    for nodes in cluster.node_counts:
        try:
            layouts[nodes] = elastic_layout(job, nodes * cluster.ranks_per_node)
        except ValueError as error:
            raise ValueError(f"on {nodes} nodes: {error}") from None
    return layouts


def layout_for(job: TrainJob, world_size: int) -> ParallelLayout:
    """The layout a (re)start on `world_size` ranks trains with."""
    if job.parallel.elastic:
        return elastic_layout(job, world_size)
    parallel = job.parallel
    return ParallelLayout.for_world(parallel.tp, parallel.pp, parallel.dp, world_size)


def _layout(job: TrainJob, world_size: int | None) -> ParallelLayout:
    """Locally the layout decides the world size (DP 1 unless given); on a cluster the nodes do. An elastic job is
    checked on every node count it may get."""
    parallel, cluster = job.parallel, job.cluster
    if world_size is None:
        return ParallelLayout.for_world(parallel.tp, parallel.pp, parallel.dp or 1, None)
    if cluster.min_nodes and not parallel.elastic:
        raise ValueError(
            f"cluster.min_nodes={cluster.min_nodes} lets Slurm run the job on fewer than {cluster.nodes} nodes: set "
            "parallel.elastic=true to let it change layout, or cluster.min_nodes=0"
        )
    if parallel.elastic:
        return elastic_layouts(job)[cluster.nodes]
    needed = parallel.tp * parallel.pp * parallel.dp
    if parallel.dp and needed != world_size:
        raise ValueError(
            f"parallel.tp={parallel.tp} x pp={parallel.pp} x dp={parallel.dp} needs {needed} ranks but cluster "
            f"{cluster.name} gives {cluster.nodes} nodes x {cluster.ranks_per_node} = {world_size}: set "
            f"cluster.nodes={-(-needed // cluster.ranks_per_node)}, or parallel.dp=0 to take DP from the nodes"
        )
    return ParallelLayout.for_world(parallel.tp, parallel.pp, parallel.dp, world_size)


def resolve(job: TrainJob, world_size: int | None = None) -> tuple[TrainJob, ParallelLayout, TokenCorpus]:
    """The job with its token files and the tokenizer's vocabulary filled in, its layout and data; a one-line
    ValueError if it cannot run."""
    layout = _layout(job, world_size)
    if job.data.tokens_dir is None:
        tokens_dir = cached_token_files(job.tokenizer, job.data.corpus, job.data.cache_dir, job.seed)
        job = replace(job, data=replace(job.data, tokens_dir=str(tokens_dir)))
    corpus = TokenCorpus(job.data.tokens_dir, job.data.validation_documents)
    if job.model.vocab_size and job.model.vocab_size != corpus.vocab_size:
        raise ValueError(
            f"model.vocab_size={job.model.vocab_size} but the tokenizer of {job.data.tokens_dir} has "
            f"{corpus.vocab_size} tokens: drop model.vocab_size (0 takes the tokenizer's) or re-encode the data"
        )
    job = replace(job, model=replace(job.model, vocab_size=corpus.vocab_size))
    problems = layout.problems(job.model, job.train) + stage_problems(job.model, layout.pp)
    if problems:
        raise ValueError("impossible layout: " + "; ".join(problems))
    BlendedDataset(corpus, job.data, job.model.seq_length)  # every weighted language holds a sample
    if job.train.eval_interval and not validation_batches(
        corpus, job.model.seq_length, job.train.micro_batch, job.train.eval_samples, 0, layout.dp
    ):
        raise ValueError(
            f"train.eval_interval={job.train.eval_interval} but data.validation_documents=0 holds nothing out for "
            "validation: raise data.validation_documents or set train.eval_interval=0"
        )
    return job, layout, corpus


def prepare_run(job: TrainJob, world_size: int | None, create: bool = True) -> PreparedRun:
    """Validates the job; with `create`, writes job.yaml and opens (or continues) its MLflow run."""
    if job.tracking.uri:
        tracking.check_reachable(job.tracking.uri)
    job, layout, corpus = resolve(job, world_size)
    run_dir = Path(job.run_dir)
    if not create:
        return PreparedRun(job, layout, run_dir, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / STOP_FILE).exists():
        (run_dir / STOP_FILE).unlink()
        print(f"removed {run_dir / STOP_FILE}, which stopped the previous launch")
    (run_dir / JOB_FILE).write_text(OmegaConf.to_yaml(OmegaConf.structured(job)))
    RunHistory(run_dir).record("launch", cluster=job.cluster.name)
    tags = {"layout": layout.name, "model": job.model.name, "cluster": job.cluster.name}
    tracked = tracking.open_run(run_dir, job.tracking.experiment, job, tags, job.tracking.uri)
    tracking.log_artifact(tracked, run_dir / JOB_FILE)
    if (corpus.tokenizer_dir / "metadata.json").is_file():
        tracking.log_artifact(tracked, corpus.tokenizer_dir / "metadata.json")
    return PreparedRun(job, layout, run_dir, tracked)


def launch_training(job: TrainJob) -> None:
    if job.cluster.scheduler != Scheduler.local:
        raise ValueError(f"cluster={job.cluster.name} is a Slurm cluster: submit to it with `corolla submit`")
    run_dir = Path(job.run_dir)
    resume_step = checkpoint.latest_step(run_dir / CHECKPOINTS)
    if resume_step and resume_step >= job.train.steps:
        print(f"{run_dir} is already trained to step {resume_step} of {job.train.steps}: nothing to do")
        return
    prepared = prepare_run(job, None)
    if resume_step:
        print(f"{run_dir} holds a checkpoint at step {resume_step}: resuming from it")
    layout, tracked = prepared.layout, prepared.tracked
    print(f"training {job.model.name} on {layout.tp} x {layout.pp} x {layout.dp} (TP x PP x DP) ranks in {run_dir}")
    status = run_local(run_dir, layout.world_size)
    if status:
        tracking.finish(tracked, succeeded=False)
        raise RuntimeError(f"training failed (a rank exited with status {status}): see its log above")
    print(f"done: checkpoints in {run_dir / CHECKPOINTS}; MLflow run {tracked.run_id}: {tracking.ui_command(tracked)}")
