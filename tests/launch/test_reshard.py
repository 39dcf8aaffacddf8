"""Resharding: a run resumed on another TP x PP x DP layout continues from exactly the state it stopped with."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from run_copies import stopped_copy
from test_training import SHORT_RUN, records

from conftest import resize, small_filesystem
from launch.cli import main
from launch.plan.layout import ParallelLayout
from launch.plan.stages import pipeline_stages, stage_cut
from launch.rundir.files import shard_file
from launch.rundir.run_record import recorded_run
from launch.train.shards import KEYS, ShardError, ShardReader
from model.bloom import BloomBlock
from model.config import ModelConfig
from model.layers import tp_split_dim
from model.pipeline import PARTITION, layer_specs

# Six layers, so that four pipeline stages each hold a block; fp32 and no dropout, so that layouts agree to 1e-5.
RUN = [*SHORT_RUN, "model.num_layers=6", "train.steps=10", "train.eval_samples=8"]
# Each hop changes the layout: no ZeRO (DP 1) → ZeRO-1 over DP 2 → ZeRO-1 over DP 2 on other stages → no ZeRO →
# ZeRO-1 again. The first is the layout of the run that stayed, whose first two steps the moved run starts from.
CHAIN = [
    ("tp1-pp1-dp1", ["parallel.tp=1", "parallel.pp=1", "parallel.dp=1"]),
    ("tp2-pp2-dp2", ["parallel.tp=2", "parallel.pp=2", "parallel.dp=2"]),
    ("tp1-pp4-dp2", ["parallel.tp=1", "parallel.pp=4", "parallel.dp=2"]),
    ("tp2-pp1-dp1", ["parallel.tp=2", "parallel.pp=1", "parallel.dp=1"]),
    ("tp1-pp2-dp2", ["parallel.tp=1", "parallel.pp=2", "parallel.dp=2"]),
]


def train(run_dir: Path, tokens: Path, *overrides: str) -> int:
    return main(["train", f"data.tokens_dir={tokens}", f"run_dir={run_dir}", *RUN, *overrides])


def losses(run_dir: Path) -> dict[int, float]:
    return {record["step"]: record["loss"] for record in records(run_dir)}


@pytest.fixture(scope="module")
def stayed_run(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """On one process, every layout's reference; a checkpoint every 2 steps, all kept, for the tests that start from
    one of its steps (run_copies.py)."""
    run_dir = tmp_path_factory.mktemp("stayed") / "run"
    assert train(run_dir, tokens, *CHAIN[0][1], "train.checkpoint_interval=2", "train.keep_checkpoints=5") == 0
    return run_dir


@pytest.fixture(scope="module")
def stayed(stayed_run: Path) -> dict[int, float]:
    return losses(stayed_run)


def test_a_run_moved_across_five_layouts_keeps_the_losses_of_one_that_stayed(
    tokens, stayed_run, stayed, tmp_path
) -> None:
    moved = stopped_copy(stayed_run, tmp_path / "moved", 2)
    for _, overrides in CHAIN[1:]:
        assert train(moved, tokens, *overrides, "train.exit_after=2") == 0
    assert sorted(losses(moved)) == list(range(1, 11))
    assert losses(moved) == pytest.approx(stayed, abs=1e-5, rel=0)
    # Adam's state carried over too: a restart with fresh moments changes the next step's loss by far more than 1e-5
    starts = [json.loads(line) for line in (moved / "history.jsonl").read_text().splitlines()]
    starts = [event for event in starts if event["event"] == "start"]
    assert [event["layout"] for event in starts] == [name for name, _ in CHAIN]
    assert [event.get("resharded_from") for event in starts] == [None] + [name for name, _ in CHAIN[:-1]]
    tracked = asdict(recorded_run(moved))
    run = MlflowClient(tracked["tracking_uri"]).get_run(tracked["run_id"])
    assert run.data.tags["layout"] == CHAIN[-1][0] and run.data.tags["corolla.resharded_from"] == CHAIN[-2][0]


def shards(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: states for path in checkpoint.glob("model-*.pt") for name, states in torch.load(path).items()}


def reshard(run_dir: Path, *overrides: str) -> int:
    return main(["checkpoint", "reshard", f"run_dir={run_dir}", *overrides])


def test_offline_resharding_is_exact_both_ways_and_the_run_resumes_on_the_new_files(
    capsys, tokens, stayed_run, stayed, tmp_path
) -> None:
    run_dir = stopped_copy(stayed_run, tmp_path / "run", 2)  # saved by one rank
    saved = run_dir / "checkpoints" / "step-00000002"
    before = {path.name for path in saved.glob("model-*.pt")}
    original = shards(saved)
    assert reshard(run_dir, "tp=2", "pp=2") == 0
    assert "from tp1-pp1-dp1 to tp2-pp2-dp1" in capsys.readouterr().out
    assert json.loads((saved / "COMPLETE").read_text())["layout"] == {"tp": 2, "pp": 2, "dp": 1}
    assert not before & {path.name for path in saved.glob("model-*.pt")}  # the old layout's files are gone
    assert reshard(run_dir, "tp=1", "pp=1") == 0
    back = shards(saved)
    assert back.keys() == original.keys()
    assert all(torch.equal(back[name][key], original[name][key]) for name in original for key in original[name])
    assert reshard(run_dir, "tp=2", "pp=2") == 0
    assert train(run_dir, tokens, "parallel.tp=2", "parallel.pp=2", "parallel.dp=1") == 0  # four ranks, one RNG file
    starts = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert starts[-2]["layout"] == "tp2-pp2-dp1" and "resharded_from" not in starts[-2]  # read its own files
    assert losses(run_dir) == pytest.approx(stayed, abs=1e-5, rel=0)


def test_a_reshard_stopped_halfway_leaves_the_checkpoint_whole_and_the_next_reshard_clears_its_files(
    capsys, stayed_run, tmp_path
) -> None:
    """Killed while it wrote the new layout's shards, a reshard leaves them beside the checkpoint's own, which COMPLETE
    still lists; a reshard to any layout then removes them."""
    run_dir = stopped_copy(stayed_run, tmp_path / "run", 2)
    saved = run_dir / "checkpoints" / "step-00000002"
    (saved / shard_file(1, 4, 0, 1)).write_bytes(b"half a shard")  # of tp=4, which it was resharding to
    assert main(["checkpoint", "verify", str(run_dir), "step=2"]) == 0
    assert reshard(run_dir, "pp=2") == 0
    assert not (saved / shard_file(1, 4, 0, 1)).exists()
    listed = json.loads((saved / "COMPLETE").read_text())["files"]
    assert sorted(path.name for path in saved.iterdir() if path.name != "COMPLETE") == sorted(listed)
    assert main(["checkpoint", "verify", str(run_dir), "step=2"]) == 0


def test_a_reshard_the_disk_has_no_room_for_says_so_and_leaves_the_checkpoint_as_it_was(
    capsys, stayed_run, tmp_path
) -> None:
    with small_filesystem(tmp_path / "disk", "64M") as disk:
        run_dir = stopped_copy(stayed_run, disk / "run", 2)
        saved = run_dir / "checkpoints" / "step-00000002"
        before = {path.name: path.read_bytes() for path in saved.iterdir()}
        shard = (saved / shard_file(0, 1, 0, 1)).stat().st_size
        resize(disk, f"{(shutil.disk_usage(disk).used + shard // 2) // 1024}k")  # room for half the new shards
        assert reshard(run_dir, "tp=2") == 2
        assert (
            capsys.readouterr()
            .err.strip()
            .splitlines()[-1]
            .startswith(f"corolla: error: no space on {disk} for the step-2 checkpoint: ")
        )
        assert {path.name: path.read_bytes() for path in saved.iterdir()} == before
        assert main(["checkpoint", "verify", str(run_dir), "step=2"]) == 0
        resize(disk, "64M")
        assert reshard(run_dir, "tp=2") == 0


def test_a_layout_the_model_cannot_take_is_refused_before_any_file_changes(capsys, stayed_run, tmp_path) -> None:
    run_dir = stopped_copy(stayed_run, tmp_path / "run", 2)
    before = {path: path.stat().st_mtime_ns for path in (run_dir / "checkpoints").rglob("*")}
    assert reshard(run_dir, "tp=3") == 2
    assert capsys.readouterr().err.strip() == (
        "corolla: error: impossible layout: model.num_heads=4 is not divisible by parallel.tp=3; "
        "the MLP width 256 is not divisible by parallel.tp=3"
    )
    assert reshard(tmp_path / "nothing") == 2
    assert {path: path.stat().st_mtime_ns for path in (run_dir / "checkpoints").rglob("*")} == before


@pytest.mark.parametrize("layers", [1, 2, 4, 6, 24, 70])
def test_the_planners_stage_cut_is_the_one_deepspeed_makes(layers: int) -> None:
    from deepspeed.runtime.utils import partition_balanced

    model = ModelConfig(num_layers=layers)
    specs = layer_specs(model, None)
    weights = [int(spec.typename.__name__ in PARTITION.removeprefix("type:").split("|")) for spec in specs]
    for pp in range(1, layers + 1):
        cut = stage_cut(model, pp)
        assert [stage.start for stage in cut] + [cut[-1].stop] == partition_balanced(weights, pp)  # PipelineModule's
        blocks = [sum(specs[index].typename is BloomBlock for index in stage) for stage in cut]
        assert blocks == [stage.blocks for stage in pipeline_stages(layers, pp, micro_batches=1)]


def test_a_slice_for_another_tp_width_is_cut_from_the_old_slices_exactly(tmp_path: Path) -> None:
    # Column-parallel (rows split), row-parallel (columns split) and replicated parameters, saved by TP=2 x PP=1.
    whole = {
        "3.self_attention.query_key_value.weight": torch.randn(24, 8),
        "3.self_attention.dense.weight": torch.randn(8, 8),
        "3.input_layernorm.weight": torch.randn(8),
    }
    saved = ParallelLayout(tp=2, pp=1, dp=1)
    for tp_rank in range(2):
        states = {}
        for name, tensor in whole.items():
            dim = tp_split_dim(name)
            piece = tensor if dim is None else tensor.chunk(2, dim)[tp_rank]
            states[name] = {key: piece.clone() for key in KEYS}
        torch.save(states, tmp_path / shard_file(tp_rank, saved.tp, 0, saved.pp))
    reader = ShardReader(tmp_path, saved)
    for name, tensor in whole.items():
        dim = tp_split_dim(name)
        assert torch.equal(reader.full(name), tensor)
        for tp in (1, 2, 4, 8):
            for tp_rank in range(tp):
                expected = tensor if dim is None else tensor.chunk(tp, dim)[tp_rank]
                assert torch.equal(reader.local(name, "exp_avg", tp, tp_rank), expected)
    with pytest.raises(ShardError, match="TP=16 cannot split evenly"):
        reader.local("3.self_attention.dense.weight", "weight", 16, 0)


def test_a_tp_that_pads_the_vocabulary_to_other_rows_is_refused_before_any_rank_starts(
    capsys, tokens, tmp_path
) -> None:
    """The test tokenizer's 2,000 tokens are padded to 2,048 rows at TP 1, 2 and 4, but to 2,304 at TP 3 (a model of
    six heads takes it). A resume on TP 3 was called valid by --dry-run, then started its ranks, which failed as they
    loaded the embedding; now the launch refuses it, as the offline reshard does, and the run is left as it was."""
    six_heads = ["model.hidden_size=96", "model.num_heads=6", "model.num_layers=3", "train.steps=2"]
    run_dir = tmp_path / "run"
    assert train(run_dir, tokens, *six_heads) == 0
    capsys.readouterr()
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    expected = (
        "the checkpoint's embedding has 2048 rows, the vocabulary padded for TP=1, but TP=3 pads it to 2304: choose "
        "a TP that pads it to 2048, such as 1"
    )
    for dry_run in ([], ["--dry-run"]):
        code = main(
            [
                "train",
                *dry_run,
                f"data.tokens_dir={tokens}",
                f"run_dir={run_dir}",
                *RUN,
                *six_heads,
                "train.steps=4",
                "parallel.tp=3",
            ]
        )
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert err == f"corolla: error: run_dir={run_dir} resumes step 2: {expected}"
    assert reshard(run_dir, "tp=3") == 2
    assert capsys.readouterr().err.strip() == f"corolla: error: {expected}"
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before
