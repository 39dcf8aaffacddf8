"""The local Slurm cluster, through real Slurm: placement, GPUs, submitit, TCP between nodes, node failure, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import cloudpickle
import pytest
import submitit

from conftest import cluster_in_environment
from slurm.testcluster import (
    BRIDGE,
    NAMESPACE_PREFIX,
    OWNER_RECORD,
    ClusterError,
    ClusterSpec,
    TestCluster,
    process_name,
    wait_for,
)

DAEMON_NAMES = {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "slurmstepd", "slurmscriptd"}

# submitit pickles functions by reference, and this test module cannot be imported inside a job.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[TestCluster]:
    """Nodes n1 and n2 with 2 CPUs and 2 GPUs each, and accounting (sacct, submitit's job states)."""
    with cluster_in_environment(ClusterSpec(nodes=2, gpus_per_node=2, cpus_per_node=2, accounting=True)) as cluster:
        yield cluster


def sbatch(cluster: TestCluster, *arguments: str) -> str:
    return cluster.run("sbatch", "--parsable", *arguments).stdout.strip()


def job_record(cluster: TestCluster, job_id: str) -> str:
    return cluster.run("scontrol", "show", "job", job_id).stdout


def accounted_states(cluster: TestCluster, job_id: str) -> list[str]:
    """The job's states in sacct, one per run (a requeued job has one per start)."""
    result = cluster.run(
        "sacct", "--duplicates", "--allocations", "--noheader", "--parsable2", "--format=State", "-j", job_id
    )
    return result.stdout.split()


def task_placement() -> tuple[int, str, str]:
    return int(os.environ["SLURM_PROCID"]), socket.gethostname(), os.environ["CUDA_VISIBLE_DEVICES"]


def all_reduce_across_nodes() -> tuple[str, str, float]:
    """Sums rank + 1 over every task with gloo, rendezvous over TCP on the first node's hostname."""
    import torch
    import torch.distributed as dist

    job = submitit.JobEnvironment()
    first_node = job.hostnames[0]
    port = 20000 + int(job.job_id) % 20000
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{first_node}:{port}",
        rank=job.global_rank,
        world_size=job.num_tasks,
        timeout=timedelta(seconds=60),
    )
    total = torch.tensor([float(job.global_rank + 1)])
    dist.all_reduce(total)
    dist.destroy_process_group()
    return socket.gethostname(), first_node, total.item()


def test_sbatch_job_runs_one_task_per_node_with_its_gpus(slurm_cluster: TestCluster, tmp_path: Path) -> None:
    output = tmp_path / "job.out"
    report = "echo $SLURM_PROCID $(hostname) $CUDA_VISIBLE_DEVICES"
    job_id = sbatch(
        slurm_cluster,
        "--wait",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=2",
        f"--output={output}",
        f"--wrap=srun bash -c '{report}'",
    )
    assert sorted(output.read_text().splitlines()) == ["0 n1 0,1", "1 n2 0,1"]
    assert wait_for(lambda: accounted_states(slurm_cluster, job_id) == ["COMPLETED"], timeout=15, interval=0.5)


def test_submitit_job_runs_a_function_on_both_nodes(slurm_cluster: TestCluster, tmp_path: Path) -> None:
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    assert executor.cluster == "slurm"
    executor.update_parameters(nodes=2, tasks_per_node=1, timeout_min=5, slurm_gpus_per_node=1)
    job = executor.submit(task_placement)
    assert sorted(job.results()) == [(0, "n1", "0"), (1, "n2", "0")]
    # submitit reads job states from sacct: they exist only with accounting.
    assert wait_for(lambda: job.get_info(mode="force").get("State") == "COMPLETED", timeout=15, interval=0.5)


def test_tasks_on_two_nodes_all_reduce_over_tcp(slurm_cluster: TestCluster, tmp_path: Path) -> None:
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(nodes=2, tasks_per_node=1, timeout_min=5)
    job = executor.submit(all_reduce_across_nodes)
    assert sorted(job.results()) == [("n1", "n1", 3.0), ("n2", "n1", 3.0)]


def test_jobs_reach_a_server_on_the_host_address(slurm_cluster: TestCluster, tmp_path: Path) -> None:
    received: list[str] = []
    with socket.create_server((slurm_cluster.host_address, 0)) as server:
        server.settimeout(30)

        def accept_two() -> None:
            for _ in range(2):
                connection, _ = server.accept()
                with connection:
                    received.append(connection.recv(64).decode())

        listener = threading.Thread(target=accept_two)
        listener.start()
        client = tmp_path / "client.py"
        client.write_text(
            "import socket, sys\nsocket.create_connection(sys.argv[1:3]).sendall(socket.gethostname().encode())\n"
        )
        host, port = server.getsockname()
        sbatch(
            slurm_cluster,
            "--wait",
            "--nodes=2",
            "--ntasks-per-node=1",
            f"--output={tmp_path / 'job.out'}",
            f"--wrap=srun {sys.executable} {client} {host} {port}",
        )
        listener.join(timeout=30)
    assert sorted(received) == ["n1", "n2"]


def test_killed_node_goes_down_and_its_requeueable_job_runs_again(slurm_cluster: TestCluster, tmp_path: Path) -> None:
    runs, ready = tmp_path / "runs", tmp_path / "ready"
    # The first run waits to be killed; the run after the requeue finishes at once.
    script = f"""
echo "run ${{SLURM_RESTART_COUNT:-0}} on $SLURM_JOB_NODELIST" >> {runs}
if [ "${{SLURM_RESTART_COUNT:-0}}" -eq 0 ]; then srun bash -c 'hostname >> {ready}; exec sleep 300'; fi
"""
    job_id = sbatch(slurm_cluster, "--requeue", "--nodes=2", f"--output={tmp_path / 'job.out'}", f"--wrap={script}")
    try:
        # A node that fails while srun is still launching fails the job instead (srun's launch times out).
        assert wait_for(lambda: ready.exists() and len(ready.read_text().split()) == 2, timeout=30, interval=0.2)
        slurm_cluster.kill_node("n2")
        slurm_cluster.wait_node_state("n2", {"down*"}, timeout=40)
        slurm_cluster.restart_node("n2")
        slurm_cluster.wait_node_state("n2", {"idle", "mix", "alloc"}, timeout=20)
        completed = lambda: "JobState=COMPLETED" in job_record(slurm_cluster, job_id)  # noqa: E731
        assert wait_for(completed, timeout=60, interval=0.5), job_record(slurm_cluster, job_id)
    finally:
        if not slurm_cluster.files.slurmd("n2").running():
            slurm_cluster.restart_node("n2")
        slurm_cluster.wait_idle(timeout=30)
    assert runs.read_text().splitlines() == ["run 0 on n[1-2]", "run 1 on n[1-2]"]
    assert "Restarts=1" in job_record(slurm_cluster, job_id)
    assert wait_for(lambda: accounted_states(slurm_cluster, job_id) == ["NODE_FAIL", "COMPLETED"], 15, interval=0.5)


def test_start_when_running_is_a_no_op(slurm_cluster: TestCluster) -> None:
    before = slurm_cluster.status()
    began = time.monotonic()
    TestCluster(slurm_cluster.directory, slurm_cluster.spec).start()
    assert time.monotonic() - began < 5
    assert slurm_cluster.status() == before


def test_a_second_cluster_is_refused_while_one_runs(slurm_cluster: TestCluster, tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match=f"a test cluster from {slurm_cluster.directory} is running"):
        TestCluster(tmp_path / "other").start()


def test_status_command_lists_the_daemons_and_nodes(slurm_cluster: TestCluster) -> None:
    command = [sys.executable, "-m", "slurm.testcluster", "status", "--dir", str(slurm_cluster.directory)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert all(f"{name:<12} running" in output for name in slurm_cluster.status())
    assert "n1" in output and "n2" in output and "idle" in output


def test_start_recovers_from_a_crash(slurm_cluster: TestCluster, tmp_path: Path) -> None:
    for pid in slurm_cluster.status().values():
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # pid files, namespaces and the bridge stay behind
    assert wait_for(lambda: not slurm_cluster.is_running(), timeout=5)
    slurm_cluster.start()
    assert slurm_cluster.is_running()
    output = slurm_cluster.run("srun", "--nodes=2", "hostname").stdout
    assert sorted(output.split()) == ["n1", "n2"]


def test_a_start_begins_with_the_nodes_an_earlier_start_left_drained_in_service(slurm_cluster: TestCluster) -> None:
    """The controller keeps a drained node drained across restarts: the start waited for it in vain, then failed."""
    slurm_cluster.run("scontrol", "update", "nodename=n2", "state=drain", "reason=corolla-test")
    slurm_cluster.stop()
    slurm_cluster.start()
    assert slurm_cluster.node_states() == {"n1": "idle", "n2": "idle"}


def test_stop_leaves_no_daemon_and_no_network(slurm_cluster: TestCluster) -> None:
    slurm_cluster.stop()
    slurm_cluster.stop()  # nothing left to stop
    assert not list(Path("/run/netns").glob(f"{NAMESPACE_PREFIX}*"))
    assert not Path("/sys/class/net", BRIDGE).exists()
    assert not OWNER_RECORD.exists()
    assert running_daemons() == []
    slurm_cluster.start()  # for any test that comes after
    slurm_cluster.wait_idle()


def running_daemons() -> list[str]:
    names = [process_name(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [name for name in names if name and name.removesuffix("-wlm") in DAEMON_NAMES]
