"""`corolla pipeline`, the main job: every stage on the sample corpus, each skipped when its output is current.

Today: tokenizer → evaluation report → token files. Training joins when the engine lands.
"""

from __future__ import annotations

import json
from pathlib import Path

from launch.schemas import PipelineJob
from tokenizer.config import TokenizerTrainJob
from tokenizer.encode import encode_corpus
from tokenizer.evaluate import evaluate, format_summary, write_report
from tokenizer.train import is_current, train_tokenizer


def run_pipeline(job: PipelineJob) -> None:
    run_dir = Path(job.run_dir)
    tokenizer_dir, report_dir, tokens_dir = run_dir / "tokenizer", run_dir / "tokenizer-eval", run_dir / "tokens"
    print(f"[1/3] tokenizer ({job.tokenizer.sampling.value} sampling, vocab {job.tokenizer.vocab_size})")
    train_job = TokenizerTrainJob(job.tokenizer, job.corpus, str(tokenizer_dir), job.seed, overwrite=True)
    if is_current(train_job):
        print(f"      up to date: {tokenizer_dir}")
    else:
        train_tokenizer(train_job)
    held_out = json.loads((tokenizer_dir / "metadata.json").read_text()).get("parity", {}).get("held_out")
    if held_out:
        print(
            f"      on parallel sentences parity did not tune on: max premium {held_out['max_premium']:.2f}, "
            f"mean {held_out['mean_premium']:.2f}"
        )
    print(f"[2/3] evaluation on {job.parallel}")
    report = evaluate([str(tokenizer_dir)], job.parallel, job.tokenizer.reference_language)
    paths = write_report(report, report_dir)
    print(format_summary(report))
    print(f"[3/3] token files for training in {tokens_dir}")
    manifest = encode_corpus(str(tokenizer_dir), job.corpus, str(tokens_dir))
    print(f"      {manifest['totals']['tokens']:,} tokens in {len(manifest['languages'])} languages")
    print("\nDone. Where things are:")
    print(f"  tokenizer        {tokenizer_dir}  (tokenizer.model, tokenizer.json, metadata.json)")
    for kind, path in paths.items():
        print(f"  {kind:<16} {path}")
    print(f"  token files      {tokens_dir}/manifest.json")
