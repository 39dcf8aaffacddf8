"""The `corolla tokenizer ...` commands: each takes its validated job and prints where the results are."""

from __future__ import annotations

from pathlib import Path

from tokenizer.config import TokenizerEncodeJob, TokenizerEvaluateJob, TokenizerExtendJob, TokenizerTrainJob
from tokenizer.encode import encode_corpus
from tokenizer.evaluate import check_report_dir, format_summary, write_report
from tokenizer.evaluate import evaluate as evaluate_tokenizers
from tokenizer.extend import extend_tokenizer
from tokenizer.files import check_apart
from tokenizer.train import train_tokenizer


def train(job: TokenizerTrainJob) -> None:
    train_tokenizer(job)


def evaluate(job: TokenizerEvaluateJob) -> None:
    several = len(job.tokenizer) > 1
    tokenizers = {f"tokenizer[{index}]" if several else "tokenizer": path for index, path in enumerate(job.tokenizer)}
    check_apart(Path(job.output_dir), "the report", {"parallel": job.parallel, **tokenizers}, replaced_whole=False)
    if not job.overwrite:
        check_report_dir(job.output_dir, job.tokenizer)
    report = evaluate_tokenizers(job.tokenizer, job.parallel, job.reference, job.names or None)
    paths = write_report(report, job.output_dir)
    print(format_summary(report))
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def encode(job: TokenizerEncodeJob) -> None:
    manifest = encode_corpus(
        job.tokenizer, job.corpus, job.output_dir, job.append_eos, job.workers, overwrite=job.overwrite
    )
    totals = manifest["totals"]
    languages = f"{totals['languages']} language{'s' if totals['languages'] != 1 else ''}"
    print(f"{totals['tokens']:,} tokens in {languages} written to {job.output_dir}")


def extend(job: TokenizerExtendJob) -> None:
    extend_tokenizer(job)
