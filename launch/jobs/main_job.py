"""`corolla pipeline` here (cluster=local), the main job: every stage on the sample corpus, one after the other, each
skipping what is current (stages.py). With a Slurm cluster the same stages run as a chain of jobs (slurm/chain.py).

tokenizer → evaluation report → token files → 3D-parallel training (checkpoints, MLflow) → Hugging Face export.
"""

from __future__ import annotations

from launch.config.schemas import MainJob
from launch.jobs.local import LocalBackend
from launch.jobs.prepare import check_launch
from launch.jobs.stages import (
    PipelinePaths,
    check_inputs,
    checkable_training_job,
    data_is_current,
    encode_stage,
    encoding_groups,
    evaluate_stage,
    export_stage,
    given_tokenizer,
    manifest_stage,
    one_pipeline,
    train_tokenizer_stage,
    training_job,
)
from launch.rundir.files import CHECKPOINTS, LOSS_CHART, METRICS_FILE
from launch.rundir.run_record import recorded_run
from launch.rundir.tracking import ui_command
from tokenizer.encode import encoding_alone
from tokenizer.files import HF_TOKENIZER_FILE, METADATA_FILE, SPM_MODEL_FILE
from tokenizer.token_files import MANIFEST_NAME


def run_main_job(job: MainJob, dry_run: bool = False) -> None:
    paths = PipelinePaths.of(job)
    check_inputs(job)
    training = checkable_training_job(job, data_is_current(job))
    if dry_run:
        LocalBackend().start(training, dry_run=True)
        print(f"dry run: the stages would run here, in {paths.run_dir}")
        return
    check_launch(training)  # a bad training job fails now, not after the data stages' minutes
    with one_pipeline(paths.run_dir):
        _run_stages(job)


def _run_stages(job: MainJob) -> None:
    paths = PipelinePaths.of(job)
    print(
        f"[1/5] tokenizer ({job.tokenizer.sampling.value} sampling, vocab {job.tokenizer.vocab_size})"
        if not given_tokenizer(job)
        else "[1/5] tokenizer"
    )
    train_tokenizer_stage(job)
    print(f"[2/5] evaluation on {job.parallel_set}")
    reports = evaluate_stage(job)
    print(f"[3/5] token files for training in {paths.tokens}")
    with encoding_alone(paths.tokens):  # a training on them is told to wait, another encoding is refused
        encode_stage(job, [source.label for group in encoding_groups(job) for source in group])
        manifest_stage(job)
    print(f"[4/5] training {job.model.name}, {job.train.steps} steps")
    LocalBackend().start(training_job(job))
    print(f"[5/5] Hugging Face export to {paths.hf}")
    export_stage(job)
    tracked = recorded_run(paths.train)
    print("\nDone. Where things are:")
    print(f"  tokenizer        {paths.tokenizer}  ({SPM_MODEL_FILE}, {HF_TOKENIZER_FILE}, {METADATA_FILE})")
    for kind, path in reports.items():
        print(f"  {kind:<16} {path}")
    print(f"  token files      {paths.tokens / MANIFEST_NAME}")
    print(f"  checkpoints      {paths.train / CHECKPOINTS}  (metrics also in {paths.train / METRICS_FILE})")
    print(f"  loss curve       {paths.train / LOSS_CHART}  (train and validation per language)")
    print(f"  HF model         {paths.hf}  (transformers.BloomForCausalLM.from_pretrained)")
    print(f"  MLflow run       {tracked.run_id}: {ui_command(tracked)}")
