"""Typed configs of the launch commands (the schemas behind `conf/<command>.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from tokenizer.config import TokenizerConfig


@dataclass
class PipelineJob:
    tokenizer: TokenizerConfig = MISSING
    corpus: str = MISSING
    parallel: str = MISSING
    run_dir: str = "runs/demo"
    seed: int = 1234
