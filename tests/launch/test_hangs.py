"""A rank that hangs or dies ends the whole job, non-zero and promptly, with no process left behind; the run then
resumes from its last complete checkpoint to the losses of an uninterrupted run."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from test_resume import RUN, losses

from launch.cli import main
from launch.rundir.checkpoints import latest_step
from launch.train.faults import HANG_AT_STEP

DP2 = [*RUN, "parallel.dp=2"]
HANG_TIMEOUT_S = 15  # the least train.hang_timeout_s is 10
# Without the hung rank's watchdog, torchrun would SIGKILL it only 30 s after its peer's collective timed out: the
# SIGTERM it sends first is caught by StopSignals.
ENDS_WITHIN_S = HANG_TIMEOUT_S + 15


def train(run_dir: Path, tokens: Path, *overrides: str) -> int:
    return main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *DP2, *overrides])


def workers(run_dir: Path) -> list[psutil.Process]:
    """The rank processes of this run still alive."""
    alive = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if "launch.train" in cmdline and str(run_dir) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            alive.append(process)
    return alive


def rank_after_step(run_dir: Path, rank: int, step: int, timeout_s: float = 120) -> psutil.Process:
    """The process of `rank`, once rank 0 has logged `step`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and f'"step": {step},' in metrics.read_text():
            return next(process for process in workers(run_dir) if process.environ().get("RANK") == str(rank))
        time.sleep(0.2)
    raise TimeoutError(f"{run_dir} did not reach step {step} in {timeout_s} s")


@pytest.fixture(scope="module")
def uninterrupted(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    assert train(run_dir, tokens) == 0
    return losses(run_dir)


def test_a_hung_rank_is_ended_by_its_watchdog_and_the_run_resumes(
    tokens: Path,
    uninterrupted: dict[int, float],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
) -> None:
    run_dir, timeout = tmp_path / "run", f"train.hang_timeout_s={HANG_TIMEOUT_S}"
    monkeypatch.setenv(HANG_AT_STEP, "3")  # rank 1 sleeps for good after step 3; rank 0 waits for it in a collective
    assert train(run_dir, tokens, timeout) == 2
    hung_for = time.time() - (run_dir / "metrics.jsonl").stat().st_mtime  # rank 0 logged step 3 as rank 1 hung
    assert HANG_TIMEOUT_S < hung_for < ENDS_WITHIN_S
    assert not workers(run_dir)
    err = capfd.readouterr().err
    assert "ChildFailedError" not in err  # torchrun's traceback of the failure, which names no reason
    # The last line names the rank that hung, not rank 0's collective that timed out waiting for it.
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("corolla: error: training failed, corolla watchdog: no progress on rank 1")
    )
    stacks = err[err.index("corolla watchdog: no progress on rank 1 for ") :]
    hung_thread = r'Thread 0x[0-9a-f]+.*\n(  File .*\n)*  File ".*/launch/train/loop\.py", line \d+ in train_steps'
    assert re.search(hung_thread, stacks)  # faulthandler's dump of the main thread, stuck in the training loop
    assert sorted(losses(run_dir)) == [1, 2, 3]
    assert latest_step(run_dir / "checkpoints") == 2  # intact: every file there, with its size
    monkeypatch.delenv(HANG_AT_STEP)
    # Loading, saves and validation under the same short timeout: the watchdog must not fire.
    assert train(run_dir, tokens, timeout) == 0
    assert losses(run_dir) == uninterrupted  # steps 3-6 redone, the last value of each step kept


def test_a_killed_rank_ends_the_job_at_once_and_the_run_resumes(
    tokens: Path, uninterrupted: dict[int, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setenv(HANG_AT_STEP, "3")  # parks rank 1 after step 3, so that the kill lands mid-run every time
    with ThreadPoolExecutor(1) as pool:
        status = pool.submit(train, run_dir, tokens, "train.hang_timeout_s=60")
        rank_after_step(run_dir, 1, 3).kill()
        killed = time.monotonic()
        assert status.result(timeout=120) == 2
    assert time.monotonic() - killed < 10  # far below the timeouts: the death itself ended the job
    assert not workers(run_dir)
    assert latest_step(run_dir / "checkpoints") == 2
    monkeypatch.delenv(HANG_AT_STEP)
    assert train(run_dir, tokens) == 0
    assert losses(run_dir) == uninterrupted
