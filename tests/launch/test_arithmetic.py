"""Parameter and FLOP arithmetic against BLOOM's published figures."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from launch.config.compose import CONF_DIR
from launch.plan.arithmetic import hardware_flops_per_step, mfu, model_flops_per_step, parameter_count
from model.config import ModelConfig


def published(name: str, vocab_size: int = 250680) -> ModelConfig:
    fields = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
    return ModelConfig(**{**fields, "vocab_size": vocab_size})


@pytest.mark.parametrize(
    ("name", "billions"),
    [
        ("bloom-560m", 0.559),
        ("bloom-1b1", 1.065),
        ("bloom-1b7", 1.722),
        ("bloom-3b", 3.003),
        ("bloom-7b1", 7.069),
        ("bloom-176b", 176.247),
    ],
)
def test_parameter_counts_match_the_published_models(name: str, billions: float) -> None:
    assert parameter_count(published(name), tensor_parallel=4) / 1e9 == pytest.approx(billions, rel=2e-3)


def test_bloom_176b_throughput_reproduces_the_reported_150_tflops() -> None:
    # 2048 sequences of 2048 tokens per iteration, ~105 s per iteration on 384 A100s, full recompute.
    bloom = published("bloom-176b")
    tflops_per_gpu = hardware_flops_per_step(bloom, 2048, tensor_parallel=4) / 105 / 384 / 1e12
    assert tflops_per_gpu == pytest.approx(149.5, abs=1.0)
    model_tflops = model_flops_per_step(bloom, 2048, tensor_parallel=4) / 105 / 384 / 1e12
    assert model_tflops / 312 == pytest.approx(0.36, abs=0.02)  # the reported ~36% MFU


def test_mfu_is_model_flops_over_peak() -> None:
    tiny = ModelConfig(num_layers=2, hidden_size=64, num_heads=4, seq_length=128, vocab_size=1000)
    tokens_per_second = 1e6
    expected = tokens_per_second * model_flops_per_step(tiny, 1) / tiny.seq_length / (8 * 312e12)
    assert mfu(tokens_per_second, tiny, devices=8, peak_tflops=312) == pytest.approx(expected)
