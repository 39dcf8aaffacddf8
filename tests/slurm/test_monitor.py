"""`corolla status | logs | cancel` on run directories built by hand, and on real jobs of a local Slurm cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from conftest import cluster_in_environment
from launch.cli import main
from launch.commands import cancel, show_logs, show_status
from launch.config.schemas import CancelJob, LogsJob, StatusJob
from launch.jobs.monitor import is_local_pipeline
from launch.rundir.history import Event, RunHistory
from launch.rundir.lock import holding, writer
from slurm.commands import UNREACHABLE_HINT
from slurm.testcluster import ClusterSpec, TestCluster, wait_for

T0 = 1_790_000_000.0  # the first launch, in September 2026

JOB_YAML = """\
model:
  name: bloom-test
  hidden_size: 64
  num_layers: 2
  num_heads: 4
  seq_length: 128
  vocab_size: 1000
parallel:
  tp: 2
  pp: 1
  dp: {dp}
  zero_stage: 1
train:
  steps: 20
  micro_batch: 2
  global_batch: 8
  lr: 0.0006
  eval_interval: 5
cluster:
  name: {cluster}
  scheduler: {scheduler}
  nodes: 1
  tasks_per_node: 4
  max_restarts: 3
tracking:
  experiment: corolla
run_dir: {run_dir}
seed: 1234
"""


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[TestCluster]:
    """One node, n1, with 2 CPUs, and accounting (sacct)."""
    with cluster_in_environment(ClusterSpec(nodes=1, cpus_per_node=2, accounting=True)) as cluster:
        yield cluster


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("a") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)


def make_run(run_dir: Path, cluster: str = "local", dp: int = 2) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    scheduler = "local" if cluster == "local" else "slurm"
    (run_dir / "job.yaml").write_text(JOB_YAML.format(dp=dp, cluster=cluster, scheduler=scheduler, run_dir=run_dir))
    return run_dir


def step(number: int, loss: float, tokens_per_second: float) -> dict:
    return {
        "step": number,
        "loss": loss,
        "lr": 6e-4,
        "grad_norm": 1.5,
        "batch_size": 8,
        "tokens_per_second": tokens_per_second,
    }


def make_trained_run(run_dir: Path) -> Path:
    """Three launches on one host: the first crashes after step 8 (checkpoint at 5), the second redoes 6-8 and
    stops cleanly on SIGTERM after step 10 (checkpoint at 10), the third resumes at 10 and is at step 12 of 20."""
    make_run(run_dir)
    metrics = run_dir / "metrics.jsonl"
    # 8 x 128 tokens a step: 1024 tokens/s is 1 s a step, 512 is 2 s. The first launch's steps 6-8 (8 s each) are
    # lost with it: counted, they would move both medians.
    write_jsonl(metrics, [step(n, 9.0 - n / 10, 1024) for n in range(1, 6)])
    write_jsonl(metrics, [step(n, 1.0, 128) for n in range(6, 9)])
    write_jsonl(metrics, [step(n, 8.0 - n / 10, 512) for n in range(6, 11)])
    with metrics.open("a") as file:
        file.write(json.dumps(step(11, 4.5, 256)) + "\n" + json.dumps(step(12, 4.25, 256)) + "\n")
        file.write('{"step": 13, "loss": 4.1')  # cut short: the process is writing it, or died doing so
    write_jsonl(
        run_dir / "validation.jsonl",
        [
            {"step": 5, "loss": {"eng_Latn": 6.0, "fra_Latn": 6.5}},
            {"step": 10, "loss": {"eng_Latn": 5.0, "fra_Latn": 5.5}},
        ],
    )
    write_jsonl(
        run_dir / "history.jsonl",
        [
            {"event": "start", "time": T0, "host": "gpu-box", "resumed_from_step": 0, "steps_redone": 0},
            {"event": "start", "time": T0 + 600, "host": "gpu-box", "resumed_from_step": 5, "steps_redone": 3},
            {"event": "stopped", "time": T0 + 900, "step": 10, "signal": "SIGTERM"},
            {
                "event": "start",
                "time": T0 + 3600,
                "host": "gpu-box",
                "resumed_from_step": 10,
                "steps_redone": 0,
                "layout": "tp2-pp1-dp2",
                "resharded_from": "tp2-pp1-dp4",
            },
        ],
    )
    checkpoints = run_dir / "checkpoints"
    for saved in (5, 10):
        (checkpoints / f"step-{saved:08d}").mkdir(parents=True)
        (checkpoints / f"step-{saved:08d}" / "COMPLETE").write_text(json.dumps({"step": saved, "files": {}}))
    (checkpoints / "step-00000012").mkdir()  # a save that crashed before COMPLETE
    (checkpoints / "latest").write_text("step-00000010\n")
    tracked = {"tracking_uri": f"sqlite:///{run_dir}/mlflow.db", "run_id": "5f1e0c3a9b", "experiment_id": "1"}
    (run_dir / "run.json").write_text(json.dumps(tracked))
    return run_dir


def status_of(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    show_status(StatusJob(run_dir=str(run_dir)))
    return capsys.readouterr().out


def test_status_of_a_local_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_trained_run(tmp_path / "run")
    at = [datetime.fromtimestamp(T0 + offset).strftime("%Y-%m-%d %H:%M:%S") for offset in (0, 600, 900, 3600)]
    # Steps 3-12, the last record of each: 1 s a step for 3-5, 2 s for 6-10, 4 s for 11-12; 8 steps left x 2 s.
    with holding(run_dir):  # the third launch's `corolla train`, training
        output, (holder, alive) = status_of(run_dir, capsys), writer(run_dir)
    assert alive and holder.startswith(f"process {os.getpid()} on {socket.gethostname()}")
    assert output.splitlines() == [
        f"run        {run_dir}",
        "model      bloom-test, TP 2 x PP 1 x DP 2, 8 sequences x 128 tokens a step",
        "cluster    local",
        f"state      running: {holder}",
        "history    2 restarts, 1 failure",  # a local run has no restart budget: it is never restarted
        f"           {at[0]}  start     on gpu-box, from scratch, 0 steps redone",
        f"           {at[1]}  start     on gpu-box, resumed from step 5, 3 steps redone",
        f"           {at[2]}  stopped   at step 10 (SIGTERM)",
        f"           {at[3]}  start     on gpu-box, tp2-pp1-dp2 (resharded from tp2-pp1-dp4), resumed from step 10, "
        "0 steps redone",
        "progress   step 12 of 20, loss 4.2500",
        "speed      512 tokens/s (median of the last 10 steps), 2.00 s a step",
        "eta        16s of training (8 steps left)",
        "validation step 10, loss 5.2500 (mean of 2 languages)",
        f"checkpoint step 10: {run_dir}/checkpoints/step-00000010",
        f"mlflow     run 5f1e0c3a9b at sqlite:///{run_dir}/mlflow.db",
    ]
    # Its `corolla train` gone with no end recorded: a rank failed, or it was killed.
    assert "state      not running, and its last start recorded no end: it failed" in status_of(run_dir, capsys)
    (run_dir / "LOCK").write_text(json.dumps({"host": "elsewhere", "pid": 7, "started": "1", "since": T0}))
    assert "state      held by process 7 on elsewhere (since " in status_of(run_dir, capsys)


def test_the_time_left_counts_the_validations_and_checkpoints_between_steps(tmp_path, capsys) -> None:
    """Paced by its steps' own seconds alone (1 s each), a run that validates every 5 steps for 4 s was said to have
    half its time left: 100 steps then take 180 s, not 100. An ended run has none left."""
    run_dir = make_run(tmp_path / "run")
    written, records = 1_000_000, []
    for number in range(1, 21):
        written += 1000 + (4000 if number % 5 == 1 and number > 1 else 0)  # the validation after steps 5, 10, 15
        records.append({**step(number, 3.0, 1024), "time": written})
    write_jsonl(run_dir / "metrics.jsonl", records)
    write_jsonl(run_dir / "history.jsonl", [{"event": "start", "time": T0, "resumed_from_step": 0}])
    (run_dir / "job.yaml").write_text((run_dir / "job.yaml").read_text().replace("  steps: 20\n", "  steps: 120\n"))
    output = status_of(run_dir, capsys)
    assert "speed      1,024 tokens/s (median of the last 10 steps), 1.63 s a step" in output  # 31 s for 19 steps
    assert "eta        2m 43s of training (100 steps left)" in output
    write_jsonl(run_dir / "history.jsonl", [{"event": "diverged", "time": T0 + 60, "step": 20}])
    assert "eta" not in status_of(run_dir, capsys)


def test_status_shows_the_last_health_check_after_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_trained_run(tmp_path / "run")
    checks = [
        {"step": 5, "seconds": {"n1": 0.0100, "n2": 0.0101}, "slowdown": 1.01},
        {"step": 10, "seconds": {"n1": 0.0100, "n3": 0.0105, "n2": 0.0102}, "slowdown": 1.05},
        {"step": 12, "seconds": {}},  # no node timed: every rank failed its self-test, or had no room for it
    ]
    write_jsonl(run_dir / "health.jsonl", checks)
    lines = status_of(run_dir, capsys).splitlines()
    assert lines[lines.index("validation step 10, loss 5.2500 (mean of 2 languages)") + 1] == (
        "health     after step 10: slowest node n3, 1.05x the fastest rank's self-test time"
    )


def test_status_of_a_run_that_has_not_started(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path / "run", cluster="testcluster", dp=0)
    output = status_of(run_dir, capsys)
    assert "TP 2 x PP 1 x DP 2," in output  # dp=0: 1 node x 4 ranks / TP 2
    for expected in ["no start recorded yet", "no step logged yet, 20 to do", "checkpoint none yet", "no run recorded"]:
        assert expected in output


def test_failures_are_counted_over_the_runs_life_and_the_budget_since_its_last_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Four starts that failed, the last of them past the budget of 3 (it gave up), a launch by hand that restores the
    # budget, and one more failure: counted as MLflow's tags count them (corolla.restarts, corolla.failures), and the
    # budget as the job spends it.
    run_dir = make_run(tmp_path / "run", cluster="testcluster")
    kinds = ["launch", "start", "start", "start", "start", "gave_up", "launch", "start", "start"]
    write_jsonl(run_dir / "history.jsonl", [{"event": kind, "time": T0 + index} for index, kind in enumerate(kinds)])
    history = status_of(run_dir, capsys).splitlines()[4]
    # A launch's first start is no restart: 3 restarts, then 1 (it said 5, counting the second launch's start).
    assert history == "history    4 restarts, 5 failures (1 of cluster.max_restarts=3 spent from the newest checkpoint)"


def test_status_lists_the_last_twenty_events_and_what_each_launch_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run resumed for weeks has hundreds of events, which status listed whole (194 lines after 60 resumes)."""
    run_dir = make_run(tmp_path / "run")
    events = [{"event": "launch", "time": T0, "cluster": "local"}]
    events += [{"event": kind, "time": T0 + index} for index, kind in enumerate(["start", "stopped"] * 30, 1)]
    changed = {"data.seed": ["1234", "7"], "train.steps": ["20", "40"]}
    events.append({"event": "launch", "time": T0 + 61, "cluster": "local", "changed": changed})
    write_jsonl(run_dir / "history.jsonl", events)
    lines = status_of(run_dir, capsys).splitlines()
    listed = lines[lines.index(next(text for text in lines if text.startswith("history"))) + 1 :][:21]
    assert listed[0] == f"           42 earlier events in {run_dir / 'history.jsonl'}"
    assert listed[1].endswith("  stopped   at step ? (train.exit_after)") and len(listed) == 21
    assert listed[-1].endswith("  launch    on local, data.seed 1234 -> 7, train.steps 20 -> 40")


def test_a_finished_run_has_no_eta_and_a_broken_pointer_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_trained_run(tmp_path / "run")
    write_jsonl(run_dir / "metrics.jsonl", [step(n, 3.0, 1024) for n in range(13, 21)])
    (run_dir / "checkpoints" / "latest").write_text("step-00000012\n")
    output = status_of(run_dir, capsys)
    assert "step 20 of 20, loss 3.0000" in output and "eta        done" in output
    assert f"{run_dir}/checkpoints/latest names step-00000012, which is not a complete checkpoint" in output


def test_a_run_sent_to_slurm_then_trained_locally_is_followed_as_the_local_run_it_is_now(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its Slurm job cancelled, the run goes on with `corolla train` here (job.yaml now names the local cluster): status
    said the old job was CANCELLED and not that the run trains, and cancel said 'nothing to cancel' while it trained."""
    run_dir = make_trained_run(tmp_path / "run")
    (run_dir / "slurm-jobs.json").write_text('["41"]\n')
    make_run(run_dir, cluster="local")  # the local launch's job.yaml
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # nothing of the local run needs Slurm
    with holding(run_dir):
        output, (holder, _) = status_of(run_dir, capsys), writer(run_dir)
    assert f"state      running: {holder}" in output and "\nslurm " not in output
    for command, function in (("cancel", cancel), ("logs", show_logs)):
        with pytest.raises(ValueError) as refused:
            function({"cancel": CancelJob, "logs": LogsJob}[command](run_dir=str(run_dir)))
        assert str(refused.value).startswith(
            f"{run_dir} is a local run (its latest launch was `corolla train`): `corolla {command}` is for runs sent"
        )


def test_status_of_a_sweep_is_a_row_a_point_and_its_points_are_named_to_the_other_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = tmp_path / "sweep"
    trained = make_trained_run(sweep / "train.lr=0.001")  # step 12 of 20 at 2 s a step, validated at 10
    make_run(sweep / "train.lr=0.003")  # submitted, nothing trained yet
    broken = make_run(sweep / "train.lr=0.01")
    (broken / "job.yaml").write_text((broken / "job.yaml").read_text().replace("  steps: 20\n", "  steps: abc\n"))
    (make_run(sweep / "train.lr=0.03") / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')  # no speed: old
    (make_run(sweep / "train.lr=0.1") / "history.jsonl").write_text('{"not": "an event"}\n')
    (sweep / "notes").mkdir()  # not a run: left out
    monkeypatch.setenv("HOME", str(tmp_path))
    with holding(trained):
        lines = status_of(Path("~/sweep"), capsys).splitlines()
    # Runs at steps 12 and 1, compared at step 1; the one whose records say nothing of its speed (an older corolla
    # recorded no batch size) has a time left no one knows, where it raised a KeyError.
    assert lines == [
        "runs       ~/sweep: 5 runs",
        "run             state         last event    step   loss    loss at 1  validation    training left",
        "train.lr=0.001  running here  start         12/20  4.2500  8.9000     5.2500 at 10  16s",
        "train.lr=0.003  not running   not launched  0/20",
        f"train.lr=0.01   not running   not launched  {broken}/job.yaml says train.steps=abc, not a whole number: fix "
        "it, or launch the run again, which rewrites it",
        "train.lr=0.03   not running   not launched  1/20   2.0000  2.0000     -             ?",
        f"train.lr=0.1    cannot be read: {sweep}/train.lr=0.1/history.jsonl holds a line that is not an event corolla "
        'wrote ({"not": "an event"}): remove that line',
        "a run's own status: corolla status ~/sweep/RUN",
    ]
    holds = "holds 5 runs (a sweep's points, or a pipeline's training run), it is not one"
    with pytest.raises(ValueError) as refused:
        show_logs(LogsJob(run_dir=str(sweep)))
    assert str(refused.value) == (
        f"run_dir={sweep} {holds}: name one, such as {trained}; `corolla status` and `corolla cancel` also take the "
        "whole directory"
    )
    assert main(["export", "hf", f"run_dir={sweep}", f"output_dir={tmp_path / 'hf'}"]) == 2
    assert f"{sweep} {holds}: pass one of them, such as {trained}\n" in capsys.readouterr().err
    # A run of its own there would be a run holding the sweep's: refused, and the directory left as it was.
    assert main(["train", f"run_dir={sweep}"]) == 2
    assert capsys.readouterr().err == (
        f"corolla: error: run_dir={sweep} {holds} (train.lr=0.001...): give this run a directory of its own\n"
    )
    points = [f"train.lr={lr}" for lr in (0.001, 0.003, 0.01, 0.03, 0.1)]
    assert sorted(path.name for path in sweep.iterdir()) == ["notes", *points]
    # Cancel goes through every point, whatever the one before said: these are local runs, none is cancelled.
    with pytest.raises(RuntimeError, match=r"^5 of 5 runs in .* not cancelled \(train.lr=0.001, train.lr=0.003, "):
        cancel(CancelJob(run_dir=str(sweep)))
    assert capsys.readouterr().out.count("is a local run (no slurm-jobs.json): `corolla cancel` is for runs") == 5


def test_the_runs_of_a_sweep_compare_at_the_last_step_they_all_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    make_trained_run(sweep / "train.lr=0.001")  # at step 12; step 8 logged twice, the later 7.2
    behind = make_run(sweep / "train.lr=0.0003")
    write_jsonl(behind / "metrics.jsonl", [step(n, 3.0 + n / 100, 2048) for n in range(1, 9)])
    make_run(sweep / "train.lr=0.003")  # nothing logged: not waited for
    assert status_of(sweep, capsys).splitlines()[1:5] == [
        "run              state        last event    step   loss    loss at 8  validation    training left",
        "train.lr=0.0003  not running  not launched  8/20   3.0800  3.0800     -             6s",
        "train.lr=0.001   not running  start         12/20  4.2500  7.2000     5.2500 at 10  16s",
        "train.lr=0.003   not running  not launched  0/20",
    ]
    (behind / "metrics.jsonl").unlink()  # one run that logged steps: nothing to compare it with
    assert "loss at" not in status_of(sweep, capsys)


def test_a_sweep_asks_a_controller_that_does_not_answer_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each point asked on its own, and each question waits for the controller (30 s): a sweep of a dozen points took
    minutes to say that Slurm does not answer, as did cancelling it."""
    sweep = tmp_path / "sweep"
    for seed in (1, 2, 3):
        (make_run(sweep / f"seed={seed}", cluster="testcluster") / "slurm-jobs.json").write_text(f'["4{seed}"]\n')
    clients = tmp_path / "controller-away"
    clients.mkdir()
    said = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    (clients / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {clients}/calls\necho "{said}" >&2\nexit 1\n')
    (clients / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(clients))
    rows = status_of(sweep, capsys).splitlines()[2:-1]
    assert [row.split("  ")[0:2] for row in rows] == [
        [f"seed={seed}", f"job 4{seed}: cannot ask Slurm (scontrol: {said})"] for seed in (1, 2, 3)
    ], rows
    with pytest.raises(RuntimeError, match=r"^3 of 3 runs in .* not cancelled"):
        cancel(CancelJob(run_dir=str(sweep)))
    assert (clients / "calls").read_text().splitlines() == ["show job 41", "show job 41"]  # once each command


@pytest.mark.parametrize(
    ("layout", "command", "message"),
    [
        ("missing", StatusJob, "is not a directory: pass the run directory that `corolla train` or `corolla submit`"),
        ("empty", StatusJob, "is not a corolla run directory (it has no job.yaml)"),
        ("not-a-job", StatusJob, "job.yaml is not a corolla job: restore it from MLflow"),
        ("steps-not-a-number", StatusJob, "job.yaml says train.steps=abc, not a whole number: fix it, or launch"),
        ("bad-jobs-file", StatusJob, "slurm-jobs.json is not a JSON list of Slurm job ids"),
        ("local", LogsJob, "is a local run (no slurm-jobs.json): `corolla logs` is for runs sent to Slurm"),
        ("local", CancelJob, "`corolla cancel` is for runs sent to Slurm with `corolla submit`; stop a local run with"),
    ],
)
def test_bad_run_dirs_are_one_line_errors(tmp_path: Path, layout: str, command: type, message: str) -> None:
    run_dir = tmp_path / "run"
    if layout != "missing":
        run_dir.mkdir()
    if layout in ("not-a-job", "steps-not-a-number", "bad-jobs-file", "local"):
        make_run(run_dir, cluster="testcluster" if layout == "bad-jobs-file" else "local")
    if layout == "steps-not-a-number":
        job = (run_dir / "job.yaml").read_text()
        (run_dir / "job.yaml").write_text(job.replace("  steps: 20\n", "  steps: abc\n", 1))
    if layout == "not-a-job":
        (run_dir / "job.yaml").write_text("- just\n- a list\n")
    if layout == "bad-jobs-file":
        (run_dir / "slurm-jobs.json").write_text('{"job": 12}\n')
    function = {StatusJob: show_status, LogsJob: show_logs, CancelJob: cancel}[command]
    with pytest.raises(ValueError) as raised:
        function(command(run_dir=str(run_dir)))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_logs_arguments_are_checked(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", cluster="testcluster")
    (run_dir / "slurm-jobs.json").write_text('["41"]\n')
    with pytest.raises(ValueError, match="lines must be at least 1"):
        show_logs(LogsJob(run_dir=str(run_dir), lines=0))


def test_status_says_when_slurm_cannot_be_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = make_run(make_trained_run(tmp_path / "run"), cluster="testcluster")
    (run_dir / "slurm-jobs.json").write_text('["41", "42"]\n')
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    output = status_of(run_dir, capsys)
    assert "slurm      job 42 (latest of 2: 41 before): cannot ask Slurm (scontrol not found)" in output
    assert "progress   step 12 of 20" in output  # the rest is still there
    with pytest.raises(RuntimeError, match="cannot ask Slurm about the run's jobs \\(scontrol not found\\)"):
        cancel(CancelJob(run_dir=str(run_dir)))

    # An scontrol that answers nothing (or not a job's record) says nothing of the job: not a live job in state
    # UNKNOWN that `cancel` then said it "cancelled".
    clients = tmp_path / "answers-nothing"
    clients.mkdir()
    (clients / "scontrol").write_text("#!/bin/sh\nexit 0\n")
    (clients / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(clients))
    answer = "scontrol show job 42 answered no record of the job (nothing)"
    assert f"slurm      job 42 (latest of 2: 41 before): cannot ask Slurm ({answer})" in status_of(run_dir, capsys)
    nothing = f"cannot ask Slurm about the run's jobs ({answer})"
    with pytest.raises(RuntimeError, match=re.escape(nothing)):
        cancel(CancelJob(run_dir=str(run_dir)))
    assert not (run_dir / "STOP").exists()


def sbatch(cluster: TestCluster, run_dir: Path, *arguments: str) -> str:
    logs = run_dir / "slurm"
    logs.mkdir(exist_ok=True)
    output = [f"--output={logs}/%j_0_log.out", f"--error={logs}/%j_0_log.err"]
    job_id = cluster.run("sbatch", "--parsable", *output, *arguments).stdout.strip()
    jobs_file = run_dir / "slurm-jobs.json"
    jobs = json.loads(jobs_file.read_text()) if jobs_file.exists() else []
    jobs_file.write_text(json.dumps([*jobs, job_id]) + "\n")
    return job_id


def queued(cluster: TestCluster, job_id: str) -> bool:
    return bool(cluster.run("squeue", "--noheader", "--jobs", job_id, check=False).stdout.strip())


def accounted_state(cluster: TestCluster, job_id: str) -> str:
    return cluster.run("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State").stdout.strip()


def test_status_logs_and_cancel_of_a_running_job(
    slurm_cluster: TestCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run(tmp_path / "run", cluster="testcluster")
    earlier = sbatch(slurm_cluster, run_dir, "--wait", "--wrap=echo an earlier job")
    script = "echo started on $(hostname); for n in 1 2 3; do echo line $n; done; echo a warning >&2; sleep 60"
    job_id = sbatch(slurm_cluster, run_dir, f"--wrap={script}")
    out_log, err_log = run_dir / "slurm" / f"{job_id}_0_log.out", run_dir / "slurm" / f"{job_id}_0_log.err"
    assert wait_for(lambda: out_log.exists() and "line 3" in out_log.read_text(), timeout=20, interval=0.2)

    status = status_of(run_dir, capsys)
    assert f"slurm      job {job_id} (latest of 2: {earlier} before): RUNNING, on n1, run time 00:00:" in status
    assert "restarts 0 (from scontrol)" in status

    show_logs(LogsJob(run_dir=str(run_dir)))
    assert capsys.readouterr().out.splitlines() == [
        f"==> {out_log} <==",
        "started on n1",
        "line 1",
        "line 2",
        "line 3",
        "",
        f"==> {err_log} <==",
        "a warning",
    ]
    show_logs(LogsJob(run_dir=str(run_dir), rank=0, lines=2))
    assert capsys.readouterr().out.splitlines() == [
        f"==> {out_log} <==",
        "line 2",
        "line 3",
        "",
        f"==> {err_log} <==",
        "a warning",
    ]
    with pytest.raises(ValueError, match=f"rank=3: Slurm job {job_id} has logs of ranks 0: choose one of them"):
        show_logs(LogsJob(run_dir=str(run_dir), rank=3))

    cancel(CancelJob(run_dir=str(run_dir)))
    said = capsys.readouterr().out
    assert said.startswith(f"cancelled Slurm job {job_id} (was RUNNING, on n1, run time ")
    assert "; Slurm now says CANCELLED" in said
    assert wait_for(lambda: not queued(slurm_cluster, job_id), timeout=15, interval=0.2)
    assert wait_for(lambda: accounted_state(slurm_cluster, job_id).startswith("CANCELLED"), timeout=15, interval=0.5)
    assert accounted_state(slurm_cluster, earlier) == "COMPLETED"

    status = status_of(run_dir, capsys)
    assert f"job {job_id} (latest of 2: {earlier} before): CANCELLED by 0, exit code 0:0, ran 00:00:" in status
    assert "on n1, started 20" in status and "(from sacct)" in status

    cancel(CancelJob(run_dir=str(run_dir)))
    assert capsys.readouterr().out == f"Slurm job {job_id} has already ended (CANCELLED by 0): nothing to cancel\n"


def test_status_of_an_ended_job_without_sacct(
    slurm_cluster: TestCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = make_run(tmp_path / "run", cluster="testcluster")
    job_id = sbatch(slurm_cluster, run_dir, "--wrap=exit 3")
    assert wait_for(lambda: "JobState=FAILED" in slurm_cluster.run("scontrol", "show", "job", job_id).stdout, 15, 0.2)
    # Slurm's clients without sacct: what a cluster without accounting offers.
    clients = tmp_path / "clients"
    clients.mkdir()
    for name in ("scontrol", "squeue", "scancel"):
        (clients / name).symlink_to(shutil.which(name) or name)
    monkeypatch.setenv("PATH", str(clients))
    status = status_of(run_dir, capsys)
    assert f"slurm      job {job_id}: FAILED, exit code 3:0, ran 00:00:0" in status
    assert "(from scontrol; sacct unavailable (sacct not found))" in status


def test_status_and_cancel_say_when_slurms_controller_does_not_answer(
    slurm_cluster: TestCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "run this on a login node": the user is on one, and the controller is down (or restarting)."""
    run_dir = make_run(tmp_path / "run", cluster="testcluster")
    job_id = sbatch(slurm_cluster, run_dir, "--wrap=sleep 60")
    slurm_cluster.stop_controller()
    try:
        status = status_of(run_dir, capsys)
        assert f"slurm      job {job_id}: cannot ask Slurm (scontrol: " in status
        assert f"Unable to contact slurm controller (connect failure)): {UNREACHABLE_HINT}" in status
        with pytest.raises(RuntimeError) as refused:
            cancel(CancelJob(run_dir=str(run_dir)))
        assert str(refused.value).startswith("cannot ask Slurm about the run's jobs (squeue: ")
        assert str(refused.value).endswith(f"Unable to contact slurm controller (connect failure)): {UNREACHABLE_HINT}")
        assert "login node" not in status + str(refused.value)
        # Nor is the run written meanwhile as if no job held it (its job may be training it).
        assert main(["tracking", "sync", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"corolla: error: cannot ask Slurm whether a job of {run_dir} runs (squeue: "), err
        assert err.strip().endswith(UNREACHABLE_HINT) and not (run_dir / "LOCK").exists()
    finally:
        slurm_cluster.start_controller()
    cancel(CancelJob(run_dir=str(run_dir)))  # the same command, once the controller answers
    assert capsys.readouterr().out.startswith(f"cancelled Slurm job {job_id} (was ")
    assert wait_for(lambda: not queued(slurm_cluster, job_id), timeout=15, interval=0.2)


def test_a_pending_job_shows_its_reason_and_can_be_cancelled(
    slurm_cluster: TestCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run(tmp_path / "run", cluster="testcluster")
    blocker = sbatch(slurm_cluster, tmp_path, "--cpus-per-task=2", "--wrap=sleep 60")
    try:
        job_id = sbatch(slurm_cluster, run_dir, "--cpus-per-task=2", "--wrap=sleep 60")
        status = status_of(run_dir, capsys)
        assert f"slurm      job {job_id}: PENDING, reason " in status, status.splitlines()
        assert "run time 00:00:00 of " in status and " on n1" not in status
        show_logs(LogsJob(run_dir=str(run_dir)))
        assert capsys.readouterr().out.startswith(f"Slurm job {job_id} has no logs in {run_dir}/slurm yet")
        cancel(CancelJob(run_dir=str(run_dir)))
        assert capsys.readouterr().out.startswith(f"cancelled Slurm job {job_id} (was PENDING, reason ")
        assert wait_for(lambda: not queued(slurm_cluster, job_id), timeout=15, interval=0.2)
    finally:
        slurm_cluster.run("scancel", blocker)


def test_a_job_pending_on_drained_nodes_says_which_and_what_ends_the_wait(
    slurm_cluster: TestCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Slurm's reason alone ("Nodes_required_for_job_are_DOWN,_DRAINED_or...") names no node and no way out."""
    run_dir = make_run(tmp_path / "run", cluster="testcluster")
    reason = "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions"
    slurm_cluster.wait_idle()  # n1's slurmd registered again after an earlier test's controller restart
    slurm_cluster.run("scontrol", "update", "nodename=n1", "state=drain", "reason=bad link")
    try:
        job_id = sbatch(slurm_cluster, run_dir, "--wrap=sleep 60")
        assert wait_for(lambda: reason in status_of(run_dir, capsys), timeout=20, interval=0.5)
        status = status_of(run_dir, capsys).splitlines()
        # Left out by the run's own jobs (unfit), n1 keeps none of them waiting.
        RunHistory(run_dir).record(Event.unfit, slurm_job=job_id, nodes={"n1": "slow"}, left_out=True)
        assert not [row for row in status_of(run_dir, capsys).splitlines() if row.startswith("waiting")]
    finally:
        slurm_cluster.run("scontrol", "update", "nodename=n1", "state=resume")
        slurm_cluster.run("scancel", job_id)
    assert status[3].startswith(f"slurm      job {job_id}: PENDING, reason {reason}, run time 00:00:00 of "), status
    assert status[4] == (
        "waiting    for nodes out of service in partition debug (n1 drain: bad link): the job starts once an admin "
        f"resumes them (sinfo -R); to go on without them, `corolla cancel {run_dir}` and submit the run on fewer "
        "nodes (cluster.nodes) or another partition (cluster.partition): it resumes from its last checkpoint"
    )


def test_a_copied_or_moved_run_directory_does_not_take_the_original_runs_job_for_its_own(
    slurm_cluster: TestCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy holds the original's slurm-jobs.json: status said the original's job RUNNING as the copy's, and cancel
    of the copy cancelled it, its STOP file written in the copy, where the job does not look (it requeued itself)."""
    run_dir = make_run(tmp_path / "run", cluster="testcluster")
    job_id = sbatch(slurm_cluster, run_dir, "--wrap=sleep 60")
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    try:
        assert wait_for(lambda: "RUNNING" in status_of(run_dir, capsys), timeout=20, interval=0.5)
        assert "not of this directory" not in status_of(run_dir, capsys)
        mine = f"slurm      job {job_id} of the run in {run_dir}, not of this directory (a copy of that run, or moved"
        assert mine in status_of(copy, capsys)
        with pytest.raises(ValueError) as refused:
            cancel(CancelJob(run_dir=str(copy)))
        assert str(refused.value).startswith(f"Slurm job {job_id} (RUNNING) trains the run in {run_dir}, not {copy} (")
        assert f"nothing cancelled; cancel it there (`corolla cancel {run_dir}`), or `scancel {job_id}`" in str(
            refused.value
        )
        assert queued(slurm_cluster, job_id) and not (copy / "STOP").exists()
        moved = tmp_path / "moved"
        run_dir.rename(moved)
        assert f"slurm      job {job_id} of the run in {run_dir}, not of this directory" in status_of(moved, capsys)
        moved.rename(run_dir)
        cancel(CancelJob(run_dir=str(run_dir)))
        assert capsys.readouterr().out.startswith(f"cancelled Slurm job {job_id} (was RUNNING")
    finally:
        slurm_cluster.run("scancel", job_id)


def test_logs_of_a_pipeline_take_the_rank_of_its_train_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`corolla logs RUN_DIR rank=1` of a pipeline submitted to Slurm printed every log of the stage, the rank
    dropped without a word: it now picks the train stage's rank, and a stage without ranks refuses it."""
    run_dir = tmp_path / "chain"
    jobs = [{"stage": "tokenizer", "job_id": "40"}, {"stage": "train", "job_id": "41"}]
    (run_dir / "train" / "slurm").mkdir(parents=True)
    (run_dir / "chain.json").write_text(json.dumps([{"time": T0, "jobs": jobs, "skipped": []}]))
    for rank in (0, 1):
        (run_dir / "train" / "slurm" / f"41_{rank}_log.out").write_text(f"rank {rank} trains\n")
    show_logs(LogsJob(run_dir=str(run_dir), stage="train", rank=1))
    output = capsys.readouterr().out
    assert "rank 1 trains" in output and "rank 0" not in output
    with pytest.raises(ValueError, match=r"^rank=2: the train stage's job 41 has logs of ranks 0, 1: choose one$"):
        show_logs(LogsJob(run_dir=str(run_dir), stage="train", rank=2))
    with pytest.raises(ValueError, match=r"^rank=1: the tokenizer stage has no ranks; .* with stage=train rank=N$"):
        show_logs(LogsJob(run_dir=str(run_dir), stage="tokenizer", rank=1))


def test_logs_of_a_stage_print_each_task_s_output_before_its_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stage's logs came in name order: each task's `.err` above its `.out`, an array's task 10 above its task 2."""
    run_dir = tmp_path / "chain"
    (run_dir / "slurm").mkdir(parents=True)
    (run_dir / "chain.json").write_text(
        json.dumps([{"time": T0, "jobs": [{"stage": "encode", "job_id": "40"}], "skipped": []}])
    )
    for task in (10, 2):  # an encoding array's tasks: 10 came before 2
        for suffix in ("err", "out"):
            (run_dir / "slurm" / f"40_{task}_0_log.{suffix}").write_text(f"task {task}'s {suffix} lines\n")
    show_logs(LogsJob(run_dir=str(run_dir), stage="encode"))
    output = capsys.readouterr().out
    order = ["40_2_0_log.out", "task 2's out lines", "40_2_0_log.err", "40_10_0_log.out", "40_10_0_log.err"]
    assert [output.index(said) for said in order] == sorted(output.index(said) for said in order), output


@pytest.mark.parametrize(
    "record",
    [
        "[{",
        "[]",
        '{"jobs": []}',
        json.dumps([{"time": T0, "jobs": [{"stage": "train"}], "skipped": []}]),
        json.dumps([{"time": T0, "jobs": [{"stage": "train", "job_id": "41"}], "skipped": "export"}]),
        json.dumps([{"jobs": [{"stage": "train", "job_id": "41"}]}]),
    ],
)
def test_a_damaged_chain_record_is_named_in_one_line_by_every_command_that_reads_it(
    record: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status read chain.json itself, and said a bare JSON error or a KeyError's traceback; logs and cancel read it
    as one reader, which named it."""
    run_dir = tmp_path / "chain"
    run_dir.mkdir()
    (run_dir / "chain.json").write_text(record)
    for command in (["status"], ["logs"], ["cancel"]):
        assert main([*command, str(run_dir)]) == 2
        assert capsys.readouterr().err == (
            f"corolla: error: {run_dir / 'chain.json'} is not a chain record corolla wrote: remove it and submit the "
            "pipeline again\n"
        )


def counting(commands: tuple[str, ...], bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The `commands` first on PATH, each logging its call (a line: the command and its arguments) before it runs the
    real one; the log's path."""
    bin_dir.mkdir()
    calls = bin_dir / "calls"
    calls.touch()
    for command in commands:
        shim = bin_dir / command
        shim.write_text(f'#!/bin/sh\necho "{command} $*" >> {calls}\nexec {shutil.which(command)} "$@"\n')
        shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def test_status_of_a_pipeline_asks_slurm_once_a_job(
    slurm_cluster: TestCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each one-task stage's job was asked of scontrol (and, ended, of sacct) twice: once to see whether the chain is
    this directory's, once for its state."""
    run_dir = tmp_path / "chain"
    run_dir.mkdir()
    stages = {stage: sbatch(slurm_cluster, run_dir, "--wait", "--wrap=true") for stage in ("tokenizer", "evaluate")}
    jobs = sorted(stages.values())
    chain = [{"stage": stage, "job_id": job_id} for stage, job_id in stages.items()]
    (run_dir / "chain.json").write_text(json.dumps([{"time": T0, "jobs": chain, "skipped": []}]))
    calls = counting(("scontrol", "sacct"), tmp_path / "bin", monkeypatch)
    output = status_of(run_dir, capsys)
    assert all(f"{stage:<11}job {job_id}: COMPLETED" in output for stage, job_id in stages.items()), output
    logged = calls.read_text().splitlines()
    assert sorted(call for call in logged if call.startswith("scontrol")) == [
        f"scontrol show job {job}" for job in jobs
    ]
    assert len([call for call in logged if call.startswith("sacct")]) == len(jobs)
    # Cancel likewise: whether the jobs write this directory, and whether they are live, from one answer a job.
    calls.write_text("")
    (run_dir / "train").mkdir()
    (run_dir / "train" / "job.yaml").write_text("{}\n")  # a training that has ended
    cancel(CancelJob(run_dir=str(run_dir)))
    assert capsys.readouterr().out == f"no stage of {run_dir} is queued or running: nothing to cancel\n"
    assert not (run_dir / "train" / "STOP").exists()  # which a relaunch then said had stopped the last
    logged = calls.read_text().splitlines()
    assert sorted(call for call in logged if call.startswith("scontrol")) == [
        f"scontrol show job {job}" for job in jobs
    ]
    # A stage after the training live alone (the export): cancelled, and no STOP left for the next launch either.
    export = sbatch(slurm_cluster, run_dir, "--wrap=sleep 60")
    chain.append({"stage": "export", "job_id": export})
    (run_dir / "chain.json").write_text(json.dumps([{"time": T0, "jobs": chain, "skipped": []}]))
    cancel(CancelJob(run_dir=str(run_dir)))
    assert f"cancelled the export stage's Slurm job {export}" in capsys.readouterr().out
    assert not (run_dir / "train" / "STOP").exists()


def test_a_local_pipelines_directory_is_shown_stage_by_stage_and_its_commands_go_to_its_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status said it was no run directory until its training began, then a sweep of one run; logs and cancel said
    it was no run directory."""
    pipeline = tmp_path / "demo"
    (pipeline / "tokenizer").mkdir(parents=True)
    (pipeline / "tokenizer" / "metadata.json").write_text("{}\n")
    (pipeline / "tokens").mkdir()  # being encoded
    assert status_of(pipeline, capsys).splitlines() == [
        f"pipeline   {pipeline}: a local `corolla pipeline`, a stage a line (its folder)",
        "tokenizer  written (tokenizer/)",
        "evaluation not begun, or made elsewhere (tokenizer-eval/)",
        "tokens     begun, not finished (tokens/)",
        "training   not begun, or made elsewhere (train/)",
        "export     not begun, or made elsewhere (hf/)",
    ]
    make_trained_run(pipeline / "train")
    shown = status_of(pipeline, capsys)
    assert "training   prepared: its status follows (train/)\n" in shown
    assert f"\n\nrun        {pipeline}/train\n" in shown
    for command in (LogsJob, CancelJob):
        with pytest.raises(ValueError, match=f"^{re.escape(str(pipeline / 'train'))} is a local run"):
            {LogsJob: show_logs, CancelJob: cancel}[command](command(run_dir=str(pipeline)))
    # Neither an imported model (its tokenizer/ beside imported.json) nor a directory of runs that holds a tokenizer.
    (tmp_path / "imported" / "tokenizer").mkdir(parents=True)
    (tmp_path / "imported" / "imported.json").write_text("{}\n")
    make_trained_run(tmp_path / "runs" / "a")
    (tmp_path / "runs" / "tokenizer").mkdir()
    assert not is_local_pipeline(tmp_path / "imported") and not is_local_pipeline(tmp_path / "runs")
