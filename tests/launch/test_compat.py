"""The library workarounds know which releases they were written for, and say so in one line about any other."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from launch.train import compat


def test_the_installed_releases_are_the_ones_written_for() -> None:
    compat.check_versions((*compat.WRITTEN_FOR,))


def test_another_release_is_named_with_the_one_written_for(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"torch": "2.11.0+cu128", "deepspeed": "0.20.1", "megatron-core": "0.16.1", "submitit": "1.5.4"}
    monkeypatch.setattr(compat, "version", installed.__getitem__)
    with pytest.raises(RuntimeError) as raised:
        compat.check_versions((*compat.WRITTEN_FOR,))
    message = str(raised.value)
    assert "deepspeed 0.20.1 (written for 0.19.8)" in message and "\n" not in message
    assert "torch" not in message  # the GPU machine's 2.11 is one of torch's


def test_deepspeed_is_imported_without_mlflow_which_stays_importable() -> None:
    # A fresh interpreter: this one has imported both already.
    probe = (
        "import sys\n"
        "from launch.train.compat import import_deepspeed_without_mlflow\n"
        "import_deepspeed_without_mlflow()\n"
        "from deepspeed.autotuning import autotuner\n"
        "assert not autotuner.has_mlflow and 'mlflow' not in sys.modules\n"
        "import launch.train.worker\n"
        "assert 'mlflow' not in sys.modules\n"
        "import mlflow\n"
        "print('ok', mlflow.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok mlflow" in result.stdout, result.stderr[-2000:]
