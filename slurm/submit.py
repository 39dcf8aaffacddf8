"""`corolla submit`: a training job on a Slurm cluster, built with submitit from the resolved config.

The whole job is validated and its run directory prepared (job.yaml, the MLflow run) before anything is
submitted, and on a GPU cluster that gives its GPU memory a layout the planner says will not fit is refused
(launch/plan.py); `--dry-run` stops there and prints the sbatch script. The job asks for whole nodes with one task per
rank, `--requeue`, and USR2 `cluster.signal_delay_s` before the time limit; each task runs slurm.task.TrainingTask.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import submitit

from launch.launcher import elastic_layouts, prepare_run
from launch.plan import check_memory
from launch.run_files import JOBS_FILE, SUBMITIT_DIR
from launch.schemas import TrainJob
from slurm.config import ClusterConfig, Scheduler
from slurm.task import TrainingTask

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _single_line(name: str, value: str) -> str:
    """A value bound for the sbatch script; a line break or NUL would end its line and start a command."""
    if any(character in value for character in "\n\r\0"):
        raise ValueError(f"{name}={value!r} contains a line break: write it on one line")
    return value


def _setup_lines(cluster: ClusterConfig) -> list[str]:
    lines = [_single_line("cluster.setup", line) for line in cluster.setup]
    for name, value in cluster.env.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"cluster.env: {name!r} is not an environment variable name: use letters, digits and _")
        lines.append(f"export {name}={shlex.quote(_single_line(f'cluster.env.{name}', str(value)))}")
    return lines


def executor_parameters(cluster: ClusterConfig, job_name: str) -> dict:
    """submitit's SlurmExecutor parameters for a job of this cluster (every value a single line)."""
    optional = {
        "partition": cluster.partition,
        "account": cluster.account,
        "qos": cluster.qos,
        "constraint": cluster.constraint,
        "gpus_per_node": cluster.gpus_per_node or None,
        "mem": f"{cluster.mem_per_node_gb}GB" if cluster.mem_per_node_gb else None,
        "exclusive": True if cluster.exclusive else None,
    }
    parameters = {
        "job_name": _single_line("job name", job_name),
        "nodes": cluster.nodes,
        "ntasks_per_node": cluster.ranks_per_node,
        "cpus_per_task": cluster.cpus_per_task,
        "time": cluster.time_limit_min,
        "signal_delay_s": cluster.signal_delay_s,
        "setup": _setup_lines(cluster),
        # A rank that exits with an error ends the step at once instead of leaving the others waiting.
        "srun_args": ["--kill-on-bad-exit=1"],
        "additional_parameters": {"requeue": True},
    }
    if cluster.min_nodes:  # a range for sbatch; submitit keeps counting tasks from `nodes`, an int
        parameters["additional_parameters"]["nodes"] = f"{cluster.min_nodes}-{cluster.nodes}"
    parameters.update({key: _single_line(key, value) if isinstance(value, str) else value
                       for key, value in optional.items() if value is not None})  # fmt: skip
    return parameters


def make_executor(cluster: ClusterConfig, run_dir: Path) -> submitit.SlurmExecutor:
    folder = run_dir.resolve() / SUBMITIT_DIR
    _single_line("run_dir", str(folder))
    # Requeues are corolla's (slurm/task.py); submitit's own timeout budget must never be the one that stops a run.
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=10**6)
    executor.update_parameters(**executor_parameters(cluster, f"corolla-{run_dir.resolve().name}"))
    return executor


def sbatch_script(executor: submitit.SlurmExecutor) -> str:
    return executor._make_submission_file_text(executor._submitit_command_str, uid="dry-run")


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
    submitted = executor.submit(TrainingTask(str(prepared.run_dir.resolve())))
    record = prepared.run_dir / JOBS_FILE
    jobs = json.loads(record.read_text()) if record.is_file() else []
    record.write_text(json.dumps([*jobs, submitted.job_id]) + "\n")
    print(f"submitted Slurm job {submitted.job_id}: {prepared.run_dir}")
    print(f"  follow it: corolla status {prepared.run_dir}  |  corolla logs {prepared.run_dir}")
