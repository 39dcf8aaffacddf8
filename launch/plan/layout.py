"""The parallel layout: how many tensor, pipeline and data-parallel ranks, computed once and passed on.

Ranks are laid out tensor-parallel fastest, then data, then pipeline: rank = (pipe * dp + data) * tp + tensor.
DeepSpeed's pipeline topology (axes pipe, data, model) and megatron-core's default order give the same groups.
"""

from __future__ import annotations

from dataclasses import dataclass

from launch.config.schemas import TrainConfig
from launch.plan.schedules import batch_sizes
from launch.plan.stages import stage_problems
from model.config import ModelConfig


def tensor_parallel_problem(tp: int, gpus_per_node: int, cluster: str) -> str | None:
    """Tensor parallelism stays within a node: a TP that does not divide a node's GPUs, said with what to do."""
    if gpus_per_node % tp == 0:
        return None
    return (
        f"parallel.tp={tp} does not fit the {gpus_per_node} GPUs of a node of cluster {cluster}: tensor "
        f"parallelism stays within a node; choose a TP that divides {gpus_per_node}"
    )


def too_many_stages(pp: int, model: ModelConfig) -> str | None:
    return (
        f"parallel.pp={pp} stages for {model.num_layers} layers: use at most one per layer"
        if pp > model.num_layers
        else None
    )


@dataclass(frozen=True)
class ParallelLayout:
    tp: int = 1
    pp: int = 1
    dp: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def name(self) -> str:
        return f"tp{self.tp}-pp{self.pp}-dp{self.dp}"

    @classmethod
    def for_world(cls, tp: int, pp: int, dp: int, world_size: int | None) -> ParallelLayout:
        """dp=0 means "whatever the world size leaves"; otherwise the product must be the world size."""
        if dp == 0:
            if world_size is None or world_size % (tp * pp):
                raise ValueError(
                    f"parallel.dp=0 derives DP from the world size, but {world_size} processes do not split into "
                    f"tp={tp} x pp={pp}: change parallel.tp or parallel.pp to split them, or the process count"
                )
            dp = world_size // (tp * pp)
        layout = cls(tp, pp, dp)
        if world_size is not None and layout.world_size != world_size:
            fix = (
                f"set parallel.dp={world_size // (tp * pp)} or parallel.dp=0 (DP from the processes)"
                if world_size % (tp * pp) == 0
                else "change parallel.tp or parallel.pp to split them, or the process count"
            )
            raise ValueError(
                f"tp={tp} x pp={pp} x dp={dp} = {layout.world_size} ranks, but {world_size} processes: {fix}"
            )
        return layout

    def problems(self, model: ModelConfig, train: TrainConfig) -> list[str]:
        """Every reason this layout cannot train `model` with these batches, one line each; [] if it can."""
        problems = self.shape_problems(model, train)
        if self.pp <= model.num_layers:
            problems.extend(stage_problems(model, self.pp))
        return problems

    def shape_problems(self, model: ModelConfig, train: TrainConfig) -> list[str]:
        """What `problems` finds but the pipeline stage cut's: whether the model's shape and the batches split."""
        problems = []
        if model.num_heads % self.tp:
            problems.append(f"model.num_heads={model.num_heads} is not divisible by parallel.tp={self.tp}")
        if model.ffn_hidden_size % self.tp:
            problems.append(f"the MLP width {model.ffn_hidden_size} is not divisible by parallel.tp={self.tp}")
        if model.embedding_rows % self.tp:
            problems.append(f"the embedding's {model.embedding_rows} rows are not divisible by parallel.tp={self.tp}")
        if problem := too_many_stages(self.pp, model):
            problems.append(problem)
        per_step = train.micro_batch * self.dp
        if train.global_batch % per_step:
            problems.append(
                f"train.global_batch={train.global_batch} is not divisible by train.micro_batch={train.micro_batch} x "
                f"dp={self.dp}: make it a multiple of {per_step}"
            )
        if train.rampup.start and any(size % per_step for size in batch_sizes(train)):
            problems.append(
                f"the ramp-up batches (train.rampup.start={train.rampup.start}, increment={train.rampup.increment}) "
                f"are not all multiples of train.micro_batch x dp = {per_step}: make both multiples of it, or "
                "train.rampup.start=0 for no ramp-up"
            )
        if train.eval_interval and train.eval_samples % per_step:
            problems.append(
                f"train.eval_samples={train.eval_samples} is not divisible by train.micro_batch x dp = {per_step}: "
                f"make it a multiple of {per_step}"
            )
        return problems

    def gradient_accumulation(self, micro_batch: int, global_batch: int) -> int:
        return global_batch // (micro_batch * self.dp)

    def coordinates(self, rank: int) -> tuple[int, int, int]:
        """(tensor, data, pipeline) rank of global rank `rank`."""
        tensor, rest = rank % self.tp, rank // self.tp
        return tensor, rest % self.dp, rest // self.dp
