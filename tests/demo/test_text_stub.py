"""The stand-in instruction encoder (``demo/text_stub.py``): T5's shape and padding, reproducible per word."""

import numpy as np

from cosmos_policy_jax.demo import text_stub


def test_text_embeddings_look_like_t5_padding():
    e = text_stub.encode_instruction("reach the red target", text_len=16, text_dim=32)
    n_tokens = len(text_stub.tokenize("reach the red target"))  # 4 words + end token
    assert np.abs(e[:n_tokens]).sum(axis=1).min() > 0 and not e[n_tokens:].any()
    np.testing.assert_array_equal(e, text_stub.encode_instruction("Reach the red target.", text_len=16, text_dim=32))
    other = text_stub.encode_instruction("reach the blue target", text_len=16, text_dim=32)
    assert np.array_equal(e[[0, 1, 3, 4]], other[[0, 1, 3, 4]]) and not np.array_equal(e[2], other[2])
