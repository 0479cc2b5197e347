"""The policy API on a trained tiny checkpoint: every checkpoint form, metadata, seeds and batching, bad input."""

import os

import numpy as np
import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.eval.errors import EvalInputError
from cosmos_policy_jax.policy.api import ObservationError, load_policy
from tests.data.test_t5 import HAVE_TORCH, HAVE_TRANSFORMERS, tiny_t5_dir
from tests.serve.conftest import MAX_BATCH, observation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(trained_job):
    old = os.environ.get("COSMOS_POLICY_DATA_ROOT")
    os.environ["COSMOS_POLICY_DATA_ROOT"] = trained_job["data"]
    yield trained_job
    if old is None:
        os.environ.pop("COSMOS_POLICY_DATA_ROOT")
    else:
        os.environ["COSMOS_POLICY_DATA_ROOT"] = old


@pytest.fixture(scope="module")
def policy(env, local):
    return local


def test_metadata_describes_the_observation(policy):
    m = policy.metadata
    ds = get_config("demo,tiny").dataloader_train.dataset
    assert m["cameras"] == ["current_wrist_image", "current_image"]
    assert (m["image_size"], m["action_dim"], m["proprio_dim"], m["chunk_size"]) == (
        ds.final_image_size, ds.action_dim, ds.proprio_dim, ds.chunk_size,
    )  # fmt: skip
    assert m["observation_spec"]["proprio"] == {"shape": [2], "dtype": "float32", "note": "raw (un-normalised) units"}
    assert m["observation_spec"]["current_image"]["dtype"] == "uint8"
    # The training instructions travel with the checkpoint.
    assert "reach the red target" in m["instructions"]
    assert "saved with the checkpoint" in policy.info["stats"]


def test_every_checkpoint_form_gives_the_same_actions(env, policy):
    obs = observation(np.random.default_rng(0), policy.cameras)
    want = policy.infer(obs, seed=5)["actions"]
    assert want.shape == (8, 2) and np.all(np.isfinite(want))
    for path in (os.path.join(env["job"], "checkpoints", "2"), os.path.join(env["job"], "export", "net.safetensors")):
        other = load_policy(path, batch_size=MAX_BATCH)
        np.testing.assert_array_equal(other.infer(obs, seed=5)["actions"], want)


def test_results_do_not_depend_on_the_batch(policy):
    rng = np.random.default_rng(1)
    rows = [policy.prepare({**observation(rng, policy.cameras), "seed": s}) for s in (3, 4, 5)]
    alone = [policy.run([r])[0]["actions"] for r in rows]
    together = [o["actions"] for o in policy.run([rows[2], rows[0], rows[1]])]
    for a, b in zip(alone, [together[1], together[2], together[0]]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(alone[0], alone[1])  # other seed and observation, other actions


def test_a_disagreeing_config_is_one_line_error(env):
    config = get_config("demo,tiny")
    config.dataloader_train.dataset.chunk_size = 4
    with pytest.raises(EvalInputError, match=r"chunk_size: checkpoint 8 vs config 4") as e:
        load_policy(env["job"], config=config)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda o: o.pop("current_image"), "no 'current_image'"),
        (lambda o: o.update(current_image=np.zeros((32, 32), np.uint8)), r"\(H, W, 3\)"),
        (lambda o: o.update(current_image=np.zeros((32, 32, 3), np.float32)), "must be uint8"),
        (lambda o: o.update(proprio=np.array([np.inf, 0.0])), "non-finite"),
        (lambda o: o.update(proprio=np.zeros(5)), r"shape \(5,\)"),
        (lambda o: o.pop("instruction"), "'instruction'"),
        (lambda o: o.update(seed=-1), "'seed'"),
    ],
)
def test_bad_observations_name_the_problem(policy, change, match):
    obs = observation(np.random.default_rng(2), policy.cameras)
    change(obs)
    with pytest.raises(ObservationError, match=match):
        policy.prepare(obs)


def test_compiled_memory_is_reported(policy):
    mem = policy.memory_analysis(1)
    assert mem["argument_size_in_bytes"] > 0 and mem["peak_bytes"] >= mem["argument_size_in_bytes"]


@pytest.mark.skipif(HAVE_TORCH and HAVE_TRANSFORMERS, reason="the torch extra is installed")
def test_a_t5_model_without_the_torch_extra_is_one_line_error(env):
    with pytest.raises(DataError, match=r"T5 encoder 'google-t5/t5-11b' needs the torch extra: pip install"):
        load_policy(env["job"], t5_model="google-t5/t5-11b")


@pytest.mark.skipif(
    not (HAVE_TORCH and HAVE_TRANSFORMERS), reason="needs the optional torch extra (torch + transformers)"
)
def test_an_unknown_instruction_is_embedded_by_the_t5_model_once(env, tmp_path):
    from cosmos_policy_jax.data import t5 as t5_lib

    ds = get_config("demo,tiny").dataloader_train.dataset
    model = tiny_t5_dir(tmp_path / "t5", d_model=int(ds.text_dim))
    policy = load_policy(env["job"], t5_model=model, batch_size=1)
    text = "pick up the bowl"
    assert text not in policy.embeddings
    out = policy.infer(observation(np.random.default_rng(0), policy.cameras, instruction=text))
    assert out["actions"].shape == (policy.chunk, policy.action_dim) and np.isfinite(out["actions"]).all()
    want = t5_lib.t5_text_encoder(model, max_length=int(ds.text_len), device="cpu")(text)
    np.testing.assert_allclose(policy.embeddings[text], want, atol=1e-6)  # the T5 model's, not the demo stand-in's
    wide = int(ds.text_dim) + 8
    with pytest.raises(DataError, match=f"gives {wide}-dim embeddings; the policy was trained on {ds.text_dim}"):
        load_policy(env["job"], t5_model=tiny_t5_dir(tmp_path / "t5_wide", d_model=wide))
