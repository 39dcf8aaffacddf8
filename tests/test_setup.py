"""scripts/setup.sh, which both of the README's commands run first, where what it needs is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import REPO_ROOT


def test_setup_without_python_says_what_to_install(tmp_path: Path) -> None:
    """A machine without Python ended the set-up with exit status 1 and not a word (`command -v` under `set -e`)."""
    clone, tools = tmp_path / "clone", tmp_path / "bin"
    (clone / "scripts").mkdir(parents=True)
    tools.mkdir()
    for name in ("scripts/setup.sh", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO_ROOT / name, clone / name)
    for tool in ("bash", "cat", "sha256sum", "cut", "dirname"):  # no flock either: set-up goes on without it
        (tools / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        ["bash", str(clone / "scripts" / "setup.sh")], env={"PATH": str(tools)}, capture_output=True, text=True
    )
    assert result.returncode == 1 and result.stderr == (
        "setup.sh: corolla needs Python 3.11 or newer as python3.11 or python3: install it (Debian 12: apt-get install "
        "python3 python3-venv)\n"
    )
    assert sorted(path.name for path in clone.iterdir()) == ["pyproject.toml", "requirements.lock", "scripts"]
