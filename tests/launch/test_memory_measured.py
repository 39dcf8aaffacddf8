"""The planner's memory estimate against the measured peak memory of real CPU training runs.

tests/launch/memory_probe.py trains small BLOOM models with corolla's own engine (fp32, DeepSpeed pipeline engine,
AdamW without ZeRO, one process) and reports how far the process's resident memory rose above where it stood
before the model was built (glibc told to unmap large blocks when freed, so that resident memory follows the live
tensors). The estimate for the same shape, layout and micro-batch, with corolla's CPU kernels (the math attention,
which keeps the softmax), must be within 20% of it: with and without activation checkpointing, two shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from launch.config.schemas import Precision
from launch.plan.hardware import GIB
from launch.plan.layout import ParallelLayout
from launch.plan.memory import COROLLA_CPU, Candidate, estimate_memory
from model.config import ModelConfig

# Activations dominate the first (1.5x the weights, gradients and moments), the second recomputes them, the third is
# wider with two micro-batches a step; each ~0.4-0.6 GiB, a few seconds a step on two cores.
SHAPE = {"num_layers": 4, "hidden_size": 512, "num_heads": 8, "seq_length": 256, "vocab_size": 2000}
WIDE = {"num_layers": 3, "hidden_size": 768, "num_heads": 12, "seq_length": 256, "vocab_size": 3000}
RUNS = [
    {"model": SHAPE, "micro_batch": 8, "global_batch": 8, "activation_checkpointing": False, "steps": 2},
    {"model": SHAPE, "micro_batch": 8, "global_batch": 16, "activation_checkpointing": True, "steps": 2},
    {"model": WIDE, "micro_batch": 4, "global_batch": 8, "activation_checkpointing": False, "steps": 2},
]


@pytest.fixture(scope="module")
def measured() -> list[float]:
    """Bytes each run's peak rose above the process's memory before its model was built."""
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "OMP_NUM_THREADS": "2",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "0",  # the one rank's store binds a port the kernel picks
        "PYTHONPATH": str(REPO_ROOT),
    }
    probe = Path(__file__).with_name("memory_probe.py")
    result = subprocess.run(
        [sys.executable, str(probe), json.dumps(RUNS)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-3000:]
    return [(run["peak_kib"] - run["before_kib"]) * 1024 for run in json.loads(lines[-1].removeprefix("PROBE "))]


def estimate(run: dict) -> float:
    candidate = Candidate(
        ParallelLayout(),
        run["micro_batch"],
        run["global_batch"],
        run["activation_checkpointing"],
        zero_stage=0,
        precision=Precision.fp32,
    )
    return estimate_memory(ModelConfig(**run["model"]), candidate, COROLLA_CPU).total


@pytest.mark.parametrize("index", range(len(RUNS)))
def test_the_estimate_is_within_20_percent_of_the_measured_peak(measured: list[float], index: int) -> None:
    predicted, peak = estimate(RUNS[index]), measured[index]
    print(f"run {index}: estimate {predicted / GIB:.3f} GiB, measured {peak / GIB:.3f} GiB")
    assert predicted == pytest.approx(peak, rel=0.2)


def test_recomputation_saves_what_the_estimate_says(measured: list[float]) -> None:
    """The same shape with and without checkpointing (per micro-batch in flight): the saving itself is estimated."""
    saved, estimated = measured[0] - measured[1], estimate(RUNS[0]) - estimate(RUNS[1])
    assert saved > 0.2 * measured[0]
    assert estimated == pytest.approx(saved, rel=0.25)
