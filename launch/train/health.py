"""Before a start on a cluster trains, and after each checkpoint it saves: whether every node is fit to.

Every rank times the same matmuls on its device (an error there, a broken GPU's, counts as unfit) and the ranks
gather what each found, so that all reach the same verdict: a node is unfit when one of its ranks failed, or took more
than `slowdown` times the fastest rank's time (a throttled or faulty GPU holds every step of a synchronous job back:
BLOOM-176B ran 5% slow for days on one, found by bisecting with --exclude). What follows a verdict is the
scheduler's: slurm/task.py gives the job up for one that leaves the unfit nodes out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from launch.train.device import device, on_gpu

WARMUP, ROUNDS, PER_ROUND = 3, 5, 4  # matmuls; the fastest round counts: a transient stall is not a slow device


@dataclass(frozen=True)
class HealthCheck:
    """What a start on a cluster checks before it trains and after each checkpoint, and who acts on an unfit node."""

    node: str  # this rank's node, as the scheduler names it
    slowdown: float  # cluster.health_slowdown
    # On rank 0: leave these nodes (name: why) out, True, or train on them (False: the cluster has no others).
    on_unfit: Callable[[dict[str, str]], bool]


@dataclass(frozen=True)
class SelfTest:
    rank: int
    node: str
    seconds: float | None  # None: it failed
    error: str = ""
    # No verdict on the rank: after a checkpoint, the run's own tensors may leave no room for the test's matrices.
    inconclusive: bool = False


def time_matmuls() -> float:
    """Seconds of the fastest of ROUNDS rounds of PER_ROUND square matmuls on this rank's device (a round: a few
    milliseconds, on a GPU as on a CPU core)."""
    size, dtype = (8192, torch.bfloat16) if on_gpu() else (256, torch.float32)
    matrix = torch.randn(size, size, device=device(), dtype=dtype)
    for _ in range(WARMUP):
        matrix @ matrix
    rounds = []
    for _ in range(ROUNDS):
        if on_gpu():
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(PER_ROUND):
            matrix @ matrix
        if on_gpu():
            torch.cuda.synchronize()
        rounds.append(time.perf_counter() - start)
    return min(rounds)


def self_test(rank: int, node: str, injected: Callable[[float], float] = float, mid_run: bool = False) -> SelfTest:
    """The rank's self-test, before the start trains or (`mid_run`) after a checkpoint; `injected`: what test-only
    faults make of its seconds (launch/train/faults.py)."""
    try:
        return SelfTest(rank, node, injected(time_matmuls()))
    except torch.OutOfMemoryError as error:
        # Before the run has a tensor, a device with no room is held by another process: unfit. After a checkpoint,
        # the room is the run's own.
        return SelfTest(rank, node, None, f"{type(error).__name__}: {error}", inconclusive=mid_run)
    except Exception as error:  # a device that cannot compute: the verdict says so, the rank does not die of it
        return SelfTest(rank, node, None, f"{type(error).__name__}: {error}")


def unfit_nodes(results: list[SelfTest], slowdown: float) -> dict[str, str]:
    """Each unfit node and why (its first rank that is); empty when every node is fit."""
    results = [result for result in results if not result.inconclusive]
    timed = [result.seconds for result in results if result.seconds is not None]
    fastest = min(timed, default=0.0)
    unfit: dict[str, str] = {}
    for result in results:
        if result.node in unfit:
            continue
        if result.seconds is None:
            unfit[result.node] = f"rank {result.rank} failed its self-test ({result.error})"
        elif result.seconds > slowdown * fastest:
            unfit[result.node] = (
                f"rank {result.rank} took {result.seconds / fastest:.1f}x the fastest rank's time for the same matmuls "
                f"(cluster.health_slowdown={slowdown:g})"
            )
    return unfit


def node_seconds(results: list[SelfTest]) -> dict[str, float]:
    """The self-test seconds of each node whose ranks all finished it: its slowest rank's (ranks that gave no
    verdict aside; nodes that failed it are the history's unfit events)."""
    finished = [result for result in results if not result.inconclusive]
    failed = {result.node for result in finished if result.seconds is None}
    seconds: dict[str, float] = {}
    for result in finished:
        if result.node not in failed:
            seconds[result.node] = max(seconds.get(result.node, 0.0), result.seconds)
    return seconds


@dataclass(frozen=True)
class Verdict:
    """What a check found: the unfit nodes and why, the nodes' seconds (node_seconds), and the fastest rank's."""

    unfit: dict[str, str]
    seconds: dict[str, float]
    fastest: float | None

    def slowest(self) -> tuple[str, float] | None:
        """The slowest node that finished its self-test, and its time against the fastest rank's (what
        cluster.health_slowdown bounds); None where none did."""
        if not (self.seconds and self.fastest):
            return None
        node = max(self.seconds, key=self.seconds.__getitem__)
        return node, self.seconds[node] / self.fastest

    def record(self) -> dict[str, object]:
        """What the run's health series holds of it (figures only, records.py): the seconds, and the slowest node's
        slowdown."""
        slowest = self.slowest()
        return {"seconds": self.seconds, **({"slowdown": round(slowest[1], 4)} if slowest else {})}


def check(health: HealthCheck, injected: Callable[[float], float] = float, mid_run: bool = False) -> Verdict:
    """Every rank's self-test, gathered: the same verdict on every rank (a collective)."""
    rank = torch.distributed.get_rank()
    mine = self_test(rank, health.node, injected, mid_run)
    gathered: list[SelfTest | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    results = [result for result in gathered if result is not None]
    timed = [result.seconds for result in results if result.seconds is not None]
    return Verdict(unfit_nodes(results, health.slowdown), node_seconds(results), min(timed, default=None))
