"""A run's life across launches: RUN_DIR/history.jsonl, one line per start, clean stop and end (rank 0 writes).

A start records where it runs (host or Slurm job, nodes, restart count), the checkpoint step it resumed from and how
many steps it redoes (logged before, lost with the last launch). A start not preceded by a clean stop (a signal
before the time limit or a preemption) follows a failure: a dead node, a crashed or hung rank. Failures count
against the restart budget; clean stops do not.
"""

from __future__ import annotations

import json
import time
from itertools import pairwise
from pathlib import Path

HISTORY_FILE = "history.jsonl"


class RunHistory:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / HISTORY_FILE

    def events(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def record(self, event: str, **details: object) -> None:
        with self.path.open("a") as history:
            history.write(json.dumps({"event": event, "time": time.time(), **details}) + "\n")

    def starts(self) -> list[dict]:
        return [event for event in self.events() if event["event"] == "start"]

    def failures(self) -> int:
        """Starts that followed neither nothing (the first launch) nor a clean stop or end."""
        events = self.events()
        return sum(
            1
            for previous, event in pairwise(events)
            if event["event"] == "start" and previous["event"] not in ("stopped", "finished")
        )
