"""Best-of-N planning through the server: both protocols answer the chunk the in-process planner picks."""

import numpy as np
import pytest

from tests.serve.conftest import ServerProcess, observation

openpi_client = pytest.importorskip("openpi_client.websocket_client_policy")
json_numpy = pytest.importorskip("json_numpy")
pytestmark = pytest.mark.slow

PLANNING_FLAGS = ("--num_queries_best_of_n=3", "--ar_future_prediction", "--ar_value_prediction")


@pytest.fixture(scope="module")
def planner(local):
    """The in-process planner over the same loaded weights as the ``local`` policy."""
    from cosmos_policy_jax.planning.config import PlanningConfig
    from cosmos_policy_jax.planning.policy import planning_policy_from_model

    pcfg = PlanningConfig(
        num_queries_best_of_n=3, ar_future_prediction=True, ar_value_prediction=True,
        num_denoising_steps_action=local.num_steps,
    )  # fmt: skip
    model = (local.net_def, local.net_state, local.vae_def, local.vae_state)
    return planning_policy_from_model(local.config, model, {}, local.stats, pcfg)[0]


def _in_process(local, planner, obs):
    return planner.run([local.prepare(obs)])[0]


@pytest.mark.parametrize("protocol", ["openpi", "act"])
def test_best_of_n_through_the_server_equals_in_process(trained_job, local, planner, protocol):
    from tests.serve.test_act_server import _nvidia_body, post

    srv = ServerProcess(trained_job, f"--protocol={protocol}", *PLANNING_FLAGS)
    try:
        for seed in (3, 11):
            obs = {**observation(np.random.default_rng(seed), local.cameras), "seed": seed}
            want = _in_process(local, planner, obs)
            assert want["all_actions"].shape[0] == 3
            np.testing.assert_array_equal(want["actions"], want["all_actions"][want["selected_query"]])
            if protocol == "openpi":
                client = openpi_client.WebsocketClientPolicy("127.0.0.1", srv.port)
                got = client.infer(obs)
                got_actions, got_value = got["actions"], float(got["value"])
                assert int(got["selected_query"]) == want["selected_query"]
            else:
                status, text = post(srv.port, json_numpy.dumps({**_nvidia_body(obs), "seed": seed}), key=None)
                assert status == 200, text
                got = json_numpy.loads(text)
                got_actions, got_value = np.stack(got["actions"]), got["value_prediction"]
                assert got["selected_query"] == want["selected_query"]
                np.testing.assert_allclose(got["all_value_predictions"], np.ravel(want["all_values"]), rtol=1e-6)
            np.testing.assert_array_equal(np.asarray(got_actions, np.float32), want["actions"])
            assert got_value == pytest.approx(float(want["value"]), rel=1e-6)
    finally:
        code, out = srv.stop()
    assert code == 0, out[-2000:]
    assert "[serve] planning:" in out
