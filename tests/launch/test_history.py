"""A run's history: which restarts were failures, counted since the last launch."""

from __future__ import annotations

from pathlib import Path

from launch.rundir.history import RunHistory


def history_of(tmp_path: Path, *events: str) -> RunHistory:
    history = RunHistory(tmp_path)
    for event in events:
        history.record(event)
    return history


def test_a_start_right_after_a_start_is_a_failure_a_start_after_a_clean_stop_is_not(tmp_path: Path) -> None:
    history = history_of(tmp_path, "launch", "start", "stopped", "start", "start", "start", "finished")
    assert history.failures() == 2 and len(history.starts()) == 4


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


def test_the_nodes_left_out_are_those_found_unfit_and_left_out(tmp_path: Path) -> None:
    history = RunHistory(tmp_path)
    history.record("unfit", nodes={"n1": "rank 1 failed its self-test (...)"}, left_out=True, slurm_job="2")
    history.record("unfit", nodes={"n2": "rank 3 took 2.0x ..."}, left_out=False, slurm_job="3")
    history.record("unfit", nodes={"n4": "...", "n5": "..."}, left_out=True, slurm_job="4")
    assert history.unfit_nodes() == {"n1", "n4", "n5"}
