"""A run's Slurm jobs as submitit builds them: the sbatch parameters of a cluster, submission, and an elastic run's
chain of jobs.

A job asks for whole nodes with one task per rank and USR2 `cluster.signal_delay_s` before the time limit; each task
runs slurm.task.TrainingTask. A job of a fixed size is submitted `--requeue` and comes back as the same job. Slurm
fixes a job's node count at its first allocation, so a requeued elastic job (`cluster.min_nodes`) would wait for as
many nodes as it first had; an elastic run is instead a chain of jobs, `--no-requeue`: each start queues the next
job, `afterany` itself, asking for `min_nodes-nodes` again, and the run's end cancels it. Every job of a run leaves
out `cluster.exclude` and the nodes its health checks found unfit (launch/train/health.py); a start that finds one
gives way to a job without it (`replace_job`).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import submitit

from launch import compat
from launch.config.cluster import ClusterConfig
from launch.config.sbatch import sbatch_options
from launch.rundir.files import SUBMITIT_DIR
from slurm.client import out_of_service, partition_nodes
from slurm.commands import HINT, SlurmError, request, run_slurm
from slurm.jobs import excluded_nodes, jobs_after, record_job
from tokenizer.files import first_line

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# How long the ranks of a step have, once one of them has exited, before srun ends them.
STEP_WAIT_S = 60


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


def srun_arguments(cpus_per_task: int) -> list[str]:
    """srun's options for a job's tasks. The task's cores are asked again: since Slurm 22.05 srun no longer inherits
    sbatch's --cpus-per-task, and without it each task gets (and is bound to) one core, so that a rank's data loading
    and compilation, or a data stage's every worker, shared a single core.
    When a rank dies, the others end the step by themselves once they have requeued the job or given up, and said so
    (a collective with the dead rank fails); those stuck in one are ended a minute later. (srun's --kill-on-bad-exit
    ended them at once, in the middle of that bookkeeping.)"""
    return [f"--cpus-per-task={cpus_per_task}", "--kill-on-bad-exit=0", f"--wait={STEP_WAIT_S}"]


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
        "srun_args": srun_arguments(cluster.cpus_per_task),
        "additional_parameters": {
            **sbatch_options(cluster.sbatch, "cluster.sbatch"),
            **({"no_requeue": True} if cluster.chained else {"requeue": True}),
        },
    }
    if cluster.chained:  # a range for sbatch; submitit keeps counting tasks from `nodes`, an int
        parameters["additional_parameters"]["nodes"] = f"{cluster.min_nodes}-{cluster.nodes}"
    parameters.update(
        {
            key: _single_line(key, value) if isinstance(value, str) else value
            for key, value in optional.items()
            if value is not None
        }
    )
    return parameters


def job_name(run_dir: Path, stage: str = "") -> str:
    return f"corolla-{run_dir.resolve().name}" + (f"-{stage}" if stage else "")


def run_executor(run_dir: Path) -> submitit.SlurmExecutor:
    """An executor of the run's jobs, writing into its submitit folder, with no parameters yet."""
    folder = run_dir.resolve() / SUBMITIT_DIR
    _single_line("run_dir", str(folder))
    # Requeues are corolla's (slurm/task.py); submitit's own timeout budget must never be the one that stops a run.
    return submitit.SlurmExecutor(folder=folder, max_num_timeout=10**6)


def after_step_line(run_dir: Path) -> str:
    """The batch script's line after srun: a step whose ranks all died outright (slurm/task.py's after_step) is
    restarted as one whose ranks said so would be."""
    command = [sys.executable, "-m", "slurm.task", _single_line("run_dir", str(run_dir.resolve()))]
    return f"{shlex.join(command)} $?"


def make_executor(
    cluster: ClusterConfig, run_dir: Path, dependency: str | None = None, unfit: frozenset[str] = frozenset()
) -> submitit.SlurmExecutor:
    """The executor of the run's jobs; `dependency`: what the job waits for (sbatch's, e.g. afterany:JOB); `unfit`:
    nodes to leave out beside those the run leaves out already."""
    executor = run_executor(run_dir)
    executor.update_parameters(**executor_parameters(cluster, job_name(run_dir)), teardown=[after_step_line(run_dir)])
    waiting_for(executor, dependency)
    excluded = excluded_nodes(cluster.exclude, run_dir) | unfit
    if excluded:
        executor.update_parameters(exclude=_single_line("cluster.exclude", ",".join(sorted(excluded))))
    return executor


def waiting_for(executor: submitit.SlurmExecutor, dependency: str | None) -> submitit.SlurmExecutor:
    """Waits for `dependency`; should that fail, Slurm cancels the job rather than leaving it pending for ever."""
    if dependency:
        extra = {**executor.parameters.get("additional_parameters", {}), "kill_on_invalid_dep": "yes"}
        executor.update_parameters(dependency=dependency, additional_parameters=extra)
    return executor


# What mends a job sbatch refuses: what its words name is a setting of the cluster's config.
REFUSED_FIX = (
    "change the setting it names (cluster.partition, account, qos, time_limit_min, nodes, sbatch, ...; conf/cluster/) "
    "and submit again"
)


@contextmanager
def submitting() -> Iterator[None]:
    """Around submitit's submissions (it runs sbatch): outside this job's variables (outside_this_job), and a job
    sbatch does not take a SlurmError in one line that names what sbatch said and what mends it."""
    try:
        with outside_this_job(), compat.sbatch_refusals():
            yield
    except compat.SbatchRefused as refusal:
        said = SlurmError(f"sbatch: {refusal}")
        fix = said.hint if said.hint != HINT else REFUSED_FIX
        raise SlurmError(f"Slurm did not take the job ({said}): {fix}") from None


def submit_job(executor: submitit.SlurmExecutor, task: Callable[[], None], run_dir: Path) -> str:
    """Submits the task and records the job in the run directory; its job id."""
    with submitting():
        job_id = executor.submit(task).job_id
    record_job(run_dir, job_id)
    return job_id


def queue_next_job(
    cluster: ClusterConfig, run_dir: Path, task: Callable[[], None], job_id: str, upstream: str | None = None
) -> str | None:
    """An elastic run's next job, pending until this one ends (and what this one waits for, `upstream`: a pipeline's
    stage before, whose failure cancels both), unless the run already has one; its id (None then)."""
    if jobs_after(run_dir, job_id):
        return None
    dependency = ",".join(filter(None, [f"afterany:{job_id}", upstream]))
    return submit_job(make_executor(cluster, run_dir, dependency), task, run_dir)


def submit_elastic(
    executor: submitit.SlurmExecutor, cluster: ClusterConfig, run_dir: Path, task: Callable[[], None]
) -> tuple[str, str | None]:
    """An elastic run's first job and its next; the first is held until the next is queued, or it could start first
    and queue a next job of its own."""
    held = {**executor.parameters["additional_parameters"], "hold": True}
    executor.update_parameters(additional_parameters=held)
    job_id = submit_job(executor, task, run_dir)
    try:
        next_job = queue_next_job(cluster, run_dir, task, job_id, executor.parameters.get("dependency"))
    except Exception as error:  # a held job nothing would release
        if request("scancel", job_id):
            raise
        raise RuntimeError(
            f"{first_line(error)}; and Slurm job {job_id}, held until then, could not be cancelled: "
            f"`corolla cancel {shlex.quote(str(run_dir))}` once Slurm answers"
        ) from None
    except BaseException:
        request("scancel", job_id)
        raise
    try:
        run_slurm("scontrol", "release", job_id)
    except SlurmError as error:
        raise RuntimeError(
            f"Slurm job {job_id} is held and cannot be released ({error}): `scontrol release {job_id}`"
        ) from None
    return job_id, next_job


def job_partition(named: str | None, nodes: dict[str, set[str]]) -> str:
    """The partition a job that asks for `named` runs in, of those sinfo lists (`partition_nodes`): Slurm's default
    where it names none."""
    return named or next(iter(nodes), "")


def usable_nodes(cluster: ClusterConfig, run_dir: Path, unfit: frozenset[str]) -> int:
    """How many nodes of the partition the run's jobs could use: those in service, but the ones the run leaves out
    and `unfit`."""
    nodes = partition_nodes()
    partition = job_partition(cluster.partition, nodes)
    out = set(out_of_service(partition)) if partition in nodes else set()
    return len(nodes.get(partition, set()) - excluded_nodes(cluster.exclude, run_dir) - unfit - out)


def replace_job(
    cluster: ClusterConfig, run_dir: Path, task: Callable[[], None], job_id: str, unfit: frozenset[str]
) -> str:
    """A job in place of this one, queued behind it, that leaves the `unfit` nodes out too (an elastic run's next
    job, queued before they were found, gives way to it); its id."""
    replacement = submit_job(make_executor(cluster, run_dir, f"afterany:{job_id}", unfit), task, run_dir)
    for later in jobs_after(run_dir, job_id):
        if later != replacement:
            request("scancel", later)
    return replacement


def cancel_next_jobs(run_dir: Path, job_id: str) -> None:
    """The jobs queued after this one: the run has ended, or a person stopped it."""
    for later in jobs_after(run_dir, job_id):
        request("scancel", later)


@contextmanager
def outside_this_job() -> Iterator[None]:
    """sbatch from inside a job (an elastic run's next job, a submit from an allocation): the new job must not
    inherit this one's SLURM_* variables (its ids, counts, node list), only where the controller is."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name.startswith(("SLURM_", "SLURMD_", "SBATCH_")) and name != "SLURM_CONF"
    }
    for name in inherited:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(inherited)
