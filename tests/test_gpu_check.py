"""The GPU check, ready for a GPU: its bundle holds every package it imports that the GPU machine lacks, within the
size that travels, and its code runs end to end on CPU at tiny shapes (--smoke). Its figures come from a GPU."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

LIMIT_BYTES = 64 * 1024**2  # what travels to the GPU machine: the repository and what it carries
GPU_IMAGE = REPO_ROOT / "benchmarks" / "gpu_image_packages.txt"


def normalised(name: str) -> str:
    return name.lower().replace("_", "-")


@pytest.fixture(scope="module")
def bundle() -> Path:
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu-bundle.sh")], check=True, timeout=900)
    return REPO_ROOT / ".gpu-bundle"


def site_with(distributions: set[str], folder: Path) -> Path:
    """A site-packages of links to the installed files of `distributions` only (their metadata included)."""
    folder.mkdir()
    for dist in importlib.metadata.distributions():
        if normalised(dist.metadata["Name"]) not in distributions:
            continue
        for top in {Path(str(path)).parts[0] for path in dist.files or []} - {".."}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def test_the_bundle_holds_what_the_check_imports_and_the_gpu_machine_lacks(bundle: Path, tmp_path: Path) -> None:
    """The check's imports in a Python holding nothing but the GPU machine's packages and the bundle's: optional
    imports of anything else are skipped there, required ones fail."""
    image = {normalised(line) for line in GPU_IMAGE.read_text().splitlines() if line and not line.startswith("#")}
    bundled = {normalised(wheel.name.split("-")[0]) for wheel in bundle.glob("*.whl")}
    site = site_with(image | bundled, tmp_path / "site")
    probe = "import json, sys; import benchmarks.gpu_check; print(json.dumps(sorted(sys.modules)))"
    environment = {"PYTHONPATH": f"{site}:{REPO_ROOT}", "PATH": os.environ["PATH"]}
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, env=environment
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = {module.split(".")[0] for module in json.loads(result.stdout.strip().splitlines()[-1])}
    owners = importlib.metadata.packages_distributions()
    used = {normalised(dist) for module in loaded for dist in owners.get(module, [])}
    assert sorted(bundled - used) == []  # nothing carried for nothing


def test_the_bundle_and_the_repository_fit_what_travels(bundle: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], capture_output=True, cwd=REPO_ROOT, check=True).stdout
    repository = sum((REPO_ROOT / name).stat().st_size for name in tracked.decode().split("\0") if name)
    wheels = sum(path.stat().st_size for path in bundle.glob("*.whl"))
    assert repository + wheels < LIMIT_BYTES / 4, (repository, wheels)


def test_the_check_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    script = REPO_ROOT / "benchmarks" / "gpu_check.py"
    result = subprocess.run([sys.executable, str(script), "--smoke", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["self_test"]["fastest_ms"] > 0 and report["self_test"]["slowest_over_fastest"] >= 1
    correctness = report["correctness"]
    assert correctness["logits_fp32"] < 1e-4 and correctness["training_steps_fp32"] < 1e-4
    assert correctness["flex_vs_sdpa_logits_fp32"] < 1e-4
    assert max(correctness["sdpa_vs_exact_bf16_long"], correctness["flex_vs_exact_bf16_long"]) < 0.05
    assert correctness["logits_bf16"] < 10 * correctness["transformers_bf16_spread"]
    keys = {
        "model",
        "attention",
        "micro_batch",
        "activation_checkpointing",
        "tokens_per_second",
        "mfu",
        "peak_memory_gib",
        "estimated_memory_gib",
        "step_time_s",
        "estimated_step_time_s",
        "baseline_tokens_per_second",
        "implied_kernel_efficiency",
    }
    assert len(report["runs"]) == 2 and all(keys <= set(run) for run in report["runs"])
    assert all(run["tokens_per_second"] > 0 and run["baseline_tokens_per_second"] > 0 for run in report["runs"])
    assert [run["global_batch"] for run in report["runs"]] == [4, 6]  # 2 and 3 micro-batches of 2
    assert all(run["adamw"] == "fused" for run in report["runs"])  # the calibration table's columns
    assert all(run["loss"] == "megatron" for run in report["runs"])  # eager on CPU; compiled, fused, on a GPU
    losses = report["loss_kernels"]
    assert losses["corolla"]["ms"] > 0 and losses["megatron"]["ms"] > 0 and losses["time_ratio"] > 0
    assert losses["max_difference"]["loss"] < 1e-5 and losses["max_difference"]["gradient"] < 1e-3
    profile = report["runs"][0]["profile"]
    assert profile["device_ms"] > 0 and sum(profile["by_kind"].values()) == pytest.approx(1, abs=0.01)
    assert profile["by_kind"]["matmul"] > 0 and profile["longest"][0]["ms"] > 0
    assert "profile" not in report["runs"][1]


FAILING_PART = """
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks import gpu_check as check
from model.config import Attention

flex = check.Setting("bloom-tiny", 2, False, Attention.flex)
settings = (flex, replace(flex, attention=Attention.sdpa, profiled=True))  # the loss kernels' shape: the profiled one
check.main(Path(sys.argv[1]), replace(check.SMOKE, settings=settings))
"""


def test_a_part_that_fails_leaves_the_others_figures_and_the_check_exits_non_zero(tmp_path: Path) -> None:
    """A GPU runs the check once: a part that breaks there must not cost the rest. On CPU, flex attention cannot
    train (it has no backward here), so that run fails for real; the run after it is still measured."""
    result = subprocess.run(
        [sys.executable, "-c", FAILING_PART, str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == "gpu_check: 1 part(s) failed, the others measured: runs[0].error"
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failed, measured = report["runs"]
    assert failed["attention"] == "flex" and "flex attention has no backward on CPU" in failed["error"]
    assert failed["baseline_tokens_per_second"] > 0  # transformers' baseline is its own part
    assert measured["attention"] == "sdpa" and measured["tokens_per_second"] > 0 and "error" not in measured
    assert "error" not in report["loss_kernels"] and report["correctness"]["logits_fp32"] < 1e-4
