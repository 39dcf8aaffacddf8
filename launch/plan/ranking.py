"""The layout planner: every valid way to train a model on a number of GPUs, its memory and speed, ranked.

A candidate is a layout (TP within a node, PP at most one stage per block, DP what the GPUs leave) with a
micro-batch, activation checkpointing on or off and ZeRO stage 0 or 1; it is valid if
ParallelLayout.shape_problems() finds nothing to say. Candidates that fit in GPU memory come first, fastest first;
the others follow, smallest first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

from launch.config.schemas import PLANNED_MICRO_BATCHES, Precision, TrainConfig
from launch.plan.arithmetic import hardware_flops_per_step
from launch.plan.hardware import GIB, Hardware
from launch.plan.layout import ParallelLayout
from launch.plan.memory import Candidate, Implementation, MemoryEstimate, corolla_on_gpus, estimate_memory
from launch.plan.stages import stage_problems
from launch.plan.step_time import StepTime, estimate_step_time
from model.config import ModelConfig


@dataclass(frozen=True)
class Plan:
    candidate: Candidate
    memory: MemoryEstimate
    time: StepTime
    fits: bool
    tflops_per_gpu: float  # hardware FLOPs (recomputation counted) a second and GPU, as BLOOM and Megatron report
    # `corolla train` takes the layout: none of its pipeline stages holds the output embedding alone (stages.py)
    trainable: bool = True

    @property
    def memory_gib(self) -> float:
        return self.memory.total / GIB

    def overrides(self) -> str:
        """The layout as `corolla train/submit` overrides."""
        c = self.candidate
        checkpointing = str(c.activation_checkpointing).lower()
        return (
            f"parallel.tp={c.layout.tp} parallel.pp={c.layout.pp} parallel.dp={c.layout.dp} "
            f"train.micro_batch={c.micro_batch} parallel.activation_checkpointing={checkpointing} "
            f"parallel.zero_stage={c.effective_zero_stage}"
        )

    def record(self) -> dict:
        """The plan as JSON: the layout, memory (GiB) and time (s) with their parts."""
        c = self.candidate
        return {
            "tp": c.layout.tp,
            "pp": c.layout.pp,
            "dp": c.layout.dp,
            "micro_batch": c.micro_batch,
            "micro_batches": c.micro_batches,
            "activation_checkpointing": c.activation_checkpointing,
            "zero_stage": c.effective_zero_stage,
            "memory_gib": round(self.memory_gib, 2),
            "fits": self.fits,
            "trainable": self.trainable,
            "step_time_s": round(self.time.total, 3),
            "tflops_per_gpu": round(self.tflops_per_gpu, 1),
            "memory_parts_gib": {name: round(value, 3) for name, value in self.memory.gib().items()},
            "memory_stage": self.memory.stage,
            "time_parts_s": {name: round(value, 3) for name, value in vars(self.time).items()},
        }


def evaluate(
    model: ModelConfig, candidate: Candidate, hardware: Hardware, implementation: Implementation | None = None
) -> Plan:
    implementation = implementation or corolla_on_gpus(model)
    memory = estimate_memory(model, candidate, implementation)
    time = estimate_step_time(model, candidate, hardware, implementation)
    flops = hardware_flops_per_step(
        model, candidate.global_batch, candidate.layout.tp, recompute=candidate.activation_checkpointing
    )
    fits = memory.total <= hardware.gpu_memory_gib * GIB
    pp = candidate.layout.pp
    trainable = pp <= model.num_layers and not stage_problems(model, pp)
    return Plan(candidate, memory, time, fits, flops / time.total / candidate.layout.world_size / 1e12, trainable)


def _divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


def candidates(
    model: ModelConfig, train: TrainConfig, gpus: int, gpus_per_node: int, micro_batches: list[int], zero_stage: int
) -> Iterator[Candidate]:
    """Every valid candidate on `gpus` GPUs; ZeRO 0 and 1 where DP > 1 in fp32, else `zero_stage` as given: in bf16
    the stages take the same time, stage 0 a third less gradient memory for sums in bf16 (launch/plan/memory.py),
    which is the user's to choose, not the ranking's."""
    for tp in _divisors(math.gcd(gpus, gpus_per_node)):
        for pp in [pp for pp in _divisors(gpus // tp) if pp <= model.num_layers]:
            layout = ParallelLayout(tp, pp, gpus // (tp * pp))
            for micro_batch in micro_batches:
                # Not layout.problems: it refuses a last stage holding the output embedding alone, which the ranking
                # has never excluded (BLOOM-176B's PP=48 layouts rank 8th and 9th).
                if layout.shape_problems(model, replace(train, micro_batch=micro_batch)):
                    continue
                for zero in (0, 1) if layout.dp > 1 and train.precision == Precision.fp32 else (zero_stage,):
                    for checkpointing in (False, True):
                        yield Candidate(layout, micro_batch, train.global_batch, checkpointing, zero, train.precision)


def describe(candidate: Candidate) -> str:
    layout = candidate.layout
    recompute = "activation checkpointing" if candidate.activation_checkpointing else "no activation checkpointing"
    return (
        f"TP{layout.tp} x PP{layout.pp} x DP{layout.dp}, micro-batch {candidate.micro_batch}, {recompute}, "
        f"ZeRO-{candidate.effective_zero_stage}"
    )


# Step times of one layout this close are within the estimate's error: the configuration with more memory to spare
# is the better one (BLOOM-176B's best layout in fp32 at ZeRO-0 took 78.6 of 80 GiB, at ZeRO-1 69.1, 0.1% slower).
SAME_TIME = 0.01


def _preferred(plans: list[Plan]) -> Plan:
    """Of a layout's ranked plans, the one with the least memory among those that fit and take at most SAME_TIME
    more than the fastest; the first where none fits."""
    if not plans[0].fits:
        return plans[0]
    close = [plan for plan in plans if plan.fits and plan.time.total <= plans[0].time.total * (1 + SAME_TIME)]
    return min(close, key=lambda plan: plan.memory.total)


def best_per_layout(plans: list[Plan]) -> list[Plan]:
    """The preferred configuration of each TP x PP x DP layout, in rank order."""
    by_layout: dict[ParallelLayout, list[Plan]] = {}
    for plan in plans:
        by_layout.setdefault(plan.candidate.layout, []).append(plan)
    return [_preferred(layout_plans) for layout_plans in by_layout.values()]


def rank(plans: list[Plan]) -> list[Plan]:
    return sorted(plans, key=lambda plan: (not plan.fits, plan.time.total if plan.fits else plan.memory.total))


def plan_layouts(
    model: ModelConfig,
    train: TrainConfig,
    hardware: Hardware,
    gpus: int,
    micro_batches: tuple[int, ...] | list[int] = PLANNED_MICRO_BATCHES,
    zero_stage: int = 1,
    implementation: Implementation | None = None,
) -> list[Plan]:
    """Every valid candidate on `gpus` GPUs of `hardware`, evaluated and ranked."""
    found = candidates(model, train, gpus, hardware.gpus_per_node, micro_batches, zero_stage)
    return rank([evaluate(model, candidate, hardware, implementation) for candidate in found])


def recommended(plans: list[Plan]) -> Plan | None:
    """The preferred configuration of the fastest layout that fits and that `corolla train` takes; None if none
    does."""
    return next((plan for plan in best_per_layout(plans) if plan.fits and plan.trainable), None)


def _distance(plan: Plan, wanted: Candidate) -> tuple:
    """How far a plan is from the wanted candidate: layout axes changed, other knobs changed, speed, then how much
    the sizes change."""
    have = plan.candidate
    axes = [(have.layout.tp, wanted.layout.tp), (have.layout.pp, wanted.layout.pp), (have.layout.dp, wanted.layout.dp)]
    knobs = [
        (have.micro_batch, wanted.micro_batch),
        (have.activation_checkpointing, wanted.activation_checkpointing),
        (have.zero_stage, wanted.zero_stage),
    ]
    sizes = [*axes, knobs[0]]
    return (
        sum(a != b for a, b in axes),
        sum(a != b for a, b in knobs),
        plan.time.total,
        sum(abs(math.log2(a / b)) for a, b in sizes),
    )


def nearest_fitting(plans: list[Plan], wanted: Candidate) -> Plan | None:
    """The fitting plan `corolla train` takes that changes the fewest things about `wanted` (the layout last), the
    fastest of those."""
    fitting = [plan for plan in plans if plan.fits and plan.trainable]
    return min(fitting, key=lambda plan: _distance(plan, wanted)) if fitting else None
