"""Inference sampler of Cosmos Policy.

Karras rho schedule, x0-parameterised Euler ("1euler") and second-order Adams-Bashforth in log-sigma
("2ab") steps, and a final clean denoiser call at sigma_min. Two drivers:

* ``sample``: the reference semantics on the host, solver math in float64 numpy, the denoiser called with
  float32 ``x`` and float32 ``sigma`` of shape (B,). Use it for parity and for any Python denoiser.
* ``sample_jax``: the same steps as a jittable ``lax.scan``; the float64 coefficients are computed on the
  host (``solver_plan``) and the state is float32 on device. Matches ``sample`` within ~1e-6 relative.

Step count semantics (reference ``CosmosPolicySampler``): ``num_steps`` denoiser calls are requested;
for ``num_steps > 1`` the schedule has ``num_steps - 1`` intervals followed by one clean call at its last
sigma. When that leaves a single interval (``num_steps`` is 1 or 2) the reference makes exactly one call,
``D(x_T, sigma_max)``: so ``num_steps=2`` gives one denoiser call, as in the reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

SOLVERS = ("2ab", "1euler")

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def karras_schedule(sigma_min: float, sigma_max: float, num_intervals: int, rho: float) -> np.ndarray:
    """Reverse Karras schedule (float64, length ``num_intervals + 1``) from sigma_max down to sigma_min."""
    if not sigma_min < sigma_max:
        raise ValueError(f"sampler sigma_min must be < sigma_max, got {sigma_min}, {sigma_max}")
    if num_intervals < 1:
        raise ValueError(f"sampler schedule needs at least one interval, got {num_intervals}")
    i = np.arange(num_intervals + 1, dtype=np.float64)
    lo, hi = float(sigma_min) ** (1 / rho), float(sigma_max) ** (1 / rho)
    return (hi + i / num_intervals * (lo - hi)) ** rho


def sampler_schedule(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """The schedule an ``num_steps`` sampler walks: ``num_steps - 1`` intervals (one for ``num_steps == 1``)."""
    if num_steps < 1:
        raise ValueError(f"sampler num_steps must be >= 1, got {num_steps}")
    return karras_schedule(sigma_min, sigma_max, max(num_steps - 1, 1), rho)


def _phi1(z: np.ndarray) -> np.ndarray:
    return np.expm1(z) / z


def _phi2(z: np.ndarray) -> np.ndarray:
    return (_phi1(z) - 1.0) / z


def ab2_coefficients(s: float, t: float, s_prev: float) -> tuple[float, float, float]:
    """(a, b_cur, b_prev) of the 2ab step x <- a x + b_cur x0(s) + b_prev x0(s_prev), in float64.

    With lambda = -log sigma, h = lambda_t - lambda_s, c2 = (lambda_prev - lambda_s) / h and phi_k at -h:
    a = e^-h, b_cur = h (phi1 - phi2 / c2), b_prev = h phi2 / c2.
    """
    s, t, s_prev = np.float64(s), np.float64(t), np.float64(s_prev)
    h = np.log(s) - np.log(t)
    c2 = (np.log(s) - np.log(s_prev)) / h
    z = -h
    phi1, phi2 = _phi1(z), _phi2(z)
    b_prev = phi2 / c2
    return float(np.exp(z)), float(h * (phi1 - b_prev)), float(h * b_prev)


@dataclasses.dataclass(frozen=True)
class SolverPlan:
    """Host-side plan of a sampler run: the sigma of every denoiser call and the update coefficients.

    Step k calls the denoiser at ``sigmas[k]`` then sets x <- a[k] x + b_cur[k] x0 + b_prev[k] x0_prev
    (x0_prev: the previous step's prediction). If ``final_clean`` the last call's x0 is the output.
    """

    sigmas: np.ndarray  # (num_calls,) float64: the sigma of each denoiser call, in order
    a: np.ndarray  # (num_updates,) float64
    b_cur: np.ndarray
    b_prev: np.ndarray

    @property
    def num_calls(self) -> int:
        return int(self.sigmas.shape[0])


def solver_plan(
    num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, solver: str = "2ab"
) -> SolverPlan:
    """Coefficients (float64) of an ``num_steps`` run; see the module docstring for the step semantics."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown sampler solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    sig = sampler_schedule(num_steps, sigma_min, sigma_max, rho)
    n = len(sig) - 1
    if num_steps <= 2:
        # One direct x0 prediction at sigma_max, no update.
        empty = np.zeros((0,), np.float64)
        return SolverPlan(sigmas=sig[:1].copy(), a=empty, b_cur=empty, b_prev=empty)
    a, b_cur, b_prev = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        s, t = sig[i], sig[i + 1]
        if i == 0 or solver == "1euler":
            a[i], b_cur[i] = t / s, 1.0 - t / s
        else:
            a[i], b_cur[i], b_prev[i] = ab2_coefficients(s, t, sig[i - 1])
    return SolverPlan(sigmas=sig.copy(), a=a, b_cur=b_cur, b_prev=b_prev)


def initial_noise(shape: tuple[int, ...], seed: int, sigma_max: float) -> np.ndarray:
    """Deterministic x_T: numpy ``RandomState(seed).standard_normal(shape)`` as float32, times sigma_max."""
    noise = np.random.RandomState(seed).standard_normal(shape).astype(np.float32)
    return noise * np.float32(sigma_max)


def sample(
    denoise_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x_init: np.ndarray,
    num_steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    solver: str = "2ab",
) -> np.ndarray:
    """Run the sampler on the host (reference semantics); returns float32 of ``x_init``'s shape.

    ``denoise_fn(x, sigma)`` gets ``x`` float32 (B, ...) and ``sigma`` float32 (B,) and returns the x0
    prediction; the solver state and updates are float64.
    """
    plan = solver_plan(num_steps, sigma_min, sigma_max, rho, solver)
    x = np.asarray(x_init).astype(np.float64)
    batch = x.shape[0]

    def call(x64: np.ndarray, sigma: float) -> np.ndarray:
        sig32 = np.full((batch,), sigma, np.float64).astype(np.float32)
        return np.asarray(denoise_fn(x64.astype(np.float32), sig32)).astype(np.float64)

    x0_prev = None
    for k in range(plan.a.shape[0]):
        x0 = call(x, plan.sigmas[k])
        x = plan.a[k] * x + plan.b_cur[k] * x0
        if plan.b_prev[k] != 0.0:
            x = x + plan.b_prev[k] * x0_prev
        x0_prev = x0
    return call(x, plan.sigmas[-1]).astype(np.float32)


def sample_jax(
    denoise_fn: DenoiseFn,
    x_init: jax.Array,
    num_steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    solver: str = "2ab",
) -> jax.Array:
    """Jittable sampler: the same plan as ``sample`` in a ``lax.scan`` (the denoiser is traced once).

    ``num_steps``, the sigmas, ``rho`` and ``solver`` must be static Python values. The state is float32;
    coefficients are rounded from float64 to float32 once.
    """
    plan = solver_plan(num_steps, sigma_min, sigma_max, rho, solver)
    x = jnp.asarray(x_init, jnp.float32)
    batch = x.shape[0]

    def call(xx: jax.Array, sigma: jax.Array) -> jax.Array:
        return jnp.asarray(denoise_fn(xx, jnp.broadcast_to(sigma, (batch,)))).astype(jnp.float32)

    n = plan.a.shape[0]
    if n > 0:
        coeffs = tuple(jnp.asarray(c, jnp.float32) for c in (plan.sigmas[:n], plan.a, plan.b_cur, plan.b_prev))

        def body(carry, c):
            xx, x0_prev = carry
            sigma, a, b_cur, b_prev = c
            x0 = call(xx, sigma)
            return (a * xx + b_cur * x0 + b_prev * x0_prev, x0), None

        (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), coeffs)
    return call(x, jnp.float32(plan.sigmas[-1]))


def stack_plans(plans: list[SolverPlan]) -> tuple[np.ndarray, ...]:
    """Per-sample plans as (L, B) coefficient arrays plus the (B,) sigma of the final call.

    Samples with fewer denoiser calls get identity updates (x <- 1 x + 0 x0) in front of their own
    steps, so one scan of the longest plan runs every sample's exact update sequence; the first real
    update of a plan never reads x0_prev, so what the padding calls predicted is never used.
    """
    if not plans:
        raise ValueError("stack_plans needs at least one plan")
    n = max(p.a.shape[0] for p in plans)
    cols = []
    for p in plans:
        pad = n - p.a.shape[0]
        first = p.sigmas[0]
        cols.append(
            (
                np.concatenate([np.full(pad, first), p.sigmas[: p.a.shape[0]]]),
                np.concatenate([np.ones(pad), p.a]),
                np.concatenate([np.zeros(pad), p.b_cur]),
                np.concatenate([np.zeros(pad), p.b_prev]),
            )
        )
    stacked = tuple(np.stack([c[i] for c in cols], axis=1) for i in range(4))
    return (*stacked, np.array([p.sigmas[-1] for p in plans]))


def sample_jax_per_sample(denoise_fn: DenoiseFn, x_init: jax.Array, plans: list[SolverPlan]) -> jax.Array:
    """``sample_jax`` where every sample of the batch follows its own plan (step count and sigma range).

    Used to batch queries whose seeds draw different variance scales, or ensemble members with
    different step counts, into one call; sample i equals ``sample_jax`` run on it alone with plans[i].
    """
    x = jnp.asarray(x_init, jnp.float32)
    if len(plans) != x.shape[0]:
        raise ValueError(f"need one sampler plan per sample: {len(plans)} plans for a batch of {x.shape[0]}")
    sigmas, a, b_cur, b_prev, final = stack_plans(plans)
    bshape = (x.shape[0],) + (1,) * (x.ndim - 1)

    def call(xx: jax.Array, sigma: jax.Array) -> jax.Array:
        return jnp.asarray(denoise_fn(xx, sigma)).astype(jnp.float32)

    if sigmas.shape[0] > 0:
        coeffs = tuple(jnp.asarray(c, jnp.float32) for c in (sigmas, a, b_cur, b_prev))

        def body(carry, c):
            xx, x0_prev = carry
            sigma, ca, cb, cp = c
            x0 = call(xx, sigma)
            ca, cb, cp = (v.reshape(bshape) for v in (ca, cb, cp))
            return (ca * xx + cb * x0 + cp * x0_prev, x0), None

        (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), coeffs)
    return call(x, jnp.asarray(final, jnp.float32))
