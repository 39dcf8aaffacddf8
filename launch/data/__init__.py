"""The training data before any rank starts: token files read as a corpus, the blend of languages, and data
preparation (the tokenizer and token files built on first use), an explicit step before the plan. numpy only: the
ranks turn samples into tensors (launch/train/batches.py)."""
