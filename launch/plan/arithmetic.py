"""Parameter counts and FLOPs of a BLOOM model, from its shape alone (Narayanan et al. 2021 for the FLOPs)."""

from __future__ import annotations

from model.config import ModelConfig

# What a checkpoint holds of each parameter, written once whatever the data parallelism: its fp32 weight and Adam's two
# moments (launch/train/shards.py's KEYS).
CHECKPOINT_BYTES_PER_PARAMETER = 12


def block_parameters(model: ModelConfig, tensor_parallel: int = 1) -> int:
    """One transformer block's parameters on one tensor-parallel rank: the fused QKV, the attention output and the
    MLP's weights and column biases are split; the row-parallel biases and both LayerNorms are whole on every rank."""
    h, ffn = model.hidden_size, model.ffn_hidden_size
    split = 3 * h * h + 3 * h + h * h + 2 * ffn * h + ffn
    whole = 2 * h + 2 * 2 * h
    return split // tensor_parallel + whole


def parameter_count(model: ModelConfig, tensor_parallel: int = 1) -> int:
    """Trainable parameters, the padded embedding included (it is tied to the output projection) with the LayerNorms
    after it and after the last block."""
    h, vocab = model.hidden_size, model.padded_vocab_size(tensor_parallel)
    return vocab * h + 2 * h + model.num_layers * block_parameters(model) + 2 * h


def block_flops(model: ModelConfig, sequences: int, passes: int = 3) -> float:
    """One transformer block over `sequences` sequences: passes x 24 B s h^2 (1 + s/6h), with 3 passes for forward +
    backward and 4 when activations are recomputed."""
    h, s = model.hidden_size, model.seq_length
    return passes * 24.0 * sequences * s * h * h + attention_flops(model, sequences, passes)


def attention_flops(model: ModelConfig, sequences: int, passes: int = 3) -> float:
    """The attention scores and their weighted sum in one block, counted over the whole s x s square as Narayanan et
    al. do (a causal kernel computes about half): passes x 4 B s^2 h."""
    return passes * 4.0 * sequences * model.seq_length**2 * model.hidden_size


def logits_flops(model: ModelConfig, sequences: int, tensor_parallel: int = 1) -> float:
    """The output projection onto the padded vocabulary, forward + backward (never recomputed): 6 B s h V."""
    return 6.0 * sequences * model.seq_length * model.hidden_size * model.padded_vocab_size(tensor_parallel)


def _step_flops(model: ModelConfig, sequences: int, tensor_parallel: int, passes: int) -> float:
    """Every block, then the output projection: passes * 24 B s L h^2 (1 + s/6h) + 6 B s h V."""
    return model.num_layers * block_flops(model, sequences, passes) + logits_flops(model, sequences, tensor_parallel)


def model_flops_per_step(model: ModelConfig, sequences: int, tensor_parallel: int = 1) -> float:
    """Forward + backward FLOPs of one step over `sequences` sequences: 72 B s L h^2 (1 + s/6h + V/12Lh)."""
    return _step_flops(model, sequences, tensor_parallel, passes=3)


def hardware_flops_per_step(model: ModelConfig, sequences: int, tensor_parallel: int = 1, recompute: bool = True):
    """FLOPs the hardware executes: with full activation recompute one more forward, 96 ... V/16Lh."""
    if not recompute:
        return model_flops_per_step(model, sequences, tensor_parallel)
    return _step_flops(model, sequences, tensor_parallel, passes=4)


def model_flops_per_token(model: ModelConfig) -> float:
    return model_flops_per_step(model, 1) / model.seq_length


def mfu(tokens_per_second: float, model: ModelConfig, devices: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak."""
    return tokens_per_second * model_flops_per_token(model) / (devices * peak_tflops * 1e12)
