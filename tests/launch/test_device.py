"""Which GPU a rank takes (no GPU here: the choice is a function of what the rank sees, tested as such)."""

from __future__ import annotations

import pytest

from launch.train.device import gpu_of


def test_a_rank_takes_its_nodes_local_rank_th_gpu_or_the_one_slurm_gave_its_task() -> None:
    assert [gpu_of(rank, 8, gpu_per_task=True) for rank in range(8)] == list(range(8))
    assert [gpu_of(rank, 1, gpu_per_task=True) for rank in range(8)] == [0] * 8  # --gpus-per-task=1, --gpu-bind
    assert gpu_of(0, 1, gpu_per_task=False) == 0


@pytest.mark.parametrize(("local_rank", "visible", "slurm"), [(2, 2, False), (1, 1, False), (4, 2, True)])
def test_a_rank_without_a_gpu_of_its_own_is_refused_in_one_line(
    local_rank: int, visible: int, slurm: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was set_device's 'invalid device ordinal', a CUDA traceback; two ranks on one GPU fail in NCCL anyway."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(visible))))
    with pytest.raises(ValueError) as refused:
        gpu_of(local_rank, visible, gpu_per_task=slurm)
    assert str(refused.value) == (
        f"local rank {local_rank} has no GPU of its own: its node shows it {visible} (CUDA_VISIBLE_DEVICES="
        f"{','.join(map(str, range(visible)))}); run at most {visible} ranks a node (parallel.tp x pp x dp here, "
        "cluster.gpus_per_node on Slurm)"
    )
