"""The names of what a run directory holds: the one place they are spelled, so that the light readers (`corolla
status`) and the code that writes each file agree."""

import re

JOB_FILE = "job.yaml"  # the resolved job (launch/config/job_file.py)
IMPORT_FILE = "imported.json"  # instead of JOB_FILE in a model imported from Hugging Face (launch/plan/weights.py)
PLAN_FILE = "plan.json"  # the run's plan for each world size it may get (launch/plan/run_plan.py)
RUN_FILE = "run.json"  # the MLflow run: tracking URI, run id
# While a launch creates the MLflow run, until RUN_FILE names it: the tag the creation gives it (rundir/tracking.py)
RUN_CREATION = "run-creation"
TRACKING_STATE = "tracking.json"  # how far MLflow holds the records, what is left to send (launch/rundir/outbox.py)
# Records of steps a resumed launch trained anew, of which MLflow holds other figures: sent again, in order.
RETRAINED_FILE = "retrained.jsonl"
# The trained figures of the records resumed launches dropped, of steps not trained again since: what a later launch
# that trains them tells a step trained anew by (launch/train/reporter.py).
DROPPED_FIGURES = "dropped-figures.json"
METRICS_FILE = "metrics.jsonl"  # one record per optimizer step (the last, if a resumed launch redid it)
VALIDATION_FILE = "validation.jsonl"  # one record per validation
HEALTH_FILE = "health.jsonl"  # on a cluster, one record per health check after a checkpoint (launch/train/health.py)
LOSS_CHART = "loss.png"  # both, drawn when a local run ends (launch/rundir/loss_chart.py)
HISTORY_FILE = "history.jsonl"  # one record per launch, start, stop, finish or give-up
STOP_FILE = "STOP"  # a kill switch: the run saves and ends without being requeued
LOCK_FILE = "LOCK"  # the process writing the run directory (launch/rundir/lock.py)
MLFLOW_DB = "mlflow.db"  # the embedded MLflow store, when there is no tracking server
MLFLOW_ARTIFACTS = "mlartifacts"  # ... and its artifacts
CHECKPOINTS = "checkpoints"  # step-XXXXXXXX/ directories
LATEST = "latest"  # in CHECKPOINTS: the tag of the newest complete checkpoint
# Beside CHECKPOINTS, LATEST's copy: a start that finds no checkpoint where the run saved some knows they were lost.
LAST_SAVED = "last-saved"
# In CHECKPOINTS: complete checkpoints newer than the one a start resumed from (damaged, or `latest` was pointed back
# past them), moved here rather than overwritten when their steps are trained again.
SET_ASIDE = "set-aside"
JOBS_FILE = "slurm-jobs.json"  # the Slurm job ids submitted for the run
SUBMITIT_DIR = "slurm"  # submitit's folder: sbatch scripts, per-rank logs

# The main job's run directory (`corolla pipeline`): a stage's output each; the token files go where data.tokens_dir
# says (RUN_DIR/tokens unless set), the training run is a run directory of its own.
TOKENIZER_DIR, REPORT_DIR, TOKENS_DIR, TRAIN_DIR, HF_DIR = "tokenizer", "tokenizer-eval", "tokens", "train", "hf"
PIPELINE_JOB = "pipeline.yaml"  # the resolved main job a cluster's stages read
CHAIN_FILE = "chain.json"  # on a cluster: each submission's stages and their Slurm jobs (slurm/chain.py)
STAGE_ERRORS = "stage-errors"  # on a cluster: why a stage failed, one line a file

# Inside a checkpoint directory.
COMPLETE = "COMPLETE"  # written last, when every rank is done: the step, layouts, files and their sizes
TRAINER_FILE = "trainer.pt"  # the engine's counters and the LR schedule's step


def checkpoint_tag(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_step(tag: str) -> int:
    return int(tag.removeprefix("step-"))


def is_checkpoint_tag(name: str) -> bool:
    return re.fullmatch(r"step-\d{8}", name) is not None


def rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.pt"


def shard_file(tp_rank: int, tp: int, pp_rank: int, pp: int) -> str:
    """A tensor x pipeline rank pair's weights and moments, named after its layout too, so that a reshard can write
    the new files beside the old ones."""
    return f"model-tp{tp_rank:02d}of{tp:02d}-pp{pp_rank:02d}of{pp:02d}.pt"
