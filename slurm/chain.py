"""`corolla pipeline cluster=NAME`: the main job's stages (launch/jobs/stages.py) as a chain of Slurm jobs, through
submitit, each starting when the one before has succeeded (`afterok`; Slurm cancels what follows a failure):

    tokenizer (one node, all its cores) → evaluate → encode (a job array, a task per group of corpus files, at most
    cluster.array_parallelism at once) → prepare (manifest, plan, run directory, MLflow run) → train (the job
    `corolla submit` makes, with its requeues; an elastic run's chain of jobs) → export (after an elastic run's first
    training job, whatever its end, and then after the run's newest job, until the run has finished; so too after a
    job that gave way to one without its unfit nodes)

Submission returns once every job is queued. Stages whose output is current are not submitted, nor encoding tasks
whose files are all encoded, so submitting again resumes the chain where it stopped. A data stage's job is requeued
after a node failure; on USR2 (the time limit's warning, or preemption) submitit requeues it as this module's
`checkpoint` asks. Either way it starts again and skips what it had finished: an encoding task, the files it had
encoded. A stage that fails writes why, in one line, to RUN_DIR/stage-errors/, where `corolla status` finds it.

Each submission is recorded in RUN_DIR/chain.json: its stages and their jobs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import submitit

from launch.config.cluster import ClusterConfig
from launch.config.job_file import job_settings, job_yaml, read_job
from launch.config.sbatch import sbatch_options
from launch.config.schemas import MainJob
from launch.jobs.monitor import line, local_time
from launch.rundir.files import CHAIN_FILE, JOB_FILE, PIPELINE_JOB, STAGE_ERRORS, STOP_FILE, SUBMITIT_DIR, TRAIN_DIR
from launch.rundir.run_record import keep_private, masked
from slurm.backend import job_logs, logs_by_rank, print_tails
from slurm.client import ENDED_STATES, SlurmState, slurm_state
from slurm.commands import SlurmError, request, requeue, run_slurm
from slurm.executor import (
    executor_parameters,
    job_name,
    make_executor,
    run_executor,
    srun_arguments,
    submit_elastic,
    submit_job,
    submitting,
    waiting_for,
)
from slurm.jobs import excluded_nodes, live_jobs, written_elsewhere
from tokenizer.files import first_line, write_atomically


class Stage(StrEnum):
    """The pipeline's stages, in chain order."""

    tokenizer = "tokenizer"
    evaluate = "evaluate"
    encode = "encode"
    prepare = "prepare"
    train = "train"  # its job writes in PIPELINE_DIR/train (stage_dir)
    export = "export"


def stage_dir(run_dir: Path, stage: str) -> Path:
    """Where the stage's job writes (its submitit folder): the training run's directory for the train stage, the
    pipeline's for the others."""
    return run_dir / TRAIN_DIR if stage == Stage.train else run_dir


# Slurm sends the signal before the time limit up to a minute off; the task began some seconds after its job.
SIGNAL_SLACK_S = 120


@dataclass
class StageTask:
    """What a data stage's job runs (the train stage runs slurm.task.TrainingTask)."""

    run_dir: str
    stage: str
    files: tuple[str, ...] = ()  # encode: the corpus files (their paths inside the corpus) of this array task
    group: int = 0  # encode: which group of files

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.group}" if self.stage == Stage.encode else self.stage

    def __call__(self) -> None:
        from launch import compat

        compat.requeue_with(requeue)
        run_dir = Path(self.run_dir)
        error_file = run_dir / STAGE_ERRORS / f"{self.name}.txt"
        error_file.unlink(missing_ok=True)
        self._given_up, self._began = "", None  # a requeued job's task carries the last job's
        try:
            job = read_job(run_dir / PIPELINE_JOB, MainJob)
            self._began = (time.time(), self._kept(job))
            self._run(job)
        except Exception as error:
            error_file.parent.mkdir(exist_ok=True)
            error_file.write_text((self._given_up or first_line(error)) + "\n")
            raise

    def _run(self, job: MainJob) -> None:
        from launch.jobs import stages  # the stages' libraries: only in the stage's job

        if self.stage == Stage.tokenizer:
            stages.train_tokenizer_stage(job)
        elif self.stage == Stage.evaluate:
            stages.evaluate_stage(job)
        elif self.stage == Stage.encode:
            stages.encode_stage(job, list(self.files))
        elif self.stage == Stage.prepare:
            stages.prepare_training_stage(job)
        elif self.stage == Stage.export:
            self._export(job)
        else:
            raise ValueError(f"{self.stage} is not a data stage of the pipeline")

    def _export(self, job: MainJob) -> None:
        """The export waits for the training job it was queued behind. When the run went on in a job queued behind
        that one (an elastic run's next job, or one that took over from a job on unfit nodes), the export queues
        itself again, behind the run's newest job. A run that ended short of its steps with no job left (the STOP
        file ends a job as COMPLETED) is not exported as if it were done."""
        from launch.jobs import stages

        run_dir = Path(self.run_dir)
        if not stages.training_is_finished(job):
            live = live_jobs(run_dir / TRAIN_DIR)
            if live:
                self._follow(job, live[0].job_id)
                return
            raise ValueError(
                f"the training ended at step {stages.trained_steps(job)} of train.steps={job.train.steps} with no job "
                f"of it left: there is no final model to export (see `corolla status {run_dir}`)"
            )
        stages.export_stage(job)

    def _follow(self, job: MainJob, training_job: str) -> None:
        run_dir = Path(self.run_dir)
        executor = stage_executor(job.cluster, run_dir, self.stage, f"afterany:{training_job}")
        with submitting():
            follower = executor.submit(self).job_id
        _replace_job(run_dir, self.stage, follower)
        print(f"the training goes on in Slurm job {training_job}: the export follows it, as job {follower}")

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission | None:
        """submitit's question on USR2: what to requeue. The same task: it skips what it had finished. None (the job
        fails, saying why) where the signal came as the time limit neared and the task finished nothing a restart
        keeps since it began: it would run so again and again, the stages after it pending for ever."""
        job = read_job(Path(self.run_dir) / PIPELINE_JOB, MainJob)
        began, kept = getattr(self, "_began", None) or (time.time(), 0)  # the signal may come before the task began
        limit = job.cluster.time_limit_min * 60 - job.cluster.signal_delay_s - SIGNAL_SLACK_S
        if time.time() - began < limit or self._kept(job) > kept:
            return submitit.helpers.DelayedSubmission(self)
        encoding = self.stage == Stage.encode
        what = "any of its corpus files" if encoding else "the stage, which starts again from nothing"
        self._given_up = (
            f"the {self.stage} stage met cluster.time_limit_min={job.cluster.time_limit_min} before it finished "
            f"{what}: raise cluster.time_limit_min" + (" or split the largest corpus files" if encoding else "")
        )
        return None

    def _kept(self, job: MainJob) -> int:
        """What a restart of this task would not do again: an encoding task's corpus files encoded."""
        from launch.jobs import stages

        return stages.encoded_files(job, list(self.files)) if self.stage == Stage.encode else 0


@dataclass(frozen=True)
class StageJob:
    stage: str
    job_id: str
    tasks: int = 1  # an array's

    @property
    def label(self) -> str:
        return f"job {self.job_id}" + (f" ({self.tasks} tasks)" if self.tasks > 1 else "")


def chain_jobs(run_dir: Path) -> list[StageJob]:
    """The latest submission's stage jobs, in chain order; empty when the run was never submitted as a chain."""
    submissions = _submissions(run_dir)
    return [StageJob(**stage) for stage in submissions[-1]["jobs"]] if submissions else []


def _submissions(run_dir: Path) -> list[dict]:
    """Every submission chain.json records, the latest last (none when the run was never submitted as a chain); a
    one-line ValueError when the latest is not one corolla wrote."""
    path = run_dir / CHAIN_FILE
    if not path.is_file():
        return []
    try:
        submissions = json.loads(path.read_text())
        if _is_submission(submissions[-1]):
            return submissions
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        pass
    raise ValueError(f"{path} is not a chain record corolla wrote: remove it and submit the pipeline again")


def _is_submission(record: dict) -> bool:
    for stage in record["jobs"]:
        StageJob(**stage)  # a TypeError for a stage of another shape
    return isinstance(record["time"], int | float) and isinstance(record.get("skipped", []), list)


def _record(run_dir: Path, jobs: list[StageJob], skipped: list[str]) -> None:
    submission = {"time": time.time(), "jobs": [job.__dict__ for job in jobs], "skipped": skipped}
    write_atomically(run_dir / CHAIN_FILE, json.dumps([*_submissions(run_dir), submission], indent=1) + "\n")


def _replace_job(run_dir: Path, stage: str, job_id: str) -> None:
    """The stage's job in the latest submission is now `job_id` (an elastic run's export, following its training)."""
    submissions = _submissions(run_dir)
    for stage_job in submissions[-1]["jobs"]:
        if stage_job["stage"] == stage:
            stage_job["job_id"] = job_id
    write_atomically(run_dir / CHAIN_FILE, json.dumps(submissions, indent=1) + "\n")


def stage_executor(cluster: ClusterConfig, run_dir: Path, stage: str, dependency: str | None) -> submitit.SlurmExecutor:
    """A data stage's job: one task on one node, all its cores, no GPU; on cluster.cpu_partition where there is one
    (the GPU partition's QOS, constraint, exclusivity and cluster.sbatch then stay with the training job, and
    cluster.cpu_sbatch is the stage's), charged to cluster.cpu_account where given."""
    executor = run_executor(run_dir)
    parameters = executor_parameters(cluster, job_name(run_dir, stage))
    cores = cluster.node_cores
    parameters.update(nodes=1, ntasks_per_node=1, cpus_per_task=cores, srun_args=srun_arguments(cores))
    parameters.pop("gpus_per_node", None)
    if cluster.cpu_partition:
        parameters["partition"] = cluster.cpu_partition
        for key in ("qos", "constraint", "exclusive"):
            parameters.pop(key, None)
        options = sbatch_options(cluster.cpu_sbatch, "cluster.cpu_sbatch")
    else:
        options = sbatch_options(cluster.sbatch, "cluster.sbatch")
    if cluster.cpu_account:
        parameters["account"] = cluster.cpu_account
    parameters["additional_parameters"] = {**options, "requeue": True}
    executor.update_parameters(**parameters)
    return waiting_for(executor, dependency)


@dataclass(frozen=True)
class ChainPlan:
    """What a submission runs: the stages whose output is not current, and which encoding groups."""

    stages: list[str]
    groups: dict[int, tuple[str, ...]]  # encode: group → its corpus files

    @property
    def skipped(self) -> list[str]:
        return [stage for stage in Stage if stage not in self.stages]


def plan_chain(job: MainJob) -> ChainPlan:
    from launch.jobs import stages

    groups = stages.encoding_groups(job)
    tokenizer = not stages.tokenizer_is_current(job)
    todo = stages.groups_to_encode(job, groups)
    train = not stages.training_is_finished(job)
    wanted = {
        Stage.tokenizer: tokenizer,
        Stage.evaluate: tokenizer or not stages.evaluation_is_current(job),
        Stage.encode: bool(todo),
        Stage.prepare: train or bool(todo),
        Stage.train: train,
        Stage.export: train or not stages.export_is_current(job),
    }
    files = {index: tuple(source.label for source in groups[index]) for index in todo}
    return ChainPlan([stage for stage in Stage if wanted[stage]], files)


def submit_pipeline(job: MainJob, dry_run: bool = False) -> None:
    from launch.jobs.prepare import check_launch
    from launch.jobs.stages import PipelinePaths, check_inputs, checkable_training_job, data_is_current, one_pipeline
    from launch.rundir.lock import check_unheld
    from slurm.submit import check_cpu_partition, check_partition, live_job_id

    cluster, paths = job.cluster, PipelinePaths.of(job)
    check_inputs(job)
    plan = plan_chain(job)
    # A bad training job fails now, not after hours of data preparation.
    check_launch(checkable_training_job(job, data_is_current(job, list(plan.groups))), live_job_id, quiet=False)
    if not plan.stages:
        print(
            f"{paths.run_dir}: every stage is current (trained to step {job.train.steps} and exported): nothing to do"
        )
        return
    if dry_run:
        _print_scripts(job, plan)
        return
    check_partition(cluster, excluded_nodes(cluster.exclude, paths.train))
    if cluster.cpu_partition and set(plan.stages) != {Stage.train}:
        check_cpu_partition(cluster)
    with one_pipeline(paths.run_dir):
        check_no_live_chain(paths.run_dir)
        check_unheld(paths.train, live_job_id)
        keep_private(paths.run_dir, job_settings(job))
        write_atomically(paths.run_dir / PIPELINE_JOB, job_yaml(job))
        for error in (paths.run_dir / STAGE_ERRORS).glob("*.txt"):
            error.unlink()
        jobs = _submit(job, plan)
        _record(paths.run_dir, jobs, plan.skipped)
    skipped = f"; current, not submitted: {', '.join(plan.skipped)}" if plan.skipped else ""
    print(f"submitted the pipeline to {cluster.name}: {', '.join(f'{j.stage} {j.label}' for j in jobs)}{skipped}")
    print(f"  follow it: corolla status {paths.run_dir}  |  corolla logs {paths.run_dir} stage=STAGE")


def _executors(job: MainJob, plan: ChainPlan, dependency_of) -> Iterator[tuple[str, submitit.SlurmExecutor]]:
    """Each stage's executor, made when the one before has been submitted: `dependency_of(previous stage)` may name
    its job then."""
    run_dir, cluster, previous, training_waits = Path(job.run_dir), job.cluster, None, None
    for stage in plan.stages:
        dependency = dependency_of(previous)
        if previous == Stage.train and cluster.chained and training_waits:
            dependency += f",{training_waits}"  # the first training job's afterany: cancelled, it is satisfied
        if stage == Stage.train:
            executor, training_waits = make_executor(cluster, stage_dir(run_dir, stage), dependency), dependency
        else:
            executor = stage_executor(cluster, run_dir, stage, dependency)
        if stage == Stage.encode:
            executor.update_parameters(array_parallelism=cluster.array_parallelism)
        yield stage, executor
        previous = stage


def _dependency_kind(job: MainJob, previous: str) -> str:
    """afterok; but an elastic run's training may go on in later jobs, which its first job's end starts: the export
    waits for that end, whatever it was, and then for the run's newest job if there is one (StageTask)."""
    return "afterany" if previous == Stage.train and job.cluster.chained else "afterok"


def _print_scripts(job: MainJob, plan: ChainPlan) -> None:
    from launch import compat

    print(
        f"dry run: the pipeline is valid; {len(plan.stages)} jobs, not submitted"
        + (f" (current, skipped: {', '.join(plan.skipped)})" if plan.skipped else "")
    )
    dependency_of = lambda before: before and f"{_dependency_kind(job, before)}:<{before} job>"  # noqa: E731
    for stage, executor in _executors(job, plan, dependency_of):
        tasks = len(plan.groups) if stage == Stage.encode else 1
        each = f"corpus files of about encode_task_mb={job.encode_task_mb:g} MB a task, or one larger file"
        where = f", {tasks} tasks ({each})" if tasks > 1 else ""
        print(f"\n# {stage}{where}\n{masked(compat.sbatch_script(executor, tasks))}")


def _submit(job: MainJob, plan: ChainPlan) -> list[StageJob]:
    submitted: list[StageJob] = []

    def dependency_of(previous: str | None) -> str | None:
        return f"{_dependency_kind(job, previous)}:{submitted[-1].job_id}" if previous else None

    for stage, executor in _executors(job, plan, dependency_of):
        try:
            submitted.append(_submit_stage(job, plan, stage, executor))
        except BaseException as error:
            # Half a chain would run stages nothing follows; the chain is not recorded, so name what stays queued.
            left = [before.job_id for before in reversed(submitted) if not request("scancel", before.job_id)]
            if left and isinstance(error, Exception):
                raise RuntimeError(
                    f"{first_line(error)}; and the stages submitted before it could not be cancelled: "
                    f"`scancel {' '.join(left)}` once Slurm answers"
                ) from None
            raise
    return submitted


def _submit_stage(job: MainJob, plan: ChainPlan, stage: str, executor: submitit.SlurmExecutor) -> StageJob:
    """The stage's job: the training's (an elastic one's first, the next queued behind it), the encoding's array of
    a task per group of corpus files, or another stage's."""
    from slurm.task import TrainingTask

    run_dir = Path(job.run_dir).resolve()
    if stage == Stage.train:
        train_dir = stage_dir(run_dir, stage)
        task = TrainingTask(str(train_dir))
        if job.cluster.chained:
            return StageJob(stage, submit_elastic(executor, job.cluster, train_dir, task)[0])
        return StageJob(stage, submit_job(executor, task, train_dir))
    with submitting():
        if stage != Stage.encode:
            return StageJob(stage, executor.submit(StageTask(str(run_dir), stage)).job_id)
        with executor.batch():
            tasks = [
                executor.submit(StageTask(str(run_dir), stage, files, group)) for group, files in plan.groups.items()
            ]
    return StageJob(stage, tasks[0].job_id.split("_")[0], len(tasks))


def check_no_live_chain(run_dir: Path) -> None:
    for stage_job in chain_jobs(run_dir):
        state = stage_state(stage_job)
        if state.live:
            raise ValueError(
                f"{run_dir} has its {stage_job.stage} stage's Slurm job {stage_job.job_id} {state.state} already: let "
                f"the chain run (corolla status {run_dir}), or `corolla cancel {run_dir}` first"
            )


@dataclass(frozen=True)
class StageState:
    state: str  # one word: COMPLETED, RUNNING, FAILED...; an array's worst
    live: bool
    summary: str


def tasks_in(job_field: str) -> int:
    """How many array tasks a sacct JobID names: `14_3` one, `14_[0-3,7%2]` (pending tasks, on one line) five."""
    ids = job_field.partition("_")[2]
    if not ids.startswith("["):
        return 1
    count = 0
    for part in ids.strip("[]").split("%")[0].split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def array_states(job_id: str) -> list[str]:
    """The state of each task of an array job, from sacct."""
    output = run_slurm("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State")
    states = []
    for record in output.strip().splitlines():
        task, _, state = record.partition("|")
        states += [state.split()[0]] * tasks_in(task)
    return states


def stage_state(stage_job: StageJob, asked: SlurmState | None = None) -> StageState:
    """What Slurm says of a stage; `asked`: its one-task job's state, if asked already (asked_of_slurm)."""
    if stage_job.tasks == 1:
        return _one_task_state(asked or slurm_state(stage_job.job_id))
    return _array_state(stage_job.job_id)


def asked_of_slurm(run_dir: Path) -> list[tuple[StageJob, SlurmState | None]]:
    """The latest submission's stage jobs, each with _asked's answer: Slurm asked once a job."""
    return [(job, _asked(job)) for job in chain_jobs(run_dir)]


def _asked(stage_job: StageJob) -> SlurmState | None:
    """What Slurm says of a one-task stage's job, which also says where it writes; None for an array's, asked of sacct
    as stage_state needs it."""
    return slurm_state(stage_job.job_id) if stage_job.tasks == 1 else None


def _one_task_state(state: SlurmState) -> StageState:
    """A one-task stage's state, from what Slurm says of its job."""
    if not state.live and "started None" in state.summary:  # sacct's word for a job cancelled while pending
        return StageState(state.state.split()[0], False, f"{state.state}, never started")
    return StageState(state.state.split()[0], state.live, f"{state.state}, {state.summary}")


def _array_state(job_id: str) -> StageState:
    """An array stage's state: its worst task's, a failed one before a live one."""
    states = array_states(job_id)
    if not states:  # accounting has not recorded the array yet
        return StageState("PENDING", True, "submitted, not in sacct yet")
    counts = {state: states.count(state) for state in dict.fromkeys(states)}
    summary = ", ".join(f"{count} {state}" for state, count in counts.items())
    failed = [state for state in counts if state in ENDED_STATES and state != "COMPLETED"]
    live = [state for state in counts if state not in ENDED_STATES]
    return StageState((failed + live + ["COMPLETED"])[0], bool(live), summary)


def _why(run_dir: Path, stage_job: StageJob, state: StageState) -> str:
    errors = sorted((run_dir / STAGE_ERRORS).glob(f"{stage_job.stage}*.txt"))
    if errors:
        return errors[0].read_text().strip()
    if stage_job.stage == Stage.train:
        return f"{state.state}: see the training's lines below and `corolla logs {run_dir / TRAIN_DIR}`"
    return f"Slurm says {state.summary}"


def chain_lines(run_dir: Path) -> list[str]:
    """The latest submission's stages, what Slurm says of each, and the first that failed, in one line."""
    latest = _submissions(run_dir)[-1]
    skipped = f"; current, not submitted: {', '.join(latest['skipped'])}" if latest.get("skipped") else ""
    lines: list[str] = []
    failure, elsewhere = None, None
    for stage_job in chain_jobs(run_dir):
        try:  # Slurm asked once a job: a one-task stage's answer also says where its job writes
            asked = _asked(stage_job)
            state = stage_state(stage_job, asked)
        except SlurmError as error:
            lines.append(line(stage_job.stage, f"{stage_job.label}: cannot ask Slurm ({error}): {error.hint}"))
            continue
        if elsewhere is None and asked is not None:
            elsewhere = _written_elsewhere(run_dir, stage_job, asked)
        lines.append(line(stage_job.stage, f"{stage_job.label}: {state.summary}"))
        if failure is None and not state.live and state.state != "COMPLETED":
            why = _why(run_dir, stage_job, state)
            failure = line(
                "failed",
                f"stage {stage_job.stage} ({stage_job.label}): {why}; the stages after it do not run: fix it and "
                "submit the pipeline again, which resumes from there",
            )
    header = [line("pipeline", f"{run_dir}, submitted {local_time(latest['time'])}{skipped}")]
    if elsewhere is not None:
        header.append(line("copy", f"these are the jobs of the pipeline in {elsewhere}, not of this directory"))
    return header + lines + ([failure] if failure else [])


def show_stage_logs(run_dir: Path, stage: str, lines: int, rank: int = -1) -> None:
    jobs = {stage_job.stage: stage_job for stage_job in chain_jobs(run_dir)}
    if stage and stage not in jobs:
        raise ValueError(f"stage={stage}: the latest submission of {run_dir} ran {', '.join(jobs)}: choose one")
    chosen = (
        jobs[stage]
        if stage
        else next((job for job in reversed(list(jobs.values())) if _logs(run_dir, job)), next(iter(jobs.values())))
    )
    if rank != -1 and chosen.stage != Stage.train:
        raise ValueError(
            f"rank={rank}: the {chosen.stage} stage has no ranks; the train stage's are shown with stage=train rank=N"
        )
    paths = _logs(run_dir, chosen)
    if rank != -1 and paths:
        by_rank = logs_by_rank(run_dir / TRAIN_DIR / SUBMITIT_DIR, chosen.job_id)
        if rank not in by_rank:
            ranks = ", ".join(str(number) for number in by_rank)
            raise ValueError(f"rank={rank}: the train stage's {chosen.label} has logs of ranks {ranks}: choose one")
        paths = by_rank[rank]
    if not paths:
        print(f"the {chosen.stage} stage's Slurm {chosen.label} has no logs yet: has it started? (corolla status)")
        return
    print_tails(paths, lines)


def _logs(run_dir: Path, stage_job: StageJob) -> list[Path]:
    return job_logs(stage_dir(run_dir, stage_job.stage) / SUBMITIT_DIR, stage_job.job_id)


def _chain_elsewhere(
    run_dir: Path, asked: list[tuple[StageJob, SlurmState | None]]
) -> tuple[StageJob, SlurmState, Path] | None:
    """The first stage job, with what Slurm says of it, that writes to another pipeline directory, and that directory:
    `run_dir` is a copy of it (or was moved from there), its chain.json that run's; None when the jobs are this one's,
    or Slurm no longer says where they write. Told by the stages of one task, whose output Slurm names."""
    for stage_job, state in asked:
        if state is not None and (other := _written_elsewhere(run_dir, stage_job, state)) is not None:
            return stage_job, state, other
    return None


def _written_elsewhere(run_dir: Path, stage_job: StageJob, state: SlurmState) -> Path | None:
    """The pipeline directory the one-task stage's job writes to, where it is not `run_dir` (None where Slurm no
    longer says)."""
    other = written_elsewhere(stage_dir(run_dir, stage_job.stage), state)
    return other.parent if other is not None and stage_job.stage == Stage.train else other


def _check_own_chain(run_dir: Path, asked: list[tuple[StageJob, SlurmState | None]]) -> None:
    """A ValueError when the chain's jobs are another pipeline directory's (_chain_elsewhere)."""
    if (elsewhere := _chain_elsewhere(run_dir, asked)) is not None:
        stage_job, state, other = elsewhere
        raise ValueError(
            f"the {stage_job.stage} stage's Slurm job {stage_job.job_id} ({state.state}) runs the pipeline in "
            f"{other}, not {run_dir} (a copy of it, or moved from there): nothing cancelled; cancel it there "
            f"(`corolla cancel {other}`)"
        )


def cancel_chain(run_dir: Path) -> None:
    """Every job of the latest submission that is queued or running, and the training run's own (an elastic run's
    next job), in one scancel: a job waiting on another that ends would start. The training's STOP file goes first,
    so that its job ends rather than saving and requeueing itself."""
    train_dir = run_dir / TRAIN_DIR
    try:
        asked = asked_of_slurm(run_dir)
    except SlurmError as error:
        raise RuntimeError(f"cannot ask Slurm about the chain's jobs ({error}): {error.hint}") from None
    _check_own_chain(run_dir, asked)
    try:
        live_stages = [job for job, state in asked if stage_state(job, state).live]
        live = {job.job_id: f"the {job.stage} stage's Slurm {job.label}" for job in live_stages}
        training = live_jobs(train_dir)
        for state in training:
            live.setdefault(state.job_id, f"the training's next Slurm job {state.job_id}")
        training_live = training or any(job.stage == Stage.train for job in live_stages)
        if training_live and (train_dir / JOB_FILE).is_file():  # only then: a relaunch would find it, and be told so
            (train_dir / STOP_FILE).touch()
        if live:
            run_slurm("scancel", *live)
    except SlurmError as error:
        raise RuntimeError(f"cannot cancel the chain's jobs ({error}): {error.hint}") from None
    for what in live.values():
        print(f"cancelled {what}")
    if not live:
        print(f"no stage of {run_dir} is queued or running: nothing to cancel")
