"""cluster.sbatch and cluster.cpu_sbatch: sbatch options a site asks for that corolla has no setting of its own for
(a reservation, `hint: nomultithread`, mail), checked when the config is read and written into each job's script
by slurm/executor.py."""

from __future__ import annotations

import re
from typing import Any

# The options corolla or submitit write themselves, or that would break how they drive Slurm, and why each is not
# given here. sbatch also takes a long option by any unique prefix of its name: those are refused too.
OWN_OPTIONS = {
    "job-name": "corolla names the job after its run directory",
    "nodes": "set cluster.nodes (and cluster.min_nodes)",
    "ntasks": "set cluster.nodes, and the ranks a node: cluster.gpus_per_node or cluster.tasks_per_node",
    "ntasks-per-node": "set cluster.gpus_per_node or cluster.tasks_per_node (CPU nodes)",
    "tasks-per-node": "set cluster.gpus_per_node or cluster.tasks_per_node (CPU nodes)",
    "cpus-per-task": "set cluster.cpus_per_task",
    "cpus-per-gpu": "set cluster.cpus_per_task",
    "gpus": "set cluster.gpus_per_node",
    "gpus-per-node": "set cluster.gpus_per_node",
    "gpus-per-task": "set cluster.gpus_per_node",
    "gres": "set cluster.gpus_per_node",
    "time": "set cluster.time_limit_min",
    "signal": "set cluster.signal_delay_s",
    "partition": "set cluster.partition (cluster.cpu_partition for the data stages)",
    "account": "set cluster.account (cluster.cpu_account for the data stages)",
    "qos": "set cluster.qos",
    "constraint": "set cluster.constraint",
    "mem": "set cluster.mem_per_node_gb",
    "mem-per-cpu": "set cluster.mem_per_node_gb",
    "mem-per-gpu": "set cluster.mem_per_node_gb",
    "exclusive": "set cluster.exclusive",
    "oversubscribe": "set cluster.exclusive",
    "exclude": "set cluster.exclude",
    "use-min-nodes": "set cluster.min_nodes",
    "requeue": "corolla requeues a run's job itself (parallel.elastic: a chain of jobs instead)",
    "no-requeue": "corolla requeues a run's job itself (parallel.elastic: a chain of jobs instead)",
    "dependency": "corolla chains an elastic run's jobs and a pipeline's stages itself",
    "kill-on-invalid-dep": "corolla chains an elastic run's jobs and a pipeline's stages itself",
    "hold": "corolla holds an elastic run's first job until its next is queued",
    "array": "corolla makes the pipeline's encoding tasks an array itself",
    "output": "submitit writes each job's logs into RUN_DIR/slurm",
    "error": "submitit writes each job's logs into RUN_DIR/slurm",
    "open-mode": "submitit writes each job's logs into RUN_DIR/slurm",
    "wckey": "submitit sets it",
    "parsable": "submitit reads the job id from sbatch's usual answer",
    "wait": "corolla submit returns once the job is queued",
    "test-only": "it would submit nothing",
    "clusters": "corolla asks the cluster whose controller SLURM_CONF names, and no other",
    "export": "the ranks need the job's environment (give variables in cluster.env)",
}
_NAME = re.compile(r"[a-z][a-z0-9-]+")


def sbatch_options(options: dict[str, Any], setting: str) -> dict[str, str | bool]:
    """`options` (the setting `setting`, such as cluster.sbatch) as submitit writes them, `--name=value` or, for a
    value true, null or empty, `--name`; false leaves an option out. A one-line ValueError for an option that is not
    sbatch's long name, that corolla sets itself or cannot work with, or a value sbatch would not read as written."""
    written: dict[str, str | bool] = {}
    for key, value in options.items():
        name = str(key).replace("_", "-")
        if not _NAME.fullmatch(name):
            raise ValueError(f"{setting}.{key}: give an sbatch option by its long name without dashes (mail-type)")
        if own := next((option for option in OWN_OPTIONS if option.startswith(name)), None):
            spelled = "" if own == name else f" (sbatch may read {name}, a prefix of it, as it)"
            raise ValueError(f"{setting}.{key}: --{own} is not for this setting{spelled}: {OWN_OPTIONS[own]}")
        if value is False:
            continue
        if value is True or value is None or value == "":
            written[name] = True
            continue
        if isinstance(value, list | dict) or any(character in str(value) for character in "\n\r\0\\"):
            raise ValueError(
                f"{setting}.{key}={value!r}: give one value on one line, without backslashes (sbatch reads them as "
                "escapes)"
            )
        written[name] = str(value)
    return written
