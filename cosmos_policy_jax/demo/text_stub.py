"""A deterministic stand-in for the T5 instruction encoder.

The reference conditions the policy on T5-11B encoder outputs: one
``(512, 1024)`` array per instruction, with the rows after the last token zeroed. The ``demo``
config must run without PyTorch or downloaded weights, so it uses this stand-in instead. It is
**not** T5 and carries no language understanding: each word maps to a fixed pseudo-random vector
(seeded by a hash of the word), plus a small position code, followed by an end-of-sequence row and
zero padding, so that different instructions give different, reproducible embeddings with T5's
shape and padding convention. That is enough for tasks whose instructions differ by a keyword
(the demo task's target colour).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np

EOS_TOKEN = "</s>"
# Per-element standard deviation of the word vectors (T5-11B outputs are of this order).
EMBEDDING_SCALE = 0.25
POSITION_SCALE = 0.05


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric words of ``text`` followed by the end-of-sequence token."""
    return [*re.findall(r"[a-z0-9]+", text.lower()), EOS_TOKEN]


def _hash_seed(*parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def _vector(kind: str, key: str, dim: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(_hash_seed(kind, key, str(dim)))
    return (rng.standard_normal(dim) * scale).astype(np.float32)


def encode_instruction(text: str, *, text_len: int, text_dim: int) -> np.ndarray:
    """``(text_len, text_dim)`` float32 stand-in embedding; rows past the last token are zero.

    Tokens beyond ``text_len`` are truncated (as the reference's T5 call truncates at 512).
    """
    if text_len < 1 or text_dim < 1:
        raise ValueError(f"text_len and text_dim must be >= 1, got {text_len}, {text_dim}")
    tokens = tokenize(text)[:text_len]
    out = np.zeros((text_len, text_dim), np.float32)
    for i, token in enumerate(tokens):
        out[i] = _vector("word", token, text_dim, EMBEDDING_SCALE) + _vector("pos", str(i), text_dim, POSITION_SCALE)
    return out


def stub_embeddings(instructions: Iterable[str], *, text_len: int, text_dim: int) -> dict[str, np.ndarray]:
    """``{instruction: (text_len, text_dim) float32}`` for every distinct instruction."""
    return {t: encode_instruction(t, text_len=text_len, text_dim=text_dim) for t in dict.fromkeys(instructions)}
