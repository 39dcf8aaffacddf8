"""The benchmarks run: each at a small size, for its code path (their figures come from full runs, in
benchmarks/results/). A benchmark the code moved away from fails here, not on the day its figures are wanted. Those
that need root and Slurm (recovery.py, faults.py) and the GPU check (tests/test_gpu_check.py) are run elsewhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"


def run_benchmark(name: str, *arguments: str, cwd: Path = REPO_ROOT) -> str:
    command = [sys.executable, str(BENCHMARKS / name), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_planner_against_published_and_measured_runs() -> None:
    out = run_benchmark("plan_vs_published.py", "--smoke")
    published = re.search(r"ratios of time per step from ([\d.]+) to ([\d.]+)", out)
    assert published and 0.85 <= float(published[1]) <= float(published[2]) <= 1.15, out
    measured = re.findall(r"^bloom-\S+ .* (\d\.\d{3})\s+[\d.]+\s+[\d.]+\s+(\d\.\d{3})\s+\d\.\d{3}$", out, re.MULTILINE)
    assert len(measured) == 4 and all(0.85 <= float(time) <= 1.15 for time, _ in measured), out
    assert all(0.90 <= float(memory) <= 1.10 for _, memory in measured), out
    assert "BLOOM's TP4 x PP12 x DP8" in out and "its layout ranks" in out
    assert re.search(r"^\s+\d+M\s+[\d.]+\s+[\d.]+( +[\d.]+s +[\d.]+x){3}$", out, re.MULTILINE), out


def test_a_ranks_start_and_exit_are_timed_against_plain_imports() -> None:
    out = run_benchmark("rank_start.py", "--repeats", "1")
    assert re.search(r"^  baseline +[\d.]+ s", out, re.MULTILINE) and re.search(r"^  corolla +[\d.]+ s", out, re.M)
    assert re.search(r"^  ratio +[\d.]+ +\(corolla / baseline\)$", out, re.MULTILINE), out


def test_the_fused_loss_is_timed_and_measured_against_megatrons() -> None:
    out = run_benchmark(
        "loss_kernel.py",
        "--micro-batch",
        "1",
        "--seq-length",
        "64",
        "--vocab",
        "512",
        "--dtype",
        "fp32",
        "--repeats",
        "1",
    )
    report = json.loads(out[out.index("{") :])
    assert report["logits"] == "1x64x512" and report["max_difference"]["loss"] < 1e-5
    assert report["max_difference"]["gradient"] < 1e-6
    assert all(report[name]["ms"] > 0 and report[name]["peak_gib"] >= 0 for name in ("corolla", "megatron"))
    assert report["time_ratio"] > 0
