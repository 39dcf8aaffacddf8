"""The local backend: every rank of a run as a process on this machine, started by torchrun (which picks a free
port), watched until they end; `corolla train`.

torchrun runs in a session of its own, so a terminal's Ctrl-C or hang-up reaches corolla alone; corolla passes
SIGINT, SIGTERM and SIGHUP on to the ranks themselves (not through torchrun, which would kill them 30 s later), and
they stop after the same step, with a checkpoint. A second signal kills torchrun and its ranks at once (each rank
runs in a session of its own, under torchrun). torchrun gets SIGTERM should corolla die: nothing outlives the
launcher.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import psutil

from launch.compat import torchrun
from launch.config.cluster import Scheduler
from launch.config.schemas import TrainJob
from launch.jobs.backend import Backend
from launch.jobs.monitor import line
from launch.rundir.checkpoints import newest_intact
from launch.rundir.directory import RunDirectory
from launch.rundir.files import CHECKPOINTS, JOBS_FILE
from launch.rundir.history import Event, RunHistory
from launch.rundir.lock import LiveJob, holding, writer
from launch.train.stopping import ERROR_PREFIX, STACKS_FOLLOW, WATCHDOG
from tokenizer.children import ended_with_parent

if TYPE_CHECKING:
    from launch.jobs.prepare import PreparedRun

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Forwarding:
    """While the ranks run: each signal of FORWARDED goes to them; the second one kills torchrun and every process
    under it (_kill)."""

    def __init__(self, torchrun: subprocess.Popen) -> None:
        self.torchrun, self.received = torchrun, []

    def __call__(self, number: int, frame: object) -> None:
        self.received.append(number)
        if len(self.received) > 1:
            _kill(self.torchrun)
            return
        for rank in psutil.Process(self.torchrun.pid).children():
            rank.send_signal(number)


def _kill(torchrun: subprocess.Popen) -> None:
    """SIGKILL to torchrun and every process under it: its ranks run in sessions of their own, which a kill of
    torchrun's would miss, and nothing would end them then."""
    with contextlib.suppress(psutil.NoSuchProcess):
        under = psutil.Process(torchrun.pid).children(recursive=True)
        torchrun.kill()  # first, so that it starts no rank again
        for process in under:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


# What a rank says of why it failed: corolla's own one-line errors, or the last line of a Python traceback (torchrun
# prefixes a rank's lines with "[rankN]:").
CAUSE = re.compile(rf"^(?:\[rank(\d+)\]:\s*)?((?:corolla: |{WATCHDOG}|[\w.]*(?:Error|Exception): ).+)$")


READ_ON_S = 10.0  # after torchrun ends, how long its ranks' last words may take to come through


class _FirstCause:
    """Passes the ranks' error output on as it comes, and keeps the first line that says why one failed: corolla's
    own before a Python exception's (a rank's collective times out on a peer that corolla's watchdog then names), the
    first of each (the others' failures usually follow from it)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.causes: dict[bool, str] = {}  # by whether corolla said it
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        passing_on = True
        for raw in stream:  # read to the end whatever happens: a pipe left full would block every rank
            text = raw.decode(errors="replace")
            if passing_on:
                try:
                    sys.stderr.write(text)
                    sys.stderr.flush()
                except OSError:  # the terminal or pipe corolla writes to is gone
                    passing_on = False
            if match := CAUSE.match(text.rstrip()):
                cause = match[2].removeprefix(ERROR_PREFIX).split(STACKS_FOLLOW)[0]
                self.causes.setdefault(
                    match[2].startswith("corolla"), f"rank {match[1]}: {cause}" if match[1] else cause
                )

    def wait(self) -> str | None:
        self.thread.join(timeout=READ_ON_S)  # a rank that outlived torchrun may hold the pipe open
        return self.causes.get(True) or self.causes.get(False)


@dataclass(frozen=True)
class RanksEnd:
    status: int  # torchrun's exit status: non-zero if any rank failed
    cause: str | None  # the first reason a rank gave for failing
    cut_short: signal.Signals | None  # a second signal, which ended the ranks outright before they stopped


def run_ranks(run_dir: Path, world_size: int) -> RanksEnd:
    """Runs the run's ranks here and waits for their end."""
    threads = max(1, (os.cpu_count() or 1) // world_size)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    # No log directory: torchrun would leave an empty one in /tmp at every launch; the ranks' errors come on stderr.
    launcher = [*torchrun(), "--standalone", f"--nproc-per-node={world_size}", f"--log-dir={os.devnull}"]
    command = [*launcher, "-m", "launch.train", str(run_dir)]
    process = subprocess.Popen(
        command,
        env=env,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=functools.partial(ended_with_parent, os.getpid()),
    )
    errors = _FirstCause(process.stderr)
    previous, forwarding = {}, None
    try:
        if threading.current_thread() is threading.main_thread():  # where Python lets handlers be installed
            forwarding = _Forwarding(process)
            previous = {number: signal.signal(number, forwarding) for number in FORWARDED}
        status = process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if process.poll() is None:
            _kill(process)
    second = forwarding.received[1:] if forwarding and status else []
    return RanksEnd(status, errors.wait(), signal.Signals(second[0]) if second else None)


def _not_here(run: RunDirectory, command: str, instead: str) -> ValueError:
    # A run sent to Slurm before may go on locally: its jobs have ended (`corolla train` refuses to start while one is
    # queued or running), and what it does now is the local launch's.
    why = f"no {JOBS_FILE}" if not (run.path / JOBS_FILE).is_file() else "its latest launch was `corolla train`"
    return ValueError(
        f"{run.path} is a local run ({why}): `corolla {command}` is for runs sent to Slurm with `corolla submit`; "
        f"{instead}"
    )


def _why_ended(run_dir: Path, end: RanksEnd, last: dict, stopped: bool) -> str:
    """The one line for ranks that did not train to the end: stopped with a checkpoint, ended outright by a second
    signal, or failed; `last` is the history's last event."""
    if stopped:
        return (
            f"stopped at step {last['step']} ({last['signal']}), with a checkpoint: the same command again resumes it"
        )
    if end.cut_short:
        saved = newest_intact(run_dir / CHECKPOINTS)
        resumed = f"its checkpoint of step {saved}" if saved else "the start (no checkpoint was saved)"
        return (
            f"ended outright by a second {end.cut_short.name} before the ranks stopped: the same command again resumes "
            f"from {resumed}"
        )
    if last["event"] == Event.diverged:
        return f"training stopped at step {last['step']}: its loss or gradients are not finite"
    if last["event"] == Event.no_space:
        return last["reason"]
    return f"training failed, {end.cause or f'a rank exited with status {end.status}'}: see the log above"


def _train(run_dir: Path, prepared: PreparedRun) -> None:
    """Runs the prepared run's ranks to their end, this process sending MLflow what they write and how the launch
    ended; a one-line RuntimeError where they did not train to the end."""
    from launch.rundir import outbox, tracking
    from launch.rundir.loss_chart import write_loss_chart

    layout, name = prepared.plan.layout, prepared.job.model.name
    print(f"training {name} on {layout.tp} x {layout.pp} x {layout.dp} (TP x PP x DP) ranks in {run_dir}")
    sender = outbox.Sender(run_dir)
    try:
        end = run_ranks(run_dir, layout.world_size)
        last = RunHistory(run_dir).events()[-1]
        # By a person, to be resumed: saved (even where a second signal then ended the ranks outright), or not.
        stopped = last["event"] == Event.stopped and "signal" in last
        # As the job asked: after train.exit_after steps of this launch, with a checkpoint, to go on later.
        paused = last["event"] == Event.stopped and not stopped
        if end.status or stopped or paused:
            sender.set("KILLED" if stopped or paused or end.cut_short else "FAILED")
    finally:
        sender.close()
    if stopped or end.status:
        raise RuntimeError(_why_ended(run_dir, end, last, stopped))
    chart = write_loss_chart(run_dir, prepared.job.model.vocab_size)
    train = prepared.job.train
    ended = "done"
    if paused:
        ended = f"stopped at step {last['step']} of {train.steps}, as train.exit_after={train.exit_after} asks (the "
        ended += "same command again goes on)"
    print(
        f"{ended}: checkpoints in {run_dir / CHECKPOINTS}, loss curve {chart}; MLflow run {prepared.tracked.run_id}: "
        f"{tracking.ui_command(prepared.tracked)}"
    )


def _holder(run: RunDirectory) -> tuple[str, str] | None:
    """(a few words, a status line) on the `corolla train` that holds the run, if one does."""
    held = writer(run.path)
    if held and held[1]:
        return "running here", f"running: {held[0]}"
    if held and held[1] is None:
        return "held on another host", f"held by {held[0]}, on another host: whether it runs cannot be seen from here"
    return None  # no lock, or a dead process's


class LocalBackend(Backend):
    def __init__(self, live_job: LiveJob = lambda run_dir: None) -> None:
        self.live_job = live_job  # a Slurm job of the run that is queued or running, if any: it holds the run

    def start(self, job: TrainJob, dry_run: bool = False) -> None:
        if dry_run:
            self._start(job, dry_run=True)
            return
        with holding(Path(job.run_dir), self.live_job):
            self._start(job, dry_run=False)

    def _start(self, job: TrainJob, dry_run: bool) -> None:
        # Here rather than above: the data preparation takes seconds to import, status and logs need none of it.
        from launch.jobs.prepare import finish_the_end, prepare_run, trained_to_the_end

        if job.cluster.scheduler != Scheduler.local:
            raise ValueError(f"cluster={job.cluster.name} is a Slurm cluster: submit to it with `corolla submit`")
        run_dir = Path(job.run_dir)
        resume_step = newest_intact(run_dir / CHECKPOINTS)
        if said := trained_to_the_end(job, resume_step):
            if not dry_run:
                finish_the_end(run_dir, resume_step)
            print(said)
            return
        prepared = prepare_run(job, dry_run, self.live_job)
        if dry_run:
            plan = prepared.plan
            layout = plan.layout
            processes = f"{layout.world_size} process{'es' if layout.world_size > 1 else ''}"
            print(
                f"dry run: the job is valid; it would train {prepared.job.model.name} here on {processes}, "
                f"{layout.name}, ZeRO-{plan.zero_stage}, pipeline stages from layers {list(plan.stage_bounds[:-1])}"
            )
            return
        if resume_step:
            print(f"{run_dir} holds a checkpoint at step {resume_step}: resuming from it")
        _train(run_dir, prepared)

    def state_lines(self, run: RunDirectory) -> list[str]:
        """Whether a `corolla train` runs it now; if none does, whether its last launch ended without a word."""
        if holder := _holder(run):
            return [line("state", holder[1])]
        events = RunHistory(run.path).events()
        last = events[-1]["event"] if events else None
        if last not in (Event.start, Event.launch):
            return []
        ended = "its last start recorded no end" if last == Event.start else "its last launch recorded no start"
        return [
            line(
                "state",
                f"not running, and {ended}: it failed (`corolla train` said why in its last line) or was killed; "
                "`corolla train` on it resumes from the newest checkpoint",
            )
        ]

    def state_word(self, run: RunDirectory) -> str:
        holder = _holder(run)
        return holder[0] if holder else "not running"

    def show_logs(self, run: RunDirectory, rank: int, lines: int) -> None:
        raise _not_here(run, "logs", "a local run's ranks print to the terminal of `corolla train`")

    def cancel(self, run: RunDirectory) -> None:
        raise _not_here(run, "cancel", "stop a local run with Ctrl-C in its terminal (it saves a checkpoint first)")
