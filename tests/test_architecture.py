"""The architecture as the imports show it: the flow config → plan → train → jobs → cli points one way, model/ and
tokenizer/ are leaves, and the commands that must answer at once, or that only check a job, load no torch."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

# Each package's place in the flow; a module may import its own package and those of lower layers only.
LAYERS = {
    "tokenizer": 0,
    "model": 0,
    "launch.compat": 0,  # library workarounds, for every layer
    "launch.config": 1,
    "launch.data": 2,
    "launch.rundir": 2,
    "launch.plan": 3,
    "launch.train": 4,
    "launch.jobs": 5,
    "slurm": 5,
    "launch.cli": 6,
    "launch.commands": 6,
}
# Imports between packages of the same layer: Slurm is the jobs interface's second backend.
ACROSS = {("slurm", "launch.jobs")}
# What the leaves may take of each other: the model's vocabulary facts (special tokens, padding) are the tokenizer's.
LEAF_IMPORTS = {"model": {"tokenizer.vocab"}, "tokenizer": set()}
HEAVY = ("torch", "deepspeed", "megatron")


def package_of(module: str) -> str | None:
    return next((package for package in LAYERS if module == package or module.startswith(package + ".")), None)


def modules() -> dict[str, Path]:
    found = {}
    for top in ("launch", "model", "tokenizer", "slurm"):
        for path in (REPO_ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path) -> list[str]:
    """Every module `path` imports, at its top or inside a function."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def wrong_way(module: str, imported: str) -> bool:
    source, target = package_of(module), package_of(imported)
    if source is None or target is None or source == target:
        return False
    if source in LEAF_IMPORTS:
        return not any(imported == allowed or imported.startswith(allowed + ".") for allowed in LEAF_IMPORTS[source])
    if LAYERS[target] == LAYERS[source]:
        return (source, target) not in ACROSS
    return LAYERS[target] > LAYERS[source]


def test_every_module_has_a_place_in_the_flow() -> None:
    homeless = [name for name in modules() if package_of(name) is None and name not in ("launch",)]
    assert homeless == []


def test_imports_point_one_way() -> None:
    found = modules()
    wrong = [
        f"{module} imports {imported}"
        for module, path in found.items()
        for imported in imports(path)
        if wrong_way(module, imported)
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("module", "imported", "wrong"),
    [
        ("launch.plan.memory", "launch.train.engine.build_engine", True),
        ("launch.config.schemas", "launch.data.corpus.TokenCorpus", True),
        ("launch.jobs.prepare", "slurm.executor.make_executor", True),
        ("model.config", "launch.config.schemas.TrainConfig", True),
        ("model.hf", "tokenizer.spm.train_sentencepiece", True),
        ("launch.rundir.tracking", "launch.data.prepare.DataFacts", True),
        ("slurm.submit", "launch.jobs.prepare.prepare_run", False),
        ("launch.train.worker", "launch.plan.run_plan.read_plan", False),
        ("model.hf", "tokenizer.vocab.SPECIAL_IDS", False),
    ],
)
def test_the_rule_catches_an_import_the_wrong_way(module: str, imported: str, wrong: bool) -> None:
    assert wrong_way(module, imported) == wrong


def loaded_by(code: str, *arguments: str) -> tuple[set[str], str]:
    """The top-level packages a fresh interpreter has loaded after running `code` (which must not fail), and what
    it printed."""
    probe = f"import sys\n{code}\nimport json; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe, *arguments], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1])), result.stdout


# Runs `corolla` commands one after the other in one interpreter; after each, what it returned and what of HEAVY
# the interpreter holds by then.
COMMANDS_IN_TURN = f"""
import json, os
from launch.cli import main
for args, path in json.loads(sys.argv[1]):
    os.environ["PATH"] = path
    status = main(args)
    heavy = sorted({{module.split(".")[0] for module in sys.modules}} & {set(HEAVY)!r})
    print("PROBE " + json.dumps([args[0], status, heavy]))
"""


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of a run submitted to Slurm (whose commands the test takes off the PATH: they fail at once)."""
    run_dir = tmp_path_factory.mktemp("light") / "run"
    run_dir.mkdir()
    (run_dir / "job.yaml").write_text("model:\n  name: bloom-tiny\ncluster:\n  name: testcluster\n")
    (run_dir / "slurm-jobs.json").write_text('["41"]\n')
    return run_dir


def test_commands_that_only_look_load_no_torch(slurm_run: Path, tmp_path: Path) -> None:
    no_slurm, path = str(tmp_path), os.environ["PATH"]
    commands = [
        (["status", str(slurm_run)], no_slurm, 0),
        (["logs", str(slurm_run)], no_slurm, 0),
        (["cancel", str(slurm_run)], no_slurm, 2),  # Slurm cannot be asked
        (["plan", "experiment=bloom-176b"], path, 0),
        # With a cache of their own: what the repository's runs/cache holds is no business of this test.
        (
            ["submit", "--dry-run", "experiment=bloom-176b", f"run_dir={tmp_path}/dry", f"data.cache_dir={tmp_path}"],
            path,
            0,
        ),
        (["train", "--dry-run", "parallel=3d", f"run_dir={tmp_path}/dry", f"data.cache_dir={tmp_path}"], path, 0),
    ]
    _, printed = loaded_by(COMMANDS_IN_TURN, json.dumps([[args, path] for args, path, _ in commands]))
    outcomes = [json.loads(line.removeprefix("PROBE ")) for line in printed.splitlines() if line.startswith("PROBE ")]
    assert outcomes == [[args[0], status, []] for args, _, status in commands]
    assert not (tmp_path / "dry").exists()


def test_a_rank_loads_neither_sentencepiece_nor_matplotlib() -> None:
    loaded, _ = loaded_by("import launch.train.worker")
    assert "torch" in loaded and not loaded & {"sentencepiece", "matplotlib", "tokenizers"}
