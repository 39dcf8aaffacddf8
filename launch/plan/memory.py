"""Peak memory of one rank training a BLOOM model under a layout: the worst pipeline stage.

A stage holds, per rank:
- per parameter (its blocks, plus the padded embedding on the first and last stage): the weights, the gradients
  (summed in fp32, but in a bf16 run at ZeRO stage 0 in bf16; in bf16 DeepSpeed's optimizer also keeps bf16 ones)
  and AdamW's fp32 master copy and two moments, divided over data-parallel ranks under ZeRO-1, and in bf16 at stage
  0 too;
- per micro-batch in flight: what each block keeps for backward, in units of one s x b x h activation: the inputs of
  its LayerNorms and of the QKV and first MLP layers (whole on every TP rank), Q/K/V, the attention output and the
  MLP's 4h activations (split over TP ranks); attention scores [b, heads, s, s] where the kernel materialises them;
  only the block's input under activation checkpointing. The first stage adds the embedding's LayerNorm input, every
  stage but the last the output it passes on, the last the final LayerNorm and the logits of one micro-batch;
- each block's cached ALiBi + causal bias [heads/tp, s, s];
- working memory while one block of one micro-batch is back-propagated (and recomputed first, with checkpointing);
- during the optimizer step instead: the flattened gradient bucket of the data-parallel reduction and AdamW's
  temporaries.
On a GPU the total adds the CUDA context and NCCL buffers and the caching allocator's fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from launch.config.schemas import ParallelConfig, Precision, TrainConfig
from launch.plan.arithmetic import block_parameters
from launch.plan.hardware import GIB
from launch.plan.layout import ParallelLayout
from launch.plan.stages import Stage, pipeline_stages
from launch.plan.zero import effective_zero_stage
from model.config import Attention, ModelConfig

REDUCE_BUCKET = 500_000_000  # gradient elements DeepSpeed flattens at once for the data-parallel all-reduce


@dataclass(frozen=True)
class Candidate:
    """One way to train: the parallel layout plus what else decides memory and time."""

    layout: ParallelLayout
    micro_batch: int
    global_batch: int
    activation_checkpointing: bool
    zero_stage: int
    precision: Precision

    @classmethod
    def of(cls, layout: ParallelLayout, train: TrainConfig, parallel: ParallelConfig) -> Candidate:
        """The configured way to train on `layout`."""
        checkpointing = parallel.activation_checkpointing
        return cls(layout, train.micro_batch, train.global_batch, checkpointing, parallel.zero_stage, train.precision)

    @property
    def micro_batches(self) -> int:
        return self.layout.gradient_accumulation(self.micro_batch, self.global_batch)

    @property
    def activation_bytes(self) -> int:
        return 2 if self.precision == Precision.bf16 else 4

    @property
    def effective_zero_stage(self) -> int:
        return effective_zero_stage(self.zero_stage, self.layout.dp, self.precision)


@dataclass(frozen=True)
class Implementation:
    """What the training code keeps and sends, where implementations differ (corolla on GPU or CPU, Megatron-LM)."""

    name: str
    embedding_is_a_block: bool  # pipeline stages balance blocks and embeddings together
    kept_whole: float  # s x b x h activations a block keeps for backward, whole on every TP rank
    kept_split: float  # ... and split over TP ranks
    score_copies: float  # attention-score tensors [b, heads/tp, s, s] a block keeps (0: a fused kernel)
    alibi_bias: bool  # each block caches its ALiBi + causal bias [heads/tp, s, s]
    low_precision_grads: bool  # in bf16, gradients accumulate in bf16 before the fp32 copy (DeepSpeed's optimizer)
    gathers_weights: bool  # a split optimizer all-gathers the updated weights over data-parallel ranks after the step
    flat_gradient_copy: bool  # the data-parallel reduction flattens the gradients into a bucket first
    # Bytes a parameter the optimizer step allocates beside its state: corolla's finiteness check a bool (1), and
    # torch's foreach AdamW, which corolla used before its fused one, an fp32 copy (4, the larger of the two).
    step_temporary: float
    framework_gib: float  # CUDA context and NCCL buffers
    fragmentation: float  # the allocator's fragmentation, a share of the tensors
    attention_cost: float = 1.0  # time of its attention kernels, as a multiple of flex attention's (step_time.py)
    # In bf16 the loss keeps the logits as they are and writes their gradient in bf16 (model/fused.py), rather than
    # working on an fp32 copy and keeping the fp32 softmax (megatron's vocab_parallel_cross_entropy, which fp32 runs).
    fused_loss: bool = True
    # In bf16, DeepSpeed's bf16 optimizer runs at ZeRO stage 0 as at 1 (launch/train/engine.py): it splits the fp32
    # masters and moments over the data-parallel ranks and all-gathers the updated weights; at 0 it sums a step's
    # micro-batches' gradients in bf16. Megatron-LM's optimizer keeps them whole.
    bf16_optimizer: bool = True


# corolla on GPUs: flex attention (model/attention.py) keeps Q, K, V (views of the QKV output) and its output (copied
# again for the output projection), neither the scores nor an ALiBi bias; the compiled bias + GeLU keeps its input,
# and the MLP's second layer the GeLU's output, as the eager pair did; the compiled loss is the fused one. Its fused
# AdamW updates in place.
COROLLA_GPU = Implementation(
    "corolla",
    embedding_is_a_block=True,
    kept_whole=4,
    kept_split=13,
    score_copies=0,
    alibi_bias=False,
    low_precision_grads=True,
    gathers_weights=True,
    flat_gradient_copy=True,
    step_temporary=1,
    framework_gib=2.0,
    fragmentation=0.10,
)
# ... with scaled_dot_product_attention (model.attention=sdpa, or attention dropout): the memory-efficient kernel keeps
# what flex attention does, and each block caches its ALiBi + causal bias. With a float mask it computes the whole
# s x s square, not its causal half, and reads the bias: 3.8 times flex attention's time, as the SDPA row measured on
# an H200 implies beside the flex one (launch/plan/calibration.py, benchmarks/plan_vs_published.py).
COROLLA_GPU_SDPA = replace(COROLLA_GPU, name="corolla-sdpa", alibi_bias=True, attention_cost=3.8)


def corolla_on_gpus(model: ModelConfig) -> Implementation:
    """What corolla keeps training `model` on GPUs, by the attention kernel it runs there and whether its kernels are
    compiled (`model.compile=false`: megatron's loss)."""
    flex = model.attention == Attention.flex or (model.attention == Attention.auto and not model.attention_dropout)
    return replace(COROLLA_GPU if flex else COROLLA_GPU_SDPA, fused_loss=model.compile is not False)


# corolla on CPU: the math kernel copies Q, K, V and keeps the softmax [b, heads, s, s]; eager, megatron's loss; no
# CUDA.
COROLLA_CPU = Implementation(
    "corolla-cpu",
    embedding_is_a_block=True,
    kept_whole=4,
    kept_split=12,
    score_copies=1,
    alibi_bias=True,
    low_precision_grads=True,
    gathers_weights=True,
    flat_gradient_copy=True,
    step_temporary=1,
    framework_gib=0.0,
    fragmentation=0.0,
    fused_loss=False,
)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank of the worst stage needs; `total` is the peak."""

    stage: int
    weights: float
    gradients: float
    optimizer: float
    alibi_bias: float
    activations: float  # every micro-batch in flight
    working: float  # one block of one micro-batch being back-propagated (and recomputed)
    logits: float
    step_transient: float  # during the optimizer step, when activations are gone
    framework: float
    fragmentation_share: float

    @property
    def tensors(self) -> float:
        steady = self.weights + self.gradients + self.optimizer + self.alibi_bias
        return steady + max(self.activations + self.working + self.logits, self.step_transient)

    @property
    def total(self) -> float:
        return self.tensors * (1 + self.fragmentation_share) + self.framework

    def gib(self) -> dict[str, float]:
        """Each part, in GiB."""
        parts = [f.name for f in fields(self) if f.name not in ("stage", "fragmentation_share")]
        return {name: getattr(self, name) / GIB for name in parts}


def stage_parameters(model: ModelConfig, stage: Stage, tp: int) -> int:
    """Parameters one TP rank of the stage holds: its blocks' slices, the embedding's, the LayerNorms around it."""
    h = model.hidden_size
    embedding = model.padded_vocab_size(tp) * h // tp if stage.tied_copy else 0
    return stage.blocks * block_parameters(model, tp) + embedding + 2 * h * (stage.embedding + stage.logits)


def _unit(model: ModelConfig, candidate: Candidate) -> int:
    """Bytes of one s x b x h activation."""
    return model.seq_length * candidate.micro_batch * model.hidden_size * candidate.activation_bytes


def _scores(model: ModelConfig, candidate: Candidate, implementation: Implementation) -> float:
    """Bytes of the attention scores a block keeps for one micro-batch (none with a fused kernel)."""
    per_copy = candidate.micro_batch * model.num_heads // candidate.layout.tp * model.seq_length**2
    return per_copy * candidate.activation_bytes * implementation.score_copies


def _block_activations(model: ModelConfig, candidate: Candidate, implementation: Implementation) -> float:
    """What one block keeps for backward, one micro-batch, without checkpointing."""
    tp, unit = candidate.layout.tp, _unit(model, candidate)
    kept = unit * (implementation.kept_whole + implementation.kept_split / tp)
    elements = unit // candidate.activation_bytes
    masks = 2 * elements if model.hidden_dropout else 0  # one byte each, after attention and after the MLP
    scores = _scores(model, candidate, implementation)
    score_masks = scores / candidate.activation_bytes if model.attention_dropout and scores else 0
    return kept + scores + masks + score_masks


def _working(model: ModelConfig, candidate: Candidate, implementation: Implementation) -> float:
    """One block of one micro-batch being back-propagated: the gradients in flight (the larger of the MLP's 4h ones
    and the attention scores', plus the block's output gradient); with checkpointing, the recomputed block first."""
    unit, tp = _unit(model, candidate), candidate.layout.tp
    gradients = max(8 * unit / tp, _scores(model, candidate, implementation)) + unit
    recomputed = _block_activations(model, candidate, implementation) if candidate.activation_checkpointing else 0
    return gradients + recomputed


def _micro_batch_activations(
    model: ModelConfig, candidate: Candidate, stage: Stage, implementation: Implementation
) -> float:
    unit = _unit(model, candidate)
    per_block = unit if candidate.activation_checkpointing else _block_activations(model, candidate, implementation)
    extra = stage.embedding + 2 * stage.logits + (not stage.logits)  # embedding LN; final LN in and out; output sent
    return stage.blocks * per_block + extra * unit


def _logits(model: ModelConfig, candidate: Candidate, implementation: Implementation) -> float:
    """One micro-batch's logits slice, and what the loss adds: their gradient (the fused loss), or the fp32 copy and
    softmax megatron's vocab_parallel_cross_entropy works on."""
    e = candidate.activation_bytes
    elements = candidate.micro_batch * model.seq_length * model.padded_vocab_size(candidate.layout.tp)
    added = e if implementation.fused_loss and e < 4 else 4 + (4 if e != 4 else 0)
    return elements // candidate.layout.tp * (e + added)


def _parameter_state(
    candidate: Candidate, parameters: int, implementation: Implementation
) -> tuple[float, float, float]:
    """Weights, gradients and optimizer states (bytes) of `parameters` parameters."""
    bf16, zero = candidate.precision == Precision.bf16, candidate.effective_zero_stage
    sums = 2 if _sums_in_bf16(candidate, implementation) else 4
    gradients = parameters * (sums + (2 if bf16 and implementation.low_precision_grads else 0))
    master = 4 if bf16 or zero else 0
    optimizer = parameters * (master + 8) / optimizer_shards(candidate, implementation)
    return parameters * candidate.activation_bytes, gradients, optimizer


def optimizer_shards(candidate: Candidate, implementation: Implementation) -> int:
    """Over how many data-parallel ranks the optimizer's states are split, each all-gathering the updated weights after
    the step: ZeRO-1's, and in bf16 DeepSpeed's bf16 optimizer's (Implementation.bf16_optimizer)."""
    bf16_optimizer = candidate.precision == Precision.bf16 and implementation.bf16_optimizer
    return candidate.layout.dp if candidate.effective_zero_stage or bf16_optimizer else 1


def _sums_in_bf16(candidate: Candidate, implementation: Implementation) -> bool:
    """Whether a step's micro-batches' gradients are summed in bf16: DeepSpeed's bf16 optimizer at ZeRO stage 0."""
    bf16 = candidate.precision == Precision.bf16
    return bf16 and implementation.bf16_optimizer and not candidate.effective_zero_stage


def _step_transient(candidate: Candidate, parameters: int, implementation: Implementation) -> float:
    shards = optimizer_shards(candidate, implementation)
    step = implementation.step_temporary * parameters / shards
    if _sums_in_bf16(candidate, implementation):
        # Reduced over DP in fp32 (launch/train/engine.py): a fp32 copy of every sum, of their flattened bf16 bucket
        # where one holds them all (a group over REDUCE_BUCKET goes alone, flattened as a view), and the optimizer's
        # fp32 copy of its partition.
        flattened = 2 * parameters if parameters <= REDUCE_BUCKET else 0
        return 4 * parameters + flattened + 4 * parameters / shards + step
    return (4 * min(parameters, REDUCE_BUCKET) if implementation.flat_gradient_copy else 0) + step


def stage_memory(
    model: ModelConfig, candidate: Candidate, stage: Stage, implementation: Implementation
) -> MemoryEstimate:
    tp = candidate.layout.tp
    parameters = stage_parameters(model, stage, tp)
    weights, gradients, optimizer = _parameter_state(candidate, parameters, implementation)
    e = candidate.activation_bytes
    bias = stage.blocks * model.num_heads // tp * model.seq_length**2 * e if implementation.alibi_bias else 0
    working = _working(model, candidate, implementation) if stage.blocks else 0
    return MemoryEstimate(
        stage=stage.index,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        alibi_bias=bias,
        activations=stage.in_flight * _micro_batch_activations(model, candidate, stage, implementation),
        working=working,
        logits=_logits(model, candidate, implementation) if stage.logits else 0,
        step_transient=_step_transient(candidate, parameters, implementation),
        framework=implementation.framework_gib * GIB,
        fragmentation_share=implementation.fragmentation,
    )


def estimate_memory(
    model: ModelConfig, candidate: Candidate, implementation: Implementation = COROLLA_GPU
) -> MemoryEstimate:
    """The stage that needs the most memory, and what it needs."""
    stages = pipeline_stages(
        model.num_layers, candidate.layout.pp, candidate.micro_batches, implementation.embedding_is_a_block
    )
    estimates = [stage_memory(model, candidate, stage, implementation) for stage in stages]
    return max(estimates, key=lambda estimate: estimate.total)
