"""Where a training job runs: this machine, or a Slurm cluster (the schema behind conf/cluster/*.yaml)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from launch.config.sbatch import sbatch_options


class Scheduler(Enum):
    local = "local"  # processes on this machine (torchrun), no Slurm
    slurm = "slurm"


# A GPU's and its node's figures, for the planner (launch/plan/hardware.py), as conf/cluster/*.yaml gives them.
HARDWARE_FIGURES = (
    "gpu_memory_gib",
    "peak_tflops",
    "memory_bandwidth_gbps",
    "intra_node_gbps",
    "inter_node_gbps",
    "fp32_peak_tflops",
)
# What a run on this machine (cluster.scheduler=local) reads of a cluster: the hardware, to check that the layout fits.
# Everything else only Slurm reads (SLURM_SETTINGS, below the schema): a local run takes its world size from the
# layout, its environment from the command's, and restarts nothing.
READ_HERE = ("name", "scheduler", "gpus_per_node", *HARDWARE_FIGURES, "kernel_efficiency")


# What a fixed-size job keeps, of the time between the time limit's warning and the limit, to fail and be requeued.
REQUEUE_MARGIN_S = 30


@dataclass
class ClusterConfig:
    """A cluster and what a job asks of it. A job gets `nodes` whole nodes and runs one rank per GPU on each
    (`tasks_per_node` ranks on CPU nodes), so its world size is nodes x ranks per node."""

    name: str = "local"
    scheduler: Scheduler = Scheduler.local
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    # With parallel.elastic: Slurm may start (or requeue) the job on as few as this many nodes; 0: always `nodes`.
    min_nodes: int = 0
    gpus_per_node: int = 0
    tasks_per_node: int = 0  # CPU nodes: ranks per node; GPU nodes: 0 (one per GPU)
    cpus_per_task: int = 1
    mem_per_node_gb: int = 0  # 0: Slurm's default
    time_limit_min: int = 60
    constraint: str | None = None
    exclusive: bool = False
    # More sbatch options, for what a site asks of its jobs and corolla has no setting for: {reservation: big_run,
    # hint: nomultithread, mail-type: "END,FAIL", mail-user: me@lab.org, overcommit: true}, true or null a flag, false
    # none (launch/config/sbatch.py). Every training job takes them, and so do the pipeline's data stages, which take
    # cpu_sbatch instead where they go to cpu_partition.
    sbatch: dict[str, Any] = field(default_factory=dict)
    # Shell lines run before the ranks start (module load ..., source ...), and environment variables (NCCL_...).
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Slurm sends USR2 this long before the time limit: enough for every rank to finish a step and save within
    # stop_window_s of it (a fixed-size job's ranks that have not stopped by then fail the start, to be requeued).
    signal_delay_s: int = 120
    # GB/s that a job's nodes write to the run directory's filesystem together: what a checkpoint's save takes, which
    # signal_delay_s must leave time for (0: unknown).
    filesystem_gbps: float = 0.0
    # Restarts (requeues after a signal, a node failure, a crashed or hung rank) before the job is given up.
    max_restarts: int = 5
    # Nodes the run's jobs never use (sbatch --exclude), beside those its health checks found unfit.
    exclude: list[str] = field(default_factory=list)
    # Before each start on Slurm trains, every rank times the same matmuls on its device: a node whose rank fails that,
    # or takes more than this many times the fastest rank's time, is unfit, and the job gives way to one that leaves
    # it out (0: no check). BLOOM-176B once ran 5% slow for days on one slow GPU.
    health_slowdown: float = 1.25
    # `corolla pipeline`'s data stages (tokenizer, evaluation, encoding, export) take one node each, no GPU: of this
    # partition (None: the training one), with this many cores (0: a training node's, cpus_per_task x ranks).
    cpu_partition: str | None = None
    # The account they are charged to there, where the site keeps CPU hours apart (Jean Zay's six@cpu beside
    # six@a100); None: `account`.
    cpu_account: str | None = None
    cpu_cores: int = 0
    cpu_sbatch: dict[str, Any] = field(default_factory=dict)
    # Encoding tasks of a pipeline's job array running at once.
    array_parallelism: int = 16
    # The hardware, for `corolla plan` and the memory check of `corolla submit` (0: unknown): one GPU's memory (GiB),
    # dense bf16 peak (TFLOP/s) and memory bandwidth (GB/s); GB/s one way from a GPU to the others of its node
    # (NVLink), and from a node to the others (all its network adapters together).
    gpu_memory_gib: float = 0.0
    peak_tflops: float = 0.0
    memory_bandwidth_gbps: float = 0.0
    intra_node_gbps: float = 0.0
    inter_node_gbps: float = 0.0
    # How fast corolla's kernels run on these GPUs, as a share of the planner's A100-calibrated figure: 1 for A100s,
    # 0.77 measured on an H200; `bash benchmarks/gpu_check.sh OUT` prints it for the GPU it runs on.
    kernel_efficiency: float = 1.0
    # One GPU's dense fp32 peak (TFLOP/s; corolla leaves TF32 off), to plan train.precision=fp32 (0: an A100's
    # ratio to peak_tflops, 1/16).
    fp32_peak_tflops: float = 0.0

    def __post_init__(self) -> None:
        counts = {"nodes": (self.nodes, 1), "cpus_per_task": (self.cpus_per_task, 1)}
        counts |= {"gpus_per_node": (self.gpus_per_node, 0), "tasks_per_node": (self.tasks_per_node, 0)}
        if wrong := [
            f"cluster.{key}={value} (at least {least})" for key, (value, least) in counts.items() if value < least
        ]:
            raise ValueError(f"cluster {self.name}: {', '.join(wrong)}: give each at least that")
        if not 0 <= self.min_nodes <= self.nodes:
            raise ValueError(
                f"cluster {self.name}: min_nodes={self.min_nodes} must lie between 0 (always `nodes`) and "
                f"nodes={self.nodes}"
            )
        if self.scheduler == Scheduler.slurm and not (self.gpus_per_node or self.tasks_per_node):
            raise ValueError(
                f"cluster {self.name}: set cluster.gpus_per_node (GPU nodes) or cluster.tasks_per_node (CPU nodes)"
            )
        figures = (*HARDWARE_FIGURES, "filesystem_gbps")
        # NaN compares as neither negative nor positive
        if wrong := [f"{key}={getattr(self, key)}" for key in figures if not 0 <= getattr(self, key) < math.inf]:
            raise ValueError(f"cluster {self.name}: {', '.join(wrong)}: give finite figures, not negative (0: unknown)")
        if self.health_slowdown and not self.health_slowdown > 1:
            raise ValueError(
                f"cluster {self.name}: health_slowdown={self.health_slowdown} must be above 1 (a rank slower than that "
                "many times the fastest is unfit) or 0 (no health check)"
            )
        if not 0 < self.kernel_efficiency <= 2:
            raise ValueError(
                f"cluster {self.name}: kernel_efficiency={self.kernel_efficiency} must lie in (0, 2]: 1 for A100s, or "
                "what benchmarks/gpu_check.sh prints for your GPU"
            )
        if self.cpu_cores < 0 or self.mem_per_node_gb < 0 or self.array_parallelism < 1:
            raise ValueError(
                f"cluster {self.name}: cpu_cores={self.cpu_cores} (0: a training node's) and mem_per_node_gb="
                f"{self.mem_per_node_gb} (0: Slurm's default) must not be negative, array_parallelism="
                f"{self.array_parallelism} at least 1"
            )
        sbatch_options(self.sbatch, "cluster.sbatch")
        sbatch_options(self.cpu_sbatch, "cluster.cpu_sbatch")
        if self.time_limit_min < 1 or not 0 <= self.signal_delay_s < self.time_limit_min * 60 or self.max_restarts < 0:
            raise ValueError(
                f"cluster {self.name}: time_limit_min={self.time_limit_min} must be at least 1, signal_delay_s="
                f"{self.signal_delay_s} shorter than it, max_restarts={self.max_restarts} not negative"
            )

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node or self.tasks_per_node

    @property
    def node_cores(self) -> int:
        """The cores a data stage of the pipeline gets."""
        return self.cpu_cores or self.cpus_per_task * self.ranks_per_node

    @property
    def chained(self) -> bool:
        """Slurm may start the job on fewer than `nodes` nodes, and a requeue would keep the count it first got, so
        each start is a job of its own, queued by the one before (slurm/executor.py)."""
        return self.min_nodes > 0

    @property
    def stop_window_s(self) -> float:
        """How long after the time limit's USR2 a fixed-size job's ranks have to stop, before they fail the start to be
        requeued (Slurm never requeues a job it ends at its limit): the warning less REQUEUE_MARGIN_S for the failure
        and scontrol's requeue, or half of it where it is under twice that. An elastic run's next job takes over
        however this one ends: its ranks have the whole warning. 0: no warning is asked for."""
        if self.chained or self.signal_delay_s <= 0:
            return float(self.signal_delay_s)
        return max(self.signal_delay_s - REQUEUE_MARGIN_S, self.signal_delay_s / 2)

    @property
    def node_counts(self) -> range:
        """Every node count the job may run on."""
        return range(self.min_nodes or self.nodes, self.nodes + 1)


# Derived, so that a setting added to the schema is refused on this machine unless it is read here: never dropped.
SLURM_SETTINGS = tuple(setting.name for setting in fields(ClusterConfig) if setting.name not in READ_HERE)
