"""`corolla`: one command, subcommands that each take Hydra overrides (`key=value`, `group=option`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import OmegaConf

from launch.configuration import ConfigError, load_job
from launch.pipeline import run_pipeline
from tokenizer.encode import encode_corpus
from tokenizer.evaluate import evaluate, format_summary, write_report
from tokenizer.train import train_tokenizer


def _train(job) -> None:
    train_tokenizer(job)


def _evaluate(job) -> None:
    report = evaluate(job.tokenizer, job.parallel, job.reference, job.names or None)
    paths = write_report(report, job.output_dir)
    print(format_summary(report))
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def _encode(job) -> None:
    manifest = encode_corpus(job.tokenizer, job.corpus, job.output_dir, job.append_eos, job.workers)
    totals = manifest["totals"]
    print(f"{totals['tokens']:,} tokens in {totals['languages']} languages written to {job.output_dir}")


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    config: str
    run: Callable[[object], None]
    help: str


COMMANDS = [
    Command(("tokenizer", "train"), "tokenizer_train", _train, "train a balanced multilingual SentencePiece tokenizer"),
    Command(("tokenizer", "evaluate"), "tokenizer_evaluate", _evaluate, "premiums, fertility, byte fallback"),
    Command(("tokenizer", "encode"), "tokenizer_encode", _encode, "tokenize a corpus into per-language token files"),
    Command(("pipeline",), "pipeline", run_pipeline, "the main job: the whole pipeline on the sample corpus"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corolla", description="Multilingual BLOOM training on HPC clusters.")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", required=True)
    }
    for command in COMMANDS:
        for depth in range(1, len(command.path)):
            prefix = command.path[:depth]
            if prefix not in groups:
                group = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                groups[prefix] = group.add_subparsers(dest="_".join(prefix), required=True)
        sub = groups[command.path[:-1]].add_parser(command.path[-1], help=command.help, description=command.help)
        sub.add_argument("--cfg", action="store_true", help="print the resolved config and exit")
        sub.add_argument("overrides", nargs="*", help="Hydra overrides: key=value, group=option")
        sub.set_defaults(command_spec=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: Command = args.command_spec
    try:
        cfg, job = load_job(command.config, args.overrides)
        if args.cfg:
            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        command.run(job)
    except (ConfigError, ValueError, OSError) as error:
        if os.environ.get("COROLLA_DEBUG"):
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"corolla: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
