"""Inside a Slurm job: who this rank is and where the others are; the one place the scheduler's variables are read
(but for SLURM_RESTART_COUNT in the test-only launch/train/faults.py, which slurm/ lies above).

Every rank is one Slurm task (srun); ranks find each other through a TCP rendezvous on the first node of the
allocation, on a port derived from the job id and its restart count, so a requeued job never meets the previous
incarnation's sockets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from slurm.commands import SlurmError, run_slurm

PORT_BASE, PORT_SPAN = 20000, 30000


@dataclass(frozen=True)
class SlurmTask:
    job_id: str
    rank: int
    local_rank: int
    world_size: int
    ranks_per_node: int
    node_list: str
    node_name: str
    restart_count: int

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> SlurmTask:
        try:
            return cls(
                job_id=env["SLURM_JOB_ID"],
                rank=int(env["SLURM_PROCID"]),
                local_rank=int(env["SLURM_LOCALID"]),
                world_size=int(env["SLURM_NTASKS"]),
                ranks_per_node=int(env["SLURM_NTASKS"]) // int(env["SLURM_JOB_NUM_NODES"]),
                node_list=env["SLURM_JOB_NODELIST"],
                node_name=env.get("SLURMD_NODENAME", ""),
                restart_count=int(env.get("SLURM_RESTART_COUNT", "0")),
            )
        except KeyError as missing:
            raise RuntimeError(f"not in a Slurm job step ({missing.args[0]} is not set): start it with srun") from None

    def hosts(self) -> list[str]:
        try:
            hosts = run_slurm("scontrol", "show", "hostnames", self.node_list).split()
        except SlurmError as error:
            raise RuntimeError(f"cannot expand the node list {self.node_list} ({error})") from None
        if not hosts:
            raise RuntimeError(f"scontrol expands the node list {self.node_list} to no host")
        return hosts

    def rendezvous(self) -> dict[str, str]:
        """The torch.distributed environment of this rank (what torchrun sets locally)."""
        port = PORT_BASE + (int(self.job_id) * 97 + self.restart_count) % PORT_SPAN
        return {
            "MASTER_ADDR": self.hosts()[0],
            "MASTER_PORT": str(port),
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.ranks_per_node),
        }
