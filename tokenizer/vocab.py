"""The vocabulary facts the tokenizer decides and the model relies on: the special tokens' ids, and the padding of
the embedding (the one formula the tokenizer records and the model's embedding uses)."""

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_IDS = {UNK: 0, BOS: 1, EOS: 2, PAD: 3}
PAD_MULTIPLE = 128  # Megatron's: every tensor-parallel rank's slice of the embedding a multiple of it


def padded_vocab_size(vocab_size: int, tensor_parallel: int = 1) -> int:
    """Rounds up so every tensor-parallel rank holds an equal, GPU-friendly slice of the embedding (Megatron's rule)."""
    step = PAD_MULTIPLE * tensor_parallel
    return -(-vocab_size // step) * step
