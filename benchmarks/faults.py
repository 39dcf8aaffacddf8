"""Faults against a fault-free run of the same job: does the run survive, with the same losses, nothing missing or
twice in MLflow, and how much does the fault cost?

Each fault strikes N times (`--trials`, at least 3) at a random step of a tiny BLOOM (DP=2, 10 steps, a checkpoint
every 2) trained by `corolla train` as a user runs it; where the fault stops the run, the same command is run again,
as a user (or Slurm's requeue) would. Then, for every trial:
- survived: the run finished by itself or after that one relaunch, or was refused cleanly where refusing is right
  (a second writer);
- max |loss - fault-free loss| over the steps (target: 1e-5), steps redone (the history's `steps_redone`);
- MLflow's train_loss: steps missing and steps logged twice (target: none);
- seconds lost: the trial's wall time (relaunches included) minus the fault-free run's.
The slow tracking server's trials compare the time a step takes against a fault-free run's (target: < 5%).

The Slurm faults (a node killed, USR2) strike the same job submitted with `corolla submit` to a three-node test
cluster on this machine (slurm/testcluster.py), DP2 over two of its nodes; Slurm requeues it and nobody relaunches
anything. Their seconds lost are against a fault-free submission of the same job.

    .venv/bin/python benchmarks/faults.py [--trials 3] [--faults rank_killed,nan,...] [--seed 0]

Runs as root (the full disk is a tmpfs mounted here); the Slurm faults need `bash scripts/setup-slurm.sh` and no
other test cluster running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

import psutil  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from recovery import finished, job_field, token_files  # noqa: E402
from tracking_server import MlflowServer  # noqa: E402

from launch.rundir.files import CHECKPOINTS, JOBS_FILE, METRICS_FILE, checkpoint_tag  # noqa: E402
from launch.rundir.history import RunHistory  # noqa: E402
from launch.rundir.records import last_record_per_step  # noqa: E402
from launch.rundir.run_record import recorded_run  # noqa: E402
from launch.train.faults import CRASH_DURING_SAVE, HANG_AT_STEP, NAN_AT_STEP, STEP_SECONDS  # noqa: E402
from slurm.testcluster import ClusterSpec, TestCluster, temporary_cluster, wait_for  # noqa: E402

STEPS, INTERVAL = 10, 2
JOB = [
    "model.seq_length=32",
    f"train.steps={STEPS}",
    "train.global_batch=8",
    "train.micro_batch=2",
    "parallel.dp=2",
    "seed=7",
    f"train.checkpoint_interval={INTERVAL}",
]
LOCAL = ["train.hang_timeout_s=20"]
SLURM_CLUSTER = ClusterSpec(nodes=3, gpus_per_node=0, cpus_per_node=4, accounting=True)
SLURM = ["cluster=testcluster", "cluster.tasks_per_node=1", "train.hang_timeout_s=60"]  # ranks start slower there
PACED = {STEP_SECONDS: "0.5"}  # steps no faster than this, so that a fault lands where it is aimed


@dataclass
class Trial:
    fault: str
    step: int
    survived: bool
    launches: int
    seconds: float
    note: str = ""
    run_dir: Path | None = None
    figures: dict = field(default_factory=dict)


class Bench:
    def __init__(self, workdir: Path, tokens: Path) -> None:
        self.workdir, self.tokens = workdir, tokens
        self.cluster: TestCluster | None = None  # for the Slurm faults only
        self.count = 0
        self.servers: list[MlflowServer] = []  # a trial's tracking servers: up until its figures are read

    def server(self) -> MlflowServer:
        server = MlflowServer(Path(tempfile.mkdtemp(dir=self.workdir)))
        self.servers.append(server)
        return server

    def end_trial(self) -> None:
        while self.servers:
            self.servers.pop().kill()

    def run_dir(self) -> Path:
        self.count += 1
        return self.workdir / f"run{self.count}"

    def command(self, run_dir: Path, *extra: str) -> list[str]:
        train = ["train", f"data.tokens_dir={self.tokens}", f"run_dir={run_dir}", *JOB, *LOCAL, *extra]
        return [sys.executable, "-m", "launch.cli", *train]

    def start(self, run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (run_dir.parent / f"{run_dir.name}.log").open("a")
        environment = {**os.environ, **PACED, **(env or {})}
        command = self.command(run_dir, *extra)
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment)

    def train(self, run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> int:
        return self.start(run_dir, *extra, env=env).wait(timeout=900)

    def submit(self, run_dir: Path) -> str:
        """`corolla submit` of the job to the test cluster; the Slurm job id."""
        submit = ["submit", f"data.tokens_dir={self.tokens}", f"run_dir={run_dir}", *JOB, *SLURM]
        environment = {**os.environ, **PACED, **self.cluster.env}
        command = [sys.executable, "-m", "launch.cli", *submit]
        subprocess.run(command, cwd=REPO_ROOT, env=environment, check=True, capture_output=True, text=True)
        return json.loads((run_dir / JOBS_FILE).read_text())[-1]

    def slurm_job_ended(self, run_dir: Path, job_id: str, timeout: float = 600) -> bool:
        """Whether the run finished and its Slurm job left the queue within `timeout`."""
        gone = lambda: job_field(self.cluster, job_id, "JobState") in ("COMPLETED", "")  # noqa: E731
        return wait_for(lambda: finished(run_dir) and gone(), timeout=timeout, interval=1.0)


def logged_step(run_dir: Path) -> int:
    records = last_record_per_step(run_dir / METRICS_FILE)
    return records[-1]["step"] if records else 0


def wait_for_step(run_dir: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while logged_step(run_dir) < step:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_dir} did not reach step {step}")
        time.sleep(0.05)


def workers(run_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "launch.train" in cmdline and str(run_dir) in cmdline:
            found.append(process)
    return found


# Each fault: (bench, run_dir, step) -> (survived, launches, note). `step` is where it strikes.


def rank_killed(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    launcher = bench.start(run_dir)
    wait_for_step(run_dir, step)
    random.choice(workers(run_dir)).send_signal(signal.SIGKILL)
    first = launcher.wait(timeout=300)
    return first != 0 and bench.train(run_dir) == 0, 2, f"first launch exited {first}"


def hung_rank(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    first = bench.train(run_dir, env={HANG_AT_STEP: str(step)})
    return first != 0 and bench.train(run_dir) == 0, 2, f"first launch exited {first} (watchdog)"


def killed_during_save(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    save_step = max(INTERVAL, step - step % INTERVAL)
    first = bench.train(run_dir, env={CRASH_DURING_SAVE: str(save_step)})
    return first != 0 and bench.train(run_dir) == 0, 2, f"rank 0 died saving step {save_step}"


def launcher_killed(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    launcher = bench.start(run_dir)
    wait_for_step(run_dir, step)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=60)
    deadline = time.monotonic() + 30
    while workers(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = len(workers(run_dir))
    return orphans == 0 and bench.train(run_dir) == 0, 2, f"{orphans} ranks outlived the launcher"


def flipped_byte(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    save_step = max(2 * INTERVAL, step - step % INTERVAL)
    assert bench.train(run_dir, f"train.exit_after={save_step}") == 0
    shard = sorted((run_dir / CHECKPOINTS / checkpoint_tag(save_step)).glob("model-*.pt"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return bench.train(run_dir) == 0, 2, f"a byte of step {save_step}'s {shard.name} flipped"


def nan_in_loss(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    first = bench.train(run_dir, env={NAN_AT_STEP: str(step)})
    stopped = RunHistory(run_dir).events()[-1]["event"] == "diverged"
    return first != 0 and stopped and bench.train(run_dir) == 0, 2, f"stopped as diverged: {stopped}"


def second_writer(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    launcher = bench.start(run_dir)
    wait_for_step(run_dir, step)
    second = subprocess.run(bench.command(run_dir), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    refused = second.returncode == 2 and "is being written by process" in second.stderr
    return refused and launcher.wait(timeout=300) == 0, 1, "refused" if refused else second.stderr[-200:]


def full_disk(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    """The run directory on a tmpfs with room for MLflow and about two checkpoints; then room is made."""
    disk = run_dir.parent / f"{run_dir.name}-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(disk)], check=True)
    try:
        inside = disk / "run"
        first = bench.train(inside)
        said = RunHistory(inside).events()[-1]["event"] == "no_space"
        subprocess.run(["mount", "-o", "remount,size=64M", str(disk)], check=True)
        finished = bench.train(inside) == 0
        subprocess.run(["cp", "-a", str(inside), str(run_dir)], check=True)
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)
    return first != 0 and said and finished, 2, f"stopped with no_space: {said}"


def tracking_server_down(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    server = bench.server()
    launcher = bench.start(run_dir, f"tracking.uri={server.start()}")
    wait_for_step(run_dir, step)
    server.kill()  # for the rest of the run
    finished = launcher.wait(timeout=600) == 0
    server.start()
    sync = [sys.executable, "-m", "launch.cli", "tracking", "sync", str(run_dir)]
    synced = subprocess.run(sync, cwd=REPO_ROOT, capture_output=True, text=True).returncode == 0
    return finished and synced, 1, "synced after the run" if synced else "sync failed"


def delaying_proxy(target: tuple[str, int], delay_s: float) -> int:
    """A TCP proxy that holds each chunk a client sends for `delay_s`: a server that answers every request late."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(source: socket.socket, sink: socket.socket, delay: float) -> None:
        try:
            while chunk := source.recv(65536):
                time.sleep(delay)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            sink.close()

    def serve() -> None:
        while True:
            client, _ = listener.accept()
            upstream = socket.create_connection(target)
            threading.Thread(target=pipe, args=(client, upstream, delay_s), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client, 0.0), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def tracking_server_slow(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    server = bench.server()
    server.start()
    port = delaying_proxy((server.host, server.port), 3.0)
    finished = bench.train(run_dir, f"tracking.uri=http://127.0.0.1:{port}", env={STEP_SECONDS: "0"}) == 0
    sync = [sys.executable, "-m", "launch.cli", "tracking", "sync", str(run_dir)]
    synced = subprocess.run(sync, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600).returncode == 0
    return finished and synced, 1, "3 s a request"


def node_killed(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    job_id = bench.submit(run_dir)
    wait_for_step(run_dir, step)
    nodes = job_field(bench.cluster, job_id, "NodeList")
    victim = bench.cluster.run("scontrol", "show", "hostnames", nodes).stdout.split()[-1]
    bench.cluster.kill_node(victim)
    try:
        ended = bench.slurm_job_ended(run_dir, job_id)
    finally:
        bench.cluster.restart_node(victim)
        bench.cluster.wait_ready()
    starts = RunHistory(run_dir).starts()
    return ended and len(starts) == 2, len(starts), f"{victim} killed; requeued by Slurm"


def stop_signal(bench: Bench, run_dir: Path, step: int) -> tuple[bool, int, str]:
    job_id = bench.submit(run_dir)
    wait_for_step(run_dir, step)
    bench.cluster.run("scancel", "--signal=USR2", job_id)
    ended = bench.slurm_job_ended(run_dir, job_id)
    stops = [event for event in RunHistory(run_dir).events() if event["event"] == "stopped"]
    saved = [event.get("signal") for event in stops] == ["SIGUSR2"]
    return ended and saved, len(RunHistory(run_dir).starts()), f"stopped on SIGUSR2 and requeued: {saved}"


FAULTS: dict[str, Callable[[Bench, Path, int], tuple[bool, int, str]]] = {
    "node_killed": node_killed,
    "usr2": stop_signal,
    "rank_killed": rank_killed,
    "hung_rank": hung_rank,
    "killed_during_save": killed_during_save,
    "launcher_killed": launcher_killed,
    "tracking_server_down": tracking_server_down,
    "tracking_server_slow": tracking_server_slow,
    "full_disk": full_disk,
    "flipped_byte": flipped_byte,
    "nan_in_loss": nan_in_loss,
    "second_writer": second_writer,
}
SLURM_FAULTS = {"node_killed", "usr2"}


def step_seconds(run_dir: Path) -> float:
    """The mean time a step takes after the first (which warms up), checkpoints included: steps with and without a
    save alternate, so a median of single steps jumps between the two."""
    times = [record["time"] / 1000 for record in last_record_per_step(run_dir / METRICS_FILE)]
    return (times[-1] - times[1]) / (len(times) - 2)


def figures(run_dir: Path, baseline: dict[int, float]) -> dict:
    losses = {record["step"]: record["loss"] for record in last_record_per_step(run_dir / METRICS_FILE)}
    tracked = recorded_run(run_dir)
    history = MlflowClient(tracked.tracking_uri).get_metric_history(tracked.run_id, "train_loss")
    logged = [entry.step for entry in history]
    return {
        "max_loss_difference": max(abs(losses.get(step, float("inf")) - loss) for step, loss in baseline.items()),
        "steps_redone": sum(start.get("steps_redone", 0) for start in RunHistory(run_dir).starts()),
        "mlflow_missing": len(set(baseline) - set(logged)),
        "mlflow_twice": len(logged) - len(set(logged)),
    }


def fault_free(bench: Bench, slurm: bool) -> tuple[dict[int, float], dict[str, float], Path]:
    """The fault-free run's losses, its seconds (locally, and submitted to Slurm when a Slurm fault is chosen), and
    an unpaced run, whose steps the slow tracking server's are compared with."""
    clean, started = bench.run_dir(), time.monotonic()
    assert bench.train(clean) == 0, "the fault-free run failed"
    seconds = {"local": time.monotonic() - started}
    losses = {record["step"]: record["loss"] for record in last_record_per_step(clean / METRICS_FILE)}
    unpaced = bench.run_dir()
    assert bench.train(unpaced, env={STEP_SECONDS: "0"}) == 0
    print(f"fault-free run: {seconds['local']:.1f} s, {STEPS} steps; unpaced: {step_seconds(unpaced):.3f} s a step")
    if slurm:
        submitted, started = bench.run_dir(), time.monotonic()
        assert bench.slurm_job_ended(submitted, bench.submit(submitted)), "the fault-free Slurm job failed"
        seconds["slurm"] = time.monotonic() - started
        print(f"fault-free Slurm job: {seconds['slurm']:.1f} s from submission to its end")
    return losses, seconds, unpaced


def run_trial(bench: Bench, name: str, step: int, baseline: dict[int, float]) -> Trial:
    run_dir, started = bench.run_dir(), time.monotonic()
    try:
        survived, launches, note = FAULTS[name](bench, run_dir, step)
        seconds = time.monotonic() - started
        return Trial(name, step, survived, launches, seconds, note, run_dir, figures(run_dir, baseline))
    finally:
        bench.end_trial()


HEADER = (
    f"{'fault':<22} {'trial':>5} {'step':>4} {'survived':>8} {'launches':>8} {'max |dloss|':>11} "
    f"{'redone':>6} {'missing':>7} {'twice':>5} {'s lost':>7}  note"
)


def row(trial: Trial, number: int, lost: str) -> str:
    f = trial.figures
    return (
        f"{trial.fault:<22} {number:>5} {trial.step:>4} {trial.survived!s:>8} {trial.launches:>8} "
        f"{f['max_loss_difference']:>11.2e} {f['steps_redone']:>6} {f['mlflow_missing']:>7} "
        f"{f['mlflow_twice']:>5} {lost:>7}  {trial.note}"
    )


def totals(trials: list[Trial]) -> str:
    survived = sum(trial.survived for trial in trials)
    identical = sum(trial.figures["max_loss_difference"] <= 1e-5 for trial in trials)
    once = sum(not trial.figures["mlflow_missing"] and not trial.figures["mlflow_twice"] for trial in trials)
    return (
        f"{survived} of {len(trials)} trials survived; {identical} with losses within 1e-5 of the fault-free run; "
        f"{once} with MLflow holding every step once"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    chosen = arguments.faults.split(",")
    rng = random.Random(arguments.seed)
    with tempfile.TemporaryDirectory(prefix="corolla-faults-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        bench = Bench(workdir, token_files(workdir))
        if SLURM_FAULTS & set(chosen):
            bench.cluster = stack.enter_context(temporary_cluster(SLURM_CLUSTER))
        baseline, clean_seconds, unpaced = fault_free(bench, slurm=bench.cluster is not None)
        print(f"\n{HEADER}")
        trials = []
        for name in chosen:
            for number in range(1, arguments.trials + 1):
                trial = run_trial(bench, name, rng.randint(2, STEPS - 2), baseline)
                if name == "tracking_server_slow":
                    ratio = step_seconds(trial.run_dir) / step_seconds(unpaced)
                    trial.figures["step_time_ratio"] = round(ratio, 3)
                    trial.note += f"; a step takes {ratio:.3f} x the fault-free one"
                    lost = "-"
                else:
                    lost = f"{trial.seconds - clean_seconds['slurm' if name in SLURM_FAULTS else 'local']:7.1f}"
                trials.append(trial)
                print(row(trial, number, lost), flush=True)
        print(f"\n{totals(trials)}")
        summary = [{k: v for k, v in vars(t).items() if k != "run_dir"} for t in trials]
        rounded = {kind: round(seconds, 1) for kind, seconds in clean_seconds.items()}
        print(json.dumps({"clean_seconds": rounded, "trials": summary}, default=str))


if __name__ == "__main__":
    main()
