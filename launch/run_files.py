"""The names of what a run directory holds; the one place they are spelled, so that readers that must stay light
(`corolla status`) and the training code that writes them agree."""

JOB_FILE = "job.yaml"  # the resolved job
RUN_FILE = "run.json"  # the MLflow run: tracking URI, run id
METRICS_FILE = "metrics.jsonl"  # one record per optimizer step
VALIDATION_FILE = "validation.jsonl"  # one record per validation
CHECKPOINTS = "checkpoints"  # step-XXXXXXXX/ directories
LATEST = "latest"  # in CHECKPOINTS: the tag of the newest complete checkpoint
COMPLETE = "COMPLETE"  # in a checkpoint: written last, when every rank is done
JOBS_FILE = "slurm-jobs.json"  # the Slurm job ids submitted for the run
SUBMITIT_DIR = "slurm"  # submitit's folder: sbatch scripts, per-rank logs
