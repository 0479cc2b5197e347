"""Ensemble and depth aggregation, image averaging and query selection (pure numpy, float32 like the
reference). Where the reference is broken (one-member ``lcb``, ``first``, ``gamma_weighted_average``) the
choices are documented in docs/planning.md."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VALUE_SCHEMES = ("average", "lcb", "success_vote", "majority_mean")
FUTURE_SCHEMES = ("average", "last", "first")
DEPTH_SCHEMES = ("use_last_value", "average")
SUCCESS_THRESHOLD = np.float32(0.05)  # a member counts as a predicted success when its value is > 0.05


def ensemble_steps(num_steps: int, members: int) -> list[int]:
    """Denoising steps of each ensemble member: ``int(linspace(1, K, n))`` (one member: 1 step, as the reference)."""
    if members < 1:
        raise ValueError(f"an ensemble needs at least one member, got {members}")
    return [int(x) for x in np.linspace(1, num_steps, members)]


def aggregate_values(values: np.ndarray, scheme: str) -> np.ndarray:
    """Aggregate ensemble members ``values`` (n, B) in [0, 1] into (B,) with ``scheme`` (then clamped).

    ``lcb`` is mean - 1 x std with the unbiased std; with a single member (where the reference returns NaN)
    the std is taken as 0, so the result is that member's value.
    """
    v = np.asarray(values, np.float32)
    if v.ndim != 2 or v.shape[0] < 1:
        raise ValueError(f"ensemble values must be (members, batch) with >= 1 member, got shape {v.shape}")
    n = v.shape[0]
    if scheme == "average":
        out = v.mean(axis=0)
    elif scheme == "lcb":
        std = v.std(axis=0, ddof=1) if n > 1 else np.zeros(v.shape[1], np.float32)
        out = v.mean(axis=0) - np.float32(1.0) * std
    elif scheme == "success_vote":
        out = (v > SUCCESS_THRESHOLD).sum(axis=0).astype(np.float32) / np.float32(n)
    elif scheme == "majority_mean":
        ok = v > SUCCESS_THRESHOLD
        k = ok.sum(axis=0)
        mean_ok = np.where(ok, v, np.float32(0)).sum(axis=0) / np.maximum(k, 1).astype(np.float32)
        out = np.where(k.astype(np.float32) / np.float32(n) >= 0.5, mean_ok, np.float32(0))
    else:
        raise ValueError(
            f"unknown value ensemble aggregation scheme {scheme!r}; choose one of {', '.join(VALUE_SCHEMES)}"
        )
    return np.clip(out.astype(np.float32), np.float32(0), np.float32(1))


def average_images(members: Sequence[dict[str, np.ndarray | None]]) -> dict[str, np.ndarray | None]:
    """Per camera: mean over members in float32, rounded half to even, clipped, uint8 (None members skipped)."""
    keys = list(dict.fromkeys(k for m in members for k in m))
    out: dict[str, np.ndarray | None] = {}
    for k in keys:
        imgs = [np.asarray(m[k], np.float32) for m in members if m.get(k) is not None]
        out[k] = np.clip(np.round(np.mean(np.stack(imgs), axis=0)), 0, 255).astype(np.uint8) if imgs else None
    return out


def aggregate_images(members: Sequence[dict[str, np.ndarray]], scheme: str) -> dict[str, np.ndarray | None]:
    """The future images returned for a future-state ensemble: ``average``, ``last`` or ``first`` member."""
    if scheme.lower() == "average":
        return average_images(members)
    if scheme == "last":
        return dict(members[-1])
    if scheme == "first":
        return dict(members[0])
    raise ValueError(
        f"unknown future-state ensemble aggregation scheme {scheme!r}; choose one of {', '.join(FUTURE_SCHEMES)}"
    )


def aggregate_depth(values_by_depth: np.ndarray, scheme: str) -> np.ndarray:
    """(..., K) values of every search-depth entry -> (...,) with ``use_last_value`` or ``average`` (float64)."""
    v = np.asarray(values_by_depth, np.float64)
    if scheme == "use_last_value":
        return v[..., -1]
    if scheme == "average":
        return v.mean(axis=-1)
    raise ValueError(f"unknown search depth aggregation scheme {scheme!r}; choose one of {', '.join(DEPTH_SCHEMES)}")


def select_query(values: Sequence[float]) -> int:
    """Index of the chosen query: the first maximal value in query order (the base query wins ties).

    A NaN value never wins (the reference keeps a NaN base value and then fails to answer; a user needs
    the best finite candidate). Every value NaN: the base query.
    """
    v = np.asarray(values, np.float64)
    best = 0
    for q in range(1, len(v)):
        if v[q] > v[best] or (np.isnan(v[best]) and not np.isnan(v[q])):
            best = q
    return best
