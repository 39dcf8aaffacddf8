"""corolla on one GPU, measured: its BLOOM against transformers', its two attention kernels against each other, and
its training step (the DeepSpeed engine `corolla train` builds) against transformers' and the planner's estimates.

    benchmarks/gpu_check.sh OUT_DIR              # on the GPU machine: installs .gpu-bundle/, then runs this
    python benchmarks/gpu_check.py OUT_DIR       # where corolla's dependencies are installed
    python benchmarks/gpu_check.py --smoke OUT   # tiny shapes on CPU: the same code path, for tests

Prints each figure and writes OUT_DIR/gpu_check.json:
- device: name, memory, the peak bf16 TFLOP/s MFU is measured against;
- self_test: the health check's self-test repeated: its fastest time, and the slowest over it (a healthy device's
  spread, against cluster.health_slowdown);
- correctness: max |difference| of bloom-560m-shaped logits (random weights) against BloomForCausalLM with the same
  weights in fp32, and in bf16 beside transformers' own fp32-to-bf16 spread; flex attention against SDPA (logits and
  gradients); both attention kernels in bf16 at 2,048 tokens against fp32 attention (ALiBi exact near the diagonal);
  three fp32 AdamW steps of corolla against transformers (losses);
- loss_kernels: the loss training runs (fused, compiled) against megatron-core's on one bloom-1b7 micro-batch's
  logits: time and memory of a forward and backward, their ratios, and the differences in loss and gradient;
- runs: bloom-560m and bloom-1b7, bf16, sequence 2048, for a few micro-batches (and micro-batches a step), activation
  checkpointing on and off, flex and SDPA: tokens/s, model TFLOP/s and MFU, peak CUDA memory and time a step against
  the planner's estimates (launch/plan/memory.py, step_time.py), the kernel_efficiency the time implies (what to set
  as `cluster.kernel_efficiency` for this GPU), and transformers' BloomForCausalLM on the same shape and batch
  (baseline); for one bloom-1b7 run, where a step's GPU time goes, by kind of kernel.
A part that fails leaves its error (`error`, or `<part>_error` inside correctness, `baseline_error` in a run) in place
of its figures and the other parts still run; the check then exits 1, naming the failed parts.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from megatron.core import parallel_state  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarks.loss_kernel import compare as compare_losses  # noqa: E402
from launch import compat  # noqa: E402
from launch.config.cluster import ClusterConfig  # noqa: E402
from launch.config.data import DataConfig  # noqa: E402
from launch.config.schemas import ParallelConfig, Precision, TrackingConfig, TrainConfig, TrainJob  # noqa: E402
from launch.data.facts import DataFacts  # noqa: E402
from launch.plan.arithmetic import mfu, model_flops_per_step  # noqa: E402
from launch.plan.hardware import H200, KNOWN_GPUS, Hardware  # noqa: E402
from launch.plan.layout import ParallelLayout  # noqa: E402
from launch.plan.memory import Candidate, corolla_on_gpus, estimate_memory  # noqa: E402
from launch.plan.run_plan import make_plan  # noqa: E402
from launch.plan.step_time import estimate_step_time, implied_kernel_efficiency  # noqa: E402
from launch.train.device import init_distributed, seed_everything  # noqa: E402
from launch.train.engine import build_engine  # noqa: E402
from launch.train.health import time_matmuls  # noqa: E402
from launch.train.loop import pairs  # noqa: E402
from model.attention import alibi_bias, alibi_slopes, flex_attention_alibi, sdpa_attention  # noqa: E402
from model.bloom import BloomModel, lm_loss, parallel_config  # noqa: E402
from model.config import BLOOM_VOCABULARY, Attention, ModelConfig  # noqa: E402
from model.fused import compiles, runs_fused  # noqa: E402
from model.hf import hf_config, to_hf_state_dict  # noqa: E402
from tokenizer.config import TokenizerConfig  # noqa: E402

GIB = 1024**3
SEED = 1234


@dataclass(frozen=True)
class Setting:
    model: str
    micro_batch: int
    activation_checkpointing: bool
    attention: Attention
    micro_batches: int = 2  # a step's micro-batches (gradient accumulation)
    profiled: bool = False  # one more step under torch's profiler: where the GPU's time goes, by kind of kernel


@dataclass(frozen=True)
class Scale:
    """What a check runs at: on the GPU, BLOOM's shapes; with --smoke, tiny ones on CPU."""

    correctness_model: str
    correctness_seq: int
    vocab_size: int
    seq_length: int
    warmup_steps: int
    timed_steps: int
    settings: tuple[Setting, ...]  # transformers' baseline runs once for each model, batch and checkpointing


GPU = Scale(
    correctness_model="bloom-560m",
    correctness_seq=512,
    vocab_size=BLOOM_VOCABULARY,
    seq_length=2048,
    warmup_steps=2,
    timed_steps=4,
    settings=(  # shapes flex attention compiles for: two (a recompiled kernel costs ~half a minute)
        Setting("bloom-560m", 8, False, Attention.flex),
        Setting("bloom-560m", 8, False, Attention.sdpa),
        Setting("bloom-1b7", 4, False, Attention.flex, profiled=True),
        Setting("bloom-1b7", 4, True, Attention.flex),
        # The optimizer's step and the gradients' fp32 copy spread over 32 sequences, not 8.
        Setting("bloom-1b7", 4, False, Attention.flex, micro_batches=8),
    ),
)
SMOKE = Scale(
    correctness_model="bloom-tiny",
    correctness_seq=32,
    vocab_size=1000,
    seq_length=32,
    warmup_steps=1,
    timed_steps=1,
    settings=(
        Setting("bloom-tiny", 2, False, Attention.sdpa, profiled=True),
        Setting("bloom-tiny", 2, True, Attention.sdpa, micro_batches=3),
    ),
)


def published_shape(name: str, scale: Scale, seq_length: int) -> ModelConfig:
    """conf/model/NAME.yaml's shape (read without Hydra, which the GPU machine lacks), at the check's vocabulary."""
    written = OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{name}.yaml")
    shape = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), written))
    return replace(shape, vocab_size=scale.vocab_size, seq_length=seq_length)


def join_process_group() -> torch.device:
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
    os.environ.setdefault("MASTER_PORT", "29541")
    init_distributed(timeout_s=600)
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons in fp32
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def known_gpu(name: str) -> dict:
    """The planner's figures for the GPU (launch/plan/hardware.py; empty for one it does not know)."""
    return next((figures for key, figures in KNOWN_GPUS.items() if key in name), {})


def device_info(device: torch.device) -> dict:
    """The GPU, with the dense bf16 peak (the datasheet's) that MFU is measured against."""
    if device.type != "cuda":
        return {"name": "cpu", "memory_gib": None, "peak_bf16_tflops": None}
    properties = torch.cuda.get_device_properties(device)
    peak = known_gpu(properties.name).get("peak_tflops")
    return {"name": properties.name, "memory_gib": round(properties.total_memory / GIB, 1), "peak_bf16_tflops": peak}


def batch_of(shape: ModelConfig, rows: int, device: torch.device, seed: int = 7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, shape.vocab_size, (rows, shape.seq_length + 1), generator=generator).to(device)


def corolla_model(shape: ModelConfig, dtype: torch.dtype, device: torch.device) -> BloomModel:
    """As DeepSpeed holds it in training: every parameter in `dtype` (the engine casts the whole module)."""
    return BloomModel(shape, parallel_config(dtype), seed=SEED).to(device=device, dtype=dtype)


def hf_model(shape: ModelConfig, corolla: BloomModel, dtype: torch.dtype, device: torch.device):
    from transformers import BloomConfig, BloomForCausalLM

    state = {name: tensor for name, tensor in corolla.state_dict().items() if isinstance(tensor, torch.Tensor)}
    model = BloomForCausalLM(BloomConfig(**hf_config(shape, shape.padded_vocab_size(1))))
    model.load_state_dict({name: tensor.float() for name, tensor in to_hf_state_dict(state).items()})
    return model.to(device=device, dtype=dtype)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def logits_against_transformers(shape: ModelConfig, device: torch.device) -> dict:
    inputs = batch_of(shape, 2, device)[:, :-1]
    with torch.no_grad():
        ours = corolla_model(shape, torch.float32, device).eval()
        reference = hf_model(shape, ours, torch.float32, device).eval()
        expected = reference(inputs).logits.float()
        fp32 = max_difference(ours(inputs), expected)
        ours_bf16 = corolla_model(shape, torch.bfloat16, device).eval()
        bf16 = max_difference(ours_bf16(inputs), expected)
        spread = max_difference(reference.to(torch.bfloat16)(inputs).logits, expected)
    return {"logits_fp32": fp32, "logits_bf16": bf16, "transformers_bf16_spread": spread}


def kernels_against_each_other(shape: ModelConfig, device: torch.device) -> dict:
    """Flex attention against SDPA in the same model: logits and every parameter's gradient (forward only on CPU,
    where flex attention has no backward)."""
    batch = batch_of(shape, 2, device)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        outputs = {}
        for attention in (Attention.flex, Attention.sdpa):
            model = corolla_model(replace(shape, attention=attention), dtype, device)
            with torch.set_grad_enabled(device.type == "cuda"):
                logits = model(batch[:, :-1])
                grads = []
                if device.type == "cuda":
                    lm_loss(logits, batch[:, 1:]).backward()
                    grads = [parameter.grad.float() for parameter in model.parameters()]
            outputs[attention] = (logits.detach().float(), grads)
        name = "fp32" if dtype == torch.float32 else "bf16"
        (flex, flex_grads), (sdpa, sdpa_grads) = outputs[Attention.flex], outputs[Attention.sdpa]
        results[f"flex_vs_sdpa_logits_{name}"] = max_difference(flex, sdpa)
        if flex_grads:
            results[f"flex_vs_sdpa_gradients_{name}"] = max(map(max_difference, flex_grads, sdpa_grads))
    return results


def alibi_attention_bf16(shape: ModelConfig, device: torch.device) -> dict:
    """Both attention kernels in bf16 at four times the correctness sequence (2,048 tokens on the GPU) against the same
    inputs' attention in fp32 with an fp32 bias: ALiBi must stay exact near the diagonal, where a bf16 bias of slope x
    key position was off by up to 4."""
    seq, heads = 4 * shape.seq_length, shape.num_heads
    generator = torch.Generator().manual_seed(3)
    query, key, value = (
        torch.randn(1, heads, seq, shape.head_dim, generator=generator).to(device, torch.bfloat16) for _ in range(3)
    )
    slopes = alibi_slopes(heads)
    with torch.no_grad():
        wide = [tensor.float() for tensor in (query, key, value)]
        exact = sdpa_attention(*wide, alibi_bias(slopes, seq, torch.float32, device), dropout=0.0)
        sdpa = sdpa_attention(query, key, value, alibi_bias(slopes, seq, torch.bfloat16, device), dropout=0.0)
        flex = flex_attention_alibi(query, key, value, tuple(slopes.tolist()))
    return {
        "sdpa_vs_exact_bf16_long": max_difference(sdpa, exact),
        "flex_vs_exact_bf16_long": max_difference(flex, exact),
    }


def transformers_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


def steps_against_transformers(shape: ModelConfig, device: torch.device, steps: int = 3) -> dict:
    """fp32 AdamW steps of corolla's BLOOM and transformers' from the same weights on the same batches."""
    ours = corolla_model(shape, torch.float32, device)
    reference = hf_model(shape, ours, torch.float32, device)
    losses = {
        "corolla": (ours, ours.loss),
        "transformers": (reference, lambda batch: transformers_loss(reference, batch)),
    }
    optimizers = {
        name: torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0) for name, (model, _) in losses.items()
    }
    differences = []
    for step in range(steps):
        batch = batch_of(shape, 2, device, seed=100 + step)
        values = {}
        for name, (_, loss_of) in losses.items():
            loss = loss_of(batch)
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
            values[name] = loss.item()
        differences.append(abs(values["corolla"] - values["transformers"]))
    return {"training_steps_fp32": max(differences), "training_steps": steps}


def self_test_spread(repeats: int = 10) -> dict:
    """The health check's self-test (launch/train/health.py), repeated on this one GPU: how far its time varies on
    a healthy device, against cluster.health_slowdown's bound."""
    seconds = [time_matmuls() for _ in range(repeats)]
    return {"fastest_ms": round(1e3 * min(seconds), 3), "slowest_over_fastest": round(max(seconds) / min(seconds), 3)}


def guarded(measure: Callable[[], dict], error_key: str = "error") -> dict:
    """A part's figures, or the error that cut it short under `error_key` (its traceback printed): a part that breaks on
    a GPU, where the check runs once, leaves the other parts' figures."""
    try:
        return measure()
    except Exception as error:  # any failure of one part is a finding, reported beside the other parts' figures
        traceback.print_exc()
        return {error_key: f"{type(error).__name__}: {error}"[:1000]}


def correctness(scale: Scale, device: torch.device) -> dict:
    shape = published_shape(scale.correctness_model, scale, scale.correctness_seq)
    parts = {
        "logits": logits_against_transformers,
        "kernels": kernels_against_each_other,
        "long_attention": alibi_attention_bf16,
        "training_steps": steps_against_transformers,
    }
    figures: dict = {}
    for name, measure in parts.items():
        figures.update(guarded(partial(measure, shape, device), f"{name}_error"))
    return figures


def hardware_of(device: dict) -> Hardware:
    """The planner's view of this GPU: as launch/plan/hardware.py knows it, with the memory CUDA reports (one GPU: no
    network). A GPU it does not know is planned as an H200 with the memory CUDA reports."""
    figures = {**H200, **known_gpu(device["name"]), "gpu_memory_gib": device["memory_gib"] or 1.0}
    return Hardware(device["name"], gpus_per_node=1, inter_node_gbps=50.0, **figures)


def train_job(shape: ModelConfig, setting: Setting, scale: Scale) -> TrainJob:
    train = TrainConfig(
        steps=scale.warmup_steps + scale.timed_steps,
        micro_batch=setting.micro_batch,
        global_batch=setting.micro_batch * setting.micro_batches,
        precision=Precision.bf16,
        warmup_steps=1,
    )
    parallel = ParallelConfig(activation_checkpointing=setting.activation_checkpointing)
    data = DataConfig(tokens_dir="-")
    return TrainJob(shape, TokenizerConfig(), parallel, data, train, TrackingConfig(), ClusterConfig())


def timed(step, warmup: int, timed_steps: int, device: torch.device) -> float:
    """Seconds a step, the mean of `timed_steps` after `warmup` (compilation, allocator warm-up)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(timed_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / timed_steps


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device, held_before: int) -> float | None:
    """The allocator's peak beyond what the process held before the run (what earlier runs leave cached in DeepSpeed's
    and dynamo's globals), plus what the device holds outside the allocator (CUDA context, NCCL buffers)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    outside = total - free - torch.cuda.memory_reserved(device)
    return round((torch.cuda.max_memory_reserved(device) - held_before + outside) / GIB, 2)


def held_memory(device: torch.device) -> int:
    return torch.cuda.memory_reserved(device) if device.type == "cuda" else 0


def described(setting: Setting) -> dict:
    return {key: value.value if isinstance(value, Attention) else value for key, value in asdict(setting).items()}


def corolla_run(setting: Setting, scale: Scale, device: torch.device, info: dict) -> dict:
    shape = replace(published_shape(setting.model, scale, scale.seq_length), attention=setting.attention)
    job = train_job(shape, setting, scale)
    plan = make_plan(job, world_size=1, data=DataFacts(shape.vocab_size, None))
    reset_memory(device)
    held_before = held_memory(device)
    seed_everything(SEED)
    engine = build_engine(shape, plan, job.train, setting.activation_checkpointing, SEED)
    batch = batch_of(shape, job.train.global_batch, device)

    def step() -> None:
        engine.train_batch(data_iter=pairs(batch.split(setting.micro_batch)))

    try:
        seconds = timed(step, scale.warmup_steps, scale.timed_steps, device)
        peak = peak_memory_gib(device, held_before)
        profiled = {"profile": kernel_profile(step, device)} if setting.profiled else {}
        # The calibration table's columns: which AdamW and which loss ran.
        adamw = "fused" if compat.adam_optimizer(engine).defaults["fused"] else "foreach"
        loss = "fused" if runs_fused(compiles(shape.compile, device), torch.bfloat16) else "megatron"
    finally:
        engine.destroy()
    model = replace(shape, vocab_size=plan.vocab_size)
    tflops = model_flops_per_step(model, job.train.global_batch) / seconds / 1e12
    tokens_per_second = job.train.global_batch * shape.seq_length / seconds
    peak_tflops = info["peak_bf16_tflops"]
    candidate = Candidate.of(ParallelLayout(), job.train, job.parallel)
    hardware = hardware_of(info)
    implementation = corolla_on_gpus(model)
    estimate = estimate_step_time(model, candidate, hardware, implementation)
    return {
        "global_batch": job.train.global_batch,
        "adamw": adamw,
        "loss": loss,
        "tokens_per_second": round(tokens_per_second, 1),
        "model_tflops": round(tflops, 1),
        "mfu": round(mfu(tokens_per_second, model, devices=1, peak_tflops=peak_tflops), 3) if peak_tflops else None,
        "peak_memory_gib": peak,
        "estimated_memory_gib": round(estimate_memory(model, candidate, implementation).total / GIB, 2),
        "step_time_s": round(seconds, 3),
        "estimated_step_time_s": round(estimate.total, 3),
        "implied_kernel_efficiency": round(implied_kernel_efficiency(estimate, seconds, hardware), 3),
        **profiled,
    }


# Kinds of kernel, by what their names contain, the first kind that matches (flex attention's Triton template or
# SDPA's kernels, which are CUTLASS too; cuBLAS/CUTLASS GEMMs, NCCL, the optimizer's foreach kernels); the rest is
# elementwise work, norms, copies and reductions.
KERNEL_KINDS = {
    "attention": ("flex", "triton_tem", "fmha", "flash", "attention", "efficient"),
    "matmul": ("gemm", "matmul", "cutlass", "xmma", "nvjet", "aten::mm", "aten::addmm", "aten::bmm"),
    "communication": ("nccl", "c10d", "gloo"),
    "optimizer": ("adam", "foreach", "multi_tensor"),
}


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, marks in KERNEL_KINDS.items() if any(mark in name for mark in marks)), "other")


def kernel_profile(step, device: torch.device, top: int = 12) -> dict:
    """One step under torch's profiler: the device's time by kind of kernel, and its longest kernels (on CPU, the
    operators' own time: the code path, not the figures)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as profiler:
        step()
        if cuda:
            torch.cuda.synchronize()
    events = [
        (event.key, event.self_device_time_total if cuda else event.self_cpu_time_total)
        for event in profiler.key_averages()
        if (event.device_type == DeviceType.CUDA) == cuda
    ]
    total = sum(us for _, us in events) or 1.0
    by_kind: dict[str, float] = {}
    for name, us in events:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + us / total
    longest = sorted(events, key=lambda event: event[1], reverse=True)[:top]
    return {
        "device_ms": round(total / 1e3, 1),
        "by_kind": {kind: round(share, 3) for kind, share in sorted(by_kind.items(), key=lambda item: -item[1])},
        "longest": [
            {"kernel": name[:100], "ms": round(us / 1e3, 2), "share": round(us / total, 3)} for name, us in longest
        ],
    }


def baseline_tokens_per_second(setting: Setting, scale: Scale, device: torch.device) -> dict:
    """transformers' BloomForCausalLM in bf16 with torch's AdamW on the same shape and tokens a step; where its eager
    attention (a [batch, heads, s, s] score tensor per layer) does not fit the micro-batch, in smaller micro-batches."""
    micro_batch = setting.micro_batch
    while True:
        try:
            return {
                "baseline_tokens_per_second": transformers_tokens_per_second(setting, micro_batch, scale, device),
                "baseline_micro_batch": micro_batch,
            }
        except torch.OutOfMemoryError:
            if micro_batch == 1:
                return {"baseline_tokens_per_second": None, "baseline_micro_batch": "out of memory at 1"}
            micro_batch //= 2  # the model goes with the exception's frames, when this block ends


def transformers_tokens_per_second(setting: Setting, micro_batch: int, scale: Scale, device: torch.device) -> float:
    from transformers import BloomConfig, BloomForCausalLM

    shape = published_shape(setting.model, scale, scale.seq_length)
    reset_memory(device)
    model = BloomForCausalLM(BloomConfig(**hf_config(shape, shape.padded_vocab_size(1)))).to(device, torch.bfloat16)
    if setting.activation_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = batch_of(shape, setting.micro_batch * setting.micro_batches, device)

    def step() -> None:
        for micro in batch.split(micro_batch):
            logits = model(micro[:, :-1]).logits
            F.cross_entropy(logits.float().flatten(0, 1), micro[:, 1:].flatten()).backward()
            del logits
        optimizer.step()
        optimizer.zero_grad()

    seconds = timed(step, scale.warmup_steps, scale.timed_steps, device)
    return round(len(batch) * shape.seq_length / seconds, 1)


def loss_kernels(scale: Scale, device: torch.device) -> dict:
    """The loss training runs (fused and compiled on a GPU) against megatron's, on the logits of the profiled run's
    micro-batch, in bf16: time and memory of a forward and backward, and their differences (benchmarks/loss_kernel.py).
    """
    setting = next(setting for setting in scale.settings if setting.profiled)
    vocab = published_shape(setting.model, scale, scale.seq_length).padded_vocab_size(1)
    rows = (setting.micro_batch, scale.seq_length)
    reset_memory(device)
    report = compare_losses(rows, vocab, torch.bfloat16, device, compiles(None, device), scale.timed_steps)
    return {"logits": "x".join(map(str, (*rows, vocab))), **report}


def write(report: dict, out_dir: Path) -> None:
    """After each part, so that a check cut short by its time limit still leaves what it measured."""
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")


def failures(report: dict) -> list[str]:
    """The parts that failed, by where their error is in the report."""
    parts = [(part, report[part]) for part in ("self_test", "correctness", "loss_kernels")]
    parts += [(f"runs[{index}]", run) for index, run in enumerate(report["runs"])]
    return [f"{where}.{key}" for where, figures in parts for key in figures if key.endswith("error")]


def main(out_dir: Path, scale: Scale) -> dict:
    """The report, written part by part; exits non-zero, once every part has run, where any failed."""
    compat.check_versions(("torch", "deepspeed", "megatron-core"))
    device = join_process_group()
    torch._dynamo.config.cache_size_limit = 32  # every shape, dtype and grad mode compiles flex attention anew
    out_dir.mkdir(parents=True, exist_ok=True)
    info = device_info(device)
    report: dict = {
        "device": info,
        "self_test": guarded(self_test_spread),
        "correctness": guarded(partial(correctness, scale, device)),
        "loss_kernels": guarded(partial(loss_kernels, scale, device)),
        "runs": [],
    }
    print(json.dumps(report, indent=1), flush=True)
    write(report, out_dir)
    baselines: dict[tuple, dict] = {}
    for setting in scale.settings:
        key = (setting.model, setting.micro_batch, setting.micro_batches, setting.activation_checkpointing)
        if key not in baselines:
            baselines[key] = guarded(partial(baseline_tokens_per_second, setting, scale, device), "baseline_error")
        run = {**described(setting), **guarded(partial(corolla_run, setting, scale, device, info)), **baselines[key]}
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
        write(report, out_dir)
    failed = failures(report)
    if failed:
        sys.exit(f"gpu_check: {len(failed)} part(s) failed, the others measured: {', '.join(failed)}")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: the code path, not the figures")
    arguments = parser.parse_args()
    if not arguments.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no GPU here (pass --smoke for the CPU code path)")
    main(arguments.out_dir, SMOKE if arguments.smoke else GPU)
