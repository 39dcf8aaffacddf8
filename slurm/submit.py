"""`corolla submit`: a training job on a Slurm cluster, built with submitit from the resolved config.

The whole job is validated and its run directory prepared (job.yaml, the MLflow run) before anything is
submitted, and on a GPU cluster that gives its GPU memory a layout the planner says will not fit is refused
(launch/plan.py), as is a run that has a job queued or running already; `--dry-run` stops there and prints the
sbatch script. The job's shape and, for an elastic run, its chain: slurm/executor.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from launch.launcher import elastic_layouts, prepare_run
from launch.plan import check_memory
from launch.schemas import TrainJob
from slurm.config import ClusterConfig, Scheduler
from slurm.executor import make_executor, sbatch_script, submit_elastic, submit_job
from slurm.jobs import recorded_jobs
from slurm.monitor import latest_states
from slurm.task import TrainingTask


def check_partition(cluster: ClusterConfig) -> None:
    """The partition exists and has the nodes the job asks for (asks sinfo)."""
    try:
        result = subprocess.run(["sinfo", "--noheader", "--format=%R %D"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"cannot reach Slurm (sinfo: {error}): is this a login node of {cluster.name}?") from None
    if result.returncode:
        raise RuntimeError(f"cannot reach Slurm: sinfo says {result.stderr.strip() or result.returncode}")
    nodes: dict[str, int] = {}
    for partition, count in (line.split() for line in result.stdout.splitlines()):  # a line per partition and state
        nodes[partition] = nodes.get(partition, 0) + int(count)
    partition = cluster.partition or next(iter(nodes), "")
    if partition not in nodes:
        raise ValueError(
            f"cluster.partition={partition} does not exist on this cluster: choose one of {', '.join(sorted(nodes))}"
        )
    if nodes[partition] < cluster.nodes:
        raise ValueError(
            f"cluster.nodes={cluster.nodes} but partition {partition} has {nodes[partition]} nodes: lower "
            "cluster.nodes (and the layout with it)"
        )


def check_no_live_job(run_dir: Path) -> None:
    """Two jobs training one run directory would overwrite each other's checkpoints."""
    for state in latest_states(recorded_jobs(run_dir)):
        if state.live:
            raise ValueError(
                f"{run_dir} has Slurm job {state.job_id} {state.state} already: let it run (corolla status "
                f"{run_dir}), or `corolla cancel {run_dir}` first"
            )


def submit_sweep(jobs: list[TrainJob], dry_run: bool = False) -> None:
    """Every job of a sweep, each its own Slurm job (not an array: each run keeps its own folder, logs and requeues),
    none submitted unless all are valid."""
    for job in jobs:
        submit_training(job, dry_run=True)
    if not dry_run:
        for job in jobs:
            submit_training(job)


def submit_training(job: TrainJob, dry_run: bool = False) -> None:
    if job.cluster.scheduler != Scheduler.slurm:
        raise ValueError(
            f"cluster={job.cluster.name} is not a Slurm cluster: choose one (cluster=testcluster, ...; conf/cluster/), "
            "or run `corolla train`"
        )
    if not dry_run:
        check_partition(job.cluster)
        check_no_live_job(Path(job.run_dir))
    # The whole job validated with nothing written yet, then the planner's memory check on its resolved shape.
    prepared = prepare_run(job, job.cluster.world_size, create=False)
    check_memory(prepared.job, prepared.layout)
    if job.parallel.elastic:
        for nodes, layout in elastic_layouts(prepared.job).items():
            try:
                check_memory(prepared.job, layout)
            except ValueError as error:
                raise ValueError(f"parallel.elastic on {nodes} nodes: {error}") from None
    if not dry_run:
        prepared = prepare_run(job, job.cluster.world_size)
    executor = make_executor(job.cluster, prepared.run_dir)
    layout = prepared.layout
    micro_batches = layout.gradient_accumulation(job.train.micro_batch, job.train.global_batch)
    print(f"{job.model.name} on {job.cluster.nodes} nodes x {job.cluster.ranks_per_node} ranks of {job.cluster.name}: "
          f"TP {layout.tp} x PP {layout.pp} x DP {layout.dp}, {job.train.micro_batch} sequences a micro-batch, "
          f"{micro_batches} micro-batches a step")  # fmt: skip
    if dry_run:
        print(f"dry run: the job is valid; this is the sbatch script, not submitted:\n\n{sbatch_script(executor)}")
        return
    task = TrainingTask(str(prepared.run_dir.resolve()))
    if job.cluster.chained:
        job_id, next_job = submit_elastic(executor, job.cluster, prepared.run_dir, task)
        print(f"submitted Slurm job {job_id}, and job {next_job} to take over when it ends, on the nodes free then: "
              f"{prepared.run_dir}")  # fmt: skip
    else:
        job_id = submit_job(executor, task, prepared.run_dir)
        print(f"submitted Slurm job {job_id}: {prepared.run_dir}")
    print(f"  follow it: corolla status {prepared.run_dir}  |  corolla logs {prepared.run_dir}")
