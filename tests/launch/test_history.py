"""A run's history: which restarts were failures, counted since the last launch; and the run directory's record files
(history, metrics, run.json) as a crash mid-write or a hand edit leaves them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from launch.rundir.history import Event, RunHistory
from launch.rundir.records import append_record, last_record_per_step
from launch.rundir.run_record import recorded_run


def history_of(tmp_path: Path, *events: str) -> RunHistory:
    history = RunHistory(tmp_path)
    for event in events:
        history.record(event)
    return history


def test_a_start_right_after_a_start_is_a_failure_a_start_after_a_clean_stop_is_not(tmp_path: Path) -> None:
    history = history_of(tmp_path, "launch", "start", "stopped", "start", "start", "start", "finished")
    assert history.failures() == 2 and len(history.starts()) == 4


def test_a_start_that_saved_a_newer_checkpoint_before_it_failed_counts_alone(tmp_path: Path) -> None:
    history = RunHistory(tmp_path)
    history.record(Event.launch)
    for step in (0, 0, 0, 10, 10):  # two failures from step 0, then one after saving step 10, then one from it
        history.record(Event.start, resumed_from_step=step)
    assert history.failures() == 2
    history.record(Event.start, before_training=True)  # where it resumed from is not known: no progress
    assert history.failures() == 3


def test_a_new_launch_restores_the_budget(tmp_path: Path) -> None:
    history = history_of(tmp_path, "launch", "start", "start", "gave_up", "launch", "start")
    assert history.failures() == 0


def test_no_history_no_failures(tmp_path: Path) -> None:
    assert RunHistory(tmp_path).events() == [] and RunHistory(tmp_path).failures() == 0


def test_a_health_verdict_between_two_starts_neither_hides_a_crash_nor_is_one(tmp_path: Path) -> None:
    history = history_of(tmp_path, "launch", "start", "unfit", "start", "unfit", "start")
    assert history.failures() == 2 and history.crashes() == 2
    (tmp_path / "fresh").mkdir()
    assert history_of(tmp_path / "fresh", "launch", "unfit", "start").failures() == 0


def test_a_slurm_start_two_ranks_recorded_reads_once_and_a_later_launchs_same_job_number_counts(tmp_path: Path) -> None:
    """Two ranks that fail at once may each find the start unrecorded and record it (slurm/task.py); a cluster whose job
    numbers began again may run a later launch as the same job."""
    history = RunHistory(tmp_path)
    history.record("launch")
    for restart in (0, 1, 1):
        history.record("start", slurm_job="7", restart=restart, before_training=True)
    history.record("gave_up")
    history.record("start", slurm_job="7", restart=1)  # the slower rank, behind the give-up
    history.record("launch")
    history.record("start", slurm_job="7", restart=0)
    assert [(event["event"], event.get("restart")) for event in history.events()] == [
        ("launch", None),
        ("start", 0),
        ("start", 1),
        ("gave_up", None),
        ("launch", None),
        ("start", 0),
    ]


def test_the_nodes_left_out_are_those_found_unfit_and_left_out(tmp_path: Path) -> None:
    history = RunHistory(tmp_path)
    history.record("unfit", nodes={"n1": "rank 1 failed its self-test (...)"}, left_out=True, slurm_job="2")
    history.record("unfit", nodes={"n2": "rank 3 took 2.0x ..."}, left_out=False, slurm_job="3")
    history.record("unfit", nodes={"n4": "...", "n5": "..."}, left_out=True, slurm_job="4")
    assert history.unfit_nodes() == {"n1", "n4", "n5"}


def test_a_line_cut_short_by_a_crash_is_passed_over_and_the_next_event_has_a_line_of_its_own(tmp_path: Path) -> None:
    history = history_of(tmp_path, "launch", "start")
    with history.path.open("a") as file:
        file.write('{"event": "stopped", "ti')  # the writer died mid-line
    history.record("start")
    assert [event["event"] for event in history.events()] == ["launch", "start", "start"]
    assert history.failures() == 1
    assert history.path.read_text().splitlines()[2] == '{"event": "stopped", "ti'


@pytest.mark.parametrize("line", ["{}", '{"event": "start"}', '{"event": 5, "time": 1}'])
def test_a_line_that_is_no_event_corolla_wrote_is_named_with_its_file(tmp_path: Path, line: str) -> None:
    history = history_of(tmp_path, "launch")
    with history.path.open("a") as file:
        file.write(line + "\n")
    with pytest.raises(
        ValueError, match=re.escape(f"history.jsonl holds a line that is not an event corolla wrote ({line})")
    ):
        history.events()


@pytest.mark.parametrize("text", ["", "{bad json", "{}", "[1]", "5", json.dumps({"run_id": "x"})])
def test_a_run_record_that_is_not_one_is_named_and_the_fix_said(tmp_path: Path, text: str) -> None:
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(
        ValueError, match=r"run\.json is not the record of an MLflow run that corolla wrote: restore its"
    ):
        recorded_run(tmp_path)


def test_step_records_keep_the_last_of_each_step_and_pass_over_what_is_no_step_record(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    for step, loss in [(1, 9.0), (2, 8.0), (2, 7.5), (3, 7.0)]:
        append_record(metrics, {"step": step, "loss": loss})
    with metrics.open("a") as file:
        file.write('5\n{"step": "x", "loss": 1}\n{"step": true}\n{"step": 3, "loss": "abc"}\n')
        file.write('{"step": 3, "loss": {"fra_Latn": null}}\n{"step": 4, "lo')
    assert last_record_per_step(metrics) == [
        {"step": 1, "loss": 9.0},
        {"step": 2, "loss": 7.5},
        {"step": 3, "loss": 7.0},
    ]
