"""Shared fixtures: the sample data beside the repository, small corpora cut from it, and test Slurm clusters."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from launch.config.cluster import ClusterConfig
from launch.config.data import DataConfig
from launch.config.schemas import ParallelConfig, TrackingConfig, TrainConfig, TrainJob
from model.config import ModelConfig
from slurm.testcluster import ClusterSpec, TestCluster, temporary_cluster
from tokenizer.config import TokenizerConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MULTILINGUAL = SHARED_DATA / "multilingual"
PARALLEL_DEV = SHARED_DATA / "parallel-dev"
# Twelve languages in eight scripts, English first: enough variety to exercise balancing, small enough to be fast.
SMALL_LANGUAGES = [
    "eng_Latn",
    "fra_Latn",
    "deu_Latn",
    "rus_Cyrl",
    "hin_Deva",
    "tha_Thai",
    "zho_Hans",
    "arb_Arab",
    "mya_Mymr",
    "yor_Latn",
    "khm_Khmr",
    "por_Latn",
]


# Four languages in three scripts: the token files of the training tests.
TRAINING_LANGUAGES = ["eng_Latn", "fra_Latn", "hin_Deva", "rus_Cyrl"]


# The modules that start a Slurm cluster on this machine, and the tests that do in a module that mostly does not: one
# cluster runs at a time (slurm/testcluster.py), so with pytest's workers (scripts/test.sh) they all go to one worker,
# first, as they take longest.
CLUSTER_MODULES = {
    "tests/slurm/test_pipeline.py",
    "tests/slurm/test_monitor.py",
    "tests/slurm/test_submit.py",
    "tests/slurm/test_testcluster.py",
}
CLUSTER_TESTS = {"tests/test_readme.py::test_the_slurm_lines", "tests/test_readme.py::test_the_pipeline_lines"}
CLUSTER_FIXTURES = {"slurm_cluster", "cluster"}  # what starts one


def _work_unit(nodeid: str) -> str:
    module = nodeid.split("::")[0]
    return "slurm-cluster" if module in CLUSTER_MODULES or nodeid.split("[")[0] in CLUSTER_TESTS else module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())) and _work_unit(item.nodeid) != "slurm-cluster":
            raise pytest.UsageError(
                f"{item.nodeid} starts a Slurm cluster, which may then run beside another worker's: add it to "
                "CLUSTER_TESTS, or its module to CLUSTER_MODULES (tests/conftest.py)"
            )
    items.sort(key=lambda item: _work_unit(item.nodeid) != "slurm-cluster")


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Each worker takes whole modules (their module fixtures built once), and one takes every CLUSTER_MODULES one.
    (xdist's own `--dist loadgroup` renames test ids, which this pytest no longer lets it do.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return ModuleScheduling(config, log)


def cut_corpus(target: Path, languages: list[str], lines: int) -> Path:
    """Copies the first `lines` lines of each language's sample file into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for language in languages:
        with (MULTILINGUAL / f"{language}.txt").open(encoding="utf-8") as source:
            head = [next(source) for _ in range(lines)]
        (target / f"{language}.txt").write_text("".join(head), encoding="utf-8")
    return target


@contextmanager
def cluster_in_environment(spec: ClusterSpec) -> Iterator[TestCluster]:
    """A fresh test cluster (slurm/testcluster.py), the process environment pointing at it (SLURM_CONF) so that
    sbatch, squeue and submitit reach it directly; every daemon and job ends with the block. For a module fixture of
    tests/slurm/ (a conftest.py there would shadow this one, which tests import as `conftest`)."""
    with temporary_cluster(spec) as cluster, pytest.MonkeyPatch.context() as patch:
        for name, value in cluster.env.items():
            patch.setenv(name, value)
        yield cluster


def sbatch_that_stops_the_controller(cluster: TestCluster, bin_dir: Path, at: int) -> Path:
    """A folder to put first on PATH: its `sbatch` stops the cluster's slurmctld before the `at`-th call (counted from
    1) and every later one, then runs the real sbatch, which cannot reach it. (start_controller brings it back.)"""
    bin_dir.mkdir()
    count, sbatch = bin_dir / "calls", bin_dir / "sbatch"
    controller_pid = cluster.files.slurmctld().pid_file
    sbatch.write_text(
        f"#!/bin/sh\necho >> {count}\n"
        f"[ $(wc -l < {count}) -ge {at} ] && kill $(cat {controller_pid}) 2>/dev/null && sleep 1\n"
        f'exec {shutil.which("sbatch")} "$@"\n'
    )
    sbatch.chmod(0o755)
    return bin_dir


def sbatch_whose_answer_is_lost(bin_dir: Path) -> Path:
    """A folder to put first on PATH: its `sbatch` queues the job, then fails as sbatch does when a busy controller's
    answer times out after it took the job."""
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        f'#!/bin/sh\n{shutil.which("sbatch")} "$@" > /dev/null || exit\n'
        "echo 'sbatch: error: Batch job submission failed: Socket timed out on send/recv operation' >&2\nexit 1\n"
    )
    sbatch.chmod(0o755)
    return bin_dir


def sbatch_that_refuses(bin_dir: Path, call: int) -> Path:
    """A folder to put first on PATH: its `sbatch` refuses the `call`-th call (counted from 1), as Slurm refuses a job
    it cannot place now, and runs the real sbatch for every other."""
    bin_dir.mkdir()
    count, sbatch = bin_dir / "calls", bin_dir / "sbatch"
    sbatch.write_text(
        f"#!/bin/sh\necho >> {count}\n"
        f"if [ $(wc -l < {count}) -eq {call} ]; then\n"
        "  echo 'sbatch: error: Batch job submission failed: Requested node configuration is not available' >&2\n"
        "  exit 1\nfi\n"
        f'exec {shutil.which("sbatch")} "$@"\n'
    )
    sbatch.chmod(0o755)
    return bin_dir


@contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` ("300k", "8M", as mount takes it) at `path`: a disk that fills (the tests run as root)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` behind a read-only bind mount of itself: shared storage a user reads but cannot write (root neither)."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def byte_level_bpe(path: Path, texts: list[str], vocab_size: int = 1000) -> Path:
    """A byte-level BPE `tokenizer.json` trained with `tokenizers` on `texts`, as BLOOM's was (no prefix space, the
    special tokens first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.save(str(path))
    return path


def train_job(model: ModelConfig, **sections: object) -> TrainJob:
    """A training job of `model` with default sections but those given, as `corolla train` would compose it."""
    defaults = {
        "tokenizer": TokenizerConfig(),
        "parallel": ParallelConfig(),
        "data": DataConfig(tokens_dir="tokens"),
        "train": TrainConfig(),
        "tracking": TrackingConfig(),
        "cluster": ClusterConfig(),
    }
    return TrainJob(model=model, **{**defaults, **sections})


@pytest.fixture
def group_umask() -> Iterator[None]:
    """The umask a group's shared project directory is usually written under (022), whatever the tests run under."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(scope="session", autouse=True)
def corpus_scan_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The suite's own cache of corpus measurements (tokenizer/corpus_scan.py), not the user's; processes the tests
    start inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        directory = tmp_path_factory.mktemp("corolla-cache")
        patch.setenv("COROLLA_CACHE", str(directory))
        yield directory


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cut_corpus(tmp_path_factory.mktemp("corpus"), SMALL_LANGUAGES, 400)


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token files of TRAINING_LANGUAGES (300 documents each) under a 2,000-token tokenizer: for training tests."""
    from tokenizer.config import TokenizerTrainJob
    from tokenizer.encode import encode_corpus
    from tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("train")
    corpus = cut_corpus(root / "corpus", TRAINING_LANGUAGES, 300)
    cfg = TokenizerConfig(vocab_size=2000, character_coverage=0.99, sample_bytes=1_000_000)
    tokenizer = train_tokenizer(TokenizerTrainJob(cfg, str(corpus), str(root / "tokenizer")), log=lambda *_: None)
    encode_corpus(tokenizer, corpus, root / "tokens", workers=1, log=lambda *_: None)
    return root / "tokens"
