"""Noise-level parity with ``sde_scaling.safetensors``.

1. Preconditioning coefficients and loss weights at the recorded sigmas: exact float32 equality (the table
   variant of the rectified-flow weight within 1e-6: its 1000-entry table is built by a float32 sum whose
   order differs from torch's).
2. The hybrid sigma sampler: the reference's draws come from torch + numpy RNGs, so only the distribution
   can be compared. With N of our draws (fixed seed) and the reference's M recorded draws summarised by
   quantiles, for every recorded level p the empirical CDF of our draws at the recorded quantile q_p must
   satisfy |F_N(q_p) - p| <= eps_N + eps_M + 1/M, eps_K = sqrt(ln(4/alpha) / (2K)) (DKW inequality applied
   to both samples, plus the quantile's interpolation slack). If both samples come from the same distribution
   this fails with probability <= alpha = 1e-6 for a random seed, for all levels jointly. Mean, log-mean,
   log-std and the fraction inside [uniform_lower, uniform_upper] use two-sample z-tests at |z| <= 5.5
   (two-sided false-failure rate 3.8e-8 each, by the CLT). With the fixed seed the test is deterministic.
   Power: a 0.6/0.4 mixture instead of 0.7/0.3 moves F at the median by ~0.06, seven times the DKW bound.
"""

import math

import jax
import numpy as np
import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax.diffusion import scaling, sde
from tests.fixture_utils import fixture_dir, load_fixture

ALPHA = 1e-6
Z_MAX = 5.5
N_OURS = 1_000_000
SEED = 20260


@pytest.fixture(scope="module")
def fx():
    return load_fixture("sde_scaling.safetensors")


def _sde_cfg(info: dict) -> sde.SDEConfig:
    # The fixture was drawn with the production SDE (README "Extra"). Take its parameters from the fixture's
    # own info if present, else from the policy fixture's info, else from the production (libero) config.
    if "sde" in info:
        return sde.SDEConfig.from_config(info["sde"])
    if (fixture_dir() / "policy_train_step.safetensors").exists():
        _, policy_info = load_fixture("policy_train_step.safetensors")
        if "sde" in policy_info:
            return sde.SDEConfig.from_config(policy_info["sde"])
    return sde.SDEConfig.from_config(get_config("libero").model.sde)


def test_rectified_flow_coefficients_exact(fx):
    t, _ = fx
    sig = jax.numpy.asarray(t["sigmas"])
    for name, got in zip(("c_skip", "c_out", "c_in", "c_noise"), scaling.rectified_flow_scaling(sig)):
        np.testing.assert_array_equal(np.asarray(got), t[f"rf.{name}"], err_msg=name)


def test_edm_coefficients_exact(fx):
    t, _ = fx
    sig = jax.numpy.asarray(t["sigmas"])
    # README: the EDM entries use sigma_data 0.5.
    for name, got in zip(("c_skip", "c_out", "c_in", "c_noise"), scaling.edm_scaling(sig, 0.5)):
        np.testing.assert_array_equal(np.asarray(got), t[f"edm.{name}"], err_msg=name)


def test_loss_weights(fx):
    t, _ = fx
    sig = jax.numpy.asarray(t["loss_weight_sigmas"])
    np.testing.assert_array_equal(
        np.asarray(scaling.rectified_flow_loss_weight(sig, True)), t["rf.loss_weight_uniform"]
    )
    np.testing.assert_array_equal(np.asarray(scaling.edm_loss_weight(sig, 0.5)), t["edm.loss_weight"])
    np.testing.assert_allclose(
        np.asarray(scaling.rectified_flow_loss_weight(sig, False)), t["rf.loss_weight_nonuniform_table"], rtol=1e-6
    )


def _dkw(k: int) -> float:
    return math.sqrt(math.log(4 / ALPHA) / (2 * k))


def test_sigma_distribution(fx):
    t, info = fx
    cfg = _sde_cfg(info)
    m = int(t["num_samples"])
    ours = np.asarray(sde.sample_sigma(jax.random.key(SEED), N_OURS, cfg), np.float64)

    levels, quantiles = t["sample_quantile_levels"], t["sample_quantiles"]
    bound = _dkw(N_OURS) + _dkw(m) + 1.0 / m
    cdf = np.searchsorted(np.sort(ours), quantiles, side="right") / N_OURS
    worst = np.abs(cdf - levels)
    assert np.all(worst <= bound), f"CDF at recorded quantiles off by {worst} (bound {bound:.4f})"

    def z_test(name, ours_values, ref_mean, ref_var):
        se = math.sqrt(ref_var / m + ours_values.var() / N_OURS)
        z = (ours_values.mean() - ref_mean) / se
        assert abs(z) <= Z_MAX, f"{name}: ours {ours_values.mean():.5f} vs reference {ref_mean:.5f} (z={z:.2f})"

    log = np.log(ours)
    z_test("mean sigma", ours, float(t["sample_mean"]), ours.var())
    z_test("mean log sigma", log, float(t["sample_log_mean"]), float(t["sample_log_std"]) ** 2)
    # Std of the log via the mean of the centred squares (delta method: variance of s^2 / (2s)^2).
    centred = (log - log.mean()) ** 2
    s_ref = float(t["sample_log_std"])
    se = math.sqrt(centred.var() / N_OURS + centred.var() / m) / (2 * s_ref)
    assert abs(log.std() - s_ref) <= Z_MAX * se, f"log std {log.std():.5f} vs {s_ref:.5f}"
    frac = float(t["sample_frac_in_uniform_range"])
    inside = ((ours >= cfg.uniform_lower) & (ours <= cfg.uniform_upper)).astype(np.float64)
    z_test("fraction in uniform range", inside, frac, frac * (1 - frac))


def test_distribution_check_has_power(fx):
    """The same DKW check rejects a sampler with the wrong mixture weight (guards against a vacuous bound)."""
    t, info = fx
    cfg = _sde_cfg(info)
    wrong = sde.SDEConfig(**{**cfg.__dict__, "lognormal_prob": 0.6})
    m = int(t["num_samples"])
    ours = np.sort(np.asarray(sde.sample_sigma(jax.random.key(SEED), N_OURS, wrong), np.float64))
    cdf = np.searchsorted(ours, t["sample_quantiles"], side="right") / N_OURS
    assert np.abs(cdf - t["sample_quantile_levels"]).max() > _dkw(N_OURS) + _dkw(m) + 1.0 / m
