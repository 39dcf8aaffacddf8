"""The library workarounds know which releases they were written for, and say so in one line about any other."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from launch import compat


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


def test_a_rank_imports_neither_mlflow_nor_the_compiler_and_megatrons_fusions_still_compile_when_called() -> None:
    # A fresh interpreter: this one has imported all of them already.
    probe = (
        "import sys, torch\n"
        "from launch.compat import import_training_libraries\n"
        "import_training_libraries()\n"
        "from deepspeed.autotuning import autotuner\n"
        "assert not autotuner.has_mlflow\n"
        "import launch.train.worker\n"
        "assert 'mlflow' not in sys.modules and 'torch._dynamo' not in sys.modules, 'imported'\n"
        "from megatron.core.fusions.fused_bias_gelu import bias_gelu\n"
        "x = torch.ones(3)\n"
        "assert torch.allclose(bias_gelu(x, x), torch.nn.functional.gelu(2 * x, approximate='tanh'), atol=1e-3)\n"
        "assert 'torch._dynamo' in sys.modules and torch.compile.__module__ == 'torch'\n"
        "import mlflow\n"
        "print('ok', mlflow.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok mlflow" in result.stdout, result.stderr[-2000:]


def test_a_rank_sets_the_gpu_environment_before_any_library_loads_and_keeps_what_the_user_set() -> None:
    """CUDA_DEVICE_MAX_CONNECTIONS is read as the CUDA context is made, the allocator's settings as torch's allocator
    is: they were set only as the rank joined its process group, after deepspeed, megatron-core and torch had loaded
    (one of them may make the context as it loads)."""
    names = list(compat.GPU_ENVIRONMENT)
    probe = (
        "import builtins, json, os, sys\n"
        "seen, load = {}, builtins.__import__\n"
        "def watch(name, *args, **kwargs):\n"
        "    if name == 'torch' and 'torch' not in sys.modules and not seen:\n"
        f"        seen.update({{key: os.environ.get(key) for key in {names!r}}})\n"
        "    return load(name, *args, **kwargs)\n"
        "builtins.__import__ = watch\n"
        "from launch.compat import import_training_libraries\n"
        "import_training_libraries()\n"
        "print(json.dumps(seen))\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in names}
    env["PYTORCH_CUDA_ALLOC_CONF"] = "max_split_size_mb:128"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128",
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    }
