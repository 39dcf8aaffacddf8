"""`corolla submit`: a training job on a Slurm cluster, built with submitit from the resolved config.

The cluster is asked first whether the partition has the nodes and whether the run has a job queued or running
already; then the whole job is validated, its data prepared and planned for every node count it may get, and its run
directory written (launch/jobs/prepare.py), before anything is submitted. A sweep makes these checks of every
point (the job validated as by a dry run) before it submits any, and skips a point whose run has a job queued or
running. `--dry-run` asks nothing of the cluster, builds nothing and prints the sbatch script. The job's shape and,
for an elastic run, its chain: slurm/executor.py.
"""

from __future__ import annotations

import io
import shlex
from contextlib import redirect_stdout
from pathlib import Path

from launch import compat
from launch.config.cluster import ClusterConfig, Scheduler
from launch.config.schemas import TrainJob
from launch.jobs.prepare import finish_the_end, prepare_run, trained_to_the_end
from launch.plan.hardware import plural
from launch.plan.report import job_estimates
from launch.rundir.checkpoints import newest_intact
from launch.rundir.files import CHECKPOINTS
from launch.rundir.lock import holding
from launch.rundir.run_record import masked
from slurm.client import SlurmState, out_of_service, partition_limits, partition_nodes
from slurm.commands import HINT, SlurmError
from slurm.executor import job_partition, make_executor, submit_elastic, submit_job
from slurm.jobs import excluded_nodes, live_jobs, lost_submissions, record_lost_job
from slurm.task import TrainingTask
from tokenizer.files import first_line


def check_partition(cluster: ClusterConfig, excluded: set[str]) -> None:
    """The partition exists and has the nodes the job asks for, the `excluded` ones left out (asks sinfo)."""
    nodes, partition, available, limit, unavailable = _asked(cluster, "cluster.partition", cluster.partition)
    _check_takes(cluster, "cluster.partition", partition, available, limit)
    usable = nodes[partition] - excluded
    if len(usable) < cluster.nodes:
        left_out = nodes[partition] & excluded
        because = (
            f" once {', '.join(sorted(left_out))} (cluster.exclude, or found unfit) are left out" if left_out else ""
        )
        raise ValueError(
            f"cluster.nodes={cluster.nodes} but partition {partition} has {plural(len(usable), 'node')}{because}: "
            "lower cluster.nodes (and the layout with it)"
        )
    _check_in_service(cluster, partition, usable, unavailable)


def check_cpu_partition(cluster: ClusterConfig) -> None:
    """cluster.cpu_partition, where a pipeline's data stages run, exists and takes their jobs (asks sinfo)."""
    _, partition, available, limit, _ = _asked(cluster, "cluster.cpu_partition", cluster.cpu_partition)
    _check_takes(cluster, "cluster.cpu_partition", partition, available, limit)


def _asked(
    cluster: ClusterConfig, setting: str, named: str | None
) -> tuple[dict[str, set[str]], str, str, int | None, dict[str, str]]:
    """sinfo's answers for the partition a job asking for `named` (`setting`) runs in: every partition's nodes, the
    partition, whether it takes jobs, its time limit, its nodes out of service. A ValueError where there is none."""
    try:
        nodes = partition_nodes()
        partition = job_partition(named, nodes)
        available, limit = partition_limits(partition) if partition in nodes else ("up", None)
        unavailable = out_of_service(partition) if partition in nodes else {}
    except SlurmError as error:
        if error.hint != HINT:
            raise RuntimeError(f"cannot reach Slurm ({error}): {error.hint}") from None
        raise RuntimeError(f"cannot reach Slurm ({error}): is this a login node of {cluster.name}?") from None
    if partition not in nodes:
        choices = ", ".join(sorted(nodes))
        raise ValueError(f"{setting}={partition} does not exist on this cluster: choose one of {choices}")
    return nodes, partition, available, limit, unavailable


def _check_takes(cluster: ClusterConfig, setting: str, partition: str, available: str, limit: int | None) -> None:
    """sbatch queues a job that the partition's state (`available`, sinfo's word) or its time `limit` (minutes, None:
    none) forbids, where it waits for good."""
    if available != "up":
        raise ValueError(
            f"partition {partition} is {available} (sinfo): a job would wait in the queue until an admin brings it up; "
            f"choose another with {setting}=NAME, or submit once it is up"
        )
    if limit is not None and cluster.time_limit_min > limit:
        raise ValueError(
            f"cluster.time_limit_min={cluster.time_limit_min} is over partition {partition}'s limit of {limit} "
            f"minutes, where a job waits for good: set cluster.time_limit_min={limit} or less (a run resumes across "
            "time limits)"
        )


def _check_in_service(cluster: ClusterConfig, partition: str, usable: set[str], unavailable: dict[str, str]) -> None:
    """sbatch queues a job that needs more nodes than the partition has in service (the others drained or down: an
    admin's doing), where it waits until an admin resumes enough of them."""
    in_service, needed = len(usable - set(unavailable)), min(cluster.node_counts)
    if in_service >= needed:
        return
    out = "; ".join(f"{node} {why}" for node, why in sorted(unavailable.items()) if node in usable)
    raise ValueError(
        f"partition {partition} has {in_service} of the {needed} nodes the job needs in service ({out}): a job would "
        "wait until an admin resumes them (sinfo -R); lower cluster.nodes (and the layout with it), choose another "
        "partition with cluster.partition=NAME, or submit once they are back"
    )


def live_job_id(run_dir: Path) -> str | None:
    """The run's job queued or running, if any (live_job): two jobs training one run directory would overwrite each
    other's checkpoints."""
    live = live_job(run_dir)
    return live.job_id if live else None


def live_job(run_dir: Path) -> SlurmState | None:
    """The run's job queued or running, if any. A job a submission queued though its answer was lost is recorded
    first, then counted like any other; one held, which nothing will release (a submission cut off halfway), is
    refused."""
    for job_id, script in lost_submissions(run_dir).items():
        record_lost_job(run_dir, job_id, script)
        print(f"corolla: Slurm job {job_id} of {run_dir} was queued though sbatch's answer was lost: recorded")
    live = live_jobs(run_dir)
    if held := [state for state in live if state.reason == "JobHeldUser"]:
        raise ValueError(
            f"{run_dir} has Slurm job {held[0].job_id} held, which nothing will release: `corolla cancel {run_dir}` "
            "first"
        )
    return live[0] if live else None


def submit_sweep(jobs: list[TrainJob], dry_run: bool = False) -> None:
    """Every job of a sweep, each its own Slurm job (not an array: each run keeps its own folder, logs and requeues),
    none submitted unless all are valid. A point whose run has a job queued or running is skipped, and said so: that
    job goes on training it, so that a sweep submitted again once some of its jobs have ended submits those points
    and leaves the others to their jobs (a user could not sweep just the rest of a product of several keys)."""
    if dry_run:
        for job in jobs:
            submit_training(job, dry_run=True)
        return
    to_submit = []
    for job in jobs:
        if (live := check_training(job)) is None:
            to_submit.append(job)
        else:
            run_dir = shlex.quote(job.run_dir)
            print(
                f"skipped {job.run_dir}: Slurm job {live.job_id} {live.state} already, which goes on as it was "
                f"submitted (corolla status {run_dir}); to submit it anew with these settings, `corolla cancel "
                f"{run_dir}` first"
            )
    failed = []
    for job in to_submit:  # each point in turn, whatever Slurm said of the one before
        try:
            _submit_checked(job)
        except (ValueError, RuntimeError, OSError) as error:
            print(f"not submitted: {job.run_dir}: {first_line(error)}")
            failed.append(Path(job.run_dir).name)
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(jobs)} points not submitted ({', '.join(failed)}): see why above each; the same "
            "`corolla submit --multirun` again submits them, and skips the points queued or running"
        )


def check_training(job: TrainJob) -> SlurmState | None:
    """Every check `submit_training` makes, nothing submitted and nothing said but errors (and a job found queued
    though sbatch's answer was lost, which is recorded): the run's job queued or running, if any, in which case the
    job itself is not checked, as it is not submitted."""
    _check_slurm_cluster(job.cluster)
    check_partition(job.cluster, excluded_nodes(job.cluster.exclude, Path(job.run_dir)))
    if (live := live_job(Path(job.run_dir))) is not None:
        return live
    with redirect_stdout(io.StringIO()):  # its script unsaid: what else the dry run says, the submission says again
        _submit_training(job, dry_run=True)
    return None


def submit_training(job: TrainJob, dry_run: bool = False) -> None:
    cluster = job.cluster
    _check_slurm_cluster(cluster)
    if dry_run:
        _submit_training(job, dry_run=True)
        return
    check_partition(cluster, excluded_nodes(cluster.exclude, Path(job.run_dir)))
    _submit_checked(job)


def _submit_checked(job: TrainJob) -> None:
    """Submits a job whose cluster and partition were checked, unless its run is trained to its last step. As the
    run's one writer until its job is recorded: a second submission (or a `corolla train`) meanwhile is refused, and
    one after it finds the job."""
    run_dir = Path(job.run_dir)
    with holding(run_dir, live_job_id):
        last = newest_intact(run_dir / CHECKPOINTS)
        if said := trained_to_the_end(job, last):  # a job would only take nodes, and count a restart, to say so
            finish_the_end(run_dir, last)
            print(said)
            return
        _submit_training(job, dry_run=False)


def _check_slurm_cluster(cluster: ClusterConfig) -> None:
    if cluster.scheduler != Scheduler.slurm:
        raise ValueError(
            f"cluster={cluster.name} is not a Slurm cluster: choose one (cluster=testcluster, ...; conf/cluster/), "
            "or run `corolla train`"
        )


def _submit_training(job: TrainJob, dry_run: bool) -> None:
    cluster = job.cluster
    prepared = prepare_run(job, dry_run, live_job_id)
    executor = make_executor(cluster, prepared.run_dir)
    plan, train = prepared.plan, prepared.job.train
    print(
        f"{prepared.job.model.name} on {plural(cluster.nodes, 'node')} x {cluster.ranks_per_node} ranks of "
        f"{cluster.name}: TP {plan.layout.tp} x PP {plan.layout.pp} x DP {plan.layout.dp}, {train.micro_batch} "
        f"sequences a micro-batch, {plan.micro_batches} micro-batches a step"
    )
    for line in job_estimates(prepared.job, plan.layout):
        print(line)
    if dry_run:
        script = masked(compat.sbatch_script(executor))  # its secrets as MLflow's params say them
        print(f"dry run: the job is valid; this is the sbatch script, not submitted:\n\n{script}")
        return
    task = TrainingTask(str(prepared.run_dir.resolve()))
    if cluster.chained:
        job_id, next_job = submit_elastic(executor, cluster, prepared.run_dir, task)
        print(
            f"submitted Slurm job {job_id}, and job {next_job} to take over when it ends, on the nodes free then: "
            f"{prepared.run_dir}"
        )
    else:
        job_id = submit_job(executor, task, prepared.run_dir)
        print(f"submitted Slurm job {job_id}: {prepared.run_dir}")
    run_dir = shlex.quote(str(prepared.run_dir))
    print(f"  follow it: corolla status {run_dir}  |  corolla logs {run_dir}")
