"""What processes killed outright leave beside an output (tokenizer training and extension, `export hf`): staging
areas, as a SIGKILL leaves them, and what the next staging area of that output does with them."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tokenizer.files import RETIRED, publish, staging_area


def ended_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def left_area(out: Path, host: str, pid: int, retired: str | None = None) -> Path:
    """A staging area as its process left it, holding a half-built output, and `out` as it was if killed between
    publish's two renames."""
    area = out.parent / f".{out.name}.staging-{host}-{pid}"
    (area / "building").mkdir(parents=True)
    (area / "building" / "tokenizer.model").write_text("half")
    if retired is not None:
        (area / RETIRED).mkdir()
        (area / RETIRED / "tokenizer.model").write_text(retired)
    return area


def test_an_ended_process_of_this_host_gives_back_the_output_it_had_retired(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    left = left_area(out, socket.gethostname(), ended_pid(), retired="the old one")
    with staging_area(out) as area:
        assert (out / "tokenizer.model").read_text() == "the old one" and not left.exists()
        (area / "new").mkdir()
        (area / "new" / "tokenizer.model").write_text("the new one")
        publish(area / "new", out, replace=True)
    assert (out / "tokenizer.model").read_text() == "the new one"
    assert [path.name for path in tmp_path.iterdir()] == ["tok"]


def test_a_live_process_keeps_its_area(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    with subprocess.Popen(["sleep", "60"]) as running:
        try:
            left = left_area(out, socket.gethostname(), running.pid)
            with staging_area(out):
                assert (left / "building" / "tokenizer.model").read_text() == "half"
        finally:
            running.kill()


def test_another_hosts_area_is_named_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tok"
    left = left_area(out, "gpu-node-17", 4242, retired="the old one")
    with staging_area(out):
        pass
    assert (left / RETIRED / "tokenizer.model").read_text() == "the old one" and not out.exists()
    assert capsys.readouterr().err.splitlines() == [
        f"corolla: warning: {left} was left by a process on gpu-node-17, which cannot be seen from here, and holds "
        f"the tok it replaced, in {RETIRED}/: remove it once nothing on gpu-node-17 writes {out}"
    ]


def test_an_output_another_command_wrote_meanwhile_is_kept_unless_replacing_was_asked(tmp_path: Path) -> None:
    """Two trainings of one output_dir, neither with overwrite=true: the second to finish is refused, and the first's
    output stays as it was."""
    out = tmp_path / "tok"
    with staging_area(out) as area:
        (area / "new").mkdir()
        (area / "new" / "tokenizer.model").write_text("mine")
        out.mkdir()
        (out / "tokenizer.model").write_text("theirs")  # published by the other command while this one ran
        with pytest.raises(ValueError, match=f"^{out} was written by another command while this one ran: see what"):
            publish(area / "new", out, replace=False)
    assert (out / "tokenizer.model").read_text() == "theirs"
    assert [path.name for path in tmp_path.iterdir()] == ["tok"]
