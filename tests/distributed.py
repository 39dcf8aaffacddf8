"""Runs a function on N real processes joined by a gloo process group, and collects what each rank returns."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple, results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(fn(*args), Path(results) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(world_size: int, fn: Callable, *args) -> list:
    """`fn(*args)` on every rank (it must be importable: a module-level function); the per-rank results in order."""
    with tempfile.TemporaryDirectory() as results:
        mp.spawn(_entry, args=(world_size, free_port(), fn, args, results), nprocs=world_size, join=True)
        return [torch.load(Path(results) / f"{rank}.pt", weights_only=False) for rank in range(world_size)]
