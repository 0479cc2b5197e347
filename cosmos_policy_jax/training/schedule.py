"""The reference's learning-rate schedule (``LambdaLinearScheduler``).

``lr(k) = base_lr * f(k)`` where ``k`` is the number of optimizer steps already taken (optax's
``count``), cycles laid out back to back: inside cycle ``c`` with local step ``n``, a linear
warm-up from ``f_start`` to ``f_max`` over ``warm_up_steps``, then a linear decay from ``f_max`` to
``f_min`` at the end of the cycle (clamped). Cycle ``c`` holds steps ``k <= cumsum(lengths)[c+1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import optax


def lambda_linear_factor(
    k: float,
    cycle_lengths: Sequence[float],
    warm_up_steps: Sequence[float],
    f_start: Sequence[float],
    f_max: Sequence[float],
    f_min: Sequence[float],
) -> float:
    """Host (float64) value of the multiplier at step ``k``; the reference for the jnp version."""
    cum = np.concatenate([[0.0], np.cumsum(np.asarray(cycle_lengths, np.float64))])
    cycle = len(cycle_lengths) - 1
    for c in range(len(cycle_lengths)):
        if k <= cum[c + 1]:
            cycle = c
            break
    n = k - cum[cycle]
    w, length = warm_up_steps[cycle], cycle_lengths[cycle]
    if n < w:
        return f_start[cycle] + (f_max[cycle] - f_start[cycle]) * n / w
    decay = length - w
    if decay <= 0:
        return f_max[cycle]
    t = min(max((n - w) / decay, 0.0), 1.0)
    return f_max[cycle] - (f_max[cycle] - f_min[cycle]) * t


def lambda_linear_schedule(base_lr: float, scheduler_cfg) -> optax.Schedule:
    """optax schedule (jit-able, count -> lr) equal to ``base_lr * lambda_linear_factor(count)``."""
    lengths = np.asarray(scheduler_cfg.cycle_lengths, np.float64)
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    warm = np.asarray(scheduler_cfg.warm_up_steps, np.float64)
    fs = np.asarray(scheduler_cfg.f_start, np.float64)
    fmax = np.asarray(scheduler_cfg.f_max, np.float64)
    fmin = np.asarray(scheduler_cfg.f_min, np.float64)
    decay = lengths - warm

    def schedule(count):
        # float32 on device; local step offsets stay exact far beyond the cycle lengths used.
        k = jnp.asarray(count, jnp.float32)
        cycle = jnp.clip(jnp.searchsorted(jnp.asarray(cum[1:], jnp.float32), k, side="left"), 0, len(lengths) - 1)
        n = k - jnp.asarray(cum[:-1], jnp.float32)[cycle]
        w = jnp.asarray(warm, jnp.float32)[cycle]
        f_s, f_x, f_n = (jnp.asarray(a, jnp.float32)[cycle] for a in (fs, fmax, fmin))
        d = jnp.asarray(decay, jnp.float32)[cycle]
        warm_f = f_s + (f_x - f_s) * n / jnp.maximum(w, 1.0)
        t = jnp.clip((n - w) / jnp.maximum(d, 1.0), 0.0, 1.0)
        decay_f = jnp.where(d > 0, f_x - (f_x - f_n) * t, f_x)
        return base_lr * jnp.where(n < w, warm_f, decay_f)

    return schedule
