"""corolla: tokenizer."""
