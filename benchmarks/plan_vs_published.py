"""The planner against published runs: predicted vs published time per step and TFLOP/s a GPU, with their ratio.

Rows (launch/plan/calibration.py): BLOOM-176B on 384 A100s of Jean Zay (~105 s an iteration, ~150 TFLOP/s), and
Megatron-LM's A100 weak-scaling table (Narayanan et al. 2021, Table 1; the time a step there follows from the
published TFLOP/s); corolla's own runs on one H200, measured by benchmarks/gpu_check.sh (memory and time). Then where
BLOOM's own layout stands among every layout `corolla plan` considers (arithmetic only: no GPU needed, a second or
two), and the time to reshard a checkpoint offline as the model grows
(benchmarks/reshard_time.py: real files, a minute or two).

    .venv/bin/python benchmarks/plan_vs_published.py [--smoke]    # --smoke: the reshard on one tiny shape

Each section is a function of its own, called by main(): add one for another comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from reshard_time import SHAPES, SMOKE_SHAPES, reshard_section  # noqa: E402

from launch.plan.calibration import bloom_176b, measured_runs, published_runs  # noqa: E402
from launch.plan.memory import COROLLA_GPU_SDPA  # noqa: E402
from launch.plan.ranking import best_per_layout, describe, evaluate, plan_layouts  # noqa: E402
from launch.plan.step_time import implied_kernel_efficiency  # noqa: E402


def published_runs_section() -> None:
    print("== Time per step and TFLOP/s a GPU: predicted vs published (ratio = predicted / published)\n")
    print(
        f"{'run':<22} {'GPUs':>5} {'TP':>3} {'PP':>3} {'DP':>3} {'mb':>3}  {'published s':>11} {'predicted s':>11} "
        f"{'ratio':>6}  {'published TF':>12} {'predicted TF':>12} {'ratio':>6}  {'GiB/GPU':>7}"
    )
    ratios = []
    for run in published_runs():
        plan = evaluate(run.model, run.candidate, run.hardware, run.implementation)
        layout, step = run.candidate.layout, plan.time.total
        ratios.append(step / run.published_step_s)
        derived = "" if run.step_s is not None else "*"
        print(
            f"{run.name:<22} {run.gpus:>5} {layout.tp:>3} {layout.pp:>3} {layout.dp:>3} "
            f"{run.candidate.micro_batch:>3}  {run.published_step_s:>10.1f}{derived or ' '} {step:>11.1f} "
            f"{ratios[-1]:>6.3f}  {run.tflops_per_gpu:>12.0f} {plan.tflops_per_gpu:>12.1f} "
            f"{plan.tflops_per_gpu / run.tflops_per_gpu:>6.3f}  {plan.memory_gib:>7.1f}"
        )
    print("\n* derived from the published TFLOP/s: hardware FLOPs a step (96 B s l h^2 (1 + s/6h + V/16lh)) / TFLOP/s")
    print(f"ratios of time per step from {min(ratios):.3f} to {max(ratios):.3f} (target: within 0.85 to 1.15)\n")


def measured_runs_section() -> None:
    print("== corolla on one H200, measured by benchmarks/gpu_check.sh: predicted / measured\n")
    print(
        f"{'run':<28} {'measured s':>10} {'predicted s':>11} {'ratio':>6}  "
        f"{'measured GiB':>12} {'predicted GiB':>13} {'ratio':>6}  {'implied kernel_efficiency':>25}"
    )
    for run in measured_runs():
        plan = evaluate(run.model, run.candidate, run.hardware, run.implementation)
        implied = implied_kernel_efficiency(plan.time, run.step_s, run.hardware)
        print(
            f"{run.name:<28} {run.step_s:>10.3f} {plan.time.total:>11.3f} {plan.time.total / run.step_s:>6.3f}  "
            f"{run.peak_memory_gib:>12.2f} {plan.memory_gib:>13.2f} {plan.memory_gib / run.peak_memory_gib:>6.3f}  "
            f"{implied:>25.3f}"
        )
    print(
        f"targets: memory within 0.90 to 1.10, time a step within 0.85 to 1.15 (fitted here: the H200's "
        f"kernel_efficiency {measured_runs()[0].hardware.kernel_efficiency} and SDPA's attention cost "
        f"{COROLLA_GPU_SDPA.attention_cost}, from these rows)\n"
    )


def bloom_layouts_section() -> None:
    run = bloom_176b()
    plans = plan_layouts(run.model, run.train, run.hardware, run.gpus, zero_stage=run.candidate.zero_stage)
    layouts = best_per_layout(plans)
    print(f"== BLOOM-176B's layout among the {len(plans)} configurations `corolla plan experiment=bloom-176b` weighs\n")
    for rank, plan in enumerate(layouts[:5], 1):
        print(f"{rank}. {describe(plan.candidate)}: {plan.memory_gib:.1f} GiB, {plan.time.total:.1f} s a step")
    exact = next(index for index, plan in enumerate(plans, 1) if plan.candidate == run.candidate)
    layout_rank = [plan.candidate.layout for plan in layouts].index(run.candidate.layout) + 1
    bloom = plans[exact - 1]
    print(
        f"\nBLOOM's {describe(run.candidate)}: {bloom.memory_gib:.1f} GiB, fits: {bloom.fits}, "
        f"{bloom.time.total:.1f} s a step; its layout ranks {layout_rank}, the configuration {exact} of {len(plans)} "
        "(the fastest skip recomputation, which corolla's memory-efficient attention lets fit)"
    )


def main(smoke: bool) -> None:
    published_runs_section()
    measured_runs_section()
    bloom_layouts_section()
    reshard_section(SMOKE_SHAPES if smoke else SHAPES)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the reshard on one tiny shape: its code path only")
    main(parser.parse_args().smoke)
