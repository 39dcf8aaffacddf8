"""Time of one optimizer step under a layout, on given hardware.

Each pipeline stage spends, per micro-batch: its blocks' (and the output projection's) FLOPs at matmul_efficiency()
of the GPU's peak (launch/plan/arithmetic.py: 3 passes, 4 when activations are recomputed), scaled by the GPU's
measured kernel_efficiency (launch/plan/hardware.py), the attention's share weighted by the attention kernel's cost
(launch/plan/memory.py's Implementation: SDPA's kernel is slower than flex attention's); the tensor-parallel
all-reduces of an s x b x h activation (2 in forward and 2 in backward per block, 2 more when it is recomputed; one
for the embedding, one for the output projection), and the sends to and from its neighbours (DeepSpeed splits them
over the TP ranks; over the network where a neighbour is on another node). Under 1F1B the slowest stage sets the
pace: (micro-batches - 1) x its time plus every stage's time once (the pipeline filling and draining: the bubble).
Then the data-parallel reduction of the gradients (fp32), the all-gather of the updated weights (bf16) where the
optimizer is split over DP (ZeRO-1; in bf16, stage 0 too), the tied embedding's reduction between the first and last
stage, and the AdamW update, bound by memory bandwidth.

Collectives are rings: an all-reduce moves 2 (n-1)/n of the tensor through each rank's link, an all-gather (n-1)/n.
Within a node the link is NVLink; across nodes, the node's network bandwidth is shared by its GPUs talking at once,
so a group with k members on each node gets k/(GPUs per node) of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from launch.config.schemas import Precision
from launch.plan.arithmetic import attention_flops, block_flops, logits_flops
from launch.plan.hardware import Hardware
from launch.plan.layout import ParallelLayout
from launch.plan.memory import COROLLA_GPU, Candidate, Implementation, optimizer_shards, stage_parameters
from launch.plan.stages import Stage, pipeline_stages
from model.config import ModelConfig

# Assumptions, calibrated against the published runs of launch/plan/calibration.py (benchmarks/plan_vs_published.py):
# a block's kernels sustain PEAK_SHARE x h / (h + HALF_WIDTH) of the dense peak: wider matrices use the GPU better
# (Megatron-LM's 44% of peak at h=2304 up to 52% at h=25600, bubbles included; BLOOM's 48% at h=14336).
PEAK_SHARE = 0.67
HALF_WIDTH = 900
LINK_EFFICIENCY = 0.8  # share of a link's nominal bandwidth a large NCCL collective or send achieves
LATENCY_S = 20e-6  # start-up time of one collective or send
ADAMW_BYTES = 32  # bytes AdamW reads and writes per parameter it updates (fp32 weight, gradient, two moments)


def matmul_efficiency(model: ModelConfig) -> float:
    """The share of the GPU's peak the transformer's kernels reach."""
    return PEAK_SHARE * model.hidden_size / (model.hidden_size + HALF_WIDTH)


@dataclass(frozen=True)
class StepTime:
    """Seconds of one step, by cause; `total` is their sum."""

    compute: float  # the slowest stage's FLOPs, every micro-batch
    bubble: float  # the pipeline filling and draining
    tensor_parallel: float  # all-reduces within each layer
    pipeline_sends: float
    data_parallel: float  # gradient reduction, weight all-gather, tied embedding
    optimizer: float

    @property
    def total(self) -> float:
        return sum(asdict(self).values())


def _bandwidth(hardware: Hardware, members: int, members_per_node: int) -> float:
    """Bytes/s one rank of a group gets, with every group of its kind talking at once."""
    if members <= members_per_node:
        return hardware.intra_node_gbps * 1e9 * LINK_EFFICIENCY
    share = hardware.inter_node_gbps * 1e9 * members_per_node / hardware.gpus_per_node
    return min(hardware.intra_node_gbps * 1e9, share) * LINK_EFFICIENCY


def all_reduce_s(size: float, members: int, bandwidth: float) -> float:
    return 0.0 if members == 1 else 2 * (members - 1) / members * size / bandwidth + LATENCY_S


def all_gather_s(size: float, members: int, bandwidth: float) -> float:
    return 0.0 if members == 1 else (members - 1) / members * size / bandwidth + LATENCY_S


@dataclass(frozen=True)
class _StageTime:
    compute: float
    tensor_parallel: float
    sends: float

    @property
    def total(self) -> float:
        return self.compute + self.tensor_parallel + self.sends


def _stage_time(
    model: ModelConfig, candidate: Candidate, stage: Stage, hardware: Hardware, implementation: Implementation
) -> _StageTime:
    """One micro-batch through one stage, forward and backward."""
    layout, b = candidate.layout, candidate.micro_batch
    passes = 4 if candidate.activation_checkpointing else 3
    # FLOPs at the speed of the blocks' kernels: the attention's count as many times over as its kernel is slower.
    block = block_flops(model, b, passes) + (implementation.attention_cost - 1) * attention_flops(model, b, passes)
    flops = stage.blocks * block + (logits_flops(model, b, layout.tp) if stage.logits else 0)
    speed = hardware.peak(candidate.precision) * 1e12 * matmul_efficiency(model) * hardware.kernel_efficiency
    compute = flops / layout.tp / speed
    activation = b * model.seq_length * model.hidden_size * candidate.activation_bytes
    all_reduces = stage.blocks * (6 if candidate.activation_checkpointing else 4) + stage.embedding + stage.logits
    intra = _bandwidth(hardware, layout.tp, hardware.gpus_per_node)
    tensor_parallel = all_reduces * all_reduce_s(activation, layout.tp, intra)
    sends = 0.0
    for boundary in (index for index in (stage.index - 1, stage.index) if 0 <= index < layout.pp - 1):
        link = _send_bandwidth(hardware, layout, boundary)
        sends += activation / layout.tp / link + LATENCY_S + all_gather_s(activation, layout.tp, intra)
    return _StageTime(compute, tensor_parallel, 2 * sends)


def _send_bandwidth(hardware: Hardware, layout: ParallelLayout, boundary: int) -> float:
    """Bytes/s of a pipeline send across `boundary`: NVLink within a node; across nodes, the node's network shared by
    its ranks that send across at once, those of its last stage (activations on) and of its first (gradients back)."""
    if _within_a_node(layout, hardware.gpus_per_node, boundary):
        return _bandwidth(hardware, 2, 2)
    senders = min(hardware.gpus_per_node, 2 * layout.tp * layout.dp)
    return min(hardware.intra_node_gbps, hardware.inter_node_gbps / senders) * 1e9 * LINK_EFFICIENCY


def _within_a_node(layout: ParallelLayout, gpus_per_node: int, boundary: int) -> bool:
    """Whether pipeline stage `boundary` and the next lie on one node (a stage's TP x DP ranks are consecutive): where
    a node holds several stages, the sends between its last and the next node's first still cross the network."""
    width = layout.tp * layout.dp
    return boundary * width // gpus_per_node == ((boundary + 2) * width - 1) // gpus_per_node


def _data_parallel_s(
    model: ModelConfig, candidate: Candidate, stage: Stage, hardware: Hardware, implementation: Implementation
) -> float:
    """After the last micro-batch: the stage's gradient reduction and weight all-gather, the tied embedding's."""
    layout = candidate.layout
    parameters = stage_parameters(model, stage, layout.tp)
    per_node = max(1, min(layout.dp, hardware.gpus_per_node // layout.tp))
    link = _bandwidth(hardware, layout.dp, per_node)
    seconds = all_reduce_s(4 * parameters, layout.dp, link)
    if implementation.gathers_weights:
        shards = optimizer_shards(candidate, implementation)
        seconds += all_gather_s(candidate.activation_bytes * parameters, shards, link)
    if stage.tied_copy and layout.pp > 1:
        embedding = model.padded_vocab_size(layout.tp) * model.hidden_size // layout.tp
        seconds += all_reduce_s(4 * embedding, 2, _bandwidth(hardware, 2, 1))
    return seconds


def _optimizer_s(
    model: ModelConfig, candidate: Candidate, stage: Stage, hardware: Hardware, implementation: Implementation
) -> float:
    parameters = stage_parameters(model, stage, candidate.layout.tp)
    shards = optimizer_shards(candidate, implementation)
    touched = parameters / shards * ADAMW_BYTES + parameters * (8 if candidate.precision == Precision.bf16 else 4)
    return touched / (hardware.memory_bandwidth_gbps * 1e9)


def estimate_step_time(
    model: ModelConfig, candidate: Candidate, hardware: Hardware, implementation: Implementation = COROLLA_GPU
) -> StepTime:
    layout, micro_batches = candidate.layout, candidate.micro_batches
    stages = pipeline_stages(model.num_layers, layout.pp, micro_batches, implementation.embedding_is_a_block)
    times = [_stage_time(model, candidate, stage, hardware, implementation) for stage in stages]
    slowest = max(times, key=lambda time: time.total)
    return StepTime(
        compute=micro_batches * slowest.compute,
        bubble=sum(time.total for time in times) - slowest.total,
        tensor_parallel=micro_batches * slowest.tensor_parallel,
        pipeline_sends=micro_batches * slowest.sends,
        data_parallel=max(_data_parallel_s(model, candidate, stage, hardware, implementation) for stage in stages),
        optimizer=max(_optimizer_s(model, candidate, stage, hardware, implementation) for stage in stages),
    )


def implied_kernel_efficiency(estimate: StepTime, measured_s: float, hardware: Hardware) -> float:
    """The hardware's kernel_efficiency that would make `estimate` (made with `hardware`) equal the measured time a
    step: what a GPU check prints for `cluster.kernel_efficiency`. Exact for one pipeline stage (the check's runs):
    the kernels' time scales, communication does not, and a pipeline's bubble holds some of both."""
    kernels = estimate.compute + estimate.bubble
    return hardware.kernel_efficiency * kernels / max(measured_s - (estimate.total - kernels), 1e-9)
