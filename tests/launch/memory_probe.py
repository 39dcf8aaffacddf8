"""Peak memory of corolla's training engine on CPU, one process: `python tests/launch/memory_probe.py JSON`.

JSON is a list of runs, each naming the model shape (ModelConfig fields), `micro_batch`, `global_batch`,
`activation_checkpointing` and `steps`. The process joins a one-rank gloo group and, for each run in turn, builds the
engine `corolla train` builds (launch.train.engine.build_engine: DeepSpeed pipeline engine, fp32, AdamW) and trains
`steps` steps on random tokens. It prints, as JSON, for each run its resident memory (VmRSS) before the model exists
and the peak resident memory (VmHWM, reset at that point through /proc/self/clear_refs) over the steps; their
difference is what the model, its optimizer and its activations took.

Run it with MALLOC_MMAP_THRESHOLD_ set (the caller does): glibc then maps every large block on its own and unmaps it
when freed, so resident memory follows the tensors alive instead of what a heap kept after they died.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path


def _kib(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def measure(spec: dict) -> dict:
    import torch

    from launch.config.cluster import ClusterConfig
    from launch.config.data import DataConfig
    from launch.config.schemas import ParallelConfig, TrackingConfig, TrainConfig, TrainJob
    from launch.data.facts import DataFacts
    from launch.plan.run_plan import make_plan
    from launch.train.engine import build_engine
    from launch.train.loop import pairs
    from model.config import ModelConfig
    from tokenizer.config import TokenizerConfig

    model = ModelConfig(**spec["model"])
    train = TrainConfig(micro_batch=spec["micro_batch"], global_batch=spec["global_batch"], warmup_steps=0)
    parallel = ParallelConfig(zero_stage=0, activation_checkpointing=spec["activation_checkpointing"])
    job = TrainJob(
        model, TokenizerConfig(), parallel, DataConfig(tokens_dir="-"), train, TrackingConfig(), ClusterConfig()
    )
    plan = make_plan(job, world_size=1, data=DataFacts(model.vocab_size, None))
    tokens = torch.randint(0, model.vocab_size, (spec["global_batch"], model.seq_length + 1))
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    before = _kib("VmRSS")
    engine = build_engine(model, plan, train, parallel.activation_checkpointing, seed=1)
    for _ in range(spec["steps"]):
        engine.train_batch(data_iter=pairs(tokens.split(train.micro_batch)))
    peak = _kib("VmHWM")
    del engine
    gc.collect()
    return {"before_kib": before, "peak_kib": peak}


def main(specs: list[dict]) -> list[dict]:
    from megatron.core import parallel_state

    from launch.train.device import init_distributed, seed_everything

    init_distributed(60)
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
    seed_everything(1)
    return [measure(spec) for spec in specs]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print("PROBE " + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
