"""Published training runs the planner is checked against: their shape, layout, machine and speed, as published
(the figures themselves are data: published_runs.yaml).

- BLOOM-176B (BigScience 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual Language Model", 3.4 and the
  training logs): 48 nodes x 8 A100-80GB of Jean Zay (NVLink inside a node, 4 x 100 Gb/s Omni-Path a node),
  TP4 PP12 DP8, micro-batch 2, global batch 2048 x 2048 tokens, full activation recomputation, bf16, ZeRO-1:
  ~105 s an iteration, ~150 TFLOP/s a GPU. corolla's own configs hold it (experiment=bloom-176b).
- Megatron-LM on A100 (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
  Megatron-LM", Table 1): GPT models, sequence 2048, vocabulary 51,200, fp16, full recomputation, on Selene (DGX
  A100 80GB nodes: NVLink/NVSwitch, 8 x 200 Gb/s InfiniBand a node). The table gives the shape, TP, PP, GPUs, batch
  and TFLOP/s a GPU; the time a step follows from the TFLOP/s through the paper's own FLOP count (96 B s l h^2 ...,
  launch/plan/arithmetic.py). The micro-batch is not in the table: 1 here, as Megatron-LM's GPT-3 175B example.
  Megatron-LM of 2021 differs from corolla where the planner looks: stages split the blocks alone (the embedding
  adds to the first stage, the output projection to the last); a fused softmax keeps the attention scores (fp16
  softmax and dropout output, a byte of dropout mask), dropout 0.1 keeps masks; fp16 weights with fp32 main
  gradients, master weights and Adam moments (18 bytes a parameter, no ZeRO); fp32 gradient all-reduce.
- Megatron-Core on H100 (the Megatron-LM README's weak-scaling table) is not here: the README publishes its layouts
  only as an image.
- corolla on one H200, measured by benchmarks/gpu_check.sh (marked measured, not published): bloom-560m and bloom-1b7
  in bf16 at sequence 2048, the time a step and the CUDA peak memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import yaml

from launch.config.compose import compose_job
from launch.config.schemas import PlanJob, Precision, TrainConfig
from launch.plan.arithmetic import hardware_flops_per_step
from launch.plan.hardware import A100_80GB, H200, Hardware
from launch.plan.layout import ParallelLayout
from launch.plan.memory import COROLLA_GPU, Candidate, Implementation, corolla_on_gpus
from model.config import BLOOM_VOCABULARY, Attention, ModelConfig

PUBLISHED = Path(__file__).with_name("published_runs.yaml")
MEGATRON_LM_2021 = replace(
    COROLLA_GPU,
    name="megatron-lm-2021",
    embedding_is_a_block=False,
    kept_split=12,
    score_copies=2,
    alibi_bias=False,
    low_precision_grads=False,
    gathers_weights=False,
    flat_gradient_copy=False,
    step_temporary=0,
    fused_loss=False,
    bf16_optimizer=False,
)


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
    peak_memory_gib: float | None = None  # measured runs: the CUDA peak of one GPU

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


@cache
def _published() -> dict:
    return yaml.safe_load(PUBLISHED.read_text())


def bloom_176b() -> PublishedRun:
    """BLOOM-176B from corolla's own configs (its experiment), with BLOOM's vocabulary."""
    row = _published()["bloom"]
    job: PlanJob = compose_job("plan", [f"experiment={row['experiment']}"])[1]
    train, parallel, cluster = job.train, job.parallel, job.cluster
    layout = ParallelLayout.for_world(parallel.tp, parallel.pp, parallel.dp, cluster.nodes * cluster.gpus_per_node)
    candidate = Candidate.of(layout, train, parallel)
    model = replace(job.model, vocab_size=BLOOM_VOCABULARY)
    hardware = Hardware.of(cluster)
    return PublishedRun(
        row["name"], model, train, candidate, hardware, COROLLA_GPU, row["tflops_per_gpu"], row["step_s"]
    )


def megatron_runs() -> list[PublishedRun]:
    table = _published()["megatron_lm_2021"]
    selene = Hardware("selene", gpus_per_node=8, inter_node_gbps=table["inter_node_gbps"], **A100_80GB)
    runs = []
    for values in table["rows"]:
        row = dict(zip(table["columns"], values, strict=True))
        shape = {"num_layers": row["layers"], "hidden_size": row["hidden_size"], "num_heads": row["heads"]}
        model = ModelConfig(
            f"megatron-gpt-{row['billions']}b",
            **shape,
            seq_length=table["seq_length"],
            vocab_size=table["vocab_size"],
            hidden_dropout=0.1,
            attention_dropout=0.1,
        )
        batch, tp, pp = row["batch"], row["tp"], row["pp"]
        train = TrainConfig(steps=1, micro_batch=1, global_batch=batch, precision=Precision.bf16)  # fp16: as bf16
        layout = ParallelLayout(tp, pp, row["gpus"] // (tp * pp))
        candidate = Candidate(layout, 1, batch, True, 0, train.precision)
        name = f"Megatron-LM {row['billions']}B"
        runs.append(PublishedRun(name, model, train, candidate, selene, MEGATRON_LM_2021, row["tflops_per_gpu"]))
    return runs


def measured_runs() -> list[PublishedRun]:
    """corolla's own runs on one H200 (benchmarks/gpu_check.sh), each on its config's shape and the check's recipe."""
    table = _published()["measured_h200"]
    h200 = Hardware("h200", gpus_per_node=1, inter_node_gbps=50.0, **H200)
    runs = []
    for values in table["rows"]:
        row = dict(zip(table["columns"], values, strict=True))
        job: PlanJob = compose_job("plan", [f"model={row['model']}"])[1]
        model = replace(job.model, vocab_size=BLOOM_VOCABULARY, seq_length=2048, attention=Attention(row["attention"]))
        batch, checkpointing = 2 * row["micro_batch"], row["activation_checkpointing"]
        train = TrainConfig(steps=1, micro_batch=row["micro_batch"], global_batch=batch, precision=Precision.bf16)
        candidate = Candidate(ParallelLayout(), row["micro_batch"], batch, checkpointing, 1, train.precision)
        flops = hardware_flops_per_step(model, batch, 1, checkpointing)
        name = f"{row['model']} {row['attention']} mb{row['micro_batch']}{' ckpt' if checkpointing else ''}"
        # Rows measured before corolla's AdamW or loss were fused say so: torch's foreach AdamW made an fp32
        # temporary, megatron's loss an fp32 copy of the logits and their softmax.
        implementation = replace(
            corolla_on_gpus(model),
            step_temporary=4 if row["adamw"] == "foreach" else 1,
            fused_loss=row["loss"] == "fused",
        )
        tflops = flops / row["step_s"] / 1e12
        runs.append(
            PublishedRun(
                name, model, train, candidate, h200, implementation, tflops, row["step_s"], row["peak_memory_gib"]
            )
        )
    return runs


def published_runs() -> list[PublishedRun]:
    return [bloom_176b(), *megatron_runs()]
