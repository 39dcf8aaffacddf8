"""The health check a start on a cluster runs before it trains and after each checkpoint (launch/train/health.py):
the verdict from every rank's self-test, and the same verdict on every rank of a real gloo group. What follows on
Slurm (a job without the unfit node takes over) is tested on the test cluster, in tests/slurm/test_submit.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from distributed import run_ranks

from launch.rundir.records import step_record
from launch.train.faults import Faults
from launch.train.health import HealthCheck, SelfTest, Verdict, check, node_seconds, self_test, unfit_nodes


def test_a_node_is_unfit_when_a_rank_of_it_fails_or_is_slower_than_the_bound() -> None:
    results = [
        SelfTest(0, "n1", 1.0),
        SelfTest(1, "n1", 1.2),
        SelfTest(2, "n2", 1.2),
        SelfTest(3, "n2", None, "RuntimeError: CUDA error: uncorrectable ECC error encountered"),
        SelfTest(4, "n3", 1.1),
        SelfTest(5, "n3", 3.0),
    ]
    assert unfit_nodes(results, slowdown=1.25) == {
        "n2": "rank 3 failed its self-test (RuntimeError: CUDA error: uncorrectable ECC error encountered)",
        "n3": "rank 5 took 3.0x the fastest rank's time for the same matmuls (cluster.health_slowdown=1.25)",
    }
    assert unfit_nodes(results[:3], slowdown=1.25) == {}
    assert list(unfit_nodes(results[:3], slowdown=1.1)) == ["n1", "n2"]  # 1.2x the fastest


def health_verdicts(marked: str) -> list[tuple[dict[str, str], tuple[str, float] | None, dict]]:
    """This rank's verdict with a node that fails, with a node ten times slower, and with neither."""
    import torch

    rank = torch.distributed.get_rank()
    node = f"node{rank}"
    verdicts = []
    for faults, slowdown in [
        (Faults(rank, unfit_node_file=Path(marked)), 100.0),
        (Faults(rank, slow_node="node1"), 3.0),  # scheduling on two shared cores varies the rest
        (Faults(rank), 100.0),
    ]:
        verdict = check(HealthCheck(node, slowdown, on_unfit=lambda unfit: True), faults.self_test(node))
        verdicts.append((verdict.unfit, verdict.slowest(), verdict.record()))
    return verdicts


def test_every_rank_reaches_the_same_verdict(tmp_path: Path) -> None:
    marked = tmp_path / "unfit-node"
    verdicts, others = run_ranks(2, health_verdicts, str(marked))
    (broken, broken_slowest, broken_record), (slow, slow_slowest, _), (fit, _, _) = verdicts
    assert marked.read_text() == "node0"  # rank 0's node, as the fault injection marks it
    assert broken == {"node0": "rank 0 failed its self-test (RuntimeError: injected: the device of node0 fails)"}
    assert list(slow) == ["node1"] and "took" in slow["node1"] and fit == {}
    assert others == verdicts
    # The slowest node of those timed (a failed one is the history's unfit event).
    assert broken_slowest == ("node1", 1.0) and list(broken_record["seconds"]) == ["node1"]
    assert slow_slowest[0] == "node1" and slow_slowest[1] > 3.0


def no_room(seconds: float) -> float:
    """What a GPU with no room for the self-test's matrices raises (simulated: no GPU here)."""
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 128.00 MiB")


@pytest.mark.parametrize("mid_run", [False, True], ids=["before-training", "after-a-checkpoint"])
def test_a_device_without_room_is_unfit_before_the_run_trains_and_no_verdict_after_a_checkpoint(mid_run: bool) -> None:
    # Before training, the room is held by another process; after a checkpoint, by the run itself.
    results = [self_test(0, "n1", no_room, mid_run), SelfTest(1, "n2", 1.0)]
    assert list(unfit_nodes(results, slowdown=1.25)) == ([] if mid_run else ["n1"])
    assert results[0].error.startswith("OutOfMemoryError: CUDA out of memory")


def test_each_node_counts_its_slowest_rank_and_the_slowdown_is_against_the_fastest_rank() -> None:
    results = [
        SelfTest(0, "n1", 1.0),
        SelfTest(1, "n1", 1.1),
        SelfTest(2, "n2", 1.2),
        SelfTest(3, "n3", None, "RuntimeError: ..."),
        SelfTest(4, "n4", None, "OutOfMemoryError: ...", inconclusive=True),
    ]
    verdict = Verdict(unfit_nodes(results, 1.25), node_seconds(results), fastest=1.0)
    assert verdict.seconds == {"n1": 1.1, "n2": 1.2} and list(verdict.unfit) == ["n3"]
    assert verdict.slowest() == ("n2", 1.2) and verdict.record() == {"seconds": {"n1": 1.1, "n2": 1.2}, "slowdown": 1.2}
    assert step_record(json.dumps({"step": 4, **verdict.record()}).encode())  # figures only: a series record
