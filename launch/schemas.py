"""Typed configs of the launch commands (the schemas behind `conf/<command>.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from omegaconf import MISSING

from launch.data import DataConfig
from model.config import ModelConfig
from tokenizer.config import TokenizerConfig


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    dp: int = 0  # 0: what the world size leaves after tp x pp (1 when run locally)
    zero_stage: int = 1
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1):
            raise ValueError(f"parallel.zero_stage={self.zero_stage}: corolla trains with ZeRO stage 0 or 1")


@dataclass
class TrainConfig:
    steps: int = 20
    micro_batch: int = 2
    global_batch: int = 8
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    precision: Precision = Precision.fp32
    checkpoint_interval: int = 10
    keep_checkpoints: int = 2
    # Stop (with a checkpoint) after this many steps of one launch; 0: run to train.steps.
    exit_after: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.micro_batch, self.global_batch) < 1:
            raise ValueError("train.steps, train.micro_batch and train.global_batch must be at least 1")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"train.min_lr={self.min_lr} must be positive and at most train.lr={self.lr}")
        if self.warmup_steps < 0 or self.exit_after < 0:
            raise ValueError("train.warmup_steps and train.exit_after must not be negative")
        if self.checkpoint_interval < 1 or self.keep_checkpoints < 1:
            raise ValueError("train.checkpoint_interval and train.keep_checkpoints must be at least 1")


@dataclass
class TrackingConfig:
    # None: the embedded store, an SQLite file in the run directory; else an MLflow tracking server's URI.
    uri: str | None = None
    experiment: str = "corolla"


@dataclass
class TrainJob:
    model: ModelConfig = MISSING
    parallel: ParallelConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = MISSING
    tracking: TrackingConfig = MISSING
    run_dir: str = "runs/train"
    seed: int = 1234


@dataclass
class ExportJob:
    run_dir: str = MISSING
    output_dir: str = MISSING
    step: int = 0  # 0: the latest complete checkpoint


@dataclass
class PipelineJob(TrainJob):
    """The main job: tokenizer → evaluation → token files → training → Hugging Face export, all under run_dir.

    A training job plus the stages before it; its run_dir holds them all (training in run_dir/train).
    """

    tokenizer: TokenizerConfig = MISSING
    corpus: str = MISSING
    parallel_set: str = MISSING
    run_dir: str = "runs/demo"
