"""What differs between a GPU cluster and a CPU machine, in one place: the backend and megatron's RNG tracker.

megatron-core keeps the tensor-parallel RNG state (dropout inside TP regions must differ per TP rank) in a tracker
built on `torch.cuda` RNG calls. On CPU the same tracker is kept with CPU generator states instead.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import deepspeed
import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import random as megatron_random

from launch import compat

TP_SEED_OFFSET = 2718  # megatron's: TP rank r draws from seed + 2718 + r
TP_RNG = compat.tensor_parallel_rng_name()


def on_gpu() -> bool:
    return torch.cuda.is_available()


def device() -> torch.device:
    """Where this rank's tensors live: its GPU, or the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if on_gpu() else torch.device("cpu")


def backend() -> str:
    return "nccl" if on_gpu() else "gloo"


class CpuRNGStatesTracker(megatron_random.CudaRNGStatesTracker):
    """megatron's tracker with CPU generator states: `fork(name)` swaps the CPU RNG state in and out."""

    @contextlib.contextmanager
    def fork(self, name: str = TP_RNG) -> Iterator[None]:
        outside = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outside)


def gpu_of(local_rank: int, visible: int, gpu_per_task: bool) -> int:
    """The GPU a rank trains on, of those it sees: its node's LOCAL_RANK-th, or the only one where Slurm gave each task
    a GPU of its own (a site's --gpu-bind or --gpus-per-task). A one-line ValueError where it sees too few."""
    if visible == 1 and gpu_per_task:
        return 0
    if local_rank < visible:
        return local_rank
    raise ValueError(
        f"local rank {local_rank} has no GPU of its own: its node shows it {visible} "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); run at most {visible} ranks a "
        "node (parallel.tp x pp x dp here, cluster.gpus_per_node on Slurm)"
    )


def init_distributed(timeout_s: float, gpu_per_task: bool = False) -> None:
    """Joins the process group that the launcher's environment describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT), on
    this rank's GPU if there are any; a collective that waits longer than `timeout_s` for a peer fails instead of
    hanging."""
    if on_gpu():
        compat.set_gpu_environment()  # a rank did it before any library loaded; a benchmark's process does it here
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(gpu_of(local_rank, torch.cuda.device_count(), gpu_per_task))
    else:
        compat.skip_cpu_shm_op_build()
    deepspeed.init_distributed(dist_backend=backend(), timeout=datetime.timedelta(seconds=timeout_s))


def seed_everything(seed: int) -> None:
    """The default RNG (same on every TP rank) and the tensor-parallel one (different per TP rank)."""
    torch.manual_seed(seed)
    seed_tensor_parallel(seed)


def seed_tensor_parallel(seed: int) -> None:
    """A fresh tensor-parallel RNG, different on each TP rank (attention dropout draws from it, and activation
    checkpointing's recompute restores it)."""
    if on_gpu():
        megatron_random.model_parallel_cuda_manual_seed(seed)
    else:
        tracker = CpuRNGStatesTracker()
        tp_seed = seed + TP_SEED_OFFSET + parallel_state.get_tensor_model_parallel_rank()
        tracker.set_states({TP_RNG: torch.Generator().manual_seed(tp_seed).get_state()})
        compat.install_rng_tracker(tracker)
    compat.share_rng_tracker_with_deepspeed()
