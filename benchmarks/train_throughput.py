"""Training throughput: corolla's step against `transformers`' BloomForCausalLM, and the cost of 3D parallelism.

In one run, on the same shape, batch and dtype:
  1. corolla, one process (`corolla train parallel=single`), tokens/s over the steps after warm-up;
  2. transformers' BloomForCausalLM + torch AdamW, forward/backward/step in this process, tokens/s;
  3. corolla, TP=2 x PP=2 x DP=2 (eight processes on this machine), tokens/s: the 3D-parallel overhead here.

    .venv/bin/python benchmarks/train_throughput.py [--steps 12] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from launch.cli import main as corolla  # noqa: E402
from launch.config.compose import shared_data_dir  # noqa: E402
from launch.rundir.files import METRICS_FILE  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.hf import hf_config  # noqa: E402
from tokenizer.config import TokenizerConfig, TokenizerTrainJob  # noqa: E402
from tokenizer.encode import encode_corpus  # noqa: E402
from tokenizer.token_files import MANIFEST_NAME  # noqa: E402
from tokenizer.train import train_tokenizer  # noqa: E402

SHAPE = {"num_layers": 4, "hidden_size": 256, "num_heads": 8, "seq_length": 256}
MICRO, GLOBAL, WARMUP = 2, 8, 3


def token_files(workdir: Path) -> Path:
    cfg = TokenizerConfig(vocab_size=8000, sample_bytes=8_000_000)
    corpus = shared_data_dir() / "multilingual"
    tokenizer = train_tokenizer(TokenizerTrainJob(cfg, str(corpus), str(workdir / "tokenizer")), log=lambda *_: None)
    encode_corpus(tokenizer, corpus, workdir / "tokens", log=lambda *_: None)
    return workdir / "tokens"


def corolla_tokens_per_second(tokens: Path, run_dir: Path, steps: int, precision: str, *layout: str) -> float:
    shape = [f"model.{key}={value}" for key, value in SHAPE.items()]
    overrides = [
        f"data.tokens_dir={tokens}",
        f"run_dir={run_dir}",
        f"train.steps={steps}",
        f"train.micro_batch={MICRO}",
        f"train.global_batch={GLOBAL}",
        f"train.precision={precision}",
        f"train.checkpoint_interval={steps}",
        *shape,
        *layout,
    ]
    if corolla(["train", *overrides]) != 0:
        raise SystemExit("corolla train failed")
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return statistics.median(record["tokens_per_second"] for record in records[WARMUP:])


def transformers_tokens_per_second(vocab_size: int, steps: int, precision: str) -> float:
    from transformers import BloomConfig, BloomForCausalLM

    model_cfg = ModelConfig(**SHAPE, vocab_size=vocab_size)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = BloomForCausalLM(BloomConfig(**hf_config(model_cfg, model_cfg.padded_vocab_size(1)))).to(dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, vocab_size, (GLOBAL, SHAPE["seq_length"] + 1))
    rates = []
    for _ in range(steps):
        start = time.perf_counter()
        for micro in batch.split(MICRO):  # the same gradient accumulation as corolla's engine
            loss = model(micro[:, :-1], labels=micro[:, :-1]).loss / (GLOBAL // MICRO)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rates.append(GLOBAL * SHAPE["seq_length"] / (time.perf_counter() - start))
    return statistics.median(rates[WARMUP:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tokens = token_files(workdir)
        vocab = json.loads((tokens / MANIFEST_NAME).read_text())["tokenizer"]["vocab_size"]
        single = corolla_tokens_per_second(tokens, workdir / "single", args.steps, args.precision, "parallel=single")
        baseline = transformers_tokens_per_second(vocab, args.steps, args.precision)
        three_d = corolla_tokens_per_second(tokens, workdir / "3d", args.steps, args.precision, "parallel=3d")
    print(
        f"\nshape {SHAPE}, vocab {vocab}, global batch {GLOBAL} x {SHAPE['seq_length']} tokens, {args.precision}, "
        f"median over steps {WARMUP + 1}-{args.steps}, {torch.get_num_threads()} CPU threads"
    )
    print(f"  transformers BloomForCausalLM, one process : {baseline:>9,.0f} tokens/s  (baseline)")
    print(f"  corolla, one process                        : {single:>9,.0f} tokens/s  {single / baseline:.2f}x")
    print(
        f"  corolla, TP2 x PP2 x DP2 (8 processes)      : {three_d:>9,.0f} tokens/s  {three_d / baseline:.2f}x "
        f"({three_d / single:.2f}x of one process on the same cores)"
    )


if __name__ == "__main__":
    main()
