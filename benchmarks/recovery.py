"""Recovery from a node failure on a real Slurm cluster (three nodes on this machine, slurm/testcluster.py).

In one run:
  1. baseline: a fresh `corolla submit` of a tiny BLOOM, TP=2 x PP=2 x DP=2 on two nodes: seconds from submission
     to its first training step;
  2. the same job, one of its nodes killed (slurmd and every process on it, network cut) after a checkpoint:
     seconds from the kill to Slurm marking the node down, to the job running again elsewhere, to the ranks resuming
     from the checkpoint, to the first new training step; and the steps redone.

    .venv/bin/python benchmarks/recovery.py [--steps 16] [--checkpoint-interval 4]

Needs root and `bash scripts/setup-slurm.sh`; no other test cluster may be running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from launch.cli import main as corolla  # noqa: E402
from launch.config.compose import shared_data_dir  # noqa: E402
from launch.rundir.files import CHECKPOINTS, JOBS_FILE, LATEST, METRICS_FILE, checkpoint_step  # noqa: E402
from launch.rundir.history import RunHistory  # noqa: E402
from slurm.testcluster import ClusterSpec, TestCluster, temporary_cluster, wait_for  # noqa: E402
from tokenizer.config import TokenizerConfig, TokenizerTrainJob  # noqa: E402
from tokenizer.encode import encode_corpus  # noqa: E402
from tokenizer.train import train_tokenizer  # noqa: E402

LANGUAGES = ["eng_Latn", "fra_Latn", "hin_Deva", "rus_Cyrl"]


def token_files(workdir: Path) -> Path:
    corpus = workdir / "corpus"
    corpus.mkdir()
    for language in LANGUAGES:
        lines = (shared_data_dir() / "multilingual" / f"{language}.txt").read_text().splitlines()[:300]
        (corpus / f"{language}.txt").write_text("\n".join(lines) + "\n")
    config = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=1_000_000)
    tokenizer = train_tokenizer(TokenizerTrainJob(config, str(corpus), str(workdir / "tokenizer")), log=lambda *_: None)
    encode_corpus(tokenizer, corpus, workdir / "tokens", workers=1, log=lambda *_: None)
    return workdir / "tokens"


def submit(run_dir: Path, tokens: Path, steps: int, interval: int) -> str:
    overrides = [
        f"data.tokens_dir={tokens}",
        f"run_dir={run_dir}",
        "cluster=testcluster",
        "parallel=3d",
        "model.seq_length=32",
        f"train.steps={steps}",
        f"train.checkpoint_interval={interval}",
        "train.eval_interval=0",
        "train.hang_timeout_s=60",
    ]
    if corolla(["submit", *overrides]) != 0:
        raise SystemExit("corolla submit failed")
    return json.loads((run_dir / JOBS_FILE).read_text())[-1]


def steps_logged(run_dir: Path) -> int:
    metrics = run_dir / METRICS_FILE
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def latest_checkpoint(run_dir: Path) -> int:
    pointer = run_dir / CHECKPOINTS / LATEST
    return checkpoint_step(pointer.read_text().strip()) if pointer.is_file() else 0


def job_field(cluster: TestCluster, job_id: str, name: str) -> str:
    record = cluster.run("scontrol", "show", "job", job_id, check=False).stdout
    return next((field.split("=", 1)[1] for field in record.split() if field.startswith(f"{name}=")), "")


def finished(run_dir: Path) -> bool:
    return any(event["event"] == "finished" for event in RunHistory(run_dir).events())


def until(condition, timeout: float = 600) -> float:
    if not wait_for(condition, timeout=timeout, interval=0.2):
        raise SystemExit(f"timed out after {timeout} s")
    return time.monotonic()


def fresh_start(cluster: TestCluster, tokens: Path, run_dir: Path, steps: int, interval: int) -> float:
    began = time.monotonic()
    submit(run_dir, tokens, steps, interval)
    first_step = until(lambda: steps_logged(run_dir) >= 1)
    until(lambda: finished(run_dir))
    return first_step - began


def node_failure(cluster: TestCluster, tokens: Path, run_dir: Path, steps: int, interval: int) -> dict[str, float]:
    job_id = submit(run_dir, tokens, steps, interval)
    until(lambda: latest_checkpoint(run_dir) >= interval)
    victim = cluster.run("scontrol", "show", "hostnames", job_field(cluster, job_id, "NodeList")).stdout.split()[-1]
    logged_before = steps_logged(run_dir)
    killed = time.monotonic()
    cluster.kill_node(victim)
    try:
        down = until(lambda: cluster.node_states().get(victim) == "down*")
        running = until(
            lambda: (
                job_field(cluster, job_id, "Restarts") == "1" and job_field(cluster, job_id, "JobState") == "RUNNING"
            )
        )
        resumed = until(lambda: len(RunHistory(run_dir).starts()) == 2)
        stepped = until(lambda: steps_logged(run_dir) > logged_before)
        until(lambda: finished(run_dir))
    finally:
        cluster.restart_node(victim)
    restart = RunHistory(run_dir).starts()[1]
    return {
        "node down": down - killed,
        "job running again": running - killed,
        "ranks resumed": resumed - killed,
        "first new step": stepped - killed,
        "steps redone": restart["steps_redone"],
        "resumed from": restart["resumed_from_step"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--checkpoint-interval", type=int, default=4)
    args = parser.parse_args()
    spec = ClusterSpec(nodes=3, gpus_per_node=0, cpus_per_node=4, accounting=True)
    with tempfile.TemporaryDirectory() as tmp, temporary_cluster(spec) as cluster:
        os.environ.update(cluster.env)
        workdir = Path(tmp)
        tokens = token_files(workdir)
        baseline = fresh_start(cluster, tokens, workdir / "fresh", args.steps, args.checkpoint_interval)
        failure = node_failure(cluster, tokens, workdir / "failure", args.steps, args.checkpoint_interval)
    print(
        f"\ntiny BLOOM, TP2 x PP2 x DP2 on 2 of 3 nodes, {args.steps} steps, checkpoint every "
        f"{args.checkpoint_interval}; slurm/testcluster.py's Slurm (SlurmdTimeout=10, cred_expire=10)"
    )
    print(f"  baseline: fresh submission to first step          {baseline:6.1f} s")
    for name in ("node down", "job running again", "ranks resumed", "first new step"):
        print(f"  node killed -> {name:<34} {failure[name]:6.1f} s  ({failure[name] / baseline:.2f}x baseline)")
    print(
        f"  resumed from step {failure['resumed from']}, steps redone {failure['steps redone']} "
        f"(at most one checkpoint interval: {args.checkpoint_interval})"
    )


if __name__ == "__main__":
    main()
