"""Adding languages to a trained model: which start serves them best after the same continued training.

A tiny BLOOM is pretrained on 50 of the sample corpus's 60 languages with a tokenizer trained on those 50, then
trained further on all 60 for the same number of tokens in three ways:
  (a) with the base tokenizer (the 10 new languages, in scripts it never saw, fall back to bytes);
  (b) with the base tokenizer extended for the 10 (`corolla tokenizer extend`), new rows the mean of their base
      pieces' rows (`init_new_rows=mean`);
  (c) the same extension, new rows drawn at random (`init_new_rows=random`).
It prints each one's validation bits per byte (the one figure comparable across tokenizers) on the 10 new languages,
and the change on the 50 base languages against the pretrained model (forgetting), side by side.

    .venv/bin/python benchmarks/language_adaptation.py [--pretrain-steps 300] [--continue-steps 150] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from launch.cli import main as corolla  # noqa: E402
from launch.config.compose import shared_data_dir  # noqa: E402
from launch.rundir.files import VALIDATION_FILE  # noqa: E402

NEW = ["amh_Ethi", "bod_Tibt", "ell_Grek", "hye_Armn", "kat_Geor", "khm_Khmr", "lao_Laoo", "mya_Mymr", "sin_Sinh"]
NEW += ["tha_Thai"]
MODEL = ["model.num_layers=4", "model.hidden_size=128", "model.num_heads=4", "model.seq_length=128"]
TRAIN = ["train.global_batch=16", "train.micro_batch=8", "train.lr=2e-3", "train.min_lr=2e-4", "train.eval_samples=32"]
DATA = ["data.validation_documents=200"]


def run(*arguments: str) -> None:
    if corolla(list(arguments)) != 0:
        raise SystemExit(f"failed: corolla {' '.join(arguments)}")


def final_bpb(run_dir: Path) -> dict[str, float]:
    """Each language's bits per byte at the run's last validation."""
    records = [json.loads(line) for line in (run_dir / VALIDATION_FILE).read_text().splitlines()]
    return records[-1]["bpb"]


def base_corpus(workdir: Path) -> Path:
    corpus = workdir / "corpus-50"
    corpus.mkdir()
    for path in (shared_data_dir() / "multilingual").glob("*.txt"):
        if path.stem not in NEW:
            (corpus / path.name).symlink_to(path)
    return corpus


def tokenizers(workdir: Path, corpus_50: Path) -> tuple[Path, Path]:
    base, extended = workdir / "tokenizer-50", workdir / "tokenizer-60"
    run("tokenizer", "train", f"corpus={corpus_50}", f"output_dir={base}", "tokenizer=tiny")
    full = shared_data_dir() / "multilingual"
    run(
        "tokenizer", "extend", f"base={base}", f"corpus={full}", f"output_dir={extended}", "added_pieces=5000",
        "tokenizer.sample_bytes=2000000", "premium_threshold=2",
    )  # fmt: skip
    return base, extended


def train(run_dir: Path, steps: int, *arguments: str) -> float:
    start = time.perf_counter()
    every = [f"run_dir={run_dir}", f"train.steps={steps}", f"train.eval_interval={steps}", "train.warmup_steps=10"]
    run("train", *every, *MODEL, *TRAIN, *DATA, f"data.cache_dir={run_dir.parent / 'cache'}", *arguments)
    return time.perf_counter() - start


def row(name: str, bpb: dict[str, float], pretrained: dict[str, float]) -> str:
    new = statistics.mean(bpb[language] for language in NEW)
    base = [bpb[language] - pretrained[language] for language in pretrained]
    return f"{name:<50} {new:>10.3f} {statistics.mean(base):>+12.3f} {max(base):>+12.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--continue-steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "language_adaptation.txt")
    args = parser.parse_args()
    full = shared_data_dir() / "multilingual"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        corpus_50 = base_corpus(workdir)
        base, extended = tokenizers(workdir, corpus_50)
        seconds = {"pretrain": train(workdir / "pretrained", args.pretrain_steps, f"data.corpus={corpus_50}",
                                     f"data.tokenizer_dir={base}")}  # fmt: skip
        pretrained = final_bpb(workdir / "pretrained")
        init = f"init_from={workdir / 'pretrained'}"
        starts = {
            "(a) base tokenizer": [f"data.tokenizer_dir={base}"],
            "(b) extended, new rows the mean of their pieces": [f"data.tokenizer_dir={extended}"],
            "(c) extended, new rows at random": [f"data.tokenizer_dir={extended}", "init_new_rows=random"],
        }
        results = {}
        for name, arguments in starts.items():
            run_dir = workdir / name[1]
            seconds[name] = train(run_dir, args.continue_steps, init, f"data.corpus={full}", *arguments)
            results[name] = final_bpb(run_dir)
    tokens = args.continue_steps * 16 * 128
    lines = [
        f"language adaptation: a {' '.join(MODEL)} BLOOM pretrained {args.pretrain_steps} steps on 50 languages, then "
        f"{args.continue_steps} steps ({tokens:,} tokens) on all 60",
        f"{'start of the continued training':<50} {'new bpb':>10} {'base Δ mean':>12} {'base Δ max':>12}",
        *(row(name, bpb, pretrained) for name, bpb in results.items()),
        "new bpb: mean validation bits per byte of the 10 added languages after continuing (lower is better);",
        "base Δ: change of the 50 base languages' bits per byte against the pretrained model (forgetting: above 0)",
        "the 10 new languages (bits per byte): "
        + json.dumps({name[1]: {lang: round(results[name][lang], 3) for lang in NEW} for name in results}),
        "seconds: " + json.dumps({name: round(value) for name, value in seconds.items()}),
    ]
    report = "\n".join(lines)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
