"""Preconditioning identities of the rectified-flow and EDM scalings (pure functions, float64 where exact)."""

import numpy as np
import pytest

from cosmos_policy_jax.diffusion import scaling

SIGMAS = np.array([0.01, 0.3, 1.0, 3.0, 21.0, 80.0, 255.0])


def test_rectified_flow_perfect_velocity_recovers_x0():
    # If the net outputs the true velocity eps - x0 from x_t = x0 + sigma*eps, c_skip*x_t + c_out*F == x0.
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    sigma = SIGMAS[:, None]
    c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64) for c in scaling.rectified_flow_scaling(sigma))
    xt = x0 + sigma * eps
    np.testing.assert_allclose(c_skip * xt + c_out * (eps - x0), x0, rtol=0, atol=1e-12)
    # Net input is the linear interpolant (1-t) x0 + t eps, and c_noise is t itself.
    t = sigma / (1 + sigma)
    np.testing.assert_allclose(c_in * xt, (1 - t) * x0 + t * eps, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_noise, t, rtol=1e-15)


def test_uniform_weight_turns_x0_error_into_velocity_error():
    rng = np.random.default_rng(1)
    x0, eps, net = rng.normal(size=(3, 7, 4))
    sigma = SIGMAS[:, None]
    c_skip, c_out, _, _ = scaling.rectified_flow_scaling(sigma)
    x0_pred = np.asarray(c_skip) * (x0 + sigma * eps) + np.asarray(c_out) * net
    w = np.asarray(scaling.rectified_flow_loss_weight(sigma))
    np.testing.assert_allclose(w * (x0 - x0_pred) ** 2, (net - (eps - x0)) ** 2, rtol=1e-9, atol=1e-12)


def test_edm_matches_closed_form():
    sd = 0.5
    c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64) for c in scaling.edm_scaling(SIGMAS, sd))
    np.testing.assert_allclose(c_skip, sd**2 / (SIGMAS**2 + sd**2), rtol=1e-14)
    np.testing.assert_allclose(c_out, SIGMAS * sd / np.hypot(SIGMAS, sd), rtol=1e-14)
    np.testing.assert_allclose(c_in, 1 / np.hypot(SIGMAS, sd), rtol=1e-14)
    np.testing.assert_allclose(c_noise, np.log(SIGMAS) / 4, rtol=1e-14)
    np.testing.assert_allclose(
        np.asarray(scaling.edm_loss_weight(SIGMAS, sd)), (SIGMAS**2 + sd**2) / (SIGMAS * sd) ** 2, rtol=1e-14
    )


def test_nonuniform_table_has_mean_one_and_peaks_mid_range():
    table = scaling.rectified_flow_weight_table()
    assert table.shape == (1000,) and table.dtype == np.float32
    np.testing.assert_allclose(table.mean(dtype=np.float64), 1.0, rtol=1e-5)
    assert table[0] == 0 and table[-1] == 0 and 498 <= int(np.argmax(table)) <= 501
    # sigma = 1 -> t = 0.5 -> index 500.
    assert float(scaling.rectified_flow_loss_weight(np.float32([1.0]), uniform=False)[0]) == table[500]


def test_get_scaling_rejects_bad_names_and_sigma_data():
    with pytest.raises(ValueError, match=r"model\.scaling"):
        scaling.get_scaling("vp")
    with pytest.raises(ValueError, match="sigma_data"):
        scaling.get_scaling("rectified_flow", sigma_data=0.5)
    c = scaling.get_scaling("edm", sigma_data=0.5)(np.float64(2.0))
    np.testing.assert_allclose(float(c[0]), 0.25 / 4.25, rtol=1e-14)
