"""`corolla pipeline`, the main job: every stage on the sample corpus, each skipped when its output is current.

tokenizer → evaluation report → token files → 3D-parallel training (checkpoints, MLflow) → Hugging Face export.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from launch.config.schemas import ExportJob, MainJob, TrainJob
from launch.jobs.local import LocalBackend
from launch.rundir.files import (
    CHECKPOINTS,
    HF_DIR,
    LOSS_CHART,
    METRICS_FILE,
    REPORT_DIR,
    TOKENIZER_DIR,
    TRAIN_DIR,
)
from launch.rundir.run_record import recorded_run
from launch.rundir.tracking import ui_command
from launch.train.export import export_hf_model
from tokenizer.config import TokenizerTrainJob
from tokenizer.encode import encode_corpus
from tokenizer.evaluate import evaluate, format_summary, write_report
from tokenizer.token_files import MANIFEST_NAME
from tokenizer.train import METADATA_FILE, is_current, train_tokenizer


def _tokenizer(job: MainJob, tokenizer_dir: Path) -> None:
    train_job = TokenizerTrainJob(job.tokenizer, job.data.corpus, str(tokenizer_dir), job.seed, overwrite=True)
    if is_current(train_job):
        print(f"      up to date: {tokenizer_dir}")
    else:
        train_tokenizer(train_job)
    held_out = json.loads((tokenizer_dir / METADATA_FILE).read_text()).get("parity", {}).get("held_out")
    if held_out:
        print(
            f"      on parallel sentences parity did not tune on: max premium {held_out['max_premium']:.2f}, "
            f"mean {held_out['mean_premium']:.2f}"
        )


def run_main_job(job: MainJob) -> None:
    run_dir = Path(job.run_dir)
    tokenizer_dir, report_dir = run_dir / TOKENIZER_DIR, run_dir / REPORT_DIR
    train_dir, hf_dir = run_dir / TRAIN_DIR, run_dir / HF_DIR
    print(f"[1/5] tokenizer ({job.tokenizer.sampling.value} sampling, vocab {job.tokenizer.vocab_size})")
    _tokenizer(job, tokenizer_dir)
    print(f"[2/5] evaluation on {job.parallel_set}")
    report = evaluate([str(tokenizer_dir)], job.parallel_set, job.tokenizer.reference_language)
    paths = write_report(report, report_dir)
    print(format_summary(report))
    print(f"[3/5] token files for training in {job.data.tokens_dir}")
    manifest = encode_corpus(str(tokenizer_dir), job.data.corpus, job.data.tokens_dir)
    print(f"      {manifest['totals']['tokens']:,} tokens in {len(manifest['languages'])} languages")
    print(f"[4/5] training {job.model.name}, {job.train.steps} steps")
    training = {field.name: getattr(job, field.name) for field in fields(TrainJob)}
    LocalBackend().start(TrainJob(**{**training, "run_dir": str(train_dir)}))
    print(f"[5/5] Hugging Face export to {hf_dir}")
    export_hf_model(ExportJob(str(train_dir), str(hf_dir)))
    tracked = recorded_run(train_dir)
    print("\nDone. Where things are:")
    print(f"  tokenizer        {tokenizer_dir}  (tokenizer.model, tokenizer.json, {METADATA_FILE})")
    for kind, path in paths.items():
        print(f"  {kind:<16} {path}")
    print(f"  token files      {Path(job.data.tokens_dir) / MANIFEST_NAME}")
    print(f"  checkpoints      {train_dir / CHECKPOINTS}  (metrics also in {train_dir / METRICS_FILE})")
    print(f"  loss curve       {train_dir / LOSS_CHART}  (train and validation per language)")
    print(f"  HF model         {hf_dir}  (transformers.BloomForCausalLM.from_pretrained)")
    print(f"  MLflow run       {tracked.run_id}: {ui_command(tracked)}")
