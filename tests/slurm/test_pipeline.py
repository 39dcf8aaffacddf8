"""`corolla pipeline cluster=testcluster`: the main job's stages as a chain of Slurm jobs on a real cluster (three
nodes on this machine). The chain ends with the token files and losses of the same pipeline run here; encoding tasks
come back from a dead node and a time limit and still write the same bytes; a failed stage stops what follows and
says why in one line; submitting again redoes only what had not finished; an export released before the training is
done follows the job that took over, and does not export a model half trained."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from conftest import MULTILINGUAL, cluster_in_environment, sbatch_that_stops_the_controller
from launch.cli import main
from launch.rundir.files import STAGE_ERRORS
from launch.rundir.history import RunHistory
from slurm.chain import StageJob, StageTask, chain_jobs, stage_state
from slurm.commands import UNREACHABLE_HINT
from slurm.jobs import record_job, recorded_jobs
from slurm.testcluster import ClusterSpec, TestCluster, wait_for

LANGUAGES = ["eng_Latn", "fra_Latn", "hin_Deva", "rus_Cyrl", "swh_Latn", "zho_Hans"]
BIG = ["eng_Latn", "fra_Latn"]  # each with a shard big enough to kill its encoding task in the middle of
# A tiny tokenizer and BLOOM, 4 steps, DP over two nodes of one rank each; encoding tasks of about 2 MB of corpus.
PIPELINE = [
    "tokenizer=tiny",
    "tokenizer.vocab_size=2000",
    "tokenizer.character_coverage=0.99",
    "train=tiny",
    "train.steps=4",
    "train.eval_samples=4",
    "model.seq_length=32",
    "parallel=single",
    "encode_task_mb=2",
]
ON_SLURM = ["cluster=testcluster", "cluster.tasks_per_node=1"]


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[TestCluster]:
    """n1..n3 with 4 CPUs each: the training takes two, a data stage one."""
    with cluster_in_environment(ClusterSpec(nodes=3, gpus_per_node=0, cpus_per_node=4, accounting=True)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per-language directories of shards: three of 200 lines each, and for BIG a fourth of about 8 MB."""
    root = tmp_path_factory.mktemp("pipeline") / "corpus"
    for language in LANGUAGES:
        lines = (MULTILINGUAL / f"{language}.txt").read_text(encoding="utf-8").splitlines(keepends=True)
        directory = root / language
        directory.mkdir(parents=True)
        for shard in range(3):
            (directory / f"part-{shard}.txt").write_text("".join(lines[shard * 200 : shard * 200 + 200]))
        if language in BIG:
            text = "".join(lines)
            (directory / "part-3.txt").write_text(text * (8_000_000 // len(text.encode())), encoding="utf-8")
    return root


def pipeline(run_dir: Path, corpus: Path, *overrides: str) -> int:
    return main(["pipeline", *PIPELINE, f"data.corpus={corpus}", f"run_dir={run_dir}", *overrides])


def wait_chain(run_dir: Path, timeout: float = 300) -> dict[str, str]:
    """Waits until no stage of the latest submission is queued or running; each stage's state."""
    states: dict[str, str] = {}

    def ended() -> bool:
        jobs = chain_jobs(run_dir)
        states.update({job.stage: stage_state(job) for job in jobs})
        # A stage's job that hands over to one it queued (an export that follows the training's next job) records
        # that job before it ends: the jobs read before its end may be those before the handover.
        return not any(state.live for state in states.values()) and chain_jobs(run_dir) == jobs

    assert wait_for(ended, timeout=timeout, interval=1.0), (states, stage_logs(run_dir))
    return {stage: state.state for stage, state in states.items()}


def stage_logs(run_dir: Path) -> str:
    errors = sorted(run_dir.rglob("slurm/*.err"))
    return "\n".join(f"== {path.name}\n{path.read_text()[-2000:]}" for path in errors)


def token_bytes(tokens: Path) -> dict[str, bytes]:
    """Every token file and record, by path (the manifest names the tokenizer's path: compared apart)."""
    return {
        str(path.relative_to(tokens)): path.read_bytes()
        for path in sorted(tokens.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }


def losses(train_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records}


@dataclass(frozen=True)
class Finished:
    run_dir: Path
    tokens: dict[str, bytes]  # as the first chain wrote them
    losses: dict[int, float]


@pytest.fixture(scope="module")
def chain(slurm_cluster: TestCluster, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    run_dir = tmp_path_factory.mktemp("chain") / "run"
    assert pipeline(run_dir, corpus, *ON_SLURM, "+cluster.env.HF_TOKEN=hf_s3cret") == 0  # as a group's site gives it
    stages = ["tokenizer", "evaluate", "encode", "prepare", "train", "export"]
    assert wait_chain(run_dir) == dict.fromkeys(stages, "COMPLETED")
    return Finished(run_dir, token_bytes(run_dir / "tokens"), losses(run_dir / "train"))


def test_the_chain_ends_with_the_local_pipelines_token_files_and_losses(chain, corpus, tmp_path, capsys) -> None:
    local = tmp_path / "local"
    assert pipeline(local, corpus) == 0
    assert token_bytes(local / "tokens") == chain.tokens
    manifests = [json.loads((run / "tokens" / "manifest.json").read_text()) for run in (local, chain.run_dir)]
    assert manifests[0]["languages"] == manifests[1]["languages"] and len(manifests[0]["languages"]) == 6
    assert len(manifests[1]["languages"]["eng_Latn"]["shards"]) == 4
    assert chain.losses == pytest.approx(losses(local / "train"), abs=1e-5)  # DP2 over two nodes, as one process
    assert (chain.run_dir / "hf" / "config.json").is_file() and (chain.run_dir / "tokenizer-eval").is_dir()
    # Its pipeline.yaml, training job.yaml and sbatch scripts keep the token: readable by their owner alone.
    assert all(path.stat().st_mode & 0o777 == 0o700 for path in (chain.run_dir, chain.run_dir / "train"))
    assert (local / "train").stat().st_mode == (local / "tokens").stat().st_mode  # as the umask makes them
    (encode,) = [job for job in chain_jobs(chain.run_dir) if job.stage == "encode"]
    assert encode.tasks == 5  # eng_Latn's small shards, its big one, fra_Latn's two groups, then the other four

    capsys.readouterr()
    assert main(["status", str(chain.run_dir)]) == 0
    status = capsys.readouterr().out
    assert "encode     job" in status and "(5 tasks): 5 COMPLETED" in status and "failed" not in status
    assert "progress   step 4 of 4" in status  # the training run's own lines follow the chain's
    assert main(["logs", str(chain.run_dir), "stage=encode"]) == 0
    assert "encoding" in capsys.readouterr().out
    assert pipeline(chain.run_dir, corpus, *ON_SLURM) == 0  # everything current: nothing is submitted
    assert "every stage is current" in capsys.readouterr().out


def running_task(cluster: TestCluster, array_job: str) -> tuple[str, str]:
    """(task id, node) of the one running task of an array that runs one at a time."""
    output = cluster.run("squeue", "-j", array_job, "-r", "-h", "-t", "RUNNING", "-o", "%i %N").stdout.split()
    return output[0], output[1]


def mid_write(tokens: Path, language: str) -> bool:
    """A temporary token file of the language's big shard exists and holds data."""
    temporary = tokens / language / f".{language}~part-3.txt.bin.tmp"
    return temporary.exists() and temporary.stat().st_size > 0


def suspend_writer(tokens: Path, language: str) -> psutil.Process:
    """The process writing the language's big shard, stopped (SIGSTOP) where it is: a shard encodes in about a second
    on a fast machine, less than what the test asks Slurm before it strikes."""
    temporary = tokens / language / f".{language}~part-3.txt.bin.tmp"
    for process in psutil.process_iter():
        try:
            if any(Path(opened.path) == temporary for opened in process.open_files()):
                process.suspend()
                return process
        except psutil.Error:
            continue
    raise AssertionError(f"no process writes {temporary} any more: it was seen mid-write")


def test_encoding_tasks_resume_after_a_dead_node_and_a_time_limit(slurm_cluster, chain, corpus) -> None:
    # The token files gone: a resubmission encodes again, and only that (and the manifest), one task at a time in
    # two groups of files: eng_Latn's shards and fra_Latn's small ones, then fra_Latn's big one and the rest.
    shutil.rmtree(chain.run_dir / "tokens")
    assert pipeline(chain.run_dir, corpus, *ON_SLURM, "cluster.array_parallelism=1", "encode_task_mb=10") == 0
    assert [job.stage for job in chain_jobs(chain.run_dir)] == ["encode", "prepare"]
    (encode,) = [job for job in chain_jobs(chain.run_dir) if job.stage == "encode"]
    tokens = chain.run_dir / "tokens"

    assert wait_for(lambda: mid_write(tokens, "eng_Latn"), timeout=180, interval=0.01), stage_logs(chain.run_dir)
    suspend_writer(tokens, "eng_Latn")  # the node's death kills it stopped
    killed_task, victim = running_task(slurm_cluster, encode.job_id)
    small = tokens / "records" / "eng_Latn~part-0.txt.json"  # encoded by the same task before the big shard
    identity = (small.stat().st_ino, small.stat().st_mtime_ns)
    slurm_cluster.kill_node(victim)
    try:
        assert wait_for(lambda: mid_write(tokens, "fra_Latn"), timeout=240, interval=0.01), stage_logs(chain.run_dir)
        writer = suspend_writer(tokens, "fra_Latn")
        signalled_task, _ = running_task(slurm_cluster, encode.job_id)
        slurm_cluster.run("scancel", "--signal=USR2", signalled_task)  # as Slurm does before a time limit
        writer.resume()  # and meets the signal mid-write
        assert wait_chain(chain.run_dir, timeout=420) == {"encode": "COMPLETED", "prepare": "COMPLETED"}
    finally:
        slurm_cluster.restart_node(victim)
    assert token_bytes(tokens) == chain.tokens  # byte-identical, nothing half-written left behind
    assert (small.stat().st_ino, small.stat().st_mtime_ns) == identity  # the requeued task did not redo it
    for task in (killed_task, signalled_task):
        log = (chain.run_dir / "slurm" / f"{task}_0_log.out").read_text()
        assert log.count("Starting with JobEnvironment") == 2, log  # stopped once, requeued, finished
    assert "Requeued job" in (chain.run_dir / "slurm" / f"{signalled_task}_0_log.out").read_text()  # by submitit


def test_a_failed_stage_stops_the_chain_and_a_resubmission_resumes_it(
    slurm_cluster, chain, corpus, tmp_path, capsys
) -> None:
    # Cancelled as soon as it is queued: every stage's job goes, the training's STOP file first.
    cancelled = tmp_path / "cancelled"
    assert pipeline(cancelled, corpus, *ON_SLURM) == 0
    capsys.readouterr()
    assert main(["cancel", str(cancelled)]) == 0
    assert capsys.readouterr().out.count("cancelled the") == 6
    assert set(wait_chain(cancelled).values()) == {"CANCELLED"}

    # A tokenizer that cannot be trained: nothing after it runs, and status says which stage failed and why.
    broken = tmp_path / "broken"
    assert pipeline(broken, corpus, *ON_SLURM, "tokenizer.character_coverage=0.9995") == 0
    states = wait_chain(broken)
    assert states["tokenizer"] == "FAILED" and all(states[stage] == "CANCELLED" for stage in list(states)[1:])
    capsys.readouterr()
    assert main(["status", str(broken)]) == 0
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and "stage tokenizer (job" in failed[0], failed
    assert "cannot hold the corpus's characters" in failed[0] and "raise the vocabulary" in failed[0]
    # Elastic: the training's next job, queued behind its first, waited on that job's end alone, which the tokenizer's
    # failure brought about by cancelling it: it then took the nodes, as the export did. Both wait on the
    # preparation now, and go with it.
    elastic = tmp_path / "elastic"
    failing = ["tokenizer.character_coverage=0.9995", "parallel.elastic=true", "cluster.min_nodes=1"]
    assert pipeline(elastic, corpus, *ON_SLURM, *failing) == 0
    states = wait_chain(elastic)
    assert states["tokenizer"] == "FAILED" and all(states[stage] == "CANCELLED" for stage in list(states)[1:])
    first, following = recorded_jobs(elastic / "train")
    assert first == chain_jobs(elastic)[-2].job_id
    assert wait_for(lambda: not stage_state(StageJob("train", following)).live, timeout=60)
    assert stage_state(StageJob("train", following)).state == "CANCELLED"

    # The trained run taken two steps further, elastic now and a step a job (as if each met its time limit): the
    # training goes on in the job its first queued behind itself, and the export follows it there. It meets a file
    # where its directory goes, and fails...
    shutil.rmtree(chain.run_dir / "hf")
    (chain.run_dir / "hf").write_text("not a directory")
    further = ["train.steps=6", "parallel.elastic=true", "cluster.min_nodes=1", "train.exit_after=1"]
    assert pipeline(chain.run_dir, corpus, *ON_SLURM, *further) == 0
    assert [job.stage for job in chain_jobs(chain.run_dir)] == ["prepare", "train", "export"]
    first_export = chain_jobs(chain.run_dir)[-1].job_id
    assert wait_chain(chain.run_dir)["export"] == "FAILED"
    assert chain_jobs(chain.run_dir)[-1].job_id != first_export  # the export that followed the training's next job
    starts = RunHistory(chain.run_dir / "train").starts()
    assert [start["resumed_from_step"] for start in starts[-2:]] == [4, 5] and starts[-2]["slurm_job"] != starts[-1][
        "slurm_job"
    ]
    capsys.readouterr()
    assert main(["status", str(chain.run_dir)]) == 0
    status = capsys.readouterr().out
    assert "failed     stage export (job" in status and "is, or lies under, the file" in status, status
    assert "progress   step 6 of 6" in status
    # ... and once the file is gone, submitting again runs the export alone.
    os.remove(chain.run_dir / "hf")
    assert pipeline(chain.run_dir, corpus, *ON_SLURM, *further) == 0
    assert [job.stage for job in chain_jobs(chain.run_dir)] == ["export"]
    assert wait_chain(chain.run_dir) == {"export": "COMPLETED"}
    assert (chain.run_dir / "hf" / "config.json").is_file()


def test_an_export_released_before_the_training_is_done_follows_the_job_that_took_over_then_fails_in_one_line(
    slurm_cluster, corpus, tmp_path, capsys
) -> None:
    # A training job that gave way to one without its unfit nodes, or that the STOP file ended, ends COMPLETED, which
    # releases the export queued `afterok` behind it before the run is done. Here the chain is cancelled at once
    # (nothing trains), a sleeping job stands in for the training job that took over, and the export's task runs in
    # this process as its released job would.
    run_dir = tmp_path / "run"
    assert pipeline(run_dir, corpus, *ON_SLURM) == 0
    assert main(["cancel", str(run_dir)]) == 0
    assert set(wait_chain(run_dir).values()) == {"CANCELLED"}
    sleep = ("sbatch", "--parsable", f"--output={tmp_path / 'sleep.out'}", "--wrap", "sleep 300")
    took_over = slurm_cluster.run(*sleep).stdout.strip()
    record_job(run_dir / "train", took_over)
    first_export = chain_jobs(run_dir)[-1].job_id

    StageTask(str(run_dir), "export")()
    follower = chain_jobs(run_dir)[-1]
    assert follower.stage == "export" and follower.job_id != first_export
    assert f"afterany:{took_over}" in slurm_cluster.run("scontrol", "show", "job", follower.job_id).stdout
    followed = f"the training goes on in Slurm job {took_over}: the export follows it, as job {follower.job_id}"
    assert followed in capsys.readouterr().out

    # The job that took over ends short of the run's steps (cancelled): the export does not export a model half
    # trained, and says why where `corolla status` finds it (the chain's first failure here is its cancelled tokenizer).
    slurm_cluster.run("scancel", took_over)
    assert wait_chain(run_dir)["export"] == "FAILED"
    why = (run_dir / STAGE_ERRORS / "export.txt").read_text()
    assert why == (
        f"the training ended at step 0 of train.steps=4 with no job of it left: there is no final model to export "
        f"(see `corolla status {run_dir}`)\n"
    )
    assert not (run_dir / "hf").exists()


def test_a_submission_that_slurm_cuts_off_halfway_names_the_stages_it_could_not_cancel(
    slurm_cluster, corpus, tmp_path, capsys, monkeypatch
) -> None:
    """The controller goes away after the tokenizer's job is queued: neither the next stage nor the cancelling of
    that job reaches it, and the chain is not recorded, so `corolla cancel` would not find it either."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv(
        "PATH", f"{sbatch_that_stops_the_controller(slurm_cluster, tmp_path / 'bin', at=2)}:{os.environ['PATH']}"
    )
    try:
        assert pipeline(run_dir, corpus, *ON_SLURM) == 2
    finally:
        monkeypatch.undo()
        slurm_cluster.start_controller()
    queued = slurm_cluster.run("squeue", "--noheader", "--format=%i %j").stdout.split()
    tokenizer_job = queued[queued.index(f"corolla-{run_dir.name}-tokenizer") - 1]
    try:
        assert capsys.readouterr().err == (
            "corolla: error: Slurm did not take the job (sbatch: Batch job submission failed: Unable to contact slurm "
            f"controller (connect failure)): {UNREACHABLE_HINT}; and the stages submitted before it could not be "
            f"cancelled: `scancel {tokenizer_job}` once Slurm answers\n"
        )
    finally:
        slurm_cluster.run("scancel", tokenizer_job)


def test_cancel_of_a_copied_pipeline_leaves_the_original_chain_alone(slurm_cluster, corpus, tmp_path, capsys) -> None:
    """The copy holds the original's chain.json: `corolla cancel COPY` cancelled every stage of the original's chain."""
    run_dir, copy = tmp_path / "run", tmp_path / "copy"
    # Every stage's job sleeps before its task: the chain stays live, and writes nothing, until it is cancelled. (The
    # tokenizer stage trains in 2 s on a fast machine: its job could end, or write as the copy is made, before the
    # checks below that the whole chain lives and that its six stages are cancelled.)
    assert pipeline(run_dir, corpus, *ON_SLURM, "cluster.setup=['sleep 300']") == 0
    try:
        shutil.copytree(run_dir, copy)
        capsys.readouterr()
        assert main(["cancel", str(copy)]) == 2
        said = capsys.readouterr().err
        assert f"stage's Slurm job {chain_jobs(run_dir)[0].job_id} (" in said, said
        assert f"runs the pipeline in {run_dir}, not {copy} (a copy of it, or moved from there): nothing" in said
        assert all(stage_state(job).live for job in chain_jobs(run_dir))
        assert main(["status", str(copy)]) == 0  # it showed the original's stages as the copy's
        assert f"these are the jobs of the pipeline in {run_dir}, not of this directory" in capsys.readouterr().out
        assert main(["status", str(run_dir)]) == 0 and "these are the jobs" not in capsys.readouterr().out
    finally:
        assert main(["cancel", str(run_dir)]) == 0
    assert capsys.readouterr().out.count("cancelled the") == 6
    assert set(wait_chain(run_dir).values()) == {"CANCELLED"}


def test_a_cpu_partition_the_cluster_lacks_is_refused_before_anything_is_submitted(
    slurm_cluster, corpus, tmp_path, capsys
) -> None:
    """The data stages' partition was never asked about: sbatch queued them there, and the chain pended for good."""
    run_dir = tmp_path / "run"
    assert pipeline(run_dir, corpus, *ON_SLURM, "cluster.cpu_partition=cpu_p1") == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == "corolla: error: cluster.cpu_partition=cpu_p1 does not exist on this cluster: choose one of debug"
    assert not (run_dir / "chain.json").exists()
