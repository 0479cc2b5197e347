"""DiT parity with the PyTorch reference on the golden fixtures (tests/fixtures/README.md sections 1 and
"Zero-padded text").

Every size comes from the fixture (``info["config"]`` and tensor shapes), so the same tests run on
other fixture sets (``COSMOS_POLICY_FIXTURES``). Tolerances: float32 outputs and intermediates
rtol 1e-5 / atol 1e-5 (the README's float32 summation noise); gradients within 1e-4 relative to
the largest reference entry of each tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cosmos_policy_jax.convert.dit import dit_state_dict, import_dit
from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT
from tests.fixture_utils import fixture_path, load_fixture

RTOL = ATOL = 1e-5
GRAD_REL = 1e-4
# bf16 compute vs the float32 reference, relative L2 error of the output. Measured 9.9e-3 on the public set
# (bf16 keeps 8 mantissa bits: ~2e-3 relative rounding per op on weights and activations, compounding
# over a few dozen roundings per block); 3e-2 leaves room for deeper or wider fixture configs.
BF16_REL_L2 = 3e-2


def _build(info: dict, **overrides) -> MinimalV1LVGDiT:
    cfg = DiTConfig.from_config(info["config"], **{"dtype": "float32", "attention_impl": "xla", **overrides})
    model = MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0))
    params, _ = import_dit(fixture_path("dit_state_dict.safetensors"), model)
    nnx.update(model, params)
    return model


@pytest.fixture(scope="module")
def io():
    return load_fixture("dit_io.safetensors")


@pytest.fixture(scope="module")
def model(io):
    return _build(io[1])


def _video_args(t: dict, text_key: str = "crossattn_emb"):
    return (
        jnp.asarray(t["x"]),
        jnp.asarray(t["timesteps"]),
        jnp.asarray(t[text_key]),
        jnp.asarray(t["condition_video_input_mask"]),
        jnp.asarray(t["padding_mask"]),
    )


def _assert_close(actual, expected, name: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    actual = np.asarray(actual, np.float32)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=f"{name}: max abs err {err:.3e}")


def test_video_output_and_intermediates(io, model):
    t, _ = io
    out, inter = model(*_video_args(t), return_intermediates=True)
    assert out.dtype == jnp.float32
    _assert_close(out, t["out"], "out")
    expected = {k[len("inter.") :]: v for k, v in t.items() if k.startswith("inter.")}
    assert expected, "fixture has no inter.* entries"
    missing = sorted(set(expected) - set(inter))
    assert not missing, f"model does not produce intermediates {missing}"
    for name, ref in expected.items():
        _assert_close(inter[name], ref, f"inter.{name}")


def test_image_mode_output(io, model):
    t, _ = io
    out = model(
        jnp.asarray(t["image_x"]),
        jnp.asarray(t["image_timesteps"]),
        jnp.asarray(t["crossattn_emb"]),
        None,
        jnp.asarray(t["padding_mask"]),
        data_type="image",
    )
    _assert_close(out, t["image_out"], "image_out")


def test_image_mode_ignores_condition_mask(io, model):
    # In image mode the network fills the condition channel with zeros, whatever is passed.
    t, _ = io
    args = (jnp.asarray(t["image_x"]), jnp.asarray(t["image_timesteps"]), jnp.asarray(t["crossattn_emb"]))
    ones = jnp.ones((t["image_x"].shape[0], 1, *t["image_x"].shape[2:]), jnp.float32)
    a = model(*args, ones, jnp.asarray(t["padding_mask"]), data_type="image")
    b = model(*args, None, jnp.asarray(t["padding_mask"]), data_type="image")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unscanned_rematted_blocks_match(io):
    # Same parameters, Python loop over layer slices + full remat: identical math, same tolerance.
    t, info = io
    model = _build(info, scan_layers=False, remat_policy="full")
    _assert_close(model(*_video_args(t)), t["out"], "out (scan_layers=False, remat=full)")


def test_gradients(io, model):
    t, _ = io
    grad_refs = {k[len("grad.") :]: v for k, v in t.items() if k.startswith("grad.")}
    assert grad_refs, "fixture has no grad.* entries"
    graphdef, params = nnx.split(model, nnx.Param)
    args = _video_args(t)

    def loss_fn(p):
        out = nnx.merge(graphdef, p)(*args)
        return jnp.mean(jnp.square(out))

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    np.testing.assert_allclose(float(loss), float(t["grad_loss"]), rtol=1e-5)
    torch_grads = dit_state_dict(grads, model.cfg, prefix="", buffers=False)
    for key, ref in grad_refs.items():
        assert key in torch_grads, f"no gradient for {key}"
        scale = float(np.abs(ref).max())
        _assert_close(torch_grads[key], ref, f"grad.{key}", rtol=GRAD_REL, atol=GRAD_REL * scale)


def test_zero_padded_text_is_attended(io, model):
    t, _ = io
    pad, pad_info = load_fixture("dit_textpad.safetensors")
    out = model(*_video_args({**t, "crossattn_emb": pad["crossattn_emb"]}))
    _assert_close(out, pad["out"], "textpad out")
    # The padded tokens really are zeros and the result differs from masking them out: attending to
    # only the valid tokens must move the output well outside the tolerance (the port has no mask).
    valid = pad_info.get("valid_text_tokens")
    if valid:
        n = int(valid[0])
        assert np.all(pad["crossattn_emb"][0, n:] == 0)
        short = jnp.asarray(pad["crossattn_emb"][:1, :n])
        args = _video_args(t)
        out_masked = model(args[0][:1], args[1][:1], short, args[3][:1], args[4][:1])
        assert np.abs(np.asarray(out_masked) - pad["out"][:1]).max() > 100 * ATOL


def test_bf16_compute_close_to_fp32(io):
    t, info = io
    model = _build(info, dtype="bfloat16")
    out = model(*_video_args(t))
    assert out.dtype == jnp.float32
    ref = t["out"]
    rel = float(np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref))
    assert np.isfinite(rel) and rel < BF16_REL_L2, f"bf16 relative L2 error {rel:.3e} >= {BF16_REL_L2}"
    # and it is really a different (bf16) computation, not the float32 path.
    assert rel > 1e-5
