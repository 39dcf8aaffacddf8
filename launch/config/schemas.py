"""Typed configs of the commands other than the tokenizer's (tokenizer/config.py): the schemas behind
`conf/<command>.yaml` and its option groups."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import urlparse

from omegaconf import MISSING

from launch.config.cluster import ClusterConfig
from launch.config.data import DataConfig
from model.config import ModelConfig
from tokenizer.config import DEFAULT_SEED, TokenizerConfig, check_seed

# What MLflow tracks to: a server, a database through SQLAlchemy (`postgresql+psycopg2://` too), a file store.
# MLflow's file store (file: URIs and bare paths) is not among them: MLflow 3 refuses to write one.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")

# The micro-batches `corolla plan` (and the submit memory check) tries besides the configured one.
PLANNED_MICRO_BATCHES = (1, 2, 4, 8)


class NewRows(Enum):
    """How the rows an extended tokenizer adds to an init_from embedding start (launch/train/shards.py)."""

    mean = "mean"  # the mean of the rows of the new piece's pieces under the base tokenizer
    random = "random"  # drawn as a fresh model's


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
    # Each (re)start takes the layout that fits the ranks it got (with cluster.min_nodes, Slurm may start or requeue
    # the job on fewer nodes): TP as given, the pipeline depth nearest pp, DP from what is left; the checkpoint is
    # resharded on load.
    elastic: bool = False

    def __post_init__(self) -> None:
        if min(self.tp, self.pp) < 1 or self.dp < 0:
            raise ValueError(
                f"parallel.tp={self.tp} and parallel.pp={self.pp} must be at least 1, parallel.dp={self.dp} at least 1 "
                "or 0 (DP from the world size)"
            )
        if self.zero_stage not in (0, 1):
            raise ValueError(f"parallel.zero_stage={self.zero_stage}: corolla trains with ZeRO stage 0 or 1")


@dataclass
class BatchRampup:
    """BLOOM's batch-size ramp-up: the global batch starts at `start` sequences and grows by `increment` at equal
    intervals of samples until, after `samples` samples, it is train.global_batch. start=0: no ramp-up."""

    start: int = 0
    increment: int = 0
    samples: int = 0

    def __post_init__(self) -> None:
        if self.start and (self.increment < 1 or self.samples < 1):
            raise ValueError(
                f"train.rampup.start={self.start} needs a positive train.rampup.increment and train.rampup.samples "
                "(BLOOM-176B: start=192 increment=16 samples=9765625)"
            )


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
    # Steps whose loss or gradient norm is not finite leave the weights as they are; past this many in one launch,
    # the run stops without saving them (0: at the first), says which step, and its MLflow run is marked failed.
    skip_nonfinite: int = 0
    rampup: BatchRampup = field(default_factory=BatchRampup)
    # Validation loss per language every eval_interval steps and at the end, on eval_samples held-out sequences of
    # each language (fewer where its held-out documents hold fewer: launch/plan/run_plan.py); 0: no validation.
    eval_interval: int = 0
    eval_samples: int = 8
    # A collective that waits this long for a peer fails, and a rank that makes no progress (no step, save or
    # validation finished) for this long dumps its stacks and exits: a dead or stuck rank ends the job.
    hang_timeout_s: int = 1800

    def __post_init__(self) -> None:
        if min(self.steps, self.micro_batch, self.global_batch) < 1:
            raise ValueError("train.steps, train.micro_batch and train.global_batch must be at least 1")
        if not (math.isfinite(self.lr) and 0 < self.min_lr <= self.lr):
            raise ValueError(
                f"train.lr={self.lr} must be finite, and train.min_lr={self.min_lr} positive and at most train.lr"
            )
        if self.warmup_steps < 0 or self.exit_after < 0 or self.skip_nonfinite < 0:
            raise ValueError("train.warmup_steps, train.exit_after and train.skip_nonfinite must not be negative")
        if self.checkpoint_interval < 1 or self.keep_checkpoints < 1:
            raise ValueError("train.checkpoint_interval and train.keep_checkpoints must be at least 1")
        if self.hang_timeout_s < 10:
            raise ValueError(f"train.hang_timeout_s={self.hang_timeout_s} must be at least 10 seconds")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and 0 < self.eps < math.inf and self.weight_decay >= 0):
            raise ValueError(
                f"AdamW takes train.beta1={self.beta1} and train.beta2={self.beta2} in [0, 1), a positive "
                f"train.eps={self.eps} and a train.weight_decay={self.weight_decay} of 0 or more"
            )
        if not self.grad_clip >= 0:
            raise ValueError(f"train.grad_clip={self.grad_clip} must be 0 (no clipping) or positive")
        if self.eval_interval < 0 or self.eval_samples < 1:
            raise ValueError("train.eval_interval must not be negative (0: no validation) and train.eval_samples >= 1")
        if self.rampup.start and not 0 < self.rampup.start < self.global_batch:
            raise ValueError(
                f"train.rampup.start={self.rampup.start} must be below train.global_batch={self.global_batch} "
                "(train.rampup.start=0: no ramp-up)"
            )
        if self.rampup.start and (self.global_batch - self.rampup.start) % self.rampup.increment:
            raise ValueError(
                f"train.rampup.increment={self.rampup.increment} steps from train.rampup.start={self.rampup.start} "
                f"do not reach train.global_batch={self.global_batch}: make the difference a multiple of it"
            )


@dataclass
class TrackingConfig:
    # None: the embedded store, an SQLite file in the run directory; else an MLflow tracking server's URI.
    uri: str | None = None
    experiment: str = "corolla"

    def __post_init__(self) -> None:
        check_tracking_uri("tracking.uri", self.uri)


def check_tracking_uri(key: str, uri: str | None) -> None:
    """A URI MLflow can track to, or a one-line error that names its scheme only (a URI may hold a password)."""
    if not uri:
        return
    scheme = urlparse(uri).scheme.split("+")[0]
    what = f"has the scheme {scheme}:" if scheme else "has no scheme (a path: MLflow's file store)"
    if scheme not in TRACKING_SCHEMES:
        raise ValueError(
            f"{key} {what}, which MLflow cannot track to: give a server (http://HOST:PORT), a database "
            "(sqlite:///PATH, postgresql://...), or no URI for the run directory's own store"
        )


@dataclass
class TrainJob:
    model: ModelConfig = MISSING
    # The tokenizer that encodes data.corpus when data.tokens_dir is not given.
    tokenizer: TokenizerConfig = MISSING
    parallel: ParallelConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = MISSING
    tracking: TrackingConfig = MISSING
    cluster: ClusterConfig = MISSING
    run_dir: str = "runs/train"
    seed: int = DEFAULT_SEED
    # The weights a new run starts from, with a fresh optimizer and LR schedule: a corolla run directory (its latest
    # checkpoint), an imported model or a Hugging Face BloomForCausalLM directory. The model's shape (all of `model`
    # but JOB_MODEL_SETTINGS) and the tokenizer that encodes data.corpus are then theirs. None: random weights.
    init_from: str | None = None
    # With init_from and data.tokenizer_dir (or token files) of an extension of the weights' tokenizer: the embedding
    # grows, and its new rows start as this says.
    init_new_rows: NewRows = NewRows.mean

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.init_new_rows != NewRows.mean and not self.init_from:
            raise ValueError(
                f"init_new_rows={self.init_new_rows.value} starts the rows an extended tokenizer adds to weights "
                "given with init_from, and none are: pass init_from=DIR, or drop init_new_rows"
            )


# The model settings a job keeps for itself on weights it starts from (init_from) or resumes (a relaunch): the weights
# do not depend on them. The rest of the model's config is the weights' own, which a relaunch must keep (its name only
# labels them).
JOB_MODEL_SETTINGS = ("seq_length", "attention", "compile", "hidden_dropout", "attention_dropout")


def check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step={step}: give a checkpoint's step, or 0 for the latest complete one")


@dataclass
class ReshardJob:
    """`corolla checkpoint reshard`: the run whose checkpoint to rewrite, and the layout to rewrite it for."""

    run_dir: str = MISSING
    tp: int = 0  # 0: as saved
    pp: int = 0  # 0: as saved
    dp: int = 0  # 0: as saved
    step: int = 0  # 0: the latest complete checkpoint

    def __post_init__(self) -> None:
        if min(self.tp, self.pp, self.dp) < 0:
            raise ValueError(f"tp={self.tp} pp={self.pp} dp={self.dp}: each must be at least 1, or 0 for as saved")
        check_step(self.step)


@dataclass
class VerifyJob:
    """`corolla checkpoint verify`: every file of a run's checkpoints against the hashes written with them."""

    run_dir: str = MISSING
    step: int = 0  # 0: every complete checkpoint

    def __post_init__(self) -> None:
        check_step(self.step)


@dataclass
class TrackingSyncJob:
    """`corolla tracking sync`: what MLflow lacks of a run, sent; with uri=..., all of it, to a new run there."""

    run_dir: str = MISSING
    uri: str = ""  # empty: the run's own tracking server or store (RUN_DIR/run.json)

    def __post_init__(self) -> None:
        check_tracking_uri("uri", self.uri)


@dataclass
class ExportJob:
    run_dir: str = MISSING
    output_dir: str = MISSING
    step: int = 0  # 0: the latest complete checkpoint
    overwrite: bool = False  # write into an output_dir that holds files already

    def __post_init__(self) -> None:
        check_step(self.step)


@dataclass
class ImportJob:
    """`corolla import hf`: a Hugging Face BloomForCausalLM directory (with its tokenizer) → a run directory at step
    0 that any layout trains from (`corolla train init_from=RUN_DIR`)."""

    hf_dir: str = MISSING
    run_dir: str = MISSING


@dataclass
class PlanConfig:
    """`corolla plan`'s own knobs."""

    micro_batches: list[int] = field(default_factory=lambda: list(PLANNED_MICRO_BATCHES))  # and train.micro_batch
    top: int = 10  # table rows: the best configuration of each of the `top` best TP x PP x DP layouts

    def __post_init__(self) -> None:
        if not self.micro_batches or min(self.micro_batches) < 1 or self.top < 1:
            raise ValueError("plan.top and every plan.micro_batches entry must be at least 1")


@dataclass
class PlanJob:
    """A model and its training recipe on a cluster's GPUs; `parallel` and train.micro_batch are the layout the user
    has in mind, placed among the others. The vocabulary is model.vocab_size, else that of the tokenizer a job of
    these settings would train (`tokenizer`)."""

    model: ModelConfig = MISSING
    train: TrainConfig = MISSING
    parallel: ParallelConfig = MISSING
    cluster: ClusterConfig = MISSING
    tokenizer: TokenizerConfig = MISSING
    plan: PlanConfig = field(default_factory=PlanConfig)


@dataclass
class MainJob(TrainJob):
    """`corolla pipeline`, the main job: tokenizer → evaluation → token files → training → Hugging Face export, all
    under run_dir.

    A training job plus the stages before it, run in the open rather than through the cache: the tokenizer of
    data.corpus is evaluated on parallel_set, and run_dir holds every stage (training in run_dir/train).
    """

    parallel_set: str = MISSING
    run_dir: str = "runs/demo"
    # On a cluster, each task of the encoding job array takes corpus files of about this many MB in all.
    encode_task_mb: float = 1024.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data.corpus:  # data.tokens_dir, the pipeline's own, stands in for it in a training job
            raise ValueError("data.corpus is not set: the pipeline trains its tokenizer on it; give data.corpus=DIR")
        if not self.encode_task_mb > 0:
            raise ValueError(f"encode_task_mb={self.encode_task_mb} must be positive")


@dataclass
class StatusJob:
    run_dir: str = MISSING  # what `corolla train` or `corolla submit` printed


@dataclass
class LogsJob:
    run_dir: str = MISSING
    rank: int = -1  # -1: every rank
    lines: int = 50
    stage: str = ""  # a pipeline submitted to Slurm: the stage whose logs (empty: the latest that has any)

    def __post_init__(self) -> None:
        if self.lines < 1 or self.rank < -1:
            raise ValueError(f"lines={self.lines} rank={self.rank}: lines must be at least 1, rank -1 (all) or a rank")


@dataclass
class CancelJob:
    run_dir: str = MISSING
