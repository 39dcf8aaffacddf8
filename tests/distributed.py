"""Runs a function on N real processes joined by a gloo process group, and collects what each rank returns."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _store(rank: int, world_size: int, port_file: Path) -> dist.TCPStore:
    """Rank 0's store on a port the kernel picks as it binds (a port probed free and bound later could be taken by
    another test's process in between), which the other ranks read from `port_file`."""
    if rank == 0:
        store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)
        port_file.with_suffix(".part").write_text(str(store.port))
        port_file.with_suffix(".part").replace(port_file)
        return store
    while not port_file.exists():
        time.sleep(0.01)
    return dist.TCPStore("127.0.0.1", int(port_file.read_text()), world_size, is_master=False)


def _entry(rank: int, world_size: int, fn: Callable, args: tuple, results: str) -> None:
    store = _store(rank, world_size, Path(results) / "port")
    # What a launcher sets, and DeepSpeed's init_distributed looks for before it takes the group as joined.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), RANK=str(rank), WORLD_SIZE=str(world_size))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        torch.save(fn(*args), Path(results) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(world_size: int, fn: Callable, *args) -> list:
    """`fn(*args)` on every rank (it must be importable: a module-level function); the per-rank results in order."""
    with tempfile.TemporaryDirectory() as results:
        mp.spawn(_entry, args=(world_size, fn, args, results), nprocs=world_size, join=True)
        return [torch.load(Path(results) / f"{rank}.pt", weights_only=False) for rank in range(world_size)]
