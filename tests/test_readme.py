"""Every command line of the README, run: the short ones as written, the long ones with small overrides (a cut of the
sample corpus, a small tokenizer, a few steps). They run in the README's order, as a newcomer would type them, in a
fresh working directory laid out like the repository (its scripts and venv linked), so that `runs/...` land there.
A command line added to the README that no test here runs fails the first test.

Command lines: each line of a ```bash block, and each inline code span that starts with `.venv/bin/` or `bash `."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import free_port
from mlflow.tracking import MlflowClient

from conftest import REPO_ROOT, byte_level_bpe, cut_corpus
from launch.rundir.files import JOBS_FILE
from launch.rundir.run_record import recorded_run
from slurm.testcluster import TestCluster, wait_for

LANGUAGES = ["eng_Latn", "fra_Latn", "hin_Deva", "zho_Hans"]
SMALL_TOKENIZER = ["tokenizer=tiny", "tokenizer.vocab_size=2000", "tokenizer.character_coverage=0.99"]
SHORT = ["train.steps=2", "model.seq_length=32", "data.validation_documents=5"]

# The README's command lines, in its order.
MAIN = "bash scripts/main.sh"
TESTS = "bash scripts/test.sh"
COROLLA = ".venv/bin/corolla"
MAIN_OVERRIDES = "bash scripts/main.sh tokenizer=bpe-64k parallel=single run_dir=runs/alpha"
TOKENIZER_TRAIN = (
    ".venv/bin/corolla tokenizer train corpus=DIR output_dir=DIR "
    "[tokenizer=bpe-64k|parity-64k|parity-250k|unigram-64k|tiny] [tokenizer.KEY=VALUE ...]"
)
TOKENIZER_EVALUATE = ".venv/bin/corolla tokenizer evaluate tokenizer=DIR parallel=DIR output_dir=DIR"
TOKENIZER_ENCODE = ".venv/bin/corolla tokenizer encode tokenizer=DIR corpus=DIR output_dir=DIR"
TOKENIZER_EXTEND = ".venv/bin/corolla tokenizer extend base=DIR corpus=DIR output_dir=DIR [tokenizer.parity_set=DIR]"
TOKENIZER_CFG = ".venv/bin/corolla tokenizer train --cfg tokenizer=parity-64k"
TRAIN = ".venv/bin/corolla train"
TRAIN_3D = ".venv/bin/corolla train parallel=3d run_dir=runs/3d"
TRAIN_TOKENS = ".venv/bin/corolla train data.tokens_dir=runs/demo/tokens run_dir=runs/mine"
MLFLOW_UI = ".venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/RUN_DIR/mlflow.db"
IMPORT = ".venv/bin/corolla import hf hf_dir=DIR run_dir=runs/imported"
INIT_FROM = ".venv/bin/corolla train init_from=runs/imported run_dir=runs/continued"
SUBMIT = ".venv/bin/corolla submit cluster=testcluster parallel=3d run_dir=runs/slurm"
STATUS = ".venv/bin/corolla status runs/slurm"
LOGS = ".venv/bin/corolla logs runs/slurm [rank=N]"
CANCEL = ".venv/bin/corolla cancel runs/slurm"
DRY_RUN = ".venv/bin/corolla submit --dry-run experiment=bloom-176b"
SWEEP = ".venv/bin/corolla submit --multirun cluster=testcluster parallel=3d train.lr=3e-4,1e-3 run_dir=runs/sweep"
SWEEP_STATUS = ".venv/bin/corolla status runs/sweep"
SWEEP_CANCEL = ".venv/bin/corolla cancel runs/sweep"
PIPELINE_SLURM = ".venv/bin/corolla pipeline cluster=testcluster run_dir=runs/chain"
PIPELINE_STATUS = ".venv/bin/corolla status runs/chain"
PIPELINE_LOGS = ".venv/bin/corolla logs runs/chain stage=encode"
PIPELINE_DRY_RUN = (
    ".venv/bin/corolla pipeline --dry-run experiment=bloom-176b data.corpus=DIR encode_task_mb=2048 run_dir=runs/bloom"
)
SETUP_SLURM = "bash scripts/setup-slurm.sh"
CLUSTER_START = ".venv/bin/python -m slurm.testcluster start --nodes 3 --cpus-per-node 4 --accounting"
PLAN = ".venv/bin/corolla plan experiment=bloom-176b"
PLAN_JSON = ".venv/bin/corolla plan --json model=bloom-7b1 train.global_batch=512 cluster.nodes=4"
GPU_BUNDLE = "bash scripts/gpu-bundle.sh"
GPU_CHECK = "bash benchmarks/gpu_check.sh OUT_DIR"

RUN_HERE = [MAIN, COROLLA, MAIN_OVERRIDES, TOKENIZER_TRAIN, TOKENIZER_EVALUATE, TOKENIZER_ENCODE, TOKENIZER_EXTEND]
RUN_HERE += [TOKENIZER_CFG]
RUN_HERE += [TRAIN, TRAIN_3D, TRAIN_TOKENS, MLFLOW_UI, IMPORT, INIT_FROM, SUBMIT, STATUS, LOGS, CANCEL, DRY_RUN, SWEEP]
RUN_HERE += [SWEEP_STATUS, SWEEP_CANCEL]
RUN_HERE += [PIPELINE_SLURM, PIPELINE_STATUS, PIPELINE_LOGS, PIPELINE_DRY_RUN, SETUP_SLURM]
RUN_HERE += [CLUSTER_START, PLAN, PLAN_JSON, GPU_BUNDLE]
# Not run by this module, and why: the test command is what CI runs (its first test below holds .ci/run to it); the
# GPU check needs a GPU (its Python part runs on CPU with --smoke in tests/test_gpu_check.py, its wheels are CPython
# 3.12's, this machine's Python is 3.11).
RUN_ELSEWHERE = [TESTS, GPU_CHECK]


def readme_command_lines() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    fenced = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    inline = re.findall(r"`((?:\.venv/bin/|bash )[^`]+)`", text)
    lines = [" ".join(re.sub(r"\s#.*", "", line).split()) for line in fenced + inline]
    return [line for line in dict.fromkeys(lines) if line]


def test_every_readme_command_line_is_run_here_or_named_with_the_reason_it_is_not() -> None:
    readme = readme_command_lines()
    unrun = sorted(set(readme) - set(RUN_HERE + RUN_ELSEWHERE))
    assert not unrun, f"README lines no test runs: {unrun}"
    gone = sorted(set(RUN_HERE + RUN_ELSEWHERE) - set(readme))
    assert not gone, f"lines this module runs that the README no longer has: {gone}"
    assert readme[:2] == [MAIN, TESTS], "the README starts with the main job's command and the test command"
    assert (REPO_ROOT / ".ci" / "run").read_text().splitlines()[-1] == f"exec {TESTS}"


def installed_as_pinned() -> bool:
    """Whether scripts/setup.sh would leave .venv as it is (the test command runs it first): else the README's
    scripts, run from the working directory below, would install corolla from there."""
    wanted = hashlib.sha256(
        (REPO_ROOT / "pyproject.toml").read_bytes() + (REPO_ROOT / "requirements.lock").read_bytes()
    )
    stamp = REPO_ROOT / ".venv" / ".corolla-installed"
    return stamp.is_file() and stamp.read_text().strip() == wanted.hexdigest()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like the repository for what the README's lines touch, with small data beside."""
    assert installed_as_pinned(), (
        "pyproject.toml or requirements.lock changed since .venv was set up: run scripts/test.sh"
    )
    root = tmp_path_factory.mktemp("readme")
    for name in (".venv", "scripts", "benchmarks", "pyproject.toml", "requirements.lock"):
        (root / name).symlink_to(REPO_ROOT / name)
    cut_corpus(root / "data" / "corpus", LANGUAGES, 300)
    cut_corpus(root / "data" / "parallel", LANGUAGES, 60)
    return root


class Shell:
    def __init__(self, cwd: Path) -> None:
        self.cwd, self.env = cwd, {}

    def __call__(self, line: str, *extra: str, timeout: float = 900) -> str:
        """Runs `line` (with `extra` arguments) in bash; its output, or a failure with it."""
        command = " ".join([line, *map(shlex.quote, extra)])
        env = {**os.environ, **self.env}
        result = subprocess.run(
            ["bash", "-c", command], cwd=self.cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout + result.stderr


@pytest.fixture(scope="module")
def shell(workspace: Path) -> Shell:
    return Shell(workspace)


def sample(workspace: Path) -> list[str]:
    """The sample data, cut small, and the small tokenizer: the overrides of every line that trains."""
    return [f"data.corpus={workspace / 'data' / 'corpus'}", *SMALL_TOKENIZER, *SHORT]


def test_the_main_job_runs_every_stage_and_then_finds_them_current(shell: Shell, workspace: Path) -> None:
    data = workspace / "data"
    small = [f"parallel_set={data / 'parallel'}", f"tokenizer.parity_set={data / 'parallel'}"]
    small += ["tokenizer.sampling=parity", "tokenizer.parity_rounds=2", "parallel=single", *sample(workspace)]
    first = shell(MAIN, *small)
    demo = workspace / "runs" / "demo"
    for path in ("tokenizer/tokenizer.model", "tokenizer-eval/premium.png", "tokens/manifest.json"):
        assert (demo / path).is_file(), path
    for path in ("train/checkpoints/latest", "train/loss.png", "train/run.json", "hf/config.json", "hf/tokenizer.json"):
        assert (demo / path).is_file(), path
    assert "parity did not tune on" in first and "MLflow run" in first and "bits per byte" in first
    assert "Transformer Engine and Apex are not installed" not in first  # megatron's, of what corolla never uses
    validation = json.loads((demo / "train" / "validation.jsonl").read_text().splitlines()[-1])
    assert set(validation["bpb"]) == set(validation["loss"]) == set(LANGUAGES)
    written = {
        path: path.stat().st_mtime_ns for path in [*(demo / "hf").iterdir(), demo / "tokenizer-eval/report.json"]
    }
    second = shell(MAIN, *small)
    assert "up to date" in second and "already trained to step 2 of 2" in second
    # Its status: each stage, then the training's (it said the directory was no run, or showed a sweep of one).
    status = shell(".venv/bin/corolla status runs/demo")
    assert "tokenizer  written (tokenizer/)" in status and "export     written (hf/)" in status, status
    assert "training   prepared: its status follows (train/)" in status and "progress   step 2 of 2" in status, status
    # The evaluation and the export are current too: neither is done again.
    assert {path: path.stat().st_mtime_ns for path in written} == written
    # Another parallel set: the evaluation, and it alone, is done again.
    shutil.copytree(data / "parallel", data / "parallel-copy")
    shell(MAIN, *[f"parallel_set={data / 'parallel-copy'}", *small[1:]])
    report = demo / "tokenizer-eval" / "report.json"
    assert json.loads(report.read_text())["parallel"] == str(data / "parallel-copy")
    assert {path: path.stat().st_mtime_ns for path in written if path != report} == {
        path: mtime for path, mtime in written.items() if path != report
    }
    assert json.loads((demo / "hf" / "config.json").read_text())["n_layer"] == 2
    # Another tokenizer setting would train the tokenizer anew under a run trained on the old one: refused first.
    changed = [*small, "tokenizer.parity_rounds=3", "--dry-run"]
    result = subprocess.run(
        ["bash", "-c", " ".join([MAIN, *map(shlex.quote, changed)])], cwd=workspace, text=True, capture_output=True
    )
    assert result.returncode == 2 and "which this pipeline would train anew" in result.stderr.strip().splitlines()[-1]
    # Another model, on the run trained already, was "nothing to do"; another tokenizer given for the run's token files
    # had them encoded anew in place. Both are refused before any stage runs.
    tokens = {path: path.stat().st_mtime_ns for path in (demo / "tokens").rglob("*")}
    other = workspace / "other-tokenizer"
    other.mkdir()
    byte_level_bpe(other / "tokenizer.json", [path.read_text() for path in sorted((data / "parallel").rglob("*.txt"))])
    for change, refusal in {
        "model.num_layers=3": "holds checkpoints of model.num_layers=2, this job has model.num_layers=3",
        f"data.tokenizer_dir={other}": "holds checkpoints trained on a tokenizer that is not in",
    }.items():
        result = subprocess.run(
            ["bash", "-c", " ".join([MAIN, *map(shlex.quote, [*small, change])])],
            cwd=workspace,
            text=True,
            capture_output=True,
        )
        assert result.returncode == 2 and refusal in result.stderr.strip().splitlines()[-1], result.stderr
        assert "[1/5]" not in result.stdout
    assert {path: path.stat().st_mtime_ns for path in (demo / "tokens").rglob("*")} == tokens


def test_the_corolla_command_and_the_main_job_with_overrides(shell: Shell) -> None:
    assert "tokenizer" in shell(COROLLA, "--help") and "submit" in shell(COROLLA, "--help")
    # The line as written would train a 64k tokenizer on the whole corpus: its config is what it shows here.
    config = shell(MAIN_OVERRIDES, "--cfg")
    assert "model_type: bpe" in config and "run_dir: runs/alpha" in config and "tp: 1" in config


def test_the_tokenizer_lines(shell: Shell, workspace: Path) -> None:
    data = workspace / "data"
    train = TOKENIZER_TRAIN.split(" corpus=")[0]
    shell(train, f"corpus={data / 'corpus'}", "output_dir=tok", *SMALL_TOKENIZER)
    assert (workspace / "tok" / "tokenizer.model").is_file()
    evaluate = TOKENIZER_EVALUATE.replace("tokenizer=DIR parallel=DIR output_dir=DIR", "")
    shell(evaluate, "tokenizer=tok", f"parallel={data / 'parallel'}", "output_dir=eval")
    assert json.loads((workspace / "eval" / "report.json").read_text())["summary"]
    encode = TOKENIZER_ENCODE.replace("tokenizer=DIR corpus=DIR output_dir=DIR", "")
    shell(encode, "tokenizer=tok", f"corpus={data / 'corpus'}", "output_dir=tokens")
    assert set(json.loads((workspace / "tokens" / "manifest.json").read_text())["languages"]) == set(LANGUAGES)
    extend = TOKENIZER_EXTEND.split(" base=")[0]
    parallel = f"tokenizer.parity_set={data / 'parallel'}"
    arguments = ["base=tok", f"corpus={data / 'corpus'}", "output_dir=extended", parallel, "premium_threshold=1.5"]
    shell(extend, *arguments, "added_pieces=800", "tokenizer.sample_bytes=300000")
    assert json.loads((workspace / "extended" / "metadata.json").read_text())["extension"]["base_vocab_size"] == 2000
    assert "parity_strength" in shell(TOKENIZER_CFG)


def test_the_training_lines(shell: Shell, workspace: Path) -> None:
    shell(TRAIN, *sample(workspace))
    shell(TRAIN_3D, *sample(workspace))  # the same data: the cache the first line built
    assert len(list((workspace / "runs" / "cache").iterdir())) == 1
    shell(TRAIN_TOKENS, *SHORT)
    for run in ("train", "3d", "mine"):
        assert (workspace / "runs" / run / "checkpoints" / "latest").read_text().strip() == "step-00000002", run
        assert (workspace / "runs" / run / "loss.png").read_bytes().startswith(b"\x89PNG"), run


def test_the_mlflow_ui_line_shows_the_run(workspace: Path) -> None:
    port = free_port()
    line = MLFLOW_UI.replace("RUN_DIR", "runs/mine") + f" --host 127.0.0.1 --port {port}"
    log = workspace / "mlflow-ui.log"
    with log.open("w") as output:
        # A session of its own: `mlflow ui` serves from a uvicorn child, which must end with it.
        command = ["bash", "-c", f"exec {line}"]
        server = subprocess.Popen(command, cwd=workspace, stdout=output, stderr=output, start_new_session=True)
    try:
        client, tracked = MlflowClient(f"http://127.0.0.1:{port}"), recorded_run(workspace / "runs" / "mine")

        def shows_the_run() -> bool:
            assert server.poll() is None, log.read_text()[-2000:]
            try:
                return client.get_run(tracked.run_id).info.status == "FINISHED"
            except Exception:  # not listening yet
                return False

        assert wait_for(shows_the_run, timeout=120, interval=0.5), log.read_text()[-2000:]
        # Validation per language in nats per token and in bits per byte, which compares across tokenizers.
        metrics = client.get_run(tracked.run_id).data.metrics
        for name in ("val_loss", "val_bpb"):
            assert name in metrics and all(f"{name}/{language}" in metrics for language in LANGUAGES), metrics
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture(scope="module")
def cluster(shell: Shell) -> Iterator[TestCluster]:
    """The README's test cluster, started by its line; stopped (every daemon and job) when the module ends."""
    shell(SETUP_SLURM)
    started = shell(CLUSTER_START)
    shell.env["SLURM_CONF"] = re.search(r"export SLURM_CONF=(\S+)", started).group(1)
    try:
        yield TestCluster.from_directory(Path(shell.env["SLURM_CONF"]).parent)
    finally:
        subprocess.run([str(REPO_ROOT / ".venv/bin/python"), "-m", "slurm.testcluster", "stop"], check=True)


def test_the_import_and_init_from_lines(shell: Shell, workspace: Path) -> None:
    """A small BloomForCausalLM with a byte-level BPE tokenizer, made here, stands for a released model."""
    from transformers import BloomConfig, BloomForCausalLM

    hf_dir = workspace / "hf-bloom"
    texts = (workspace / "data" / "corpus" / "eng_Latn.txt").read_text(encoding="utf-8").splitlines()
    hf_dir.mkdir()
    byte_level_bpe(hf_dir / "tokenizer.json", texts, vocab_size=500)
    BloomForCausalLM(BloomConfig(vocab_size=512, hidden_size=32, n_layer=2, n_head=4)).save_pretrained(hf_dir)
    assert "imported" in shell(IMPORT.replace("DIR", str(hf_dir)))
    output = shell(INIT_FROM, f"data.corpus={workspace / 'data' / 'corpus'}", *SHORT)
    assert "starting from the weights of" in output
    assert (workspace / "runs" / "continued" / "checkpoints" / "latest").read_text().strip() == "step-00000002"


def test_the_slurm_lines(shell: Shell, workspace: Path, cluster: TestCluster) -> None:
    slurm = workspace / "runs" / "slurm"
    shell(SUBMIT, *sample(workspace), "train.steps=1000")
    assert wait_for(lambda: (slurm / "metrics.jsonl").is_file(), timeout=300, interval=1.0), shell(LOGS.split(" [")[0])
    assert "RUNNING" in shell(STATUS)
    assert "==> " in shell(LOGS.replace("[rank=N]", "rank=0"))
    cancelled = shell(CANCEL)
    job = json.loads((slurm / JOBS_FILE).read_text())[-1]
    state = lambda: cluster.run("scontrol", "show", "job", job, check=False).stdout  # noqa: E731
    assert wait_for(lambda: "JobState=CANCELLED" in state(), timeout=60, interval=1.0), (cancelled, state())
    shell(SWEEP, *sample(workspace))
    points = sorted((workspace / "runs" / "sweep").iterdir())
    assert [point.name for point in points] == ["train.lr=0.0003", "train.lr=0.001"]
    assert all((point / JOBS_FILE).is_file() for point in points)
    rows = shell(SWEEP_STATUS).splitlines()[2:-1]
    assert [row.split()[0] for row in rows] == ["train.lr=0.0003", "train.lr=0.001"], rows
    cancelled = shell(SWEEP_CANCEL)
    assert cancelled.count(":\ncancelled Slurm job ") == 2, cancelled


def test_the_pipeline_lines(shell: Shell, workspace: Path, cluster: TestCluster) -> None:
    # Two ranks, one a node, rather than the 3D layout's eight: they start in a third of the time on two cores.
    two_ranks = ["parallel=single", "cluster.tasks_per_node=1"]
    shell(PIPELINE_SLURM, f"parallel_set={workspace / 'data' / 'parallel'}", *sample(workspace), *two_ranks)

    def ended() -> bool:
        stages = shell(PIPELINE_STATUS).split("\n\n")[0]  # the chain's lines, before the training's
        lines = stages.splitlines()
        return any(line.startswith("failed") or (line.startswith("export") and ": COMPLETED" in line) for line in lines)

    assert wait_for(ended, timeout=600, interval=2.0), shell(PIPELINE_STATUS)
    status = shell(PIPELINE_STATUS)
    assert "failed" not in status and "progress   step 2 of 2" in status, status
    assert (workspace / "runs" / "chain" / "hf" / "config.json").is_file()
    assert "==> " in shell(PIPELINE_LOGS) and "encoding" in shell(PIPELINE_LOGS)


def sharded_corpus(root: Path) -> Path:
    """The README's real-corpus layout, small: FineWeb-2's parquet shards and JSONL.zst ones, a directory each."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    for index, language in enumerate(LANGUAGES):
        lines = (root.parent / "corpus" / f"{language}.txt").read_text().splitlines()
        for shard in range(2):
            part = lines[shard * 150 : (shard + 1) * 150]
            if index % 2:
                path = root / language / f"part-{shard:05d}.jsonl.zst"
                path.parent.mkdir(parents=True, exist_ok=True)
                text = "".join(json.dumps({"text": line}, ensure_ascii=False) + "\n" for line in part)
                path.write_bytes(zstandard.compress(text.encode()))
            else:
                path = root / language / "train" / f"000_{shard:05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table({"text": part}), path)
    return root


def test_the_pipeline_dry_run_on_a_real_corpus_layout_builds_nothing(shell: Shell, workspace: Path) -> None:
    corpus = sharded_corpus(workspace / "data" / "sharded")
    before = sorted(path for path in (workspace / "runs").rglob("*"))
    # A task per 1 kB of corpus, where the README asks 2 GB of a terabyte corpus: an array of 8 tasks, a file each.
    line = PIPELINE_DRY_RUN.replace("DIR", str(corpus)).replace("encode_task_mb=2048", "encode_task_mb=0.001")
    dry_run = shell(line)
    for stage in ("tokenizer", "evaluate", "encode", "prepare", "train", "export"):
        assert f"\n# {stage}" in dry_run, stage
    assert "#SBATCH --array=0-7%8" in dry_run and "#SBATCH --partition=cpu_p1" in dry_run
    assert "#SBATCH --nodes=48" in dry_run and "#SBATCH --dependency='afterok:<encode job>'" in dry_run
    assert sorted(path for path in (workspace / "runs").rglob("*")) == before


def test_the_dry_run_and_the_planner_lines(shell: Shell, workspace: Path) -> None:
    cache = workspace / "runs" / "cache"
    built_before = sorted(cache.iterdir())
    dry_run = shell(DRY_RUN)  # the sample corpus and BLOOM's tokenizer config, as written: nothing built for them
    assert "#SBATCH --nodes=48" in dry_run and "TP 4 x PP 12 x DP 8" in dry_run
    assert sorted(cache.iterdir()) == built_before and not (workspace / "runs" / "submit").exists()
    # Where token files exist they are checked: the sample's documents are far too short for BLOOM's validation.
    checked = shell(DRY_RUN, "data.tokens_dir=runs/demo/tokens")
    assert "#SBATCH --nodes=48" in checked and "so the run validates nothing" in checked
    assert "recommended: parallel.tp=4 parallel.pp=12 parallel.dp=8" in shell(PLAN)
    layouts = json.loads(shell(PLAN_JSON))
    assert {layout["tp"] * layout["pp"] * layout["dp"] for layout in layouts} == {32}


def test_the_gpu_bundle_line(shell: Shell) -> None:
    assert "wheels" in shell(GPU_BUNDLE)
