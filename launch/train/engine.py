"""One rank's DeepSpeed pipeline engine (ZeRO-0/1) over megatron-core tensor-parallel layers, as the run's plan says,
and the checks that megatron's process groups, DeepSpeed's topology and pipeline cut are the plan's."""

from __future__ import annotations

import functools
from dataclasses import replace

import deepspeed
import torch
from deepspeed.runtime.pipe.engine import PipelineEngine
from megatron.core import parallel_state
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

from launch import compat
from launch.config.schemas import Precision, TrainConfig
from launch.plan.run_plan import RunPlan
from launch.plan.schedules import lr_at
from model.bloom import parallel_config
from model.config import ModelConfig
from model.layers import model_name
from model.pipeline import pipeline_module
from model.weights import initialize


def global_grad_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """The L2 norm of the whole model's gradient: each parameter counted once across TP ranks (shards, or rank 0's
    copy) and pipeline stages (the tied embedding only where DeepSpeed owns it)."""
    counted = [
        p.grad
        for p in parameters
        if p.grad is not None
        and not getattr(p, "ds_pipe_replicated", False)
        and param_is_not_tensor_parallel_duplicate(p)
    ]
    squares = torch.stack([grad.float().pow(2).sum() for grad in counted]).sum() if counted else torch.zeros(())
    torch.distributed.all_reduce(squares, group=parallel_state.get_model_parallel_group())
    return squares.sqrt()


class GuardedAdamW(torch.optim.AdamW):
    """AdamW that leaves the weights as they are when any rank's gradients are not finite (and says which ranks),
    so that a non-finite step never reaches the weights. With `max_norm` (fp32 without ZeRO) it first clips the
    gradients to a global norm: there DeepSpeed's own clipping counts only the first pipeline stage's untied
    parameters. Elsewhere DeepSpeed clips, and this is its inner optimizer, over the flat fp32 partitions."""

    def __init__(self, param_groups: list[dict], max_norm: float | None = None, **adamw: object) -> None:
        super().__init__(param_groups, **adamw)
        self.max_norm = max_norm
        self.nonfinite_ranks: list[int] = []

    def _nonfinite_ranks(self, gradients: list[torch.Tensor]) -> list[int]:
        """A collective over every rank: every optimizer of the run steps together."""
        if gradients:
            finite = torch.stack([torch.isfinite(grad).all() for grad in gradients]).all().reshape(1).int()
        else:
            finite = torch.ones(1, dtype=torch.int32, device=self.param_groups[0]["params"][0].device)
        every = [torch.empty_like(finite) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(every, finite)
        return [rank for rank, flag in enumerate(torch.cat(every).tolist()) if not flag]

    @torch.no_grad()
    def step(self, closure=None):
        parameters = [p for group in self.param_groups for p in group["params"]]
        gradients = [p.grad for p in parameters if p.grad is not None]
        self.nonfinite_ranks = self._nonfinite_ranks(gradients)
        if self.max_norm is not None:
            norm = global_grad_norm(parameters)
            compat.report_grad_norm(self, float(norm))
            if self.max_norm > 0 and not self.nonfinite_ranks:
                scale = (self.max_norm / (norm + 1e-6)).clamp(max=1.0)
                for grad in gradients:
                    grad.mul_(scale)
        if self.nonfinite_ranks:
            return None
        return super().step(closure)


def _clips_itself(train: TrainConfig, zero_stage: int) -> bool:
    return zero_stage == 0 and train.precision == Precision.fp32


def _optimizer(module: torch.nn.Module, train: TrainConfig, zero_stage: int) -> torch.optim.AdamW:
    """AdamW, guarded, fused (one kernel over each tensor, on GPU and CPU alike); biases and LayerNorm weights (1-D)
    are not decayed. A torch optimizer: DeepSpeed's own would JIT-build a fused CPU kernel first."""
    decayed = [p for p in module.parameters() if p.ndim >= 2]
    plain = [p for p in module.parameters() if p.ndim < 2]
    groups = [{"params": decayed, "weight_decay": train.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    adamw = {"lr": train.lr, "betas": (train.beta1, train.beta2), "eps": train.eps, "fused": True}
    return GuardedAdamW(groups, train.grad_clip if _clips_itself(train, zero_stage) else None, **adamw)


def deepspeed_config(train: TrainConfig, plan: RunPlan) -> dict:
    """Gradients are reduced over DP in fp32, as the planner counts them (launch/plan/step_time.py), and in bf16 with
    ZeRO-1 micro-batches' gradients are summed in fp32 too, as BLOOM's were. DeepSpeed's defaults (0.19.8) do both in
    bf16 in a bf16 run (`communication_data_type` and `data_types.grad_accum_dtype` are the model's dtype unless
    given): a step's gradient came 0.5% off the fp32 sum of its 16 micro-batches' gradients, 2% at 128 (BLOOM-176B's
    per DP rank), and even summed in fp32 it was rounded to bf16 once more for the DP reduction. With fp32 sums
    DeepSpeed runs its bf16 optimizer, whose fp32 masters and moments are split over DP as ZeRO-1's are; without ZeRO
    it takes bf16 sums only (it refuses fp32 ones there)."""
    bf16 = train.precision == Precision.bf16
    fp32_sums = bf16 and plan.zero_stage == 1
    return {
        "train_batch_size": train.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.micro_batches,
        "gradient_clipping": 0.0 if _clips_itself(train, plan.zero_stage) else train.grad_clip,
        "zero_optimization": {"stage": plan.zero_stage},
        "zero_allow_untested_optimizer": True,  # GuardedAdamW: torch's AdamW, but for the skipped non-finite step
        "bf16": {"enabled": bf16},
        "data_types": {"grad_accum_dtype": "fp32" if fp32_sums else None},
        "communication_data_type": "fp32",
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def check_groups(plan: RunPlan, rank: int) -> None:
    """This rank's place in megatron's process groups is the plan's: rank = (pipe x dp + data) x tp + tensor."""
    planned = plan.layout.coordinates(rank)
    megatron = (
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_data_parallel_rank(),
        parallel_state.get_pipeline_model_parallel_rank(),
    )
    if megatron != planned:
        raise RuntimeError(
            f"rank {rank} is (tensor, data, pipeline) {megatron} in megatron's groups, but {planned} in the plan of "
            f"{plan.layout.name}: megatron-core's rank order changed (launch/compat.py lists the versions)"
        )


def _check_engine(engine, plan: RunPlan, rank: int) -> None:
    """DeepSpeed's topology places this rank and cuts the pipeline as the plan does."""
    grid = engine.grid
    deepspeed_place = (grid.get_slice_parallel_rank(), grid.get_data_parallel_rank(), grid.get_stage_id())
    if deepspeed_place != plan.layout.coordinates(rank):
        raise RuntimeError(
            f"rank {rank} is (tensor, data, pipeline) {deepspeed_place} in DeepSpeed's topology, but "
            f"{plan.layout.coordinates(rank)} in the plan of {plan.layout.name}"
        )
    if tuple(engine.module.parts) != plan.stage_bounds:
        raise RuntimeError(
            f"DeepSpeed cut the pipeline at layers {list(engine.module.parts)}, the plan at {list(plan.stage_bounds)} "
            "(launch/plan/stages.py): their rules differ"
        )


def build_engine(
    model: ModelConfig, plan: RunPlan, train: TrainConfig, activation_checkpointing: bool, seed: int
) -> PipelineEngine:
    """The rank's engine: its pipeline stage, AdamW, the LR schedule (a function of the step)."""
    model = replace(model, vocab_size=plan.vocab_size)
    dtype = torch.bfloat16 if train.precision == Precision.bf16 else torch.float32
    config = parallel_config(dtype)
    with compat.building_pipeline():
        module = pipeline_module(model, config, plan.layout.pp, plan.layout.dp, seed, activation_checkpointing)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    names = functools.partial(model_name, num_layers=model.num_layers)
    initialize(module.named_parameters(), model, seed, plan.layout.tp, tp_rank, names)
    optimizer = _optimizer(module, train, plan.zero_stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, train) / train.lr)
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(train, plan)
    )
    _check_engine(engine, plan, torch.distributed.get_rank())
    return engine
