"""The machine a plan is for: its GPUs (memory, peak, memory bandwidth) and how they talk within and across nodes.

Figures are the vendor's nominal ones; what a kernel or a collective achieves of them is the planner's assumption
(launch/plan/step_time.py), not the machine's description.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from launch.config.cluster import ClusterConfig
from launch.config.schemas import Precision

GIB = 1024**3


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def bytes_text(size: float) -> str:
    """A size in bytes, in GiB, or in MiB below a tenth of one."""
    return f"{size / GIB:.2f} GiB" if size >= GIB / 10 else f"{size / 2**20:.1f} MiB"


@dataclass(frozen=True)
class Hardware:
    name: str
    gpus_per_node: int
    gpu_memory_gib: float
    peak_tflops: float  # dense bf16 tensor-core peak of one GPU
    memory_bandwidth_gbps: float  # GB/s of one GPU's memory (HBM)
    intra_node_gbps: float  # GB/s one way, one GPU to the others of its node (NVLink)
    inter_node_gbps: float  # GB/s one way, one node to the others: all its network adapters together
    # The speed of corolla's kernels on this GPU, as a share of what the planner assumes (launch/plan/step_time.py,
    # calibrated on A100s): measured, not nominal; benchmarks/gpu_check.sh prints it for the GPU it runs on.
    kernel_efficiency: float = 1.0
    # Dense fp32 peak of one GPU, without TF32 (which corolla leaves off): what a train.precision=fp32 run's matmuls
    # get; 0: unknown, taken as peak_tflops / FP32_SLOWDOWN.
    fp32_peak_tflops: float = 0.0

    def __post_init__(self) -> None:
        if self.gpus_per_node < 1:
            raise ValueError(f"cluster {self.name} has no GPUs: set cluster.gpus_per_node to plan a GPU layout")
        figures = [f.name for f in fields(self) if f.name not in ("name", "gpus_per_node", "fp32_peak_tflops")]
        unknown = [name for name in figures if getattr(self, name) <= 0]
        if unknown:
            raise ValueError(
                f"cluster {self.name} does not say its {', '.join(unknown)}: set "
                + " ".join(f"cluster.{name}=..." for name in unknown)
            )

    def peak(self, precision: Precision) -> float:
        """The dense peak (TFLOP/s) of one GPU's matmuls in `precision`: tensor cores in bf16, CUDA cores in fp32 (an
        A100's 19.5 against its 312 in bf16; where fp32_peak_tflops is not given, the bf16 peak over that ratio)."""
        if precision == Precision.bf16:
            return self.peak_tflops
        return self.fp32_peak_tflops or self.peak_tflops / FP32_SLOWDOWN

    @classmethod
    def of(cls, cluster: ClusterConfig) -> Hardware:
        """The hardware conf/cluster/*.yaml describes; a one-line ValueError if it says too little to plan on."""
        figures = {f.name: getattr(cluster, f.name) for f in fields(cls)}
        return cls(**figures)


# How many times slower than bf16 tensor cores a GPU's fp32 matmuls run with TF32 off: an A100's 312 / 19.5 (an
# H100's 989.5 / 67 is 14.8).
FP32_SLOWDOWN = 16.0
# The GPU of the calibration runs (launch/plan/calibration.py) and conf/cluster/jean-zay-a100.yaml: A100 SXM4 80GB,
# 312 TFLOP/s dense bf16 (19.5 in fp32), 2,039 GB/s HBM2e, NVLink 3 at 300 GB/s each way.
A100_80GB = {
    "gpu_memory_gib": 80.0,
    "peak_tflops": 312.0,
    "memory_bandwidth_gbps": 2039.0,
    "intra_node_gbps": 300.0,
    "fp32_peak_tflops": 19.5,
}
# One H200 SXM 141GB, as the GPU check measures it (launch/plan/calibration.py's measured rows): 989.5 TFLOP/s dense
# bf16 (67 in fp32), 4,800 GB/s HBM3e, NVLink 4 at 450 GB/s each way; the network figure is unused by a one-GPU run.
# Its kernels ran at 0.77 of the A100-calibrated speed: the geometric mean of what the three flex-attention rows
# measured by benchmarks/gpu_check.sh imply (0.75, 0.75, 0.81; benchmarks/plan_vs_published.py prints them).
H200 = {
    "gpu_memory_gib": 139.8,
    "peak_tflops": 989.5,
    "memory_bandwidth_gbps": 4800.0,
    "intra_node_gbps": 450.0,
    "kernel_efficiency": 0.77,
    "fp32_peak_tflops": 67.0,
}
# One H100 SXM 80GB: the H200's chip with less and slower memory (3,350 GB/s HBM3). Not measured: its kernels are
# taken to run as the H200's did.
H100 = {**H200, "gpu_memory_gib": 79.6, "memory_bandwidth_gbps": 3350.0}
# By the name CUDA gives the device (torch.cuda.get_device_name): benchmarks/gpu_check.py's view of the GPU it runs on.
KNOWN_GPUS = {"A100": A100_80GB, "H100": H100, "H200": H200}
