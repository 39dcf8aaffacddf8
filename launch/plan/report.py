"""What the planner says of a job: `corolla plan`, which layouts of a model fit a cluster's GPUs and how fast each goes
(ranking.py); and the check every plan of a job on a GPU cluster passes (run_plan.py), which refuses a layout that
will not fit before anything starts."""

from __future__ import annotations

import math
from dataclasses import replace
from json import dumps

from launch.config.cluster import REQUEUE_MARGIN_S, ClusterConfig, Scheduler
from launch.config.schemas import PLANNED_MICRO_BATCHES, PlanJob, TrainConfig, TrainJob
from launch.plan.arithmetic import CHECKPOINT_BYTES_PER_PARAMETER, parameter_count
from launch.plan.hardware import A100_80GB, GIB, H200, Hardware, plural
from launch.plan.layout import ParallelLayout, tensor_parallel_problem, too_many_stages
from launch.plan.memory import Candidate, stage_parameters
from launch.plan.ranking import (
    Plan,
    best_per_layout,
    candidates,
    describe,
    evaluate,
    nearest_fitting,
    plan_layouts,
    recommended,
)
from launch.plan.schedules import samples_before
from launch.plan.stages import pipeline_stages
from model.config import ModelConfig

HEADER = " rank  TP  PP  DP  micro  recompute  ZeRO  GiB/GPU  fits  s/step  TFLOP/s  compute  bubble  comm"


def check_tensor_parallel(tp: int, hardware: Hardware) -> None:
    if problem := tensor_parallel_problem(tp, hardware.gpus_per_node, hardware.name):
        raise ValueError(problem)


def _summary(plan: Plan, hardware: Hardware) -> str:
    return (
        f"{plan.memory_gib:.1f} of {hardware.gpu_memory_gib:g} GiB, {'fits' if plan.fits else 'does not fit'}, "
        f"{plan.time.total:.1f} s a step, {plan.tflops_per_gpu:.0f} TFLOP/s a GPU"
    )


def size_text(count: float) -> str:
    """A count of parameters or tokens as BLOOM's names say it: 176.2B, 559.1M, 98,304."""
    if count >= 1e9:
        return f"{count / 1e9:.1f}B"
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count:,.0f}"


def steps_text(model: ModelConfig, train: TrainConfig) -> str:
    return f"train.steps={train.steps:,} ({size_text(samples_before(train.steps, train) * model.seq_length)} tokens)"


def training_days(train: TrainConfig, step_s: float) -> float:
    """train.steps at `step_s` a step of the full global batch, a ramp-up's smaller batches taking their share."""
    return samples_before(train.steps, train) / train.global_batch * step_s / 86400


def calibration_note(hardware: Hardware) -> str | None:
    """A warning where the GPUs are not the A100s the step times were calibrated on and the cluster does not say how
    fast corolla's kernels run on them."""
    if hardware.kernel_efficiency != 1.0 or hardware.peak_tflops == A100_80GB["peak_tflops"]:
        return None
    return (
        f"note: {hardware.name}'s GPUs ({hardware.peak_tflops:g} TFLOP/s) are not the A100s the step times were "
        "calibrated on, and cluster.kernel_efficiency=1 takes corolla's kernels to run as fast on them (they ran at "
        f"{H200['kernel_efficiency']:g} of it on an H200): measure it with benchmarks/gpu_check.sh and set it"
    )


def job_estimates(job: TrainJob, layout: ParallelLayout) -> list[str]:
    """What a job's summary says of its model and, on a Slurm cluster that gives its GPUs' figures, the planner's
    memory a GPU, time a step, and time to train.steps in jobs of the time limit."""
    model, cluster = job.model, job.cluster
    size = f"{size_text(parameter_count(model, layout.tp))} parameters, vocabulary {model.vocab_size:,}"
    try:
        hardware = Hardware.of(cluster) if cluster.scheduler == Scheduler.slurm and cluster.gpu_memory_gib else None
    except ValueError:  # figures unknown: no estimates
        hardware = None
    if hardware is None:
        return [size]
    plan = evaluate(model, Candidate.of(layout, job.train, job.parallel), hardware)
    days = training_days(job.train, plan.time.total)
    jobs = math.ceil(days * 86400 / max(60, cluster.time_limit_min * 60 - cluster.signal_delay_s))
    lines = [
        f"{size}; estimated {_summary(plan, hardware)}; {steps_text(model, job.train)} in ~{days:.1f} days, "
        f"~{plural(jobs, 'job')} of cluster.time_limit_min={cluster.time_limit_min}"
    ]
    return [*lines, note] if (note := calibration_note(hardware)) else lines


def memory_parts(plan: Plan) -> str:
    """Where a plan's memory goes, in GiB: the peak is the larger of the activations and the optimizer step's
    buffers, on top of the parameters' state."""
    parts = plan.memory.gib()
    activations = parts["activations"] + parts["working"] + parts["logits"]
    overhead = plan.memory_gib - plan.memory.tensors / GIB
    return (
        f"weights {parts['weights']:.1f}, gradients {parts['gradients']:.1f}, optimizer {parts['optimizer']:.1f}, "
        f"the larger of activations {activations:.1f} and optimizer-step buffers {parts['step_transient']:.1f}, "
        f"ALiBi bias {parts['alibi_bias']:.1f}, CUDA context and fragmentation {overhead:.1f}"
    )


UNTRAINABLE = "(*)"  # beside a layout of the table that `corolla train` refuses


def _row(rank: int, plan: Plan) -> str:
    c, t = plan.candidate, plan.time
    communication = t.tensor_parallel + t.pipeline_sends + t.data_parallel
    return (
        f"{rank:>5} {c.layout.tp:>3} {c.layout.pp:>3} {c.layout.dp:>3} {c.micro_batch:>6} "
        f"{'yes' if c.activation_checkpointing else 'no':>10} {c.effective_zero_stage:>5} {plan.memory_gib:>8.1f} "
        f"{'yes' if plan.fits else 'no':>5} {t.total:>7.1f} {plan.tflops_per_gpu:>8.1f} {t.compute:>8.1f} "
        f"{t.bubble:>7.1f} {communication:>5.1f}{'' if plan.trainable else f'  {UNTRAINABLE}'}"
    )


def _configured(
    job: PlanJob, model: ModelConfig, hardware: Hardware, gpus: int, plans: list[Plan]
) -> tuple[str, Plan | None]:
    """Where the configured layout (parallel.*, train.*) stands, and its plan; or why it cannot run."""
    parallel, train = job.parallel, job.train
    if problem := too_many_stages(parallel.pp, model):  # before the GPUs: no count of them makes it a layout
        return f"configured layout: {problem}", None
    try:
        layout = ParallelLayout.for_world(parallel.tp, parallel.pp, parallel.dp, gpus)
    except ValueError as error:
        return f"configured layout: {error}", None
    problems = layout.problems(model, train)
    if problems:
        return "configured layout: impossible: " + "; ".join(problems), None
    candidate = Candidate.of(layout, train, parallel)
    plan = evaluate(model, candidate, hardware)
    position = next(index for index, other in enumerate(plans, 1) if other.candidate == candidate)
    layouts = [other.candidate.layout for other in best_per_layout(plans)]
    said = (
        f"configured: {describe(candidate)}: {_summary(plan, hardware)} (configuration {position} of {len(plans)}; "
        f"its layout ranks {layouts.index(layout) + 1})"
    )
    return said, plan


def _left_out_by_batches(
    model: ModelConfig, train: TrainConfig, gpus: int, hardware: Hardware, micro_batches: list[int], planned: list[Plan]
) -> list[str]:
    """The layouts the ramp-up's batches or validation's, or both, leave out (not multiples of any of their
    micro-batches x DP), said with the settings that would take them in: the fastest layout may be among them."""
    rampup = replace(train, rampup=replace(train.rampup, start=0)) if train.rampup.start else None
    validation = replace(train, eval_interval=0) if train.eval_interval else None
    both = replace(rampup, eval_interval=0) if rampup and validation else None
    ramp_up_said = "the ramp-up's batches are not all multiples"
    eval_said = f"train.eval_samples={train.eval_samples} is no multiple"
    constraints = [
        (rampup, ramp_up_said, "train.rampup.start=0 plans them"),  # {}: the train.eval_samples that does
        (validation, eval_said, "{} plans them"),
        (both, f"{ramp_up_said}, and {eval_said}", "train.rampup.start=0 and {} plan them"),
    ]
    said = {plan.candidate.layout for plan in planned}
    lines = []
    for freed, what, fix in constraints:
        if freed is None:
            continue
        found = list(candidates(model, freed, gpus, hardware.gpus_per_node, micro_batches, zero_stage=1))
        if left := sorted({candidate.layout for candidate in found} - said, key=lambda layout: (layout.tp, layout.pp)):
            names = ", ".join(f"TP{layout.tp} x PP{layout.pp} x DP{layout.dp}" for layout in left)
            fix = fix.format(_eval_samples_for([c for c in found if c.layout in left], train.eval_samples))
            lines.append(f"left out, as {what} of their micro-batch x DP: {names} ({fix})")
            said |= set(left)
    return lines


def _eval_samples_for(found: list[Candidate], eval_samples: int) -> str:
    """The setting that lets each layout of `found` validate at its smallest micro-batch planned: the least multiple
    of their micro-batch x DP from train.eval_samples up."""
    smallest: dict[ParallelLayout, int] = {}
    for candidate in found:
        smallest[candidate.layout] = min(smallest.get(candidate.layout, candidate.micro_batch), candidate.micro_batch)
    step = math.lcm(*(micro_batch * layout.dp for layout, micro_batch in smallest.items()))
    return f"train.eval_samples={-(-eval_samples // step) * step}"


def show_plan(job: PlanJob, json: bool = False) -> None:
    hardware = Hardware.of(job.cluster)
    check_tensor_parallel(job.parallel.tp, hardware)
    model = job.model if job.model.vocab_size else replace(job.model, vocab_size=job.tokenizer.vocab_size)
    gpus = job.cluster.nodes * hardware.gpus_per_node
    micro_batches = sorted({*job.plan.micro_batches, job.train.micro_batch})
    plans = plan_layouts(model, job.train, hardware, gpus, micro_batches, job.parallel.zero_stage)
    if not plans:
        raise ValueError(
            f"no layout of {model.name} on {gpus} GPUs divides train.global_batch={job.train.global_batch} (and its "
            f"ramp-up) with micro-batches {micro_batches}: change the batch, plan.micro_batches or cluster.nodes"
        )
    if json:
        best, (_, configured) = recommended(plans), _configured(job, model, hardware, gpus, plans)
        records = [{**plan.record(), "recommended": plan is best, "configured": plan == configured} for plan in plans]
        print(dumps(records, indent=1))
        return
    train = job.train
    print(
        f"{model.name}: {size_text(parameter_count(model))} parameters, vocabulary {model.vocab_size:,}, global "
        f"batch {train.global_batch} x {model.seq_length} tokens, {train.precision.value}; on {gpus} GPUs of "
        f"{hardware.name} ({plural(job.cluster.nodes, 'node')} x {hardware.gpus_per_node}, "
        f"{hardware.gpu_memory_gib:g} GiB and {hardware.peak(train.precision):g} TFLOP/s {train.precision.value} each)"
    )
    if note := calibration_note(hardware):
        print(note)
    layouts = best_per_layout(plans)
    fitting = sum(plan.fits for plan in plans)
    print(
        f"{len(plans)} valid configurations in {len(layouts)} layouts, {fitting} fit; the best of each layout "
        "(seconds a step: compute, pipeline bubble, communication):"
    )
    print(HEADER)
    for rank, plan in enumerate(layouts[: job.plan.top], 1):
        print(_row(rank, plan))
    if not all(plan.trainable for plan in layouts[: job.plan.top]):
        print(f"{UNTRAINABLE} its last stage would hold the output embedding alone, which corolla train refuses")
    left_out = _left_out_by_batches(model, train, gpus, hardware, micro_batches, layouts)
    for line in left_out:
        print(line)
    if best := recommended(plans):
        print(f"recommended: {best.overrides()}  ({_summary(best, hardware)})")
    elif plans[0].fits:
        also = ", or take in the layouts left out (above)," if left_out else ""
        print(
            "only layouts that leave a pipeline stage with the output embedding alone are valid and fit in "
            f"{hardware.gpu_memory_gib:g} GiB a GPU, and corolla train refuses those: change cluster.nodes or "
            f"train.global_batch{also} for a layout it trains"
        )
    else:
        print(f"nothing fits in {hardware.gpu_memory_gib:g} GiB a GPU: add nodes (cluster.nodes)")
    configured, configured_plan = _configured(job, model, hardware, gpus, plans)
    print(configured)
    timed = [(name, plan) for name, plan in (("recommended", best), ("configured", configured_plan)) if plan]
    if timed:
        times = [f"~{training_days(train, plan.time.total):.1f} days {name}" for name, plan in timed]
        print(f"{steps_text(model, train)}: {', '.join(times)}")
    print("estimates: launch/plan/memory.py and launch/plan/step_time.py, checked by benchmarks/plan_vs_published.py")


def _more_gpus(cluster: ClusterConfig, layout: ParallelLayout) -> str:
    """How a job gets more GPUs: more nodes on Slurm; here, where the layout's ranks are the world (cluster.nodes is
    Slurm's alone), more of the machine's GPUs, or a cluster once it uses them all."""
    if cluster.scheduler == Scheduler.slurm:
        return "add nodes (cluster.nodes)"
    if layout.world_size < cluster.gpus_per_node:
        return f"train on more of this machine's {cluster.gpus_per_node} GPUs (parallel.tp x pp x dp ranks)"
    return (
        f"train on more GPUs than this machine's {cluster.gpus_per_node}: on a Slurm cluster's nodes (corolla submit "
        "cluster=NAME cluster.nodes=N)"
    )


def check_memory(job: TrainJob, layout: ParallelLayout) -> float | None:
    """On a GPU cluster that gives its GPU memory, the estimated GiB a GPU of the layout, which must fit: one that
    does not is refused, with the estimate and the nearest layout that fits on the same GPUs, as overrides to paste.
    None on a cluster without those figures."""
    cluster, train = job.cluster, job.train
    if not cluster.gpus_per_node or not cluster.gpu_memory_gib:
        return None
    hardware = Hardware.of(cluster)
    check_tensor_parallel(layout.tp, hardware)
    candidate = Candidate.of(layout, train, job.parallel)
    plan = evaluate(job.model, candidate, hardware)
    if plan.fits:
        return plan.memory_gib
    estimate = (
        f"{job.model.name} with {describe(candidate)} needs ~{plan.memory_gib:.1f} GiB a GPU "
        f"({memory_parts(plan)}), more than the {hardware.gpu_memory_gib:g} GiB of {cluster.name}'s GPUs"
    )
    micro_batches = sorted({*PLANNED_MICRO_BATCHES, train.micro_batch})
    plans = plan_layouts(job.model, train, hardware, layout.world_size, micro_batches, job.parallel.zero_stage)
    nearest = nearest_fitting(plans, candidate)
    if nearest is None:
        raise ValueError(f"{estimate}, and no layout of {layout.world_size} GPUs fits: {_more_gpus(cluster, layout)}")
    raise ValueError(
        f"{estimate}; the nearest layout that fits: {nearest.overrides()} (~{nearest.memory_gib:.1f} GiB, "
        f"~{nearest.time.total:.0f} s a step; `corolla plan` ranks them all)"
    )


def checkpoint_bytes(model: ModelConfig, layout: ParallelLayout) -> int:
    """What a checkpoint of the layout holds: each TP rank's parameters of each stage (the last stage's tied copy of
    the embedding, the vocabulary padded for TP and the LayerNorms each TP rank keeps included), once."""
    stages = pipeline_stages(model.num_layers, layout.pp, micro_batches=1)
    parameters = layout.tp * sum(stage_parameters(model, stage, layout.tp) for stage in stages)
    return CHECKPOINT_BYTES_PER_PARAMETER * parameters


def _step_and_checkpoint(job: TrainJob, layouts: list[ParallelLayout]) -> tuple[float, int, float] | None:
    """On a Slurm cluster whose GPUs' figures give a step's time: the slowest step of `layouts` (one for each node
    count the job may get), the largest checkpoint's bytes, and its seconds to save or load at
    cluster.filesystem_gbps (0 where not given). None elsewhere."""
    cluster = job.cluster
    if cluster.scheduler != Scheduler.slurm or not cluster.gpus_per_node:
        return None
    try:
        hardware = Hardware.of(cluster)
    except ValueError:  # figures unknown: no step time to count
        return None
    step = max(
        evaluate(job.model, Candidate.of(layout, job.train, job.parallel), hardware).time.total for layout in layouts
    )
    size = max(checkpoint_bytes(job.model, layout) for layout in layouts)
    return step, size, size / (cluster.filesystem_gbps * 1e9) if cluster.filesystem_gbps else 0.0


def check_time_to_train(job: TrainJob, layouts: list[ParallelLayout]) -> None:
    """A one-line ValueError where a job's time before Slurm's warning cannot hold loading a checkpoint and a step:
    no job would get past its first step, and each clean stop is requeued, for ever."""
    if (timing := _step_and_checkpoint(job, layouts)) is None:
        return
    step, _, load = timing
    cluster = job.cluster
    before_warning = cluster.time_limit_min * 60 - cluster.signal_delay_s
    if before_warning >= step + load:
        return
    loading = f" and loading its checkpoint (~{load:.0f} s)" if load else ""
    elastic = len(layouts) > 1
    slowest, fewer = (" on the node counts it may get", ", or raise cluster.min_nodes") if elastic else ("", "")
    raise ValueError(
        f"cluster.time_limit_min={cluster.time_limit_min} leaves a job {before_warning} s before Slurm's warning "
        f"(cluster.signal_delay_s={cluster.signal_delay_s}), less than a step (~{step:.0f} s{slowest}){loading}: no "
        f"job would train a step; raise cluster.time_limit_min or lower cluster.signal_delay_s{fewer}"
    )


def signal_shortfall(job: TrainJob, layouts: list[ParallelLayout]) -> str | None:
    """A warning when cluster.signal_delay_s leaves the ranks less than the step under way and the checkpoint's save
    (at cluster.filesystem_gbps, where given) before the time limit kills them, and each job that reaches it redoes
    the steps since its last checkpoint (on a Slurm cluster whose GPUs' figures give a step's time)."""
    if (timing := _step_and_checkpoint(job, layouts)) is None:
        return None
    step, size, save = timing
    cluster = job.cluster
    if cluster.stop_window_s >= step + save:
        return None
    size_tb, gbps = size / 1e12, cluster.filesystem_gbps
    saving = (
        f"its checkpoint's save ({size_tb:.2f} TB at cluster.filesystem_gbps={gbps:g}: ~{save:.0f} s)"
        if save
        else f"its checkpoint's save ({size_tb:.2f} TB; set cluster.filesystem_gbps to count its time)"
    )
    enough = 60 * math.ceil((1.5 * (step + save) + (0 if cluster.chained else REQUEUE_MARGIN_S)) / 60)
    return (
        f"corolla: warning: cluster.signal_delay_s={cluster.signal_delay_s} leaves the ranks less than a step "
        f"(~{step:.0f} s) and {saving} before the time limit kills them: each job that reaches it would redo the "
        f"steps since its last checkpoint (up to train.checkpoint_interval={job.train.checkpoint_interval}); set "
        f"cluster.signal_delay_s={enough} or more"
    )
