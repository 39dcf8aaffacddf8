"""Parameter counts and FLOPs of a BLOOM model, from its shape alone (Narayanan et al. 2021 for the FLOPs)."""

from __future__ import annotations

from model.config import ModelConfig


def parameter_count(model: ModelConfig, tensor_parallel: int = 1) -> int:
    """Trainable parameters, the padded embedding included (it is tied to the output projection)."""
    h, vocab = model.hidden_size, model.padded_vocab_size(tensor_parallel)
    per_layer = (
        3 * h * h + 3 * h  # fused query/key/value
        + h * h + h  # attention output
        + 2 * model.ffn_hidden_size * h + model.ffn_hidden_size + h  # MLP
        + 4 * h  # two LayerNorms
    )  # fmt: skip
    return vocab * h + 2 * h + model.num_layers * per_layer + 2 * h


def _step_flops(model: ModelConfig, sequences: int, tensor_parallel: int, passes: float, vocab_share: float) -> float:
    """passes * 24 B s L h^2 (1 + s/6h + V/(vocab_share L h)): 3 passes (forward + backward), 4 with recompute."""
    layers, h, s = model.num_layers, model.hidden_size, model.seq_length
    vocab = model.padded_vocab_size(tensor_parallel)
    return passes * 24.0 * sequences * s * layers * h * h * (1 + s / (6 * h) + vocab / (vocab_share * layers * h))


def model_flops_per_step(model: ModelConfig, sequences: int, tensor_parallel: int = 1) -> float:
    """Forward + backward FLOPs of one step over `sequences` sequences: 72 B s L h^2 (1 + s/6h + V/12Lh)."""
    return _step_flops(model, sequences, tensor_parallel, passes=3, vocab_share=12)


def hardware_flops_per_step(model: ModelConfig, sequences: int, tensor_parallel: int = 1, recompute: bool = True):
    """FLOPs the hardware executes: with full activation recompute one more forward, 96 ... V/16Lh."""
    if not recompute:
        return model_flops_per_step(model, sequences, tensor_parallel)
    return _step_flops(model, sequences, tensor_parallel, passes=4, vocab_share=16)


def model_flops_per_token(model: ModelConfig, tensor_parallel: int = 1) -> float:
    return model_flops_per_step(model, 1, tensor_parallel) / model.seq_length


def mfu(tokens_per_second: float, model: ModelConfig, devices: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak."""
    return tokens_per_second * model_flops_per_token(model) / (devices * peak_tflops * 1e12)
