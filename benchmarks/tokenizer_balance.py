"""How even are corolla's tokenizers across 60 languages, and how fast does it train them?

Trains 64k BPE tokenizers on the whole sample corpus with natural, temperature (alpha=0.3), UniMax and parity
sampling (parity tuned on the first half of parallel-dev), evaluates all of them on the held-out second half,
and times SentencePiece training against the Hugging Face `tokenizers` BPE trainer on the same sample.

    .venv/bin/python benchmarks/tokenizer_balance.py [--vocab 64000] [--out runs/bench-tokenizer]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from launch.config.compose import shared_data_dir  # noqa: E402
from tokenizer.config import Sampling, TokenizerConfig, TokenizerTrainJob  # noqa: E402
from tokenizer.corpus_scan import scan_corpus  # noqa: E402
from tokenizer.evaluate import language_stats, load_parallel, split_parallel, summarize  # noqa: E402
from tokenizer.loading import load_tokenizer  # noqa: E402
from tokenizer.sampling import budgets, sample_sentences  # noqa: E402
from tokenizer.spm import train_sentencepiece  # noqa: E402
from tokenizer.train import train_tokenizer  # noqa: E402

TARGET_MAX, TARGET_MEAN = 1.45, 1.20
PUBLISHED = "plain SentencePiece BPE 64k here: natural 2.16/1.41, alpha=0.3 1.83/1.29, uniform 1.73/1.25"


def train_variants(corpus: Path, parallel: Path, vocab: int, out: Path) -> dict[str, tuple[Path, float]]:
    variants = {
        "natural": {"sampling": Sampling.natural},
        "alpha=0.3": {"sampling": Sampling.temperature, "alpha": 0.3},
        "unimax": {"sampling": Sampling.unimax},
        "parity": {"sampling": Sampling.parity, "parity_set": str(parallel), "parity_tune_fraction": 0.5},
    }
    trained = {}
    for name, settings in variants.items():
        cfg = TokenizerConfig(vocab_size=vocab, **settings)
        job = TokenizerTrainJob(cfg, str(corpus), str(out / name.replace("=", "")), seed=1234, overwrite=True)
        start = time.perf_counter()
        path = train_tokenizer(job, log=lambda message, name=name: print(f"  [{name}] {message}", flush=True))
        trained[name] = (path, time.perf_counter() - start)
        print(f"trained {name} in {trained[name][1]:.0f} s", flush=True)
    return trained


def hf_bpe_seconds(sample: Path, vocab: int) -> float:
    """The Hugging Face BPE trainer, set up like corolla's SentencePiece: words split at spaces (▁), byte fallback."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace()
    special = ["<unk>", "<s>", "</s>", "<pad>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special, show_progress=False)
    start = time.perf_counter()
    with sample.open(encoding="utf-8") as lines:
        tokenizer.train_from_iterator((line.rstrip("\n") for line in lines), trainer=trainer)
    return time.perf_counter() - start


def throughput(corpus: Path, vocab: int, workdir: Path) -> dict[str, float]:
    """MB/s of training alone, both trainers on one alpha=0.3 sample of corolla's default size."""
    cfg = TokenizerConfig(vocab_size=vocab)
    scan = scan_corpus(str(corpus))
    sample = workdir / "sample.txt"
    sample_sentences(scan, budgets(scan.sizes, cfg), seed=1234, path=sample)
    megabytes = sample.stat().st_size / 1e6
    start = time.perf_counter()
    with sample.open(encoding="utf-8") as lines:
        train_sentencepiece((line.rstrip("\n") for line in lines), cfg, 1234, scan.languages)
    spm_seconds = time.perf_counter() - start
    hf_seconds = hf_bpe_seconds(sample, vocab)
    sample.unlink()
    return {"sample_mb": megabytes, "corolla_mb_s": megabytes / spm_seconds, "hf_mb_s": megabytes / hf_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=64000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "bench-tokenizer")
    args = parser.parse_args()
    corpus, parallel = shared_data_dir() / "multilingual", shared_data_dir() / "parallel-dev"
    args.out.mkdir(parents=True, exist_ok=True)

    trained = train_variants(corpus, parallel, args.vocab, args.out)
    _, held_out = split_parallel(load_parallel(parallel), 0.5)
    whole = load_parallel(parallel)
    rows = {}
    for name, (path, seconds) in trained.items():
        tokenizer = load_tokenizer(path)
        held = summarize(language_stats(tokenizer, held_out, "eng_Latn"), "eng_Latn")
        full = summarize(language_stats(tokenizer, whole, "eng_Latn"), "eng_Latn")
        rows[name] = {"held_out": held, "whole_set": full, "train_seconds": seconds}

    print(f"\n64k-class tokenizers ({args.vocab}), premium vs eng_Latn on parallel-dev lines 499-997 (held out):")
    print(
        f"{'sampling':<10} {'max':>6} {'(language)':<12} {'mean':>6} {'>1.5':>5} {'>2':>4} {'tokens':>10} "
        f"{'vs alpha':>8} {'whole max/mean':>15} {'train s':>8}"
    )
    alpha_tokens = rows["alpha=0.3"]["held_out"]["total_tokens"]
    for name, row in rows.items():
        held, full = row["held_out"], row["whole_set"]
        print(
            f"{name:<10} {held['max_premium']:>6.2f} {held['max_premium_language']:<12} {held['mean_premium']:>6.3f} "
            f"{len(held['languages_above_1_5']):>5} {len(held['languages_above_2']):>4} {held['total_tokens']:>10} "
            f"{held['total_tokens'] / alpha_tokens:>8.3f} {full['max_premium']:>7.2f}/{full['mean_premium']:<7.3f} "
            f"{row['train_seconds']:>8.0f}"
        )
    print(f"reference points: {PUBLISHED}; NLLB 1.80/1.32, XLM-R 2.27/1.37, BLOOM 10.05/2.39 (250k, FLORES)")

    parity = rows["parity"]["held_out"]
    checks = {
        f"parity max premium <= {TARGET_MAX}": parity["max_premium"] <= TARGET_MAX,
        f"parity mean premium <= {TARGET_MEAN}": parity["mean_premium"] <= TARGET_MEAN,
        "parity total tokens <= alpha=0.3's": parity["total_tokens"] <= alpha_tokens,
    }
    for check, passed in checks.items():
        print(f"  {'PASS' if passed else 'MISS'}  {check}")

    speed = throughput(corpus, args.vocab, args.out)
    print(
        f"\ntraining throughput on one {speed['sample_mb']:.1f} MB alpha=0.3 sample: SentencePiece (corolla) "
        f"{speed['corolla_mb_s']:.2f} MB/s, HF tokenizers BPE {speed['hf_mb_s']:.2f} MB/s, "
        f"ratio {speed['corolla_mb_s'] / speed['hf_mb_s']:.2f}x"
    )
    (args.out / "results.json").write_text(json.dumps({"tokenizers": rows, "throughput": speed}, indent=2) + "\n")
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
