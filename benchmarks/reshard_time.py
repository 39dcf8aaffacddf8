"""Time to reshard a checkpoint offline (`corolla checkpoint reshard`) as the model grows.

For each model shape: a checkpoint is written on one rank (TP=1 x PP=1: the fp32 weights of a real, freshly
initialised BLOOM and two Adam moments), then resharded TP1xPP1 → TP2xPP2 → TP1xPP4 → TP1xPP1. Printed: the
checkpoint's size, the seconds of each hop, and their rate (GB/s of checkpoint written); the baseline is the time to
write the same checkpoint once as training does, hashed as it is written (so a ratio of 1.0 means resharding costs
one save).

    .venv/bin/python benchmarks/reshard_time.py [--smoke]    # --smoke: one tiny shape, the code path only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from megatron.core import parallel_state  # noqa: E402

from launch.plan.layout import ParallelLayout  # noqa: E402
from launch.rundir.files import checkpoint_tag, shard_file  # noqa: E402
from launch.train.checkpoint import mark_complete  # noqa: E402
from launch.train.device import init_distributed  # noqa: E402
from launch.train.hashed_save import save_hashed  # noqa: E402
from launch.train.reshard import reshard_checkpoint  # noqa: E402
from launch.train.shards import MOMENTS  # noqa: E402
from model.bloom import parallel_config  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.pipeline import pipeline_module  # noqa: E402

SHAPES = [  # layers, hidden, heads: about 30M, 110M and 250M parameters with a 32k vocabulary
    (8, 512, 8),
    (8, 1024, 16),
    (8, 1536, 16),
]
SMOKE_SHAPES = [(4, 64, 4)]
HOPS = [ParallelLayout(2, 2, 1), ParallelLayout(1, 4, 1), ParallelLayout(1, 1, 1)]
STEP = 1


def _one_rank() -> None:
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
    os.environ.setdefault("MASTER_PORT", "29533")
    init_distributed(timeout_s=600)
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)


def _write_source(checkpoints: Path, model: ModelConfig) -> tuple[int, float]:
    """A TP1xPP1 checkpoint of a fresh model; its size in bytes and the seconds its hashed save took."""
    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed prints the stage's layers
        module = pipeline_module(model, parallel_config(), pp=1, dp=1, seed=1, activation_checkpointing=False)
    states = {
        name: {"weight": p.detach(), **{key: p.detach() * (index + 1) / 10 for index, key in enumerate(MOMENTS)}}
        for name, p in module.named_parameters()
    }
    directory = checkpoints / checkpoint_tag(STEP)
    directory.mkdir(parents=True)
    path = directory / shard_file(0, 1, 0, 1)
    start = time.perf_counter()
    checksum = save_hashed(states, path)
    seconds = time.perf_counter() - start
    mark_complete(checkpoints, STEP, ParallelLayout(), ParallelLayout(), {path.name: checksum})
    return path.stat().st_size, seconds


def reshard_section(shapes: list[tuple[int, int, int]] = SHAPES) -> None:
    print("\nTime to reshard a checkpoint offline (fp32 weights + 2 Adam moments; baseline: one save of it)")
    print(f"{'parameters':>12} {'GB':>6} {'save s':>7} " + " ".join(f"{'→ ' + hop.name[:-4]:>14}" for hop in HOPS))
    if not dist.is_initialized():
        _one_rank()
    for layers, hidden, heads in shapes:
        model = ModelConfig(num_layers=layers, hidden_size=hidden, num_heads=heads, vocab_size=32000)
        with tempfile.TemporaryDirectory() as workdir:
            checkpoints = Path(workdir)
            size, save_seconds = _write_source(checkpoints, model)
            hops = []
            for target in HOPS:
                start = time.perf_counter()
                reshard_checkpoint(checkpoints, STEP, target, model)
                hops.append(time.perf_counter() - start)
        parameters = size / 12
        cells = " ".join(f"{s:6.2f}s {s / save_seconds:5.2f}x" for s in hops)
        print(f"{parameters / 1e6:11.0f}M {size / 1e9:6.2f} {save_seconds:7.2f} {cells}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny shape: the code path, not the figures")
    torch.set_num_threads(2)
    reshard_section(SMOKE_SHAPES if parser.parse_args().smoke else SHAPES)
