"""What follows a start of a Slurm job, as a pure function of the run's history, how the start ended and the restart
budget: train or not, requeue, leave it to an elastic run's next job, give up, or end."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import submitit
from mlflow.tracking import MlflowClient

from conftest import train_job
from launch.config.cluster import ClusterConfig, Scheduler
from launch.config.compose import compose_job
from launch.config.job_file import job_yaml
from launch.jobs.monitor import describe_event
from launch.rundir import tracking
from launch.rundir.history import BEFORE_TRAINING, Event, RunHistory
from launch.train.stopping import ENDED_EXIT, REFUSED_EXIT
from model.config import ModelConfig
from slurm.chain import StageTask
from slurm.environment import SlurmTask
from slurm.task import (
    JobStart,
    Next,
    after,
    after_failure,
    after_start,
    after_step,
    own_start,
    record_unrecorded_start,
)


def history(*kinds: str) -> list[dict]:
    return [{"event": kind, "time": float(index)} for index, kind in enumerate(kinds)]


@pytest.mark.parametrize(
    ("events", "budget", "expected"),
    [
        (history("launch"), 0, Next.train),
        (history("launch", "start", "stopped"), 0, Next.train),  # a clean stop is no failure
        (history("launch", "start", "start"), 2, Next.train),  # two failures (this start follows the second)
        (history("launch", "start", "start"), 1, Next.give_up),
        (history("launch", "start", "start", "start", "launch", "start"), 1, Next.train),  # a launch starts again
        (history("launch", "start", "finished"), 5, Next.nothing),
        (history("launch", "start", "start", "gave_up"), 5, Next.nothing),
    ],
)
def test_a_start_trains_unless_the_run_ended_or_spent_its_budget(events, budget, expected) -> None:
    assert after_start(events, budget, None) == expected


@pytest.mark.parametrize(
    ("ending", "chained", "kill_switch", "expected"),
    [
        (Event.stopped, False, False, Next.requeue),  # a time limit costs no restart
        (Event.stopped, True, False, Next.next_job),
        (Event.stopped, False, True, Next.end),  # the STOP file: no coming back
        (Event.stopped, True, True, Next.end),
        (Event.finished, False, False, Next.end),
        (Event.finished, True, False, Next.end),
        (Event.unfit, False, False, Next.replaced),
    ],
)
def test_what_follows_a_start_that_ended(ending, chained, kill_switch, expected) -> None:
    assert after(ending, chained, kill_switch) == expected


@pytest.mark.parametrize(
    ("spent", "budget", "chained", "expected"),
    [
        (1, 1, False, Next.requeue),
        (1, 1, True, Next.next_job),
        (1, 0, False, Next.give_up),  # max_restarts=0: the first failure ends it
        (3, 2, True, Next.give_up),
    ],
)
def test_what_follows_a_start_that_failed(spent, budget, chained, expected) -> None:
    assert after_failure(spent, budget, chained) == expected


def test_a_failure_counts_against_the_budget_unless_a_newer_checkpoint_was_saved_first(tmp_path) -> None:
    """The budget was spent over the run's life: a run of months gave up after its eleventh dead node, however far
    it had trained between them. Now failures count in a row from the same checkpoint; the failing start's own
    progress is read from the checkpoints there now."""
    env = {"SLURM_JOB_ID": "41", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1"}
    env |= {"SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "n1"}
    history = RunHistory(tmp_path)
    history.record(Event.launch, cluster="testcluster")
    for restart, step in enumerate((0, 10, 20, 20, 20)):
        history.record(Event.start, slurm_job="41", restart=restart, resumed_from_step=step)
    task = SlurmTask.from_environment({**env, "SLURM_RESTART_COUNT": "4"})
    found = history.events()[:-1]
    (tmp_path / "checkpoints" / "step-00000020").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-00000020" / "COMPLETE").write_text("{}")
    (tmp_path / "checkpoints" / "latest").write_text("step-00000020")
    # The start that saved step 20 failed after it, and three more from it: four since the newest checkpoint.
    assert JobStart(tmp_path, task, found, budget=3, chained=False).spent(history.events()) == 4
    (tmp_path / "checkpoints" / "step-00000030").mkdir()
    (tmp_path / "checkpoints" / "step-00000030" / "COMPLETE").write_text("{}")
    (tmp_path / "checkpoints" / "latest").write_text("step-00000030")
    assert JobStart(tmp_path, task, found, budget=3, chained=False).spent(history.events()) == 1  # it saved step 30
    # Starts that fail before their ranks record them (a node that kills them as they load step 30) each spend one:
    # recorded from step 30, where they would have resumed, they made no progress past the one that saved it.
    spent = []
    for restart in (5, 6, 7):
        unrecorded = SlurmTask.from_environment({**env, "SLURM_RESTART_COUNT": str(restart)})
        start = JobStart(tmp_path, unrecorded, history.events(), budget=3, chained=False)
        spent.append(start.spent(history.events()))
        record_unrecorded_start(tmp_path, unrecorded, 30)
    assert spent == [2, 3, 4]


def test_the_batch_script_counts_a_silent_failure_against_the_history_its_start_found() -> None:
    """After srun, the batch script decides as the start's ranks would have: on the history before the start that
    this job's restart recorded, not counting that start as a failure of its own."""
    env = {"SLURM_JOB_ID": "41", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "8"}
    task = SlurmTask.from_environment({**env, "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]"})
    events = history("launch", "start", "start")
    events[1].update(slurm_job="41", restart=0)
    events[2].update(slurm_job="41", restart=1)
    assert own_start(events, task) == 1  # restart 0 of job 41, which found only the launch
    assert own_start(events, replace(task, restart_count=1)) == 2
    assert own_start(events[:1], task) is None  # it died before it recorded its start


@pytest.mark.parametrize("status", [0, REFUSED_EXIT, *ENDED_EXIT.values()])
def test_the_batch_script_leaves_a_step_that_succeeded_was_refused_or_ended_the_run_alone(status, tmp_path) -> None:
    # Ended the run: diverged, or out of space, where the history may have had no room to say so.
    after_step(tmp_path, status, env={})  # outside a job: it would fail, were it to ask Slurm anything


def test_a_start_that_failed_before_it_trained_is_recorded_and_spends_the_budget(tmp_path, capsys) -> None:
    """Ranks killed as they load a checkpoint (the node's memory), a set-up that raises at every start: no start was
    recorded, so no failure counted, and each restart, which would end so again, was requeued for ever."""
    cluster = ClusterConfig(name="testcluster", scheduler=Scheduler.slurm, tasks_per_node=4, max_restarts=1)
    (tmp_path / "job.yaml").write_text(job_yaml(train_job(ModelConfig(), cluster=cluster)))
    RunHistory(tmp_path).record(Event.launch, cluster="testcluster")
    env = {"SLURM_JOB_ID": "41", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "8"}
    env |= {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]"}
    start = {"slurm_job": "41", "nodes": "n[1-2]", "before_training": True}
    for restart in (0, 1):  # two starts whose failures were recorded so
        RunHistory(tmp_path).record(Event.start, **start, restart=restart)
    # The third dies before it trains too, past the budget of one restart: recorded, and the run gives up.
    after_step(tmp_path, 137, env={**env, "SLURM_RESTART_COUNT": "2"})
    events = RunHistory(tmp_path).events()
    assert [event["event"] for event in events] == ["launch", "start", "start", "start", "gave_up"]
    assert {key: events[3][key] for key in start} == start and events[3]["restart"] == 2
    said = capsys.readouterr().err
    assert "giving up after 3 failures since the newest checkpoint (cluster.max_restarts=1)" in said
    assert describe_event(events[3]) == "start     job 41 restart 2 on n[1-2], failed before it trained"


def test_a_rank_that_gives_up_before_rank_0_records_the_start_it_gives_up_on(tmp_path, capsys) -> None:
    """Rank 1 failed first and gave up; rank 0, which alone recorded a start that failed before it trained, found the
    run ended and left it alone: the history missed the start (CI met it)."""
    RunHistory(tmp_path).record(Event.launch, cluster="testcluster")
    for restart in (0, 1):
        RunHistory(tmp_path).record(Event.start, slurm_job="41", restart=restart, before_training=True)
    found = RunHistory(tmp_path).events()
    env = {"SLURM_JOB_ID": "41", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]"}
    env |= {"SLURM_LOCALID": "0", "SLURM_RESTART_COUNT": "2"}
    for rank in ("1", "0"):
        task = SlurmTask.from_environment({**env, "SLURM_PROCID": rank})
        JobStart(tmp_path, task, found, budget=1, chained=False).failed()
    events = RunHistory(tmp_path).events()
    assert [(event["event"], event.get("restart")) for event in events][1:] == [
        (Event.start, 0),
        (Event.start, 1),
        (Event.start, 2),
        (Event.gave_up, None),
    ]
    assert events[3][BEFORE_TRAINING] and "giving up after 3 failures since" in capsys.readouterr().err


def test_the_batch_script_leaves_a_run_that_has_ended_alone(tmp_path) -> None:
    RunHistory(tmp_path).record(Event.gave_up, failures=3, max_restarts=3)
    after_step(tmp_path, 134, env={})


def test_the_batch_script_marks_a_refused_start_failed_in_mlflow_and_asks_for_no_restart(tmp_path) -> None:
    """A rank without a GPU of its own refuses alone, the others killed as they wait for it: srun ends with 137, and
    no rank that sends MLflow lived to say how the start ended."""
    job = train_job(
        ModelConfig(), cluster=ClusterConfig(name="testcluster", scheduler=Scheduler.slurm, tasks_per_node=4)
    )
    (tmp_path / "job.yaml").write_text(job_yaml(job))
    tracked = tracking.open_run(tmp_path, "refusals", job, {})
    RunHistory(tmp_path).record(Event.launch, cluster="testcluster")
    RunHistory(tmp_path).record(Event.refused, reason="local rank 4 has no GPU of its own")
    after_step(tmp_path, 137, env={})  # outside a job: it would fail, were it to ask Slurm anything
    assert [event["event"] for event in RunHistory(tmp_path).events()] == [Event.launch, Event.refused]
    assert MlflowClient(tracked.tracking_uri).get_run(tracked.run_id).info.status == "FAILED"


def test_a_peer_that_fails_after_a_refusal_asks_for_no_restart(tmp_path) -> None:
    """A rank without a GPU of its own refuses the start alone; its peers wait for it at the rendezvous, and where
    train.hang_timeout_s is shorter than srun's --wait they fail on its timeout first: rank 0 recorded a start that
    failed before it trained after the refusal, and requeued the job, which refused again until its budget was spent."""
    env = {"SLURM_JOB_ID": "41", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "8"}
    task = SlurmTask.from_environment({**env, "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]"})
    RunHistory(tmp_path).record(Event.launch, cluster="testcluster")
    found = RunHistory(tmp_path).events()
    RunHistory(tmp_path).record(Event.refused, reason="local rank 4 has no GPU of its own")
    JobStart(tmp_path, task, found, budget=3, chained=False).failed()  # outside a job: a requeue would fail
    assert [event["event"] for event in RunHistory(tmp_path).events()] == [Event.launch, Event.refused]


@pytest.mark.parametrize("ran_min", [9, 3])
def test_a_data_stage_that_meets_its_time_limit_having_kept_nothing_fails_rather_than_coming_back(ran_min, tmp_path):
    """A tokenizer (an evaluation, an export, a corpus file larger than a job encodes) that outlasts its job was
    requeued for ever, each restart beginning again from nothing, the stages after it pending. A signal long before
    the time limit (a preemption) still requeues it. The task's start is set as its call sets it: no Slurm job here."""
    overrides = ["cluster=testcluster", "cluster.time_limit_min=10", "cluster.signal_delay_s=30"]
    _, job = compose_job("pipeline", [f"run_dir={tmp_path}", *overrides])
    (tmp_path / "pipeline.yaml").write_text(job_yaml(job))
    task = StageTask(str(tmp_path), "tokenizer")
    task._began = (time.time() - ran_min * 60, 0)  # the signal came after `ran_min` minutes of the job's 10
    if ran_min == 3:
        assert isinstance(task.checkpoint(), submitit.helpers.DelayedSubmission)
        return
    assert task.checkpoint() is None
    assert task._given_up == (
        "the tokenizer stage met cluster.time_limit_min=10 before it finished the stage, which starts again from "
        "nothing: raise cluster.time_limit_min"
    )


@pytest.mark.parametrize(
    ("signal_delay_s", "min_nodes", "window_s"),
    [(600, 0, 570), (120, 0, 90), (40, 0, 20), (120, 1, 120), (0, 0, 0)],
    ids=["jean-zay", "default", "short-warning", "elastic", "no-warning"],
)
def test_the_ranks_of_a_fixed_size_job_have_the_warning_less_the_requeue_margin_to_stop(
    signal_delay_s: int, min_nodes: int, window_s: float
) -> None:
    """The window the watchdog ends a start after (a fixed-size job's: Slurm never requeues one it ends at its limit)
    and the one `corolla submit` checks the planner's step and save against; an elastic run's next job takes over."""
    cluster = ClusterConfig("x", scheduler=Scheduler.slurm, nodes=2, tasks_per_node=1, signal_delay_s=signal_delay_s)
    assert replace(cluster, min_nodes=min_nodes).stop_window_s == window_s
