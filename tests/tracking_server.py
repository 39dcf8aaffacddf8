"""A real `mlflow server` for tests: started on a host and port with its store in a folder, killed (as an outage
would), and started again on the same store and port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from launch.rundir.tracking import answers
from slurm.testcluster import wait_for


class MlflowServer:
    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        self.root, self.host = root, host
        with socket.socket() as probe:
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
        self.uri = f"http://{host}:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        command = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            *("--host", self.host, "--port", str(self.port), "--workers", "1", "--allowed-hosts", "*"),
            *("--artifacts-destination", str(self.root / "artifacts")),
            *("--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}"),
        ]
        with (self.root / "server.log").open("a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        assert wait_for(lambda: answers(self.uri), timeout=90, interval=0.5), (self.root / "server.log").read_text()
        return self.uri

    def kill(self) -> None:
        """Gone at once, workers and all (they linger after a SIGTERM)."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None
