"""The library workarounds know which releases they were written for, and say so in one line about any other."""

from __future__ import annotations

import pytest

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
