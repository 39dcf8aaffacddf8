"""A run's life across launches: RUN_DIR/history.jsonl, one line per event.

- launch: `corolla train` or `corolla submit` prepared the run (written before any rank starts), with the
  fingerprint of the tokenizer of its token files (`tokenizer_fingerprint`), which a relaunch must match, and its
  MLflow run as run.json names it (`mlflow_run`), which a launch that finds run.json gone writes back, and the
  settings it changed of those its checkpoints were trained with (`changed`);
- start: a launch's ranks began (rank 0 writes): where (host or Slurm job, restart count, nodes), the checkpoint
  step it resumed from and how many steps it redoes (logged before, lost with the previous start); or, marked
  `before_training`, a Slurm start that failed before its rank 0 wrote that (slurm/task.py), which counts as any;
  two ranks that fail at once may each record it, and the history reads it once;
- stopped: a clean stop with a checkpoint, for a `signal` (one before the time limit, a preemption, a STOP file, or
  UNFIT_NODES: the health check after that checkpoint found nodes unfit, and a job without them takes over), or with
  no signal after train.exit_after steps of the launch;
- finished: trained to the last step;
- gave_up: a failure with no restart left in the budget;
- diverged: a step's loss or gradient norm was not finite, one too many: stopped, nothing of it saved;
- no_space: the filesystem of the checkpoint or of the run directory's records was full: stopped, the previous
  checkpoint kept;
- refused: a start ended on what no restart would mend (its token files encoded again, a damaged checkpoint, a rank
  without a GPU of its own), and why (`reason`): no job trains the run until it is launched again;
- unfit: a start's health check (before it trains, or after a checkpoint) found nodes unfit (launch/train/health.py),
  and why; `left_out`: the run's jobs leave them out from then on (a job without them took over), or trained on them
  (the partition has no others).
A start that follows another start (nothing clean in between) follows a failure: a dead node, a crashed or hung
rank. Failures since the last launch count against the restart budget; clean stops do not. `crashes` counts them
over the whole history, launches by hand included.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from itertools import pairwise
from pathlib import Path

from launch.rundir.files import HISTORY_FILE
from launch.rundir.records import append_record, read_jsonl


class Event(StrEnum):
    """The kinds of line in the history, as the module's docstring describes them."""

    launch = "launch"
    start = "start"
    stopped = "stopped"
    finished = "finished"
    gave_up = "gave_up"
    diverged = "diverged"
    no_space = "no_space"
    refused = "refused"
    unfit = "unfit"


# In a launch: the fingerprint of the tokenizer of its token files; its MLflow run (run.json's record); the settings
# it changed of the job its checkpoints were trained as ({name: [before, after]}).
TOKENIZER_RECORD = "tokenizer_fingerprint"
MLFLOW_RUN_RECORD = "mlflow_run"
CHANGED_RECORD = "changed"
# In a start: the step of the checkpoint it resumed from (0: none); that it failed before it trained, recorded by what
# asked for the restart.
RESUMED_FROM = "resumed_from_step"
BEFORE_TRAINING = "before_training"
# A stopped start's signal when it gave way after a checkpoint to a job without the nodes found unfit.
UNFIT_NODES = "unfit nodes"
# After these no job trains the run until it is launched again.
ENDED = (Event.finished, Event.gave_up, Event.diverged, Event.no_space, Event.refused)


def launches(events: list[dict]) -> list[dict]:
    return [event for event in events if event["event"] == Event.launch]


def failures(events: list[dict]) -> int:
    """Failed starts (another start directly followed, a health check's verdict between them aside) since the last
    launch and since the last start that saved a newer checkpoint than the one it resumed from, which counts alone if
    it failed: a run that goes on making progress is never given up, one that fails from the same checkpoint again and
    again is."""
    events = [event for event in events if event["event"] != Event.unfit]
    launches = [index for index, event in enumerate(events) if event["event"] == Event.launch]
    count, furthest = 0, None
    for previous, event in pairwise(events[launches[-1] :] if launches else events):
        step = event.get(RESUMED_FROM) if event["event"] == Event.start else None
        if step is not None and furthest is not None and step > furthest:
            count = 0
        if event["event"] == previous["event"] == Event.start:
            count += 1
        furthest = step if step is not None and (furthest is None or step > furthest) else furthest
    return count


def restarts(events: list[dict]) -> int:
    """Starts that came back after another of the same launch (a requeue, a restart after a failure), not a launch's
    first; where the history records no launch (an older corolla's), every start after the first."""
    if not any(event["event"] == Event.launch for event in events):
        return max(0, sum(event["event"] == Event.start for event in events) - 1)
    count, first = 0, True
    for event in events:
        if event["event"] == Event.launch:
            first = True
        elif event["event"] == Event.start:
            count += not first
            first = False
    return count


def crashes(events: list[dict]) -> int:
    """Starts that ended without a word: another start or launch came next."""
    kinds = [event["event"] for event in events if event["event"] not in (Event.gave_up, Event.unfit)]
    return sum(
        1 for previous, kind in pairwise(kinds) if previous == Event.start and kind in (Event.start, Event.launch)
    )


def _once_per_start(events: list[dict]) -> list[dict]:
    """The events, without a second record of a Slurm start (its job and restart count) since the launch."""
    kept, seen = [], set()
    for event in events:
        if event["event"] == Event.launch:
            seen.clear()
        elif event["event"] == Event.start and "slurm_job" in event:
            start = (str(event["slurm_job"]), event.get("restart"))
            if start in seen:
                continue
            seen.add(start)
        kept.append(event)
    return kept


def has_ended(events: list[dict]) -> bool:
    return bool(events) and events[-1]["event"] in ENDED


class RunHistory:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / HISTORY_FILE

    def events(self) -> list[dict]:
        """Every event recorded, a start recorded twice once; a line cut short by a crash mid-write is passed over
        (records.py)."""
        events = read_jsonl(self.path)
        for event in events:
            if not (isinstance(event.get("event"), str) and isinstance(event.get("time"), int | float)):
                raise ValueError(
                    f"{self.path} holds a line that is not an event corolla wrote ({json.dumps(event)[:80]}): "
                    "remove that line"
                )
        return _once_per_start(events)

    def record(self, event: Event, **details: object) -> None:
        append_record(self.path, {"event": event, "time": time.time(), **details})

    def launches(self) -> list[dict]:
        return launches(self.events())

    def starts(self) -> list[dict]:
        return [event for event in self.events() if event["event"] == Event.start]

    def failures(self) -> int:
        return failures(self.events())

    def restarts(self) -> int:
        return restarts(self.events())

    def crashes(self) -> int:
        return crashes(self.events())

    def tokenizer_fingerprint(self) -> str | None:
        """The tokenizer the run's checkpoints learnt, as its last launch recorded it (None: an older corolla's)."""
        recorded = [event[TOKENIZER_RECORD] for event in self.launches() if event.get(TOKENIZER_RECORD)]
        return recorded[-1] if recorded else None

    def mlflow_run(self) -> object:
        """run.json's record, as the last launch that recorded one copied it (None: none did, or an older corolla's)."""
        recorded = [event[MLFLOW_RUN_RECORD] for event in self.launches() if event.get(MLFLOW_RUN_RECORD)]
        return recorded[-1] if recorded else None

    def unfit_nodes(self) -> set[str]:
        """The nodes the run's jobs leave out: found unfit, and left out then."""
        unfit = (event for event in self.events() if event["event"] == Event.unfit and event.get("left_out"))
        return {node for event in unfit for node in event["nodes"]}
