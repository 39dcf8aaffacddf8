"""What a run that trains for weeks, resumed dozens of times, costs each command: its records grow a line a step
(160 MB a million steps), and what wants their last steps reads them from the end, as far as it needs."""

from __future__ import annotations

import json
import socket
import tracemalloc
from pathlib import Path

from distributed import run_ranks
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from tracking_server import MlflowServer

from launch.cli import main
from launch.rundir import outbox, tracking
from launch.rundir.files import JOB_FILE, METRICS_FILE, RUN_FILE, TRACKING_STATE, VALIDATION_FILE
from launch.rundir.loss_chart import render_loss_chart
from launch.rundir.records import append_record, keep_steps_up_to, last_value_per_step, read_jsonl
from launch.rundir.run_record import TrackedRun, default_uri, record_run

STEPS = 200_000  # 30 MB of step records


def bytes_read() -> int:
    """What this process has read so far, from any file (Linux's count)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def long_run(run_dir: Path, steps: int = STEPS, sent: int = STEPS) -> Path:
    """A run directory that trained `steps` steps, validating every 1,000, and MLflow holds `sent` of them."""
    run_dir.mkdir()
    (run_dir / JOB_FILE).write_text(f"train:\n  steps: {steps}\nmodel:\n  seq_length: 2048\n")
    with (run_dir / METRICS_FILE).open("w") as file:
        for step in range(1, steps + 1):
            record = {"step": step, "loss": 2 + 1 / step, "lr": 3e-4, "grad_norm": 0.8, "batch_size": 512}
            file.write(json.dumps({**record, "tokens_per_second": 4096.0, "time": step}) + "\n")
    with (run_dir / VALIDATION_FILE).open("w") as file:
        for step in range(1000, steps + 1, 1000):
            file.write(json.dumps({"step": step, "loss": {"eng_Latn": 2.0, "fra_Latn": 3.0}, "time": step}) + "\n")
    run = {"tracking_uri": "sqlite:///mlflow.db", "run_id": "0123abcd", "experiment_id": "1"}
    (run_dir / RUN_FILE).write_text(json.dumps(run))
    (run_dir / TRACKING_STATE).write_text(json.dumps({"sent": {METRICS_FILE: sent, VALIDATION_FILE: sent}}))
    return run_dir


def test_status_of_a_long_run_reads_the_end_of_its_records_not_the_whole_files(tmp_path: Path, capsys) -> None:
    run_dir = long_run(tmp_path / "run", sent=STEPS - 10)
    assert main(["status", str(run_dir)]) == 0  # what it imports is read once
    capsys.readouterr()
    before = bytes_read()
    assert main(["status", str(run_dir)]) == 0
    read = bytes_read() - before
    status = capsys.readouterr().out
    assert f"step {STEPS} of {STEPS}, loss 2.0000" in status
    assert "(median of the last 10 steps)" in status
    assert f"validation step {STEPS}, loss 2.5000 (mean of 2 languages)" in status
    assert f"MLflow holds steps to {STEPS - 10}, 10 steps behind" in status
    assert read < (run_dir / METRICS_FILE).stat().st_size / 50


def test_a_resume_that_redoes_no_step_leaves_the_records_as_they_are_and_reads_their_end(tmp_path: Path) -> None:
    # A clean stop (a time limit, a preemption, train.exit_after) saves the step it stopped at: nothing to drop.
    metrics = long_run(tmp_path / "run") / METRICS_FILE
    file_before, before = metrics.stat(), bytes_read()
    assert keep_steps_up_to(metrics, STEPS) == []
    assert bytes_read() - before < metrics.stat().st_size / 50
    assert (metrics.stat().st_ino, metrics.stat().st_mtime_ns) == (file_before.st_ino, file_before.st_mtime_ns)


def test_a_resume_after_a_crash_drops_the_steps_it_redoes(tmp_path: Path) -> None:
    metrics = tmp_path / METRICS_FILE
    for step in [1, 2, 3, 2, 3, 4, 5]:  # the steps an older corolla appended again after a crash
        append_record(metrics, {"step": step, "loss": float(step)})
    metrics.write_text(metrics.read_text() + '{"step": 6, "lo')  # cut short by the crash
    assert keep_steps_up_to(metrics, 3) == [{"step": 4, "loss": 4.0}, {"step": 5, "loss": 5.0}]  # those it dropped
    assert [record["step"] for record in read_jsonl(metrics)] == [1, 2, 3]
    assert keep_steps_up_to(metrics, 3) == []


def tracked_long_run(run_dir: Path, sent: int, uri: str | None = None, steps: int = STEPS) -> TrackedRun:
    """long_run, its MLflow run (in its embedded store, or at `uri`) holding the steps up to `sent`."""
    long_run(run_dir, steps, sent)
    uri = uri or default_uri(run_dir)
    client = MlflowClient(uri)
    experiment = client.create_experiment("long", artifact_location=(run_dir / "mlartifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_batch(run_id, metrics=[Metric(tracking.STEP_METRICS["loss"], 2.0, step, step) for step in (1, sent)])
    tracked = TrackedRun(uri, run_id, experiment)
    record_run(run_dir, tracked)
    return tracked


def test_mlflow_is_sent_what_it_lacks_of_a_long_run_from_the_end_of_its_records(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    tracked = tracked_long_run(run_dir, sent=STEPS - 2500)
    assert outbox.update(run_dir)  # a launch's, sending more records than a look takes; what it imports is read once
    history = MlflowClient(tracked.tracking_uri).get_metric_history(tracked.run_id, tracking.STEP_METRICS["loss"])
    assert sorted(entry.step for entry in history) == [1, *range(STEPS - 2500, STEPS + 1)]
    for step in range(STEPS + 1, STEPS + 11):  # the next launch trains on
        append_record(run_dir / METRICS_FILE, {"step": step, "loss": 2.0, "time": step})
    before = bytes_read()
    sender = outbox.Sender(run_dir)  # the launcher's, while the ranks train
    sender.close()
    assert bytes_read() - before < (run_dir / METRICS_FILE).stat().st_size / 10
    assert tracking.last_step(tracked, tracking.STEP_METRICS["loss"]) == STEPS + 10


def test_steps_trained_anew_reach_mlflow_once_each_by_every_launch_after_the_one_that_wrote_them(tmp_path) -> None:
    """Launches resumed from step 10 of a run MLflow held to step 20 trained steps 13-20 otherwise (another lr), and
    queued them to be sent again (retrained.jsonl); MLflow holds both values, the new last, each sent once, whichever
    launch sends them: the one that wrote some died before it sent them all."""
    run_dir = tmp_path / "run"
    tracked = tracked_long_run(run_dir, sent=20, steps=20)  # MLflow holds steps 1 and 20
    metrics = run_dir / METRICS_FILE
    keep_steps_up_to(metrics, 10)

    def trained(steps: range) -> None:
        for step in steps:
            record = {"step": step, "loss": 5.0 if step >= 13 else 2 + 1 / step, "time": 1000 + step}
            append_record(metrics, record)
            if 13 <= step <= 20:
                outbox.resend(run_dir, METRICS_FILE, record, 10)

    trained(range(11, 17))
    assert outbox.update(run_dir)  # the launch that died: it sent those
    trained(range(17, 23))
    sender = outbox.Sender(run_dir)  # the next launch's
    sender.close()
    outbox.sync(run_dir)  # and a sync: nothing twice
    history = MlflowClient(tracked.tracking_uri).get_metric_history(tracked.run_id, tracking.STEP_METRICS["loss"])
    assert sorted(entry.step for entry in history) == [1, *range(13, 20), 20, 20, 21, 22]
    last = {entry.step: entry.value for entry in sorted(history, key=lambda entry: entry.timestamp)}
    assert [last[step] for step in range(13, 21)] == [5.0] * 8
    run = MlflowClient(tracked.tracking_uri).get_run(tracked.run_id)
    assert run.data.tags[tracking.RETRAINED_TAG] == "10" and sender.caught_up()


def relaunched(run_dir: Path) -> list[list[int]]:
    """On a rank of a process group of one: a run MLflow holds to step 20, then launches that resume from step 10 (a
    rank 0 each); the steps each queued to be sent again."""
    from launch.train.loop import StepRecord
    from launch.train.reporter import Reporter

    def launch(lr: float, steps: range, noise: float = 1e-6) -> list[int]:
        reporter = Reporter(run_dir, 0, 30, sends=False)
        reporter.begin(10)
        for step in steps:
            reporter.step(StepRecord(step, (2 + 1 / step) * (1 + noise), lr, 0.8, 8, 4096.0))
        queued = read_jsonl(run_dir / "retrained.jsonl")
        return [entry["record"]["step"] for entry in queued]

    # GPU-like noise, within the tolerance: a launch that died at step 12, one that went on, its restart.
    return [
        launch(3e-4, range(11, 13)),
        launch(3e-4, range(11, 22)),
        launch(3e-4, range(11, 13), noise=-1e-6),
        launch(1e-4, range(11, 16)),
    ]  # then another learning rate


def test_steps_redone_alike_are_not_sent_again_however_many_launches_redo_them(tmp_path: Path) -> None:
    """Figures that differed by a GPU's rounding were exact-compared, and steps a launch before had dropped, which
    this one could not compare, were taken for trained anew: every crash-restart sent its redone steps again."""
    run_dir = long_run(tmp_path / "run", steps=20, sent=20)
    (run_dir / METRICS_FILE).write_text(
        "".join(json.dumps({"step": n, "loss": 2 + 1 / n, "lr": 3e-4, "batch_size": 8}) + "\n" for n in range(1, 21))
    )
    [queued_after] = run_ranks(1, relaunched, run_dir)
    assert queued_after == [[], [], [], list(range(11, 16))]


def test_a_sync_asks_mlflow_for_the_run_not_for_every_step_it_holds(tmp_path: Path) -> None:
    # A sync (and a launch that lost tracking.json) asks MLflow how far it holds the run: its metrics' whole history
    # was a request per 25,000 steps, 40 of them at a million, each of them megabytes.
    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    try:
        tracked = tracked_long_run(tmp_path / "run", sent=1990, uri=server.start(), steps=2000)
        outbox.sync(tmp_path / "run")
        assert tracking.last_step(tracked, tracking.STEP_METRICS["loss"]) == 2000
    finally:
        server.kill()
    requests = (tmp_path / "server" / "server.log").read_text()
    assert "/metrics/get-history" not in requests and "/runs/get?" in requests


def test_a_sender_whose_mlflow_is_away_holds_no_more_of_the_records_the_longer_it_is_away(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on: a server that is away
        probe.bind(("127.0.0.1", 0))
        away = f"http://127.0.0.1:{probe.getsockname()[1]}"
    run_dir = long_run(tmp_path / "run", steps=40_000, sent=0)  # a day of steps MLflow never got: 70 MB as records
    record_run(run_dir, TrackedRun(away, "0123abcd", "1"))
    tracemalloc.start()
    try:
        sender = outbox.Sender(run_dir)
        sender.close()
        held = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "Connection" in (sender.state.error or "")
    assert held < 8 * 2**20


def test_the_loss_chart_of_a_long_run_holds_one_figure_a_step_not_its_records(tmp_path: Path) -> None:
    run_dir = long_run(tmp_path / "run")
    append_record(run_dir / METRICS_FILE, {"step": STEPS, "loss": 1.5})  # a step redone: its last record counts
    append_record(run_dir / METRICS_FILE, {"step": STEPS + 1, "note": "none of corolla's"})
    steps, losses = last_value_per_step(run_dir / METRICS_FILE, "loss")
    assert steps == list(range(1, STEPS + 1)) and losses[0] == 3.0 and losses[-1] == 1.5
    tracemalloc.start()
    try:
        chart = render_loss_chart(run_dir, 64_000)
        held = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert chart.startswith(b"\x89PNG")
    assert held < (run_dir / METRICS_FILE).stat().st_size  # the records as dicts: 200 MB
