"""Sampler parity with ``sampler.safetensors``: Karras schedules and full runs with the toy denoiser.

Every setting comes from the fixture (``info['schedules']``, ``info['runs']`` and the ``settings`` tensors);
the toy denoiser is the closed form of the fixture README section 4:
x0(x, sigma) = (target + x*sigma/(1+sigma^2)) / (1 + 0.1*sigma), evaluated in float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmos_policy_jax.diffusion import sampler
from tests.fixture_utils import load_fixture

# README section 12: the fixture's sampler runs use rho = 7 (a run's info entry may carry its own as 5th item).
DEFAULT_RHO = 7.0


@pytest.fixture(scope="module")
def fx():
    return load_fixture("sampler.safetensors")


def _runs(fx):
    tensors, info = fx
    runs = []
    for i, entry in enumerate(info["runs"]):
        settings = tensors[f"run{i}.settings"]
        num_steps, sigma_min, sigma_max = int(settings[0]), float(settings[1]), float(settings[2])
        assert (num_steps, sigma_min, sigma_max) == (int(entry[0]), float(entry[1]), float(entry[2]))
        rho = float(entry[4]) if len(entry) > 4 else DEFAULT_RHO
        runs.append((i, num_steps, sigma_min, sigma_max, rho, str(entry[3])))
    return runs


def _toy_np(target):
    def den(x, sigma):
        s = sigma.astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        return (target + x * s / (1 + s**2)) / (1 + np.float32(0.1) * s)

    return den


def test_schedules(fx):
    tensors, info = fx
    assert len(info["schedules"]) > 0
    for i in range(len(info["schedules"])):
        n, lo, hi, rho = tensors[f"schedule{i}.settings"]
        got = sampler.karras_schedule(float(lo), float(hi), int(n), float(rho))
        # float64 pow in torch vs numpy: last-ulp differences only.
        np.testing.assert_allclose(got, tensors[f"schedule{i}.sigmas"], rtol=1e-13, atol=0, err_msg=f"schedule{i}")


def test_runs_host_sampler(fx):
    tensors, _ = fx
    target = tensors["target"]
    for i, n, lo, hi, rho, solver in _runs(fx):
        calls = []
        den = _toy_np(target)

        def recording(x, sigma, den=den, calls=calls):
            assert x.dtype == np.float32 and sigma.dtype == np.float32 and sigma.shape == (x.shape[0],)
            calls.append(float(sigma[0]))
            return den(x, sigma)

        x_t = tensors["x_sigma_max"].astype(np.float32) * np.float32(hi)
        out = sampler.sample(recording, x_t, n, lo, hi, rho, solver)
        ref = tensors[f"run{i}.result"]
        assert out.dtype == np.float32 and out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=f"run{i}")
        # The denoiser receives float32 sigmas; the fixture lists them widened to float64.
        np.testing.assert_array_equal(np.asarray(calls), tensors[f"run{i}.denoiser_sigmas"], err_msg=f"run{i}")


def test_runs_jax_sampler(fx):
    tensors, _ = fx
    target = jnp.asarray(tensors["target"])

    def den(x, sigma):
        s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
        return (target + x * s / (1 + s**2)) / (1 + 0.1 * s)

    for i, n, lo, hi, rho, solver in _runs(fx):
        x_t = tensors["x_sigma_max"].astype(np.float32) * np.float32(hi)
        out = jax.jit(
            lambda x, n=n, lo=lo, hi=hi, rho=rho, solver=solver: sampler.sample_jax(den, x, n, lo, hi, rho, solver)
        )(x_t)
        ref = tensors[f"run{i}.result"]
        # float32 state instead of float64: relative error ~1e-7 of the output scale.
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=f"run{i}")
        assert sampler.solver_plan(n, lo, hi, rho, solver).num_calls == tensors[f"run{i}.denoiser_sigmas"].shape[0]
