"""Vocabulary padding: the one formula the tokenizer records and the model's embedding uses."""


def padded_vocab_size(vocab_size: int, tensor_parallel: int = 1, multiple: int = 128) -> int:
    """Rounds up so every tensor-parallel rank holds an equal, GPU-friendly slice of the embedding (Megatron's rule)."""
    step = multiple * tensor_parallel
    return -(-vocab_size // step) * step
