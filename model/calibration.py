"""Published training runs the planner is checked against: their shape, layout, machine and speed, as published.

- BLOOM-176B (BigScience 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual Language Model", 3.4 and the
  training logs): 48 nodes x 8 A100-80GB of Jean Zay (NVLink inside a node, 4 x 100 Gb/s Omni-Path a node),
  TP4 PP12 DP8, micro-batch 2, global batch 2048 x 2048 tokens, full activation recomputation, bf16, ZeRO-1:
  ~105 s an iteration, ~150 TFLOP/s a GPU. corolla's own configs (conf/model, train, parallel, cluster) hold it.
- Megatron-LM on A100 (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
  Megatron-LM", Table 1): GPT models, sequence 2048, vocabulary 51,200, fp16, full recomputation, on Selene (DGX
  A100 80GB nodes: NVLink/NVSwitch, 8 x 200 Gb/s InfiniBand a node). The table gives the shape, TP, PP, GPUs, batch
  and TFLOP/s a GPU; the time a step follows from the TFLOP/s through the paper's own FLOP count (96 B s l h^2 ...,
  model/arithmetic.py). The micro-batch is not in the table: 1 here, as Megatron-LM's GPT-3 175B example.
  Megatron-LM of 2021 differs from corolla where the planner looks: stages split the blocks alone (the embedding
  adds to the first stage, the output projection to the last); a fused softmax keeps the attention scores (fp16
  softmax and dropout output, a byte of dropout mask), dropout 0.1 keeps masks; fp16 weights with fp32 main
  gradients, master weights and Adam moments (18 bytes a parameter, no ZeRO); fp32 gradient all-reduce.
- Megatron-Core on H100 (the Megatron-LM README's weak-scaling table) is not here: the README publishes its layouts
  only as an image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from omegaconf import OmegaConf

from launch.configuration import CONF_DIR
from launch.layout import ParallelLayout
from launch.schemas import ParallelConfig, Precision, TrainConfig
from model.arithmetic import hardware_flops_per_step
from model.config import ModelConfig
from model.hardware import A100_80GB, Hardware
from model.memory import COROLLA_GPU, Candidate, Implementation
from slurm.config import ClusterConfig

MEGATRON_LM_2021 = replace(
    COROLLA_GPU, name="megatron-lm-2021", embedding_is_a_block=False, kept_split=12, score_copies=2,
    alibi_bias=False, low_precision_grads=False, gathers_weights=False, flat_gradient_copy=False, foreach_adamw=False,
)  # fmt: skip
SELENE = Hardware("selene", gpus_per_node=8, inter_node_gbps=200.0, **A100_80GB)
BLOOM_VOCABULARY = 250_680  # BLOOM's tokenizer; the embedding is padded to 250,880 under TP4


@dataclass(frozen=True)
class PublishedRun:
    name: str
    model: ModelConfig
    train: TrainConfig  # the recipe: batch, micro-batch, precision (and BLOOM's ramp-up, which limits layouts)
    candidate: Candidate
    hardware: Hardware
    implementation: Implementation
    tflops_per_gpu: float  # as published: hardware FLOPs (recomputation counted) per second and GPU
    step_s: float | None = None  # as published; None: only the TFLOP/s were

    @property
    def gpus(self) -> int:
        return self.candidate.layout.world_size

    @property
    def published_step_s(self) -> float:
        """The published time a step, or the one its TFLOP/s imply through the same FLOP count."""
        if self.step_s is not None:
            return self.step_s
        flops = hardware_flops_per_step(self.model, self.candidate.global_batch, self.candidate.layout.tp)
        return flops / (self.tflops_per_gpu * 1e12 * self.gpus)


def _conf(schema: type, group: str, name: str):
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(CONF_DIR / group / name)))


def bloom_176b() -> PublishedRun:
    """BLOOM-176B from corolla's own configs (experiment=bloom-176b), with BLOOM's vocabulary."""
    model = replace(_conf(ModelConfig, "model", "bloom-176b.yaml"), vocab_size=BLOOM_VOCABULARY)
    train: TrainConfig = _conf(TrainConfig, "train", "bloom-176b.yaml")
    parallel: ParallelConfig = _conf(ParallelConfig, "parallel", "bloom-176b.yaml")
    cluster: ClusterConfig = _conf(ClusterConfig, "cluster", "jean-zay-a100.yaml")
    layout = ParallelLayout.for_world(parallel.tp, parallel.pp, parallel.dp, cluster.nodes * cluster.gpus_per_node)
    candidate = Candidate(layout, train.micro_batch, train.global_batch, parallel.activation_checkpointing,
                          parallel.zero_stage, train.precision)  # fmt: skip
    return PublishedRun("BLOOM-176B", model, train, candidate, Hardware.of(cluster), COROLLA_GPU, 150.0, step_s=105.0)


# Narayanan et al. 2021, Table 1: billions of parameters, heads, hidden size, layers, TP, PP, GPUs, batch, TFLOP/s.
MEGATRON_TABLE_1 = [
    (1.7, 24, 2304, 24, 1, 1, 32, 512, 137),
    (3.6, 32, 3072, 30, 2, 1, 64, 512, 138),
    (7.5, 32, 4096, 36, 4, 1, 128, 512, 142),
    (18.4, 48, 6144, 40, 8, 1, 256, 1024, 135),
    (39.1, 64, 8192, 48, 8, 2, 512, 1536, 138),
    (76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140),
    (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148),
    (310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155),
    (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163),
    (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163),
]


def megatron_runs() -> list[PublishedRun]:
    runs = []
    for billions, heads, hidden, layers, tp, pp, gpus, batch, tflops in MEGATRON_TABLE_1:
        model = ModelConfig(f"megatron-gpt-{billions}b", layers, hidden, heads, 2048, 51200,
                            hidden_dropout=0.1, attention_dropout=0.1)  # fmt: skip
        train = TrainConfig(steps=1, micro_batch=1, global_batch=batch, precision=Precision.bf16)  # fp16: as bf16
        candidate = Candidate(ParallelLayout(tp, pp, gpus // (tp * pp)), 1, batch, True, 0, train.precision)
        name = f"Megatron-LM {billions}B"
        runs.append(PublishedRun(name, model, train, candidate, SELENE, MEGATRON_LM_2021, tflops))
    return runs


def published_runs() -> list[PublishedRun]:
    return [bloom_176b(), *megatron_runs()]
