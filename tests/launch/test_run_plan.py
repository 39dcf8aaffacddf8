"""The run's plan on its own: a pure function of the job, the world size and the facts of the data, written once
and read by every rank."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import train_job
from launch.config.cluster import ClusterConfig, Scheduler
from launch.config.compose import compose_job
from launch.config.schemas import ParallelConfig, Precision, TrainConfig
from launch.data.facts import DataFacts
from launch.plan.layout import ParallelLayout
from launch.plan.policy import world_sizes
from launch.plan.run_plan import make_plan, make_plans, read_plan, write_plans
from model.config import ModelConfig

TINY = ModelConfig(num_layers=2, hidden_size=64, num_heads=4, seq_length=32)
DATA = DataFacts(vocab_size=2000, tokens_dir=None)
THREE_D = ParallelConfig(tp=2, pp=2, dp=2)


def test_a_3d_job_on_eight_ranks() -> None:
    plan = make_plan(train_job(TINY, parallel=THREE_D), 8, DATA)
    assert plan.layout == ParallelLayout(2, 2, 2) and plan.world_size == 8
    assert plan.zero_stage == 1 and plan.micro_batch == 2 and plan.micro_batches == 2  # 8 sequences, DP 2
    # embedding, its LayerNorm, 2 blocks, the final LayerNorm, the tied output: 2 balanced layers a stage
    assert plan.stage_bounds == (0, 3, 6) and [list(stage) for stage in plan.stages] == [[0, 1, 2], [3, 4, 5]]
    assert (plan.vocab_size, plan.padded_vocab_size) == (2000, 2048)
    assert plan.memory_gib is None  # no GPU figures for this machine


@pytest.mark.parametrize(
    ("dp", "precision", "zero_stage"),
    [(1, Precision.fp32, 0), (2, Precision.fp32, 1), (1, Precision.bf16, 1)],
)
def test_the_zero_stage_is_the_one_that_runs(dp: int, precision: Precision, zero_stage: int) -> None:
    job = train_job(TINY, parallel=ParallelConfig(dp=dp, zero_stage=1), train=TrainConfig(precision=precision))
    assert make_plan(job, dp, DATA).zero_stage == zero_stage


@pytest.mark.parametrize(
    ("parallel", "model", "world_size", "expected"),
    [
        (ParallelConfig(tp=3), TINY, 3, "model.num_heads=4 is not divisible by parallel.tp=3"),
        (ParallelConfig(pp=4), ModelConfig(num_layers=4), 4, "leaves stage 3 with the output embedding alone"),
        (ParallelConfig(dp=2), TINY, 4, "tp=1 x pp=1 x dp=2 = 2 ranks, but 4 processes"),
        (ParallelConfig(dp=3), TINY, 3, "train.global_batch=8 is not divisible by train.micro_batch=2 x dp=3"),
    ],
)
def test_a_job_that_cannot_train_so_has_no_plan(parallel, model, world_size: int, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        make_plan(train_job(model, parallel=parallel), world_size, DATA)


def test_an_elastic_job_is_planned_for_every_node_count_it_may_get() -> None:
    cluster = ClusterConfig(name="c", scheduler=Scheduler.slurm, nodes=2, min_nodes=1, tasks_per_node=4)
    job = train_job(TINY, parallel=ParallelConfig(tp=2, pp=2, elastic=True), cluster=cluster)
    plans = make_plans(job, DATA)
    assert [(plan.world_size, plan.layout.name) for plan in plans] == [(8, "tp2-pp2-dp2"), (4, "tp2-pp2-dp1")]
    six = TrainConfig(global_batch=6, micro_batch=2)
    odd = train_job(TINY, parallel=ParallelConfig(tp=2, pp=2, elastic=True), cluster=cluster, train=six)
    with pytest.raises(ValueError, match=r"^parallel.elastic on 2 nodes: no layout with tp=2 .* the nodes allow$"):
        make_plans(odd, DATA)
    three = replace(cluster, nodes=3, min_nodes=2)  # DP 3 takes 6, DP 2 does not
    fewer = r"^parallel.elastic on 2 nodes: no layout .* the nodes allow, or raise cluster.min_nodes above 2$"
    with pytest.raises(ValueError, match=fewer):
        make_plans(train_job(TINY, parallel=ParallelConfig(tp=2, pp=2, elastic=True), cluster=three, train=six), DATA)


def test_every_node_count_of_an_elastic_job_validates_the_same_samples() -> None:
    """Whole micro-batches of every DP rank at DP 2 and at DP 1 (2 x 2 and 2 x 1 samples): multiples of 4 in both
    plans, not of 2 in the smaller one; bits per byte over exactly the samples kept."""
    cluster = ClusterConfig(name="c", scheduler=Scheduler.slurm, nodes=2, min_nodes=1, tasks_per_node=4)
    train = TrainConfig(global_batch=8, micro_batch=2, eval_interval=10, eval_samples=8)
    job = train_job(TINY, parallel=ParallelConfig(tp=2, pp=2, elastic=True), cluster=cluster, train=train)
    held = {"full": 8, "short": 6, "shorter": 3}
    sample_bytes = {"full": [64] * 8, "short": [1, 2, 3, 4, 5, 6], "shorter": [9, 9, 9]}
    facts = DataFacts(2000, "tokens", validation_samples=held, validation_sample_bytes=sample_bytes)
    plans = make_plans(job, facts)
    assert [plan.layout.dp for plan in plans] == [2, 1]
    for plan in plans:
        assert plan.validation_samples == {"full": 8, "short": 4, "shorter": 0}
        assert plan.validation_bytes_per_token == {"full": 64 / 32, "short": 10 / (4 * 32)}
    assert make_plan(job, 4, facts).validation_samples["short"] == 6  # planned alone, at DP 1 only


def test_on_a_gpu_cluster_the_plan_says_what_a_gpu_needs_and_refuses_what_does_not_fit() -> None:
    job = compose_job("train", ["experiment=bloom-176b"])[1]
    [plan] = make_plans(job, DataFacts(vocab_size=250680, tokens_dir=None))
    assert plan.layout.name == "tp4-pp12-dp8" and 40 < plan.memory_gib < 80
    squeezed = compose_job("train", ["experiment=bloom-176b", "cluster.gpu_memory_gib=40"])[1]
    with pytest.raises(ValueError, match="more than the 40 GiB of jean-zay-a100's GPUs"):
        make_plans(squeezed, DataFacts(vocab_size=250680, tokens_dir=None))


def test_the_plan_is_written_once_and_read_back_by_world_size(tmp_path: Path) -> None:
    cluster = ClusterConfig(name="c", scheduler=Scheduler.slurm, nodes=2, min_nodes=1, tasks_per_node=4)
    plans = make_plans(train_job(TINY, parallel=ParallelConfig(tp=2, pp=2, elastic=True), cluster=cluster), DATA)
    write_plans(tmp_path, plans)
    assert [read_plan(tmp_path, size) for size in (8, 4)] == plans
    assert [plan["world_size"] for plan in json.loads((tmp_path / "plan.json").read_text())["plans"]] == [8, 4]
    with pytest.raises(ValueError, match="was planned for 8, 4 ranks, not the 2 this start has"):
        read_plan(tmp_path, 2)
    (tmp_path / "plan.json").write_text("{")
    with pytest.raises(ValueError, match=r"plan.json cannot be read .*launch the run again"):
        read_plan(tmp_path, 8)
    older = [{key: value for key, value in plan.record().items() if key != "validation_samples"} for plan in plans]
    (tmp_path / "plan.json").write_text(json.dumps({"plans": older}))  # an older corolla's: planned anew, not read
    with pytest.raises(ValueError, match=r"plan.json cannot be read .*validation_samples.*launch the run again"):
        read_plan(tmp_path, 8)


@pytest.mark.parametrize(("tp", "pp", "dp"), [(2, 2, 2), (1, 4, 2), (4, 1, 2), (2, 3, 1)])
def test_the_plans_rank_order_is_deepspeeds_topology(tp: int, pp: int, dp: int) -> None:
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    topology = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    layout = ParallelLayout(tp, pp, dp)
    for rank in range(layout.world_size):
        coordinate = topology.get_coord(rank)
        assert layout.coordinates(rank) == (coordinate.model, coordinate.data, coordinate.pipe)


def test_a_layout_that_does_not_split_the_nodes_ranks_names_the_node_count_that_does() -> None:
    """parallel.dp=0 on a cluster: the nodes make the world size, so the fix is a node count (it said to 'change the
    process count', which no setting is called)."""
    cluster = ClusterConfig(name="c", scheduler=Scheduler.slurm, nodes=2, tasks_per_node=4)
    with pytest.raises(ValueError, match=r"^parallel.dp=0 takes DP from the nodes, but cluster c's 2 nodes x 4 = 8 "):
        world_sizes(ParallelConfig(tp=2, pp=3), cluster)
    with pytest.raises(ValueError, match=r"do not split into tp=2 x pp=3: set cluster.nodes=3, or parallel.tp and"):
        world_sizes(ParallelConfig(tp=2, pp=3), cluster)
    assert world_sizes(ParallelConfig(tp=2, pp=3), replace(cluster, nodes=3)) == {3: 12}


def test_an_elastic_job_on_a_cluster_refuses_a_dp_that_its_nodes_do_not_give() -> None:
    """Each start of an elastic job takes DP from the ranks it gets: parallel.dp=4 on 2 nodes of 4 ranks trained at
    DP 2 (tp=2 x pp=2), without a word. The DP the configured nodes give (parallel=3d's 2) is taken as said."""
    cluster = ClusterConfig(name="c", scheduler=Scheduler.slurm, nodes=2, min_nodes=1, tasks_per_node=4)
    with pytest.raises(ValueError, match=r"^parallel.tp=2 x pp=2 x dp=4 needs 16 ranks but cluster c gives 2 nodes"):
        world_sizes(ParallelConfig(tp=2, pp=2, dp=4, elastic=True), cluster)
    expected = {1: 4, 2: 8}
    assert world_sizes(ParallelConfig(tp=2, pp=2, dp=2, elastic=True), cluster) == expected
    assert world_sizes(ParallelConfig(tp=2, pp=2, elastic=True), cluster) == expected
