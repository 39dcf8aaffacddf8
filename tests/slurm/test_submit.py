"""`corolla submit` on a real Slurm cluster (three nodes on this machine): a job across two nodes that meets a stop
signal, a time limit or a dead node ends with the losses of the same job run locally, one MLflow run, and nothing
done by hand; a 3D one that loses a node goes on, resharded, on the node left. Bad jobs are refused before anything
is submitted. Jobs whose point is not the layout run one rank a node: ranks start in half a minute on two cores."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from itertools import pairwise
from pathlib import Path
from unittest.mock import ANY

import pytest
from mlflow.tracking import MlflowClient
from test_monitor import counting
from tracking_server import MlflowServer

from conftest import (
    MULTILINGUAL,
    REPO_ROOT,
    cluster_in_environment,
    sbatch_that_refuses,
    sbatch_that_stops_the_controller,
    sbatch_whose_answer_is_lost,
)
from launch.cli import main
from launch.config.cluster import ClusterConfig, Scheduler
from launch.rundir.files import JOBS_FILE, PLAN_FILE
from launch.rundir.history import UNFIT_NODES, Event, RunHistory
from launch.rundir.records import last_records
from launch.rundir.run_record import recorded_run
from launch.train.faults import (
    ABORT_AT_STEP,
    CRASH_DURING_SAVE,
    FAIL_BEFORE_TRAINING,
    HANG_AT_STEP,
    NAN_AT_STEP,
    STEP_SECONDS,
    UNFIT_MID_RUN,
    UNFIT_NODE_FILE,
)
from slurm.client import slurm_state
from slurm.commands import UNREACHABLE_HINT
from slurm.executor import REFUSED_FIX, usable_nodes
from slurm.testcluster import ClusterSpec, TestCluster, wait_for

# A tiny BLOOM for 12 steps, a checkpoint every 2: long enough to kill a node or signal the job while it trains.
RUN = [
    "model.seq_length=32",
    "train.steps=12",
    "train.global_batch=8",
    "train.micro_batch=2",
    "seed=7",
    "train.checkpoint_interval=2",
    "train.hang_timeout_s=60",
]
THREE_D = ["cluster=testcluster", "parallel=3d"]
TWO_RANKS = ["cluster=testcluster", "cluster.tasks_per_node=1"]  # data parallel over two nodes


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[TestCluster]:
    """n1..n3 with 4 CPUs each; a job takes two of them (conf/cluster/testcluster.yaml), so one can fail."""
    with cluster_in_environment(ClusterSpec(nodes=3, gpus_per_node=0, cpus_per_node=4, accounting=True)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def mlflow_server(slurm_cluster: TestCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on the host's bridge address, where the nodes reach it; its URI."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), slurm_cluster.host_address)
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture(scope="module")
def local_losses(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("local") / "run"
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN]) == 0
    return losses(run_dir)


def losses(run_dir: Path) -> dict[int, float]:
    """The loss of each step, the last logged when a step was redone after a failure."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records}


def submit(run_dir: Path, tokens: Path, *overrides: str, shape: list[str] = TWO_RANKS) -> str:
    assert main(["submit", f"data.tokens_dir={tokens}", f"run_dir='{run_dir}'", *RUN, *shape, *overrides]) == 0
    return submitted(run_dir)[-1]


def submitted(run_dir: Path) -> list[str]:
    """The run's Slurm jobs, in the order they were queued."""
    return json.loads((run_dir / JOBS_FILE).read_text())


def job_state(cluster: TestCluster, job_id: str) -> str:
    record = cluster.run("scontrol", "show", "job", job_id, check=False).stdout
    return next((field.split("=")[1] for field in record.split() if field.startswith("JobState=")), "GONE")


def queued(cluster: TestCluster) -> set[str]:
    """The jobs queued or running: a test's own, and any that a test before it leaves ending."""
    return set(cluster.run("squeue", "--noheader", "--format=%i").stdout.split())


def wait_finished(cluster: TestCluster, run_dir: Path, job_id: str, timeout: float = 300) -> None:
    finished = lambda: any(e["event"] == "finished" for e in RunHistory(run_dir).events())  # noqa: E731
    ended = lambda: finished() and job_state(cluster, job_id) in ("COMPLETED", "GONE")  # noqa: E731
    assert wait_for(ended, timeout=timeout, interval=1.0), (job_state(cluster, job_id), logs(run_dir))


def wait_checkpoint(run_dir: Path, step: int, timeout: float = 180) -> None:
    latest = run_dir / "checkpoints" / "latest"
    reached = lambda: latest.is_file() and int(latest.read_text().strip().split("-")[1]) >= step  # noqa: E731
    assert wait_for(reached, timeout=timeout, interval=0.2), logs(run_dir)


def logs(run_dir: Path) -> str:
    errors = sorted((run_dir / "slurm").glob("*.err"))
    return "\n".join(f"== {path.name}\n{path.read_text()[-3000:]}" for path in errors)


def one_mlflow_value_per_step(run_dir: Path, expected: dict[int, float]) -> None:
    tracked = asdict(recorded_run(run_dir))
    history = MlflowClient(tracked["tracking_uri"]).get_metric_history(tracked["run_id"], "train_loss")
    assert sorted(metric.step for metric in history) == sorted(expected)
    assert {metric.step: metric.value for metric in history} == pytest.approx(expected, abs=1e-5)


def test_a_dead_node_costs_at_most_one_checkpoint_interval(
    slurm_cluster, tokens, local_losses, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(STEP_SECONDS, "1")  # the node dies mid-run, not after a run these cores finish in seconds
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, tokens)
    wait_checkpoint(run_dir, 2)  # its nodes are asked while it trains on, so that one dies right after checkpoint 4
    nodes = slurm_cluster.run("squeue", "--noheader", "--format=%N", "--jobs", job_id).stdout.strip()
    victim = slurm_cluster.run("scontrol", "show", "hostnames", nodes).stdout.split()[-1]
    wait_checkpoint(run_dir, 4)
    slurm_cluster.kill_node(victim)
    try:
        wait_finished(slurm_cluster, run_dir, job_id, timeout=420)
    finally:
        slurm_cluster.restart_node(victim)
    assert losses(run_dir) == pytest.approx(local_losses, abs=1e-5)
    _, second = RunHistory(run_dir).starts()
    assert second["restart"] >= 1 and victim not in subprocess_hostnames(slurm_cluster, second["nodes"])
    assert 0 <= second["steps_redone"] <= 2 and second["resumed_from_step"] >= 4
    assert RunHistory(run_dir).failures() == 1
    one_mlflow_value_per_step(run_dir, local_losses)


def subprocess_hostnames(cluster: TestCluster, node_list: str) -> list[str]:
    return cluster.run("scontrol", "show", "hostnames", node_list).stdout.split()


ELASTIC = ["parallel.elastic=true", "cluster.min_nodes=1"]


def replaced(cluster: TestCluster, run_dir: Path, elastic: bool, marked: Path) -> tuple[str, str, str]:
    """(the first job, the one that took over without the node `marked` names, that node), once the first job gave
    way: the job after it, or for an elastic run the one after the next job it had queued."""
    replaced_at = 2 if elastic else 1
    assert wait_for(lambda: len(submitted(run_dir)) > replaced_at, timeout=240), logs(run_dir)
    first_job, replacement, unfit = submitted(run_dir)[0], submitted(run_dir)[replaced_at], marked.read_text()
    assert f"ExcNodeList={unfit}" in cluster.run("scontrol", "show", "job", replacement).stdout
    wait_finished(cluster, run_dir, replacement)
    assert job_state(cluster, first_job) in ("COMPLETED", "GONE")
    if elastic:  # the next job the first had queued, cancelled for the one without the node
        assert job_state(cluster, submitted(run_dir)[1]) in ("CANCELLED", "GONE")
    return first_job, replacement, unfit


@pytest.mark.parametrize("elastic", [False, True], ids=["requeued", "elastic"])
def test_a_node_that_fails_its_health_check_is_left_out_by_a_job_that_takes_over(
    slurm_cluster, tokens, local_losses, tmp_path, capsys, monkeypatch, elastic
) -> None:
    # The node of the first job's rank 0 fails its self-test, in that job and any other, as a broken GPU would. An
    # elastic run's first job has a next job queued already: it is cancelled for the one that leaves the node out.
    marked = tmp_path / "unfit-node"
    monkeypatch.setenv(UNFIT_NODE_FILE, str(marked))
    run_dir = tmp_path / "run"
    submit(run_dir, tokens, "cluster.health_slowdown=100", *(ELASTIC if elastic else []))  # only failures count
    first_job, replacement, unfit = replaced(slurm_cluster, run_dir, elastic, marked)
    assert losses(run_dir) == pytest.approx(local_losses, abs=1e-5)
    [event] = [event for event in RunHistory(run_dir).events() if event["event"] == "unfit"]
    why = f"rank 0 failed its self-test (RuntimeError: injected: the device of {unfit} fails)"
    assert event["nodes"] == {unfit: why} and event["left_out"] and event["slurm_job"] == first_job
    [start] = RunHistory(run_dir).starts()  # the first job trained nothing
    assert start["slurm_job"] == replacement and unfit not in subprocess_hostnames(slurm_cluster, start["nodes"])
    assert RunHistory(run_dir).failures() == 0
    jobs = submitted(run_dir)
    if elastic:  # the first next job gave way; the replacement's own next job left the node out too, and was cancelled
        last_next = jobs[3]
        assert len(jobs) == 4
        assert wait_for(lambda: job_state(slurm_cluster, last_next) in ("CANCELLED", "GONE"), timeout=30)
        assert f"ExcNodeList={unfit}" in slurm_cluster.run("scontrol", "show", "job", last_next).stdout
    else:
        assert len(jobs) == 2
    one_mlflow_value_per_step(run_dir, local_losses)
    assert main(["status", f"run_dir={run_dir}"]) == 0
    assert f"unfit     job {first_job}: {unfit}: {why} (left out from then on)" in capsys.readouterr().out


def test_an_elastic_run_that_loses_a_node_goes_on_by_itself_on_the_node_left(
    slurm_cluster, tokens, local_losses, tmp_path, capsys, monkeypatch
) -> None:
    # Two of three nodes, then one of them dies while the third is drained: the run's next job, queued behind the
    # first, takes over on the one node left, resharded to half the ranks, with nothing done by hand. Steps of 2.5 s
    # at least: these cores once trained all 12 steps in 5 s, and the run had finished (its next job cancelled)
    # before the node died.
    monkeypatch.setenv(STEP_SECONDS, "2.5")
    run_dir, elastic = tmp_path / "run", ["parallel.elastic=true", "cluster.min_nodes=1"]
    submit(run_dir, tokens, *elastic, shape=THREE_D)
    first_job, next_job = submitted(run_dir)
    # What is checked of the running job is checked while it trains to step 4, so that the node dies soon after that
    # checkpoint: these commands take seconds on loaded cores, and the 8 steps left take 20 s.
    wait_checkpoint(run_dir, 2)
    assert main(["status", f"run_dir={run_dir}"]) == 0
    status = capsys.readouterr().out
    assert f"job {first_job}: RUNNING" in status and f"next: job {next_job} (latest of 2" in status, status
    assert "reason Dependency" in status
    assert main(["submit", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, *THREE_D, *elastic]) == 2
    assert f"has Slurm job {next_job} queued or running" in capsys.readouterr().err  # refused while a job of it lives
    nodes = subprocess_hostnames(slurm_cluster, RunHistory(run_dir).starts()[0]["nodes"])
    victim, survivor = nodes[-1], nodes[0]
    spare = next(node for node in slurm_cluster.spec.node_names if node not in nodes)
    wait_checkpoint(run_dir, 4)
    slurm_cluster.run("scontrol", "update", f"nodename={spare}", "state=drain", "reason=corolla-test")
    slurm_cluster.kill_node(victim)
    try:
        wait_finished(slurm_cluster, run_dir, next_job, timeout=420)
    finally:
        slurm_cluster.restart_node(victim)
        slurm_cluster.run("scontrol", "update", f"nodename={spare}", "state=resume")
    assert losses(run_dir) == pytest.approx(local_losses, abs=1e-5)
    first, second = RunHistory(run_dir).starts()
    assert first["layout"] == "tp2-pp2-dp2" and first["slurm_job"] == first_job
    assert second["slurm_job"] == next_job and second["nodes"] == survivor and second["layout"] == "tp2-pp2-dp1"
    assert second["resharded_from"] == "tp2-pp2-dp2" and second["resumed_from_step"] >= 4
    assert RunHistory(run_dir).failures() == 1
    # The job the second start queued behind itself was cancelled when the run finished.
    jobs = submitted(run_dir)
    assert len(jobs) == 3 and wait_for(lambda: job_state(slurm_cluster, jobs[2]) in ("CANCELLED", "GONE"), timeout=30)
    tracked = asdict(recorded_run(run_dir))
    tags = MlflowClient(tracked["tracking_uri"]).get_run(tracked["run_id"]).data.tags
    assert tags["layout"] == "tp2-pp2-dp1" and tags["corolla.resharded_from"] == "tp2-pp2-dp2"
    one_mlflow_value_per_step(run_dir, local_losses)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["cluster.partition=nope"], "cluster.partition=nope does not exist on this cluster: choose one of debug"),
        (["parallel.dp=4"], "needs 16 ranks but cluster testcluster gives 2 nodes x 4 = 8"),
        (["cluster.nodes=4", "parallel.dp=4"], "cluster.nodes=4 but partition debug has 3 nodes"),
        (["tracking.uri=http://10.77.0.1:9"], "tracking.uri=http://10.77.0.1:9 cannot be reached"),
        (
            ["cluster.exclude=[n1,n3]"],
            "partition debug has 1 node once n1, n3 (cluster.exclude, or found unfit) are left out: lower",
        ),
        (
            ["model.attention=flex"],
            "cluster testcluster has CPU nodes (cluster.gpus_per_node=0): model.attention=flex trains on GPUs only",
        ),
    ],
)
def test_bad_jobs_are_refused_before_anything_is_submitted(
    slurm_cluster, tokens, capsys, tmp_path, overrides, expected
):
    queued_before = queued(slurm_cluster)
    run_dir = tmp_path / "run"
    assert main(["submit", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, *THREE_D, *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("corolla: error: ") and expected in err and "\n" not in err
    assert not run_dir.exists() and queued(slurm_cluster) <= queued_before  # none new


def test_a_partition_down_or_with_a_shorter_time_limit_is_refused_before_anything_is_submitted(
    slurm_cluster, tokens, capsys, tmp_path
) -> None:
    """sbatch takes either job, which then waits in the queue for good (PartitionDown, PartitionTimeLimit)."""
    run_dir = tmp_path / "run"
    submit = ["submit", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, *TWO_RANKS]
    try:
        slurm_cluster.run("scontrol", "update", "partitionname=debug", "state=down")
        assert main(submit) == 2
        assert capsys.readouterr().err.strip() == (
            "corolla: error: partition debug is down (sinfo): a job would wait in the queue until an admin brings it "
            "up; choose another with cluster.partition=NAME, or submit once it is up"
        )
        slurm_cluster.run("scontrol", "update", "partitionname=debug", "state=up", "maxtime=30")
        assert main([*submit, "cluster.time_limit_min=45"]) == 2
        assert (
            capsys.readouterr()
            .err.strip()
            .startswith("corolla: error: cluster.time_limit_min=45 is over partition debug's limit of 30 minutes")
        )
    finally:
        slurm_cluster.run("scontrol", "update", "partitionname=debug", "state=up", "maxtime=infinite")
    assert not run_dir.exists()


def test_a_partition_without_the_nodes_in_service_is_refused_before_anything_is_submitted(
    slurm_cluster, tokens, capsys, tmp_path
) -> None:
    """Drained nodes take no job, yet sbatch takes one, which then waits for an admin to resume them ("Nodes required
    for job are DOWN, DRAINED or reserved for jobs in higher priority partitions")."""
    run_dir = tmp_path / "run"
    queued_before = queued(slurm_cluster)
    slurm_cluster.run("scontrol", "update", "nodename=n1,n3", "state=drain", "reason=bad link")
    try:
        assert main(["submit", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, *TWO_RANKS]) == 2
    finally:
        slurm_cluster.run("scontrol", "update", "nodename=n1,n3", "state=resume")
    # Slurm's state of a node: "drain*" where its slurmd was slow to answer too (a loaded machine), as sinfo says.
    assert re.fullmatch(
        r"corolla: error: partition debug has 1 of the 2 nodes the job needs in service \(n1 drain\*?: bad link; n3 "
        r"drain\*?: bad link\): a job would wait until an admin resumes them \(sinfo -R\); lower cluster\.nodes \(and "
        r"the layout with it\), choose another partition with cluster\.partition=NAME, or submit once they are back\n",
        capsys.readouterr().err,
    )
    assert not run_dir.exists() and queued(slurm_cluster) <= queued_before  # none new


def test_a_job_that_gives_way_counts_only_the_nodes_in_service(slurm_cluster, tmp_path) -> None:
    """Giving way to a job without unfit nodes counted drained ones: the job ended, and its replacement waited for an
    admin."""
    cluster = ClusterConfig(name="testcluster", scheduler=Scheduler.slurm, nodes=2, tasks_per_node=1)
    assert usable_nodes(cluster, tmp_path, frozenset({"n1"})) == 2
    slurm_cluster.run("scontrol", "update", "nodename=n3", "state=drain", "reason=bad link")
    try:
        assert usable_nodes(cluster, tmp_path, frozenset({"n1"})) == 1
    finally:
        slurm_cluster.run("scontrol", "update", "nodename=n3", "state=resume")


def test_dry_run_shows_bloom_176b_on_48_nodes_and_submits_nothing(tokens, capsys, tmp_path) -> None:
    run_dir = tmp_path / 'a "run" $(touch pwned)'
    # The test's token files are too small for BLOOM's sequences and validation: shorter ones, no validation.
    small_data = [f"data.tokens_dir={tokens}", "model.seq_length=32", "train.eval_interval=0"]
    args = ["submit", "--dry-run", "experiment=bloom-176b", *small_data, f"run_dir='{run_dir}'"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "TP 4 x PP 12 x DP 8" in out and "48 nodes x 8 ranks" in out
    for flag in (
        "--nodes=48",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--requeue",
        "--signal=USR2@600",
        "--partition=gpu_p5",
        "--exclusive",
    ):
        assert f"#SBATCH {flag}" in out, flag
    assert not run_dir.exists() and not Path("pwned").exists()


def test_a_dry_run_prints_the_sbatch_scripts_with_their_secrets_masked(tokens, capsys, tmp_path) -> None:
    secrets = ["+cluster.env.HF_TOKEN=hf_s3cret", "cluster.setup=['export WANDB_API_KEY=\"wb s3cret\"']"]
    small_data = [f"data.tokens_dir={tokens}", "model.seq_length=32", "train.eval_interval=0"]
    assert main(["submit", "--dry-run", *RUN, *TWO_RANKS, *small_data, *secrets, f"run_dir={tmp_path / 'r'}"]) == 0
    stages = ["pipeline", "--dry-run", "cluster=testcluster", f"data.corpus={MULTILINGUAL}", *secrets]
    assert main([*stages, f"run_dir={tmp_path / 'p'}"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    # the training job, then the pipeline's six
    assert out.count("export HF_TOKEN=***\n") == 7 and out.count("export WANDB_API_KEY=***\n") == 7, out


def test_sbatch_options_of_the_cluster_go_to_every_job_and_cpu_sbatch_to_data_stages_on_a_cpu_partition(
    tokens, capsys, tmp_path
) -> None:
    # jean-zay-a100 gives hint=nomultithread to both; testcluster gives none and has no cpu_partition.
    options = [
        "+cluster.sbatch.reservation=big",
        "+cluster.sbatch.mail_type='END,FAIL'",
        "+cluster.sbatch.overcommit=true",
        "+cluster.sbatch.comment=false",  # left out
        "+cluster.cpu_sbatch.reservation=cpus",
    ]
    flags = ["#SBATCH --reservation=big\n", "#SBATCH --mail-type=END,FAIL\n", "#SBATCH --overcommit\n"]
    small_data = [f"data.tokens_dir={tokens}", "model.seq_length=32", "train.eval_interval=0"]
    args = ["submit", "--dry-run", "experiment=bloom-176b", *small_data, *options, f"run_dir={tmp_path / 'run'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert all(out.count(flag) == 1 for flag in [*flags, "#SBATCH --hint=nomultithread\n"]), out
    assert "--comment" not in out and "--reservation=cpus" not in out
    # The pipeline: training and export, then the training job alone, on the cluster's partition; the four other
    # stages on cpu_p1, or not.
    for cluster, jobs, cpu_jobs in (("experiment=bloom-176b", 1, 5), ("cluster=testcluster", 6, 0)):
        stages = ["pipeline", "--dry-run", cluster, f"data.corpus={MULTILINGUAL}", *options, f"run_dir={tmp_path}/p"]
        assert main(stages) == 0
        out = capsys.readouterr().out
        assert all(out.count(flag) == jobs for flag in flags), (cluster, out)
        assert out.count("#SBATCH --reservation=cpus\n") == cpu_jobs, (cluster, out)
    # Jean Zay's CPU hours are an account of their own (cluster.cpu_account): a GPU account's was refused there.
    assert out.count("#SBATCH --account") == 0  # testcluster's, the loop's last
    assert main([*stages[:2], "experiment=bloom-176b", *stages[3:]]) == 0
    out = capsys.readouterr().out
    assert out.count("#SBATCH --account=six@cpu\n") == 5 and out.count("#SBATCH --account=six@a100\n") == 1
    # A CPU partition without an account of its own, and an account without a partition: cpu_sbatch goes with the
    # partition, the account with the stages (the first took cpu_sbatch from cpu_account).
    for cpu, cpu_options, accounts in (("cluster.cpu_partition=cpuq", 5, 0), ("cluster.cpu_account=lab@cpu", 0, 5)):
        assert main([*stages[:2], "cluster=testcluster", *stages[3:], cpu]) == 0
        out = capsys.readouterr().out
        assert out.count("#SBATCH --reservation=cpus\n") == cpu_options, (cpu, out)
        assert out.count("#SBATCH --reservation=big\n") == 6 - cpu_options, (cpu, out)
        assert out.count("#SBATCH --account=lab@cpu\n") == accounts, (cpu, out)
    # One of the cluster's own is changed with ++ (+ would add it, and it is there).
    args = ["submit", "--dry-run", "experiment=bloom-176b", *small_data, "++cluster.sbatch.hint=multithread"]
    assert main([*args, f"run_dir={tmp_path / 'run'}"]) == 0
    assert "#SBATCH --hint=multithread\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "refusal"),
    [
        ("+cluster.sbatch.time=10", "cluster.sbatch.time: --time is not for this setting: set cluster.time_limit_min"),
        ("+cluster.sbatch.no_requ=true", "cluster.sbatch.no_requ: --no-requeue is not for this setting (sbatch may"),
        ("+cluster.sbatch.tasks_per_node=1", "cluster.sbatch.tasks_per_node: --tasks-per-node is not for this setting"),
        (
            "+cluster.sbatch.parsable=true",
            "cluster.sbatch.parsable: --parsable is not for this setting: submitit reads",
        ),
        ("+cluster.cpu_sbatch.export=NONE", "cluster.cpu_sbatch.export: --export is not for this setting: the ranks"),
        ("+cluster.sbatch.A=six", "cluster.sbatch.A: give an sbatch option by its long name without dashes"),
        ("+cluster.sbatch.comment='a\nb'", "cluster.sbatch.comment='a\\nb': give one value on one line, without back"),
        (r"+cluster.sbatch.comment=a\b", r"cluster.sbatch.comment='a\\b': give one value on one line, without"),
        ("+cluster.sbatch.comment=[a,b]", "cluster.sbatch.comment=['a', 'b']: give one value on one line"),
    ],
)
def test_an_sbatch_option_corolla_sets_or_cannot_write_is_refused_before_anything_is_written(
    capsys, tmp_path, option, refusal
) -> None:
    run_dir = tmp_path / "run"
    assert main(["submit", "cluster=testcluster", option, f"run_dir={run_dir}"]) == 2
    assert capsys.readouterr().err.startswith(f"corolla: error: {refusal}")
    assert not run_dir.exists()


def cores_asked(script: str) -> list[tuple[str, str]]:
    """Each job's cores, as its sbatch and its srun ask for them."""
    asked = re.findall(r"#SBATCH --cpus-per-task=(\d+)\n.*?\nsrun ([^\n]*)", script, re.DOTALL)
    return [(sbatch, next(iter(re.findall(r"--cpus-per-task=(\d+)", srun)), "none")) for sbatch, srun in asked]


def test_every_srun_asks_again_for_the_cores_its_job_asked_for(tokens, capsys, tmp_path) -> None:
    """Since Slurm 22.05 srun does not inherit sbatch's --cpus-per-task: without its own, each task is bound to one
    core (a GPU rank's data loading and compilation, a data stage's every encoding worker on one core)."""
    small_data = [f"data.tokens_dir={tokens}", "model.seq_length=32", "train.eval_interval=0"]
    args = ["submit", "--dry-run", "experiment=bloom-176b", *small_data, f"run_dir={tmp_path / 'run'}"]
    assert main(args) == 0
    assert cores_asked(capsys.readouterr().out) == [("8", "8")]  # jean-zay-a100: 8 cores for each of 8 ranks a node
    stages = ["pipeline", "--dry-run", "experiment=bloom-176b", f"data.corpus={MULTILINGUAL}", f"run_dir={tmp_path}/p"]
    assert main(stages) == 0
    # tokenizer, evaluate, encode, prepare on a CPU node's 40 cores (cluster.cpu_cores); train; export
    assert cores_asked(capsys.readouterr().out) == [*[("40", "40")] * 4, ("8", "8"), ("40", "40")]


def test_cancelling_an_elastic_run_cancels_the_job_queued_behind_it_too(slurm_cluster, tokens, tmp_path, capsys):
    run_dir = tmp_path / "run"
    submit(run_dir, tokens, "parallel.elastic=true", "cluster.min_nodes=1")
    jobs = submitted(run_dir)
    assert len(jobs) == 2
    assert main(["cancel", f"run_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert all(f"cancelled Slurm job {job}" in out for job in jobs), out
    assert all(job_state(slurm_cluster, job) in ("CANCELLED", "GONE") for job in jobs)


def test_an_elastic_run_refused_at_a_start_cancels_the_job_that_start_queued(
    slurm_cluster, tokens, tmp_path, monkeypatch
) -> None:
    """The job that took over at the time limit refused the run (here its plan names other token files, as when they
    are encoded again under it): the job it had queued behind itself as it began started later, found nothing to do
    and ended, holding its nodes meanwhile, and showing as queued until then."""
    monkeypatch.setenv(STEP_SECONDS, "1")
    run_dir = tmp_path / "run"
    submit(run_dir, tokens, "parallel.elastic=true", "cluster.min_nodes=1", "train.steps=300")
    first = submitted(run_dir)[0]  # submit's is the job queued behind it
    assert wait_for(lambda: (run_dir / "metrics.jsonl").is_file(), timeout=180, interval=0.2), logs(run_dir)
    plan = json.loads((run_dir / PLAN_FILE).read_text())
    for each in plan["plans"]:
        each["tokenizer_fingerprint"] = "0" * 64
    (run_dir / PLAN_FILE).write_text(json.dumps(plan))
    for pid in job_ranks(first):
        os.kill(pid, signal.SIGUSR2)  # as the time limit's: the job queued behind this one takes over
    refused = lambda: RunHistory(run_dir).events()[-1]["event"] == "refused"  # noqa: E731
    assert wait_for(refused, timeout=180, interval=0.5), logs(run_dir)
    jobs = submitted(run_dir)
    assert len(jobs) == 3  # the first, the one that refused, the one it queued
    cancelled = lambda: job_state(slurm_cluster, jobs[-1]) == "CANCELLED"  # noqa: E731
    assert wait_for(cancelled, timeout=60, interval=0.5), (job_state(slurm_cluster, jobs[-1]), logs(run_dir))
    ended = lambda: job_state(slurm_cluster, jobs[1]) in ("FAILED", "COMPLETED", "GONE")  # noqa: E731
    assert wait_for(ended, timeout=60, interval=0.5), job_state(slurm_cluster, jobs[1])  # the next test's queue its own


def test_a_job_sbatch_refuses_is_one_line_naming_what_sbatch_said_and_the_fix(slurm_cluster, tokens, tmp_path, capsys):
    queued_before = queued(slurm_cluster)
    run_dir = tmp_path / "run"
    assert (
        main(["submit", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, *TWO_RANKS, "cluster.constraint=nope"])
        == 2
    )
    # submitit printed sbatch's own line before corolla's, which said it again and no fix.
    assert capsys.readouterr().err == (
        "corolla: error: Slurm did not take the job (sbatch: Batch job submission failed: Invalid feature "
        f"specification): {REFUSED_FIX}\n"
    )
    assert queued(slurm_cluster) <= queued_before  # none new
    # The run directory was written before sbatch ran: its status says what a refused submission needs, not what a
    # local run whose ranks died would.
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "no Slurm job: its submission did not go through" in out and "corolla train" not in out


def test_an_elastic_submission_that_slurm_cuts_off_names_the_held_job_it_leaves(
    slurm_cluster, tokens, tmp_path, capsys
):
    """The controller goes away between the first job (held until the next is queued) and the next: the held job
    cannot be cancelled either, and nothing would ever release it."""
    bin_dir = sbatch_that_stops_the_controller(slurm_cluster, tmp_path / "bin", at=2)
    run_dir, elastic = tmp_path / "run", ["parallel.elastic=true", "cluster.min_nodes=1"]
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:{path}"
    try:
        assert main(["submit", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, *TWO_RANKS, *elastic]) == 2
    finally:
        os.environ["PATH"] = path
        slurm_cluster.start_controller()
    held = submitted(run_dir)[-1]
    assert capsys.readouterr().err == (
        "corolla: error: Slurm did not take the job (sbatch: Batch job submission failed: Unable to contact slurm "
        f"controller (connect failure)): {UNREACHABLE_HINT}; and Slurm job {held}, held until then, could not be "
        f"cancelled: `corolla cancel {run_dir}` once Slurm answers\n"
    )
    assert job_state(slurm_cluster, held) == "PENDING"  # held: not "let it run"
    assert main(["submit", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, *TWO_RANKS, *elastic]) == 2
    assert f"has Slurm job {held} held, which nothing will release: `corolla cancel" in capsys.readouterr().err
    assert main(["cancel", str(run_dir)]) == 0
    assert job_state(slurm_cluster, held) in ("CANCELLED", "GONE")


def test_a_job_queued_though_sbatchs_answer_was_lost_is_found_by_the_next_submission(
    slurm_cluster, tokens, tmp_path, capsys
):
    """A busy controller can time out sbatch's answer after it queued the job: the submission fails, and submitting
    the run again must not queue a second job training into the same checkpoints. The job found trains the run (it
    failed at every start: submitit had left its task unnamed), and cancel finds it before it is recorded."""
    bin_dir, run_dir = sbatch_whose_answer_is_lost(tmp_path / "bin"), tmp_path / "run"
    arguments = ["submit", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, *TWO_RANKS]
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:{path}"
    try:
        assert main(arguments) == 2
    finally:
        os.environ["PATH"] = path
    assert "Socket timed out" in capsys.readouterr().err and not (run_dir / JOBS_FILE).exists()
    try:
        assert main(["status", str(run_dir)]) == 0
        assert "queued though sbatch's answer was lost (the submission said it failed): `corolla submit` the run" in (
            capsys.readouterr().out
        )
        assert main(arguments) == 2
        out, err = capsys.readouterr()
        lost = submitted(run_dir)
        assert len(lost) == 1
        assert f"Slurm job {lost[0]} of {run_dir} was queued though sbatch's answer was lost: recorded" in out
        assert f"has Slurm job {lost[0]} queued or running: let it run" in err
        wait_finished(slurm_cluster, run_dir, lost[0])
        assert RunHistory(run_dir).failures() == 0
        # Trained to its end, submitted again: a job took nodes to say so, and counted a restart.
        capsys.readouterr()
        assert main(arguments) == 0 and submitted(run_dir) == lost
        said = capsys.readouterr().out.strip().splitlines()  # the loss chart drawn first, as `corolla train` does
        assert said[-1] == f"{run_dir} is already trained to step 12 of 12: nothing to do"
    finally:
        assert main(["cancel", str(run_dir)]) == 0
    assert wait_for(lambda: not slurm_cluster.run("squeue", "--noheader").stdout.strip(), timeout=60)
    another = tmp_path / "another"  # lost too, and cancelled before any submission recorded it
    os.environ["PATH"] = f"{bin_dir}:{path}"
    try:
        assert main(["submit", f"data.tokens_dir={tokens}", f"run_dir={another}", *RUN, *TWO_RANKS]) == 2
    finally:
        os.environ["PATH"] = path
    [lost_again] = queued(slurm_cluster)
    capsys.readouterr()
    assert main(["cancel", str(another)]) == 0
    assert f"cancelled Slurm job {lost_again}" in capsys.readouterr().out


def test_an_elastic_job_asks_for_a_node_range_and_is_not_requeued_by_slurm(tokens, capsys, tmp_path) -> None:
    elastic = ["parallel.elastic=true", "cluster.min_nodes=1"]
    assert (
        main(
            [
                "submit",
                "--dry-run",
                f"data.tokens_dir={tokens}",
                f"run_dir={tmp_path / 'run'}",
                *RUN,
                *THREE_D,
                *elastic,
            ]
        )
        == 0
    )
    script = capsys.readouterr().out.splitlines()
    assert "#SBATCH --nodes=1-2" in script and "#SBATCH --no-requeue" in script and "#SBATCH --requeue" not in script


def test_time_limits_stop_requeue_and_resume_until_the_run_is_done(
    slurm_cluster, mlflow_server, tokens, tmp_path, monkeypatch
) -> None:
    # Two-minute jobs, USR2 60 s before the end (Slurm checks time limits every 30 s or so, so it may come that much
    # earlier), two ranks that take 5-30 s to start on these two cores: each job trains 0-55 s. Steps of at least
    # 1.5 s (their pace on these cores varies twofold; a fast machine trained 55 steps of 1 s in one job) make that
    # at most 37 of 40 steps, so two jobs or more. How many more depends on how fast ranks start (ranks that take
    # 30 s leave a job 0-30 s, four jobs or five), so no count of stops is asserted: each job trains on from where
    # the one before stopped, at least a step. The losses are those of the same steps trained locally.
    # Tracked on a server: every rank 0, before and after each requeue, logs to the same run there. And a run
    # directory whose name would run a command if it reached the sbatch script unquoted.
    long_run = ["train.steps=40", "train.checkpoint_interval=20"]
    local = tmp_path / "local"
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={local}", *RUN, *long_run]) == 0
    expected = losses(local)
    monkeypatch.setenv(STEP_SECONDS, "1.5")
    run_dir = tmp_path / 'a "run" $(touch pwned)'
    time_limit = ["cluster.time_limit_min=2", "cluster.signal_delay_s=60", f"tracking.uri={mlflow_server}"]
    job_id = submit(run_dir, tokens, *long_run, *time_limit)
    wait_finished(slurm_cluster, run_dir, job_id, timeout=600)
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()
    assert losses(run_dir) == pytest.approx(expected, abs=1e-5)  # two nodes, DP2, as on one process
    events = RunHistory(run_dir).events()
    stops = [event for event in events if event["event"] == "stopped"]
    assert stops and all(event["signal"] == "SIGUSR2" for event in stops), events
    assert [event["event"] for event in events] == ["launch", *["start", "stopped"] * len(stops), "start", "finished"]
    starts = RunHistory(run_dir).starts()
    assert all(start["slurm_job"] == job_id and start["steps_redone"] == 0 for start in starts)
    # Each job resumed where the one before stopped, and trained on: no job that stopped without a step.
    stopped_at = [event["step"] for event in stops]
    assert [start["resumed_from_step"] for start in starts] == [0, *stopped_at], events
    assert all(before < after for before, after in pairwise([0, *stopped_at])), events
    assert starts[0]["nodes"] in ("n[1-2]", "n[1,3]", "n[2-3]") and RunHistory(run_dir).failures() == 0
    tracked = asdict(recorded_run(run_dir))
    assert tracked["tracking_uri"] == mlflow_server
    one_mlflow_value_per_step(run_dir, expected)
    run = MlflowClient(mlflow_server).get_run(tracked["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["corolla.restarts"] == str(len(stops))
    assert run.data.tags["corolla.failures"] == "0" and run.data.tags["cluster"] == "testcluster"


def submit_breaking_mid_run(tmp_path: Path, tokens: Path, monkeypatch, *overrides: str) -> tuple[str, Path, Path]:
    """A run whose first job's rank 0 node fails its self-test from the check after the first checkpoint on, as a GPU
    that breaks while the run trains: (the job, the run directory, the file that names the node)."""
    marked = tmp_path / "unfit-node"
    monkeypatch.setenv(UNFIT_NODE_FILE, str(marked))
    monkeypatch.setenv(UNFIT_MID_RUN, "1")
    run_dir = tmp_path / "run"
    # health_slowdown=100: only failures count on shared cores.
    return submit(run_dir, tokens, "cluster.health_slowdown=100", *overrides), run_dir, marked


def events_after_launch(run_dir: Path) -> list[dict]:
    return [event for event in RunHistory(run_dir).events() if event["event"] != Event.launch]


@pytest.mark.parametrize("elastic", [False, True], ids=["requeued", "elastic"])
def test_a_node_found_unfit_after_a_checkpoint_is_left_out_by_a_job_that_resumes_from_that_checkpoint(
    slurm_cluster, tokens, local_losses, tmp_path, monkeypatch, elastic
) -> None:
    _, run_dir, marked = submit_breaking_mid_run(tmp_path, tokens, monkeypatch, *(ELASTIC if elastic else []))
    first_job, replacement, unfit = replaced(slurm_cluster, run_dir, elastic, marked)
    assert losses(run_dir) == pytest.approx(local_losses, abs=1e-5)
    events = events_after_launch(run_dir)
    assert [(event["event"], event.get("slurm_job")) for event in events] == [
        (Event.start, first_job),
        (Event.unfit, first_job),
        (Event.stopped, None),
        (Event.start, replacement),
        (Event.finished, None),
    ]
    why = f"rank 0 failed its self-test (RuntimeError: injected: the device of {unfit} fails)"
    assert events[1]["nodes"] == {unfit: why} and events[1]["left_out"]
    assert events[2]["step"] == 2 and events[2]["signal"] == UNFIT_NODES  # the first checkpoint: nothing redone
    assert events[3]["resumed_from_step"] == 2 and RunHistory(run_dir).failures() == 0


def test_a_node_found_unfit_after_a_checkpoint_with_no_other_to_take_over_is_trained_on_and_said_once(
    slurm_cluster, tokens, local_losses, tmp_path, monkeypatch, capsys
) -> None:
    # n3 left out: a job of two nodes has no other once one of its own is unfit.
    job, run_dir, marked = submit_breaking_mid_run(tmp_path, tokens, monkeypatch, "cluster.exclude=[n3]")
    wait_finished(slurm_cluster, run_dir, job)
    assert losses(run_dir) == pytest.approx(local_losses, abs=1e-5)
    events = events_after_launch(run_dir)
    # Each checkpoint before the last found the node unfit again (steps 2 to 10): the first check says so.
    assert [event["event"] for event in events] == [Event.start, Event.unfit, Event.finished]
    assert events[1]["nodes"] == {marked.read_text(): ANY} and not events[1]["left_out"]
    log = (run_dir / "slurm" / f"{job}_0_log.err").read_text()
    assert log.count("corolla: unfit: ") == 1 and "the partition has no other nodes for the run's 2" in log, log
    # Each check is in the run's health series, the node that failed it left out, and in MLflow and status.
    unfit = marked.read_text()
    (fit,) = {"n1", "n2"} - {unfit}
    checks = [json.loads(line) for line in (run_dir / "health.jsonl").read_text().splitlines()]
    assert [check["step"] for check in checks] == [2, 4, 6, 8, 10]
    assert all(list(check["seconds"]) == [fit] and check["slowdown"] == 1.0 for check in checks), checks
    tracked = recorded_run(run_dir)
    history = MlflowClient(tracked.tracking_uri).get_metric_history(tracked.run_id, "health_slowdown")
    assert sorted(metric.step for metric in history) == [2, 4, 6, 8, 10]
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    expected = f"health     after step 10: slowest node {fit}, 1.00x the fastest rank's self-test time"
    assert f"{expected} (cluster.health_slowdown=100)" in capsys.readouterr().out


def test_a_job_without_the_unfit_node_that_slurm_refuses_is_asked_for_again_at_the_next_checkpoint(
    slurm_cluster, tokens, local_losses, tmp_path, monkeypatch
) -> None:
    # The first sbatch is the submission's; the second, the job's first try at a replacement (the jobs inherit PATH).
    monkeypatch.setenv("PATH", f"{sbatch_that_refuses(tmp_path / 'bin', call=2)}:{os.environ['PATH']}")
    first_job, run_dir, _ = submit_breaking_mid_run(tmp_path, tokens, monkeypatch)
    assert wait_for(lambda: len(submitted(run_dir)) > 1, timeout=240), logs(run_dir)
    wait_finished(slurm_cluster, run_dir, submitted(run_dir)[1])
    assert losses(run_dir) == pytest.approx(local_losses, abs=1e-5)
    events = events_after_launch(run_dir)
    assert [(event["event"], event.get("left_out")) for event in events] == [
        (Event.start, None),
        (Event.unfit, False),  # after checkpoint 2: refused, trained on
        (Event.unfit, True),  # after checkpoint 4: queued
        (Event.stopped, None),
        (Event.start, None),
        (Event.finished, None),
    ]
    assert events[3]["step"] == 4 and events[4]["resumed_from_step"] == 4
    log = (run_dir / "slurm" / f"{first_job}_0_log.err").read_text()
    assert "no job without them could be queued (" in log and "Requested node configuration" in log, log


def test_a_stop_file_saves_and_ends_the_job_without_requeue(slurm_cluster, tokens, tmp_path) -> None:
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, tokens, "train.steps=300", "train.checkpoint_interval=50")
    assert wait_for(lambda: (run_dir / "metrics.jsonl").is_file(), timeout=180, interval=0.2), logs(run_dir)
    (run_dir / "STOP").touch()
    assert wait_for(lambda: job_state(slurm_cluster, job_id) in ("COMPLETED", "GONE"), timeout=120, interval=0.5)
    last = RunHistory(run_dir).events()[-1]
    assert last["event"] == "stopped" and last["signal"] == "STOP" and last["step"] < 300
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{last['step']:08d}"
    assert len(RunHistory(run_dir).starts()) == 1


def test_a_users_own_scancel_ends_the_job_without_requeue(slurm_cluster, tokens, tmp_path, monkeypatch, capsys) -> None:
    """scancel, not `corolla cancel`: no STOP file, and its SIGTERM read as a preemption, so the job saved, requeued
    itself and trained on, the cancel undone. Slurm's accounting says CANCELLED: the job saves and ends."""
    monkeypatch.setenv(STEP_SECONDS, "1")
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, tokens, "train.steps=300", "train.checkpoint_interval=50")
    assert wait_for(lambda: (run_dir / "metrics.jsonl").is_file(), timeout=180, interval=0.2), logs(run_dir)
    slurm_cluster.run("scancel", job_id)
    stopped = lambda: RunHistory(run_dir).events()[-1]["event"] == "stopped"  # noqa: E731
    assert wait_for(stopped, timeout=60, interval=0.5), logs(run_dir)
    time.sleep(20)  # a requeued job starts again ~12 s after its requeue here
    assert job_state(slurm_cluster, job_id) == "CANCELLED", logs(run_dir)
    last = RunHistory(run_dir).events()[-1]
    assert last["event"] == "stopped" and last["signal"] == "SIGTERM" and len(RunHistory(run_dir).starts()) == 1
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{last['step']:08d}"
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    assert f"slurm      job {job_id}: CANCELLED" in capsys.readouterr().out


ONE_NODE = ["cluster=testcluster", "cluster.nodes=1", "cluster.tasks_per_node=1"]


def test_a_run_that_diverges_fails_its_job_and_is_not_requeued(slurm_cluster, tokens, tmp_path, monkeypatch) -> None:
    """Its job ended COMPLETED with exit code 0: Slurm's accounting, and its mail to a user who asked for it on
    failure (`+cluster.sbatch.mail-type=FAIL`), said the run had done well."""
    monkeypatch.setenv(NAN_AT_STEP, "2")
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, tokens, "train.steps=4", shape=ONE_NODE)
    assert wait_for(lambda: job_state(slurm_cluster, job_id) in ("FAILED", "GONE"), timeout=180), logs(run_dir)

    def accounted() -> str:
        return slurm_cluster.run("sacct", "-j", job_id, "-X", "-n", "-P", "--format=State,ExitCode").stdout.strip()

    # The controller tells slurmdbd of the job's end a moment after the job left the queue: RUNNING until then.
    assert wait_for(lambda: accounted().split("|")[0] not in ("", "PENDING", "RUNNING", "COMPLETING"), timeout=60)
    assert accounted() == "FAILED|3:0", accounted()
    events = [event["event"] for event in RunHistory(run_dir).events()]
    assert events == ["launch", "start", "diverged"] and len(submitted(run_dir)) == 1
    tracked = recorded_run(run_dir)
    assert MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).info.status == "FAILED"


def test_a_sweep_submits_a_job_per_point_and_returns_at_once(
    slurm_cluster, tokens, tmp_path, monkeypatch, capsys, group_umask
) -> None:
    # Steps of 5 s: the first point's job cannot finish before the second point is submitted, however loaded the
    # machine (the first step could: its job once logged it before `submit` returned).
    monkeypatch.setenv(STEP_SECONDS, "5")
    token = "+cluster.env.HF_TOKEN=hf_s3cret"  # which each point's job.yaml keeps: readable by its owner alone
    args = [f"data.tokens_dir={tokens}", f"run_dir={tmp_path}", *RUN, *ONE_NODE, "train.steps=2,3", token]
    calls = counting(("sinfo",), tmp_path / "bin", monkeypatch)
    assert main(["submit", "--multirun", *args]) == 0
    asked = Counter(calls.read_text().splitlines())
    assert asked and set(asked.values()) == {2}, asked  # each point's partition checked once, not again as submitted
    runs = {steps: tmp_path / f"train.steps={steps}" for steps in (2, 3)}
    jobs = {steps: submitted(run_dir)[-1] for steps, run_dir in runs.items()}
    assert len(set(jobs.values())) == 2
    # Every point was checked first, as a dry run that printed its sbatch script under "dry run: ... not submitted".
    out = capsys.readouterr().out
    assert "dry run" not in out and "not submitted" not in out and "#SBATCH" not in out, out
    assert all(f"submitted Slurm job {jobs[steps]}: {run_dir}\n" in out for steps, run_dir in runs.items()), out
    assert all(f"{run_dir} keeps cluster.env.HF_TOKEN in plain text: made readable" in out for run_dir in runs.values())
    assert [run_dir.stat().st_mode & 0o777 for run_dir in runs.values()] == [0o700, 0o700] and "s3cret" not in out
    assert not any(event["event"] == "finished" for run_dir in runs.values() for event in RunHistory(run_dir).events())
    for steps, run_dir in runs.items():
        wait_finished(slurm_cluster, run_dir, jobs[steps])
    two, three = losses(runs[2]), losses(runs[3])
    assert sorted(two) == [1, 2] and sorted(three) == [1, 2, 3] and two[1] == pytest.approx(three[1], abs=1e-6)
    capsys.readouterr()
    assert main(["status", str(tmp_path)]) == 0
    rows = capsys.readouterr().out.splitlines()[2:-1]  # run, state, last event, step, loss, validation, time left
    last_validations = {n: json.loads((runs[n] / "validation.jsonl").read_text().splitlines()[-1]) for n in (2, 3)}
    validated = {
        n: f"{statistics.fmean(record['loss'].values()):.4f} at {record['step']}"
        for n, record in last_validations.items()
    }
    expected = [  # and the loss at step 2, the last both logged
        rf"train\.steps={n} +COMPLETED \(job {jobs[n]}\) +finished at {n} +{n}/{n} +{losses(runs[n])[n]:.4f} +"
        rf"{losses(runs[n])[2]:.4f} +{validated[n]} +done"
        for n in (2, 3)
    ]
    assert len(rows) == 2 and all(map(re.fullmatch, expected, rows)), rows
    # Named with their sweep in MLflow: another sweep's points, in the same store, have the same directories' names.
    for run_dir in runs.values():
        tracked = recorded_run(run_dir)
        name = MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).info.run_name
        assert name == f"{tmp_path.name}/{run_dir.name}"


def test_a_sweep_point_slurm_refuses_leaves_the_points_after_it_submitted(
    slurm_cluster, tokens, tmp_path, monkeypatch, capsys
) -> None:
    """The sweep stopped at the refused point: the points after it were never prepared nor submitted, and its error
    named none of them."""
    monkeypatch.setenv("PATH", f"{sbatch_that_refuses(tmp_path / 'bin', 2)}:{os.environ['PATH']}")
    args = [f"data.tokens_dir={tokens}", f"run_dir={tmp_path / 'sweep'}", *RUN, *ONE_NODE, "seed=1,2,3"]
    try:
        assert main(["submit", "--multirun", *args]) == 2
        out, err = capsys.readouterr()
        runs = {seed: tmp_path / "sweep" / f"seed={seed}" for seed in (1, 2, 3)}
        assert [len(submitted(runs[seed])) for seed in (1, 3)] == [1, 1] and not (runs[2] / JOBS_FILE).exists()
        assert f"not submitted: {runs[2]}: Slurm did not take the job (sbatch: " in out
        assert err.startswith("corolla: error: 1 of 3 points not submitted (seed=2): see why above each; the same ")
    finally:
        assert main(["cancel", str(tmp_path / "sweep")]) == 0


def test_a_sweep_submitted_again_skips_the_points_still_queued_or_running_and_submits_the_rest(
    slurm_cluster, tokens, tmp_path, monkeypatch, capsys
) -> None:
    """The points before the first live one were submitted, that one refused (exit 2), and the rest never submitted."""
    monkeypatch.setenv(STEP_SECONDS, "5")  # the live point's job runs past the sweep's submission
    runs = {seed: tmp_path / f"seed={seed}" for seed in (1, 2, 3)}
    live = submit(runs[2], tokens, "seed=2", shape=ONE_NODE)
    capsys.readouterr()
    # With an sbatch option of the cluster's, which Slurm then holds for each job it queued.
    comment = "+cluster.sbatch.comment='lr sweep'"
    args = [f"data.tokens_dir={tokens}", f"run_dir={tmp_path}", *RUN, *ONE_NODE, "seed=1,2,3", comment]
    try:
        assert main(["submit", "--multirun", *args]) == 0
        out = capsys.readouterr().out
        assert submitted(runs[2]) == [live]
        assert len(RunHistory(runs[2]).launches()) == 1
        jobs = {seed: submitted(runs[seed]) for seed in (1, 3)}
        assert all(
            len(ids) == 1 and f"submitted Slurm job {ids[0]}: {runs[seed]}\n" in out for seed, ids in jobs.items()
        )
        assert f"skipped {runs[2]}: Slurm job {live} " in out and "`corolla cancel" in out, out
        shown = {seed: slurm_cluster.run("scontrol", "show", "job", jobs[seed][0]).stdout for seed in (1, 3)}
        assert all(" Comment=lr sweep " in job for job in shown.values()), shown
        # The sweep's directory: a row a point, and one cancel for every point's job.
        assert main(["status", str(tmp_path)]) == 0
        rows = capsys.readouterr().out.splitlines()[2:-1]
        jobs[2] = [live]
        assert len(rows) == 3 and all(
            re.match(rf"seed={seed} +(RUNNING|PENDING) \(job {jobs[seed][0]}\) ", row)
            for seed, row in zip((1, 2, 3), rows, strict=True)
        ), rows
        assert main(["cancel", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert all(f"{runs[seed]}:\ncancelled Slurm job {jobs[seed][0]} " in out for seed in (1, 2, 3)), out
    finally:
        for run_dir in runs.values():
            main(["cancel", str(run_dir)])


def test_two_submissions_of_one_run_at_once_submit_one_job(slurm_cluster, tokens, tmp_path) -> None:
    """Both would find no job of the run, and both submit one, training it twice into the same checkpoints: the
    second is refused, whether it comes while the first submits or after."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "launch.cli", "submit", f"data.tokens_dir={tokens}", f"run_dir={run_dir}"]
    command += [*RUN, *TWO_RANKS, "train.steps=300"]
    submissions = [subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [submission.communicate(timeout=300)[1] for submission in submissions]
    ends = [(submission.returncode, err) for submission, err in zip(submissions, errors, strict=True)]
    try:
        assert sorted(status for status, _ in ends) == [0, 2], ends
        refused = next(err for status, err in ends if status).strip().splitlines()[-1]
        assert f"{run_dir} is being written by process " in refused or f"{run_dir} has Slurm job " in refused
        assert len(submitted(run_dir)) == 1
        assert len(RunHistory(run_dir).launches()) == 1
    finally:
        main(["cancel", f"run_dir={run_dir}"])


@pytest.mark.parametrize(
    ("fault", "resumed", "redone"),
    [
        (f"+cluster.env.{CRASH_DURING_SAVE}=4", 2, 2),  # rank 0 dies during the save of step 4
        # On GPUs a rank that dies takes every other down with no Python run: NCCL's watchdog ends a process whose
        # collective fails (TORCH_NCCL_ASYNC_ERROR_HANDLING), so no rank is left to ask for a restart. (No NCCL here:
        # every rank aborts itself after step 5.) The batch script asks for it.
        (f"+cluster.env.{ABORT_AT_STEP}=5", 4, 1),
    ],
    ids=["crash-during-a-save", "every-rank-dies-outright"],
)
def test_a_failed_start_resumes_from_the_last_checkpoint(
    slurm_cluster, tokens, local_losses, tmp_path, fault: str, resumed: int, redone: int
) -> None:
    """The fault strikes the first time the job runs; the requeued job trains on to the end, as a run without it."""
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, tokens, fault)
    wait_finished(slurm_cluster, run_dir, job_id)
    assert losses(run_dir) == pytest.approx(local_losses, abs=1e-5)
    _, second = RunHistory(run_dir).starts()
    assert second["slurm_job"] == job_id and second["restart"] == 1
    assert second["resumed_from_step"] == resumed and second["steps_redone"] == redone
    assert RunHistory(run_dir).failures() == 1
    if ABORT_AT_STEP in fault:
        assert "and the run goes on: what follows is decided here too" in logs(run_dir)
    one_mlflow_value_per_step(run_dir, local_losses)


def job_ranks(job_id: str, rank: int | None = None) -> list[int]:
    """The pids of the job's ranks (or of one): every node's processes are this machine's."""
    ranks = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or one that ended
            continue
        ours = f"SLURM_JOB_ID={job_id}".encode() in environ and b"submitit.core._submit" in argv
        if ours and b"python" in argv[0] and (rank is None or f"SLURM_PROCID={rank}".encode() in environ):
            ranks.append(int(entry.name))
    return ranks


def test_a_requeue_asked_while_the_controller_is_away_is_taken_once_it_is_back(
    slurm_cluster, tokens, local_losses, tmp_path, monkeypatch
) -> None:
    """The time limit's USR2 came, the ranks saved, and rank 0's requeue met no controller (a restart, a failover):
    the job then ended, Slurm never ran it again, and the run stopped for good with nothing said."""
    monkeypatch.setenv(STEP_SECONDS, "2")
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, tokens)
    wait_checkpoint(run_dir, 2)
    slurm_cluster.stop_controller()
    try:
        for pid in job_ranks(job_id):
            os.kill(pid, signal.SIGUSR2)
        stopped = lambda: RunHistory(run_dir).events()[-1]["event"] == "stopped"  # noqa: E731
        assert wait_for(stopped, timeout=60, interval=0.5), logs(run_dir)
        # The controller stays away until rank 0's requeue has met it away (not a fixed while: a rank slow to get
        # from its stop to the requeue met the controller back, and its first request was taken).
        not_taken = f"corolla: the requeue of job {job_id} is not taken (scontrol: "
        assert wait_for(lambda: not_taken in logs(run_dir), timeout=60, interval=0.5), logs(run_dir)
    finally:
        slurm_cluster.start_controller()
    wait_finished(slurm_cluster, run_dir, job_id, timeout=240)
    assert f"corolla: the requeue of job {job_id} is not taken (scontrol: " in logs(run_dir)
    assert losses(run_dir) == pytest.approx(local_losses, abs=1e-5)
    stop = next(event for event in RunHistory(run_dir).events() if event["event"] == "stopped")
    _, second = RunHistory(run_dir).starts()
    assert second["slurm_job"] == job_id and second["resumed_from_step"] == stop["step"]
    assert second["steps_redone"] == 0 and RunHistory(run_dir).failures() == 0
    one_mlflow_value_per_step(run_dir, local_losses)  # the same MLflow run, each step once


def test_ranks_that_have_not_stopped_as_the_time_limit_nears_fail_the_start_and_it_is_requeued(
    slurm_cluster, tokens, local_losses, tmp_path
) -> None:
    """The time limit's USR2 came while a rank hung (or while a step and its save outlasted cluster.signal_delay_s):
    Slurm ended the job at its limit, TIMEOUT, which it never requeues, and the run stayed stopped until resubmitted.
    Now the start fails before the limit, the job is requeued and resumes from the last checkpoint."""
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, tokens, f"+cluster.env.{HANG_AT_STEP}=5", "cluster.signal_delay_s=40")
    step_5 = lambda: [record["step"] for record in last_records(run_dir / "metrics.jsonl", 1)] == [5]  # noqa: E731
    assert wait_for(step_5, timeout=180, interval=0.2), logs(run_dir)  # rank 1 hangs from now on
    # As Slurm does 40 s before the limit, to rank 0 alone: it waits in a collective, where no Python signal handler
    # runs, and rank 1, which would see the signal, never does.
    [rank_0] = job_ranks(job_id, rank=0)
    os.kill(rank_0, signal.SIGUSR2)
    wait_finished(slurm_cluster, run_dir, job_id)
    said = "".join(path.read_text() for path in (run_dir / "slurm").glob("*.err"))  # the stacks follow the line
    assert "rank 0 has not stopped" in said and "cluster.signal_delay_s=40 s before it" in said
    assert "no progress" not in said
    _, second = RunHistory(run_dir).starts()
    assert second["slurm_job"] == job_id and second["resumed_from_step"] == 4 and RunHistory(run_dir).failures() == 1
    assert losses(run_dir) == pytest.approx(local_losses, abs=1e-5)


def test_a_start_that_fails_before_it_trains_at_every_restart_spends_the_budget_and_gives_up(
    slurm_cluster, tokens, tmp_path
) -> None:
    """No start was recorded, so no failure counted: each restart, failing so again, was requeued for ever."""
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, tokens, "cluster.max_restarts=1", f"+cluster.env.{FAIL_BEFORE_TRAINING}=1")
    gave_up = lambda: any(event["event"] == "gave_up" for event in RunHistory(run_dir).events())  # noqa: E731
    assert wait_for(gave_up, timeout=300, interval=0.5), logs(run_dir)
    assert wait_for(lambda: job_state(slurm_cluster, job_id) in ("FAILED", "GONE"), timeout=60, interval=0.5)
    starts = RunHistory(run_dir).starts()
    # max_restarts=1: one restart, then the second failure gives up.
    assert [start["restart"] for start in starts] == [0, 1] and all(start["before_training"] for start in starts)


def test_past_its_restart_budget_a_failing_job_gives_up(slurm_cluster, tokens, tmp_path) -> None:
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, tokens, "cluster.max_restarts=0", f"+cluster.env.{CRASH_DURING_SAVE}=4")
    gave_up = lambda: any(event["event"] == "gave_up" for event in RunHistory(run_dir).events())  # noqa: E731
    assert wait_for(gave_up, timeout=240, interval=0.5), logs(run_dir)
    assert wait_for(lambda: job_state(slurm_cluster, job_id) in ("FAILED", "GONE"), timeout=60, interval=0.5)
    assert len(RunHistory(run_dir).starts()) == 1
    tracked = asdict(recorded_run(run_dir))
    assert MlflowClient(tracked["tracking_uri"]).get_run(tracked["run_id"]).info.status == "FAILED"


def test_a_jobs_output_path_with_a_space_is_read_whole(slurm_cluster: TestCluster, tmp_path: Path) -> None:
    """scontrol's fields were split at every space: a run directory `my runs/r` was read as `my`, taken for another
    run's, and `corolla cancel` and `status` said the job trained a copy."""
    output = tmp_path / "my runs" / "r" / "slurm" / "41_0_log.out"
    output.parent.mkdir(parents=True)
    job = slurm_cluster.run("sbatch", "--parsable", f"--output={output}", "--wrap", "sleep 300").stdout.strip()
    try:
        assert slurm_state(job).output == str(output)
    finally:
        slurm_cluster.run("scancel", job)
