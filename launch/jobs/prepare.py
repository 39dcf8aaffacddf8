"""Everything before a run's first process starts, for both backends: the whole job validated, its data prepared
(launch/data/prepare.py) and planned for every world size it may get (launch/plan/run_plan.py), and its run
directory written (job.yaml, plan.json, the history's launch, the MLflow run). Nothing is written until the job has
passed every check; a dry run writes nothing and builds no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from launch.config.job_file import job_yaml
from launch.config.schemas import TrainJob
from launch.data.prepare import inspect_data, prepare_data
from launch.plan.run_plan import RunPlan, check_layouts, make_plans, write_plans
from launch.rundir import outbox, tracking
from launch.rundir.files import JOB_FILE, RUN_FILE, STOP_FILE
from launch.rundir.history import RunHistory
from launch.rundir.tracking_state import TrackingState, write_state
from tokenizer.train import METADATA_FILE


@dataclass(frozen=True)
class PreparedRun:
    job: TrainJob  # with its token files and the tokenizer's vocabulary filled in
    plans: list[RunPlan]  # the configured node count's first
    run_dir: Path
    tracked: tracking.TrackedRun | None  # None for a dry run

    @property
    def plan(self) -> RunPlan:
        return self.plans[0]


def prepare_run(job: TrainJob, dry_run: bool = False) -> PreparedRun:
    """Validates the job (a one-line ValueError otherwise); unless a dry run, writes its run directory and opens (or
    continues) its MLflow run."""
    run_dir = Path(job.run_dir)
    new_run = not (run_dir / RUN_FILE).is_file()
    if job.tracking.uri and new_run:  # a run already open waits for a server that is away (launch/rundir/outbox.py)
        tracking.check_reachable(job.tracking.uri)
    check_layouts(job)  # before the data, which may take minutes to build
    job, data = inspect_data(job) if dry_run else prepare_data(job)
    plans = make_plans(job, data)
    if dry_run:
        return PreparedRun(job, plans, run_dir, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / STOP_FILE).exists():
        (run_dir / STOP_FILE).unlink()
        print(f"removed {run_dir / STOP_FILE}, which stopped the previous launch")
    (run_dir / JOB_FILE).write_text(job_yaml(job))
    write_plans(run_dir, plans)
    history = RunHistory(run_dir)
    history.record("launch", cluster=job.cluster.name)
    tags = {"layout": plans[0].layout.name, "model": job.model.name, "cluster": job.cluster.name}
    tracked = tracking.open_run(run_dir, job.tracking.experiment, job, tags, job.tracking.uri)
    if new_run:
        write_state(run_dir, TrackingState(sent={}))
    artifacts = [run_dir / JOB_FILE]
    if data.tokenizer_dir and (Path(data.tokenizer_dir) / METADATA_FILE).is_file():
        artifacts.append(Path(data.tokenizer_dir) / METADATA_FILE)
    launches = str(len([event for event in history.events() if event["event"] == "launch"]))
    outbox.update(run_dir, {"corolla.launches": launches}, "RUNNING", artifacts)
    return PreparedRun(job, plans, run_dir, tracked)
