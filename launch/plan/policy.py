"""Which layout a job trains with on the ranks it gets: the one place data parallelism is derived.

Locally the layout decides the world size (DP 1 unless given). On a Slurm cluster the nodes do: `nodes` x ranks per
node, and parallel.dp=0 takes DP from them. An elastic job (parallel.elastic, cluster.min_nodes) may start on any
node count of its range; each takes TP as configured (it stays within a node), the pipeline depth nearest the
configured one that leaves a whole DP and can train the model and batches, and DP from what is left.
"""

from __future__ import annotations

from launch.config.cluster import ClusterConfig, Scheduler
from launch.config.schemas import ParallelConfig, TrainJob
from launch.plan.layout import ParallelLayout, tensor_parallel_problem


def elastic_layout(job: TrainJob, world_size: int) -> ParallelLayout:
    tp, model, train = job.parallel.tp, job.model, job.train
    for pp in sorted(range(1, model.num_layers + 1), key=lambda depth: (abs(depth - job.parallel.pp), -depth)):
        if world_size % (tp * pp) == 0:
            layout = ParallelLayout(tp, pp, world_size // (tp * pp))
            if not layout.problems(model, train):
                return layout
    raise ValueError(
        f"no layout with tp={tp} trains this model and batch on {world_size} ranks: make train.global_batch a "
        "multiple of train.micro_batch x every DP the nodes allow"
    )


def configured_layout(parallel: ParallelConfig, cluster: ClusterConfig) -> ParallelLayout:
    """The layout on the configured nodes, for a job that is not elastic."""
    world_size = world_sizes(parallel, cluster)[cluster.nodes]
    return ParallelLayout.for_world(parallel.tp, parallel.pp, parallel.dp, world_size)


def layout_for(job: TrainJob, world_size: int) -> ParallelLayout:
    """The layout a start on `world_size` ranks trains with."""
    parallel = job.parallel
    if parallel.elastic:
        return elastic_layout(job, world_size)
    return ParallelLayout.for_world(parallel.tp, parallel.pp, parallel.dp, world_size)


def world_sizes(parallel: ParallelConfig, cluster: ClusterConfig) -> dict[int, int]:
    """Every world size a job may get, by node count (locally: the layout's ranks); a one-line error when the
    cluster and the layout disagree."""
    if cluster.scheduler == Scheduler.local:
        return {cluster.nodes: ParallelLayout.for_world(parallel.tp, parallel.pp, parallel.dp or 1, None).world_size}
    if cluster.min_nodes and not parallel.elastic:
        raise ValueError(
            f"cluster.min_nodes={cluster.min_nodes} lets Slurm run the job on fewer than {cluster.nodes} nodes: set "
            "parallel.elastic=true to let it change layout, or cluster.min_nodes=0"
        )
    if cluster.gpus_per_node and (problem := tensor_parallel_problem(parallel.tp, cluster.gpus_per_node, cluster.name)):
        raise ValueError(problem)  # before the node count: no count of nodes mends it
    needed = parallel.tp * parallel.pp * parallel.dp
    world_size = cluster.nodes * cluster.ranks_per_node
    # An elastic job's starts take DP from the ranks they get: a dp given must at least be the configured nodes' one.
    if parallel.dp and needed != world_size:
        raise ValueError(
            f"parallel.tp={parallel.tp} x pp={parallel.pp} x dp={parallel.dp} needs {needed} ranks but cluster "
            f"{cluster.name} gives {cluster.nodes} nodes x {cluster.ranks_per_node} = {world_size}: set "
            f"cluster.nodes={-(-needed // cluster.ranks_per_node)}, or parallel.dp=0 to take DP from the nodes"
        )
    model_parallel = parallel.tp * parallel.pp
    if not parallel.elastic and not parallel.dp and world_size % model_parallel:
        fits = next(
            nodes
            for nodes in range(cluster.nodes, cluster.nodes + model_parallel + 1)
            if not nodes * cluster.ranks_per_node % model_parallel
        )
        raise ValueError(
            f"parallel.dp=0 takes DP from the nodes, but cluster {cluster.name}'s {cluster.nodes} nodes x "
            f"{cluster.ranks_per_node} = {world_size} ranks do not split into tp={parallel.tp} x pp={parallel.pp}: "
            f"set cluster.nodes={fits}, or parallel.tp and parallel.pp to divide them"
        )
    return {nodes: nodes * cluster.ranks_per_node for nodes in cluster.node_counts}
