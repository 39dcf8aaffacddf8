"""One writer per run directory, and nothing outliving it: a second `corolla train` (or reshard, or submit) of a run
being trained is refused in one line naming the writer; a lock its writer left when it died is taken over; a signal
to the `corolla` process alone stops every rank after a saved step."""

from __future__ import annotations

import io
import json
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stdout
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from test_training import SHORT_RUN

from conftest import REPO_ROOT
from launch.cli import main
from launch.rundir.history import RunHistory
from launch.rundir.lock import RunLocked, holding
from launch.rundir.run_record import recorded_run
from launch.train.faults import STEP_SECONDS

SLOW = [*SHORT_RUN, "train.steps=6", "parallel.dp=2"]


def test_a_second_writer_is_refused_and_the_first_trains_on_undisturbed(capsys, tokens: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "launch.cli", "train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SLOW]
    first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "LOCK").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        holder = json.loads((run_dir / "LOCK").read_text())
        again = ["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SLOW]
        for second in (again, ["checkpoint", "reshard", f"run_dir={run_dir}", "tp=2"]):
            assert main(second) == 2
            err = capsys.readouterr().err.strip()
            assert err == (
                f"corolla: error: {run_dir} is being written by process {first.pid} on {socket.gethostname()} "
                f"(since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['since']))}): wait for it to end, "
                "or stop it"
            )
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    assert not (run_dir / "LOCK").exists()
    assert [event["event"] for event in RunHistory(run_dir).events()] == ["launch", "start", "finished"]
    tracked = asdict(recorded_run(run_dir))
    history = MlflowClient(tracked["tracking_uri"]).get_metric_history(tracked["run_id"], "train_loss")
    assert sorted(metric.step for metric in history) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("readable", [True, False], ids=["ended", "unreadable"])
def test_a_lock_left_by_a_process_that_ended_is_taken_over(capsys, tokens: Path, tmp_path: Path, readable) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"host": socket.gethostname(), "pid": int(ended.stdout), "started": "1", "since": 0}
    if not readable:  # as if its writer had died writing it
        stale["pid"] = "12"
    (run_dir / "LOCK").write_text(json.dumps(stale))
    left = [run_dir / f".{name}.{ended.stdout.strip()}.tmp" for name in ("tracking.json", "job.yaml", "plan.json")]
    for path in [*left, run_dir / ".notes", run_dir / "notes.1.tmp"]:  # the killed writer's, and the user's own
        path.write_text("{")
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN, "train.steps=1"]) == 0
    holder = f"process {stale['pid']} on " if readable else "a writer whose lock cannot be read (it died writing it),"
    assert f"took over {run_dir / 'LOCK'} from {holder}" in capsys.readouterr().out
    assert not (run_dir / "LOCK").exists()
    assert not any(path.exists() for path in left)
    assert (run_dir / ".notes").exists() and (run_dir / "notes.1.tmp").exists()


def test_a_lock_of_another_host_is_obeyed_and_says_how_to_clear_it(capsys, tokens: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "LOCK").write_text(json.dumps({"host": "n7", "pid": 4242, "started": "9", "since": 0}))
    assert main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SHORT_RUN]) == 2
    err = capsys.readouterr().err
    assert "is being written by process 4242 on n7" in err and f"if that process is gone, remove {run_dir}" in err
    assert sorted(path.name for path in run_dir.iterdir()) == ["LOCK"]  # nothing written


def test_a_lock_held_by_another_users_process_that_proc_hides_is_obeyed(tokens: Path, tmp_path: Path) -> None:
    """On a shared login node /proc is often mounted with hidepid: another user's live process is not there to
    read, and its lock must not be taken for an ended one's. (The tests run as root: the holder is `nobody`'s sleep,
    and the second launch runs without CAP_SYS_PTRACE, under a /proc of its own mounted with hidepid.)"""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "120"])
    try:
        started = Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        lock = {"host": socket.gethostname(), "pid": holder.pid, "started": started, "since": 0}
        (run_dir / "LOCK").write_text(json.dumps(lock))
        hidden = (
            'mount -t proc -o hidepid=invisible,gid=54321 proc /proc && exec setpriv --bounding-set=-sys_ptrace "$@"'
        )
        train = [sys.executable, "-m", "launch.cli", "train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}"]
        second = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", hidden, "sh", *train, *SHORT_RUN],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        holder.kill()
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"is being written by process {holder.pid} on {socket.gethostname()}" in second.stderr
    assert json.loads((run_dir / "LOCK").read_text()) == lock


def test_the_lock_taken_leaves_the_temporary_of_another_taker_of_it_alone(tmp_path: Path) -> None:
    """Where the filesystem has no flock (NFS) two launches may take the lock at once: the second writes its lock under
    a temporary name, to link it in place, and finds it taken then. Removed meanwhile by the first as a killed writer's
    leftover, its link failed on the missing file ('No such file or directory: .LOCK.<pid>.tmp') rather than saying
    who holds the run. (The second launch, mid-way, is a live process and its temporary: no NFS here.)"""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    second = subprocess.Popen(["sleep", "60"])
    try:
        taking = run_dir / f".LOCK.{second.pid}.tmp"
        taking.write_text(json.dumps({"host": socket.gethostname(), "pid": second.pid}))
        with redirect_stdout(io.StringIO()), holding(run_dir):
            assert taking.exists()
    finally:
        second.kill()
        second.wait()


def _take(
    run_dir: Path, ready: multiprocessing.synchronize.Barrier, tried: multiprocessing.synchronize.Barrier, held
) -> None:
    """Takes the lock at once with another taker, and holds it until that one has tried too (not for a fixed while: a
    taker that a loaded machine held back longer took the lock after the first let it go, and both said they held
    it)."""
    ready.wait()
    try:
        with redirect_stdout(io.StringIO()), holding(run_dir):
            held.put(os.getpid())
            tried.wait(timeout=30)
    except RunLocked:
        tried.wait(timeout=30)


@pytest.mark.parametrize("left", [None, "ended"], ids=["fresh", "stale"])
def test_two_processes_taking_the_lock_at_once_never_both_hold_it(tmp_path: Path, left: str | None) -> None:
    """Two launches at the same moment, on a new run directory or on the lock a killed launch left: one holds it."""
    context = multiprocessing.get_context("fork")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for trial in range(40):
        run_dir = tmp_path / str(trial)
        run_dir.mkdir()
        if left:
            stale = {"host": socket.gethostname(), "pid": int(ended.stdout), "started": "1", "since": 0}
            (run_dir / "LOCK").write_text(json.dumps(stale))
        ready, tried, held = context.Barrier(2), context.Barrier(2), context.Queue()
        takers = [context.Process(target=_take, args=(run_dir, ready, tried, held)) for _ in range(2)]
        for taker in takers:
            taker.start()
        for taker in takers:
            taker.join(timeout=30)
        holders = []
        while not held.empty():
            holders.append(held.get())
        assert len(holders) == 1, f"trial {trial}: {len(holders)} processes held the lock"


def workers(run_dir: Path) -> list[psutil.Process]:
    return [
        process
        for process in psutil.process_iter(["cmdline", "status"])
        if "launch.train" in (process.info["cmdline"] or [])
        and str(run_dir) in process.info["cmdline"]
        and process.info["status"] != psutil.STATUS_ZOMBIE
    ]


def launch_until(arguments: list[str], step_seconds: int, written: Path) -> subprocess.Popen:
    """`corolla train` with steps of `step_seconds`, once it has written `written`."""
    command = [sys.executable, "-m", "launch.cli", "train", *arguments]
    environment = {**os.environ, STEP_SECONDS: str(step_seconds)}
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not written.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    return launcher


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM])
def test_a_signal_to_corolla_alone_stops_every_rank_after_a_saved_step(tokens: Path, tmp_path: Path, number) -> None:
    run_dir = tmp_path / "run"
    arguments = [f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SLOW, "train.steps=30"]
    launcher = launch_until([*arguments, "train.checkpoint_interval=50"], 1, run_dir / "metrics.jsonl")
    os.kill(launcher.pid, number)  # as a terminal's Ctrl-C, a hang-up or a `kill PID` would
    assert launcher.wait(timeout=120) == 2
    stopped = RunHistory(run_dir).events()[-1]
    assert stopped["event"] == "stopped" and stopped["signal"] == signal.Signals(number).name
    assert f"stopped at step {stopped['step']} ({stopped['signal']}), with a checkpoint" in launcher.stderr.read()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{stopped['step']:08d}"
    assert stopped["step"] < 30 and not workers(run_dir)
    tracked = asdict(recorded_run(run_dir))
    assert MlflowClient(tracked["tracking_uri"]).get_run(tracked["run_id"]).info.status == "KILLED"


def test_a_second_signal_ends_the_ranks_outright_and_the_run_resumes_from_its_last_checkpoint(
    tokens: Path, tmp_path: Path
) -> None:
    """Ctrl-C twice, the second before the step the first asked to stop at has ended: the ranks are killed, which is
    no failure (MLflow: killed) and says where the next launch resumes."""
    run_dir = tmp_path / "run"
    arguments = [
        f"data.tokens_dir={tokens}",
        f"run_dir={run_dir}",
        *SLOW,
        "train.steps=8",
        "train.checkpoint_interval=1",
    ]
    launcher = launch_until(arguments, 5, run_dir / "checkpoints" / "latest")
    time.sleep(1)  # into the next step, which takes 5 s
    for _ in range(2):
        os.kill(launcher.pid, signal.SIGINT)
        time.sleep(0.5)
    assert launcher.wait(timeout=120) == 2
    saved = int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))
    assert launcher.stderr.read().strip().splitlines()[-1] == (
        "corolla: error: ended outright by a second SIGINT before the ranks stopped: the same command again resumes "
        f"from its checkpoint of step {saved}"
    )
    assert RunHistory(run_dir).events()[-1]["event"] == "start" and not workers(run_dir)
    tracked = asdict(recorded_run(run_dir))
    assert MlflowClient(tracked["tracking_uri"]).get_run(tracked["run_id"]).info.status == "KILLED"
    assert main(["train", *arguments]) == 0
    assert RunHistory(run_dir).starts()[-1]["resumed_from_step"] == saved


def importing_torch(process: psutil.Process) -> bool:
    """Whether the process has loaded torch's library: its first seconds, the interpreter's own start-up over."""
    try:
        return "libtorch" in Path(f"/proc/{process.pid}/maps").read_text()
    except OSError:
        return False


def test_a_signal_while_the_ranks_load_their_libraries_stops_them_with_a_checkpoint(tokens, tmp_path) -> None:
    """The ranks take seconds to import torch, DeepSpeed and megatron: a Ctrl-C then is a stop like any other, at
    the first step boundary, not a failure."""
    run_dir = tmp_path / "run"
    arguments = [f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *SLOW, "train.steps=30"]
    command = [sys.executable, "-m", "launch.cli", "train", *arguments, "train.checkpoint_interval=50"]
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        # The ranks, not torchrun (whose arguments are its own, then theirs).
        ranks = [process for process in workers(run_dir) if "--standalone" not in process.info["cmdline"]]
        if len(ranks) == 2 and all(importing_torch(rank) for rank in ranks):
            break
        time.sleep(0.01)
    os.kill(launcher.pid, signal.SIGINT)
    assert launcher.wait(timeout=120) == 2
    stopped = RunHistory(run_dir).events()[-1]
    assert [event["event"] for event in RunHistory(run_dir).events()] == ["launch", "start", "stopped"]
    assert f"stopped at step {stopped['step']} (SIGINT), with a checkpoint" in launcher.stderr.read()
    tracked = asdict(recorded_run(run_dir))
    assert MlflowClient(tracked["tracking_uri"]).get_run(tracked["run_id"]).info.status == "KILLED"
