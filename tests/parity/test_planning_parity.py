"""Planning parity with ``planning.safetensors`` + ``planning.json`` (fixture README, section "Planning").

Every size, layout, seed, step count, flag and scheme comes from ``planning.json``; the network and VAE
are the fixture policy model (``policy_net_state_dict`` / ``vae_state_dict``, configs from
``policy_train_step``'s info), so the same tests run on fixture sets with other layouts.

Tolerances: scale-relative 1e-5 (``atol = 1e-5 x max |ref|``) for one generate call fed with the recorded
inputs, as the sampler parity; 1e-4 for results chained through several calls (best-of-N), as the fixture
README states; decoded uint8 images within one grey level; integers (selection, seeds) exact.

Documented deviations (docs/planning.md) are asserted as such: one-member ``lcb`` (reference NaN, here the
member's value) and a NaN candidate value (reference answers "error", here the best finite query wins).
"""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cosmos_policy_jax.eval import preprocess
from cosmos_policy_jax.layouts import LAYOUTS
from cosmos_policy_jax.planning import aggregation as agg
from cosmos_policy_jax.planning import search
from cosmos_policy_jax.planning.config import PlanningConfig
from cosmos_policy_jax.planning.generate import CallSpec, decode_images, encode_observation, generate, variance_scales
from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.inference import decode_action_latent
from cosmos_policy_jax.policy.layout import LatentLayout
from tests.fixture_utils import fixture_dir, fixture_path, load_fixture

SINGLE = 1e-5
CHAINED = 1e-4
# Raw observation keys of each suite -> latent slots (the reference's camera order per suite).
CAMERAS = {
    "libero": {"wrist_image": "current_wrist_image", "primary_image": "current_image"},
    "robocasa": {"wrist_image": "current_wrist_image", "primary_image": "current_image", "secondary_image": "current_image2"},
    "aloha": {"left_wrist_image": "current_wrist_image", "right_wrist_image": "current_wrist_image2", "primary_image": "current_image"},
}  # fmt: skip
REF_FIELDS = (
    "suite",
    "num_denoising_steps_action",
    "num_denoising_steps_future_state",
    "num_denoising_steps_value",
    "seed",
)


@pytest.fixture(scope="module")
def fx():
    tensors, _ = load_fixture("planning.safetensors")
    with open(fixture_dir() / "planning.json") as f:
        meta = json.load(f)
    return tensors, meta


@pytest.fixture(scope="module")
def model_info():
    return load_fixture("policy_train_step.safetensors")[1]


@pytest.fixture(scope="module")
def models(model_info):
    dit = pytest.importorskip("cosmos_policy_jax.models.dit")
    convert = pytest.importorskip("cosmos_policy_jax.convert.dit")
    vae_mod = pytest.importorskip("cosmos_policy_jax.models.vae")
    convert_vae = pytest.importorskip("cosmos_policy_jax.convert.vae")
    net = dit.MinimalV1LVGDiT(
        dit.DiTConfig.from_config(model_info["net"], dtype="float32", attention_impl="xla"), rngs=nnx.Rngs(0)
    )
    nnx.update(net, convert.import_dit(fixture_path("policy_net_state_dict.safetensors"), net)[0])
    vae = vae_mod.WanVAE(vae_mod.WanVAEConfig.from_config({**model_info["vae"], "dtype": "float32"}), rngs=nnx.Rngs(0))
    nnx.update(vae, convert_vae.import_vae(fixture_path("vae_state_dict.safetensors"), vae)[0])
    return search.Models(policy=net, vae=vae)


def _base_sampler(call: dict) -> dict:
    """The sampler settings of a recorded call with its variance scaling (if any) divided out."""
    s = dict(call["sampler"])
    if call["use_variance_scale"]:
        hi, lo = variance_scales(call["seed"])
        s["sigma_max"], s["sigma_min"] = s["sigma_max"] / hi, s["sigma_min"] / lo
    return s


def _cfg(model_info, part: dict, sampler: dict) -> PolicyConfig:
    layout = LatentLayout.from_mapping(LAYOUTS[part["suite"]], part["state_t"], part["n_cond"])
    return PolicyConfig.from_reference(
        model_info["model_config"],
        model_info["sde"],
        layout,
        precision="float32",
        chunk_size=part["chunk"],
        action_dim=part["action_dim"],
        proprio_dim=part["proprio_dim"],
        sampler_sigma_min=sampler["sigma_min"],
        sampler_sigma_max=sampler["sigma_max"],
        sampler_solver=sampler["solver_option"],
    )


def _close(actual, expected, name: str, rel: float) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    err = float(np.abs(actual - expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale, err_msg=f"{name}: max abs err {err:.3e}")


def _images_close(actual, expected, name: str) -> None:
    diff = np.abs(np.asarray(actual, np.int32) - np.asarray(expected, np.int32))
    assert diff.shape == np.asarray(expected).shape, name
    assert diff.max() <= 1, f"{name}: {int((diff > 1).sum())} pixels differ by more than one grey level"


def _fn(fx, model_info):
    """(tensors, case metadata, policy config, preprocessed images, bf16 proprio, embedding) of part ``fn``."""
    t, meta = fx
    part = meta["fn"]
    act = meta["cases"]["fn.act"]
    cfg = _cfg(model_info, part, _base_sampler(act["calls"][0]))
    want = {k[: -len("_latent_idx")]: v for k, v in act["latent_indices"].items()}
    for slot, idx in want.items():
        assert cfg.layout.index(slot) == idx, f"layout of suite {part['suite']}: {slot}"
    flags = act["cfg"]
    spec = preprocess.ImagePreprocessing(
        image_size=part["image_size"],
        jpeg_quality=preprocess.DEFAULT_JPEG_QUALITY if flags["use_jpeg_compression"] else None,
        center_crop=flags["trained_with_image_aug"],
    )
    images = {
        slot: preprocess.preprocess_images(t[f"fn.obs.{key}"][None], spec)
        for key, slot in CAMERAS[part["suite"]].items()
    }
    stats = {k[len("fn.stats.") :]: v for k, v in t.items() if k.startswith("fn.stats.")}
    proprio = search.bf16_proprio(t["fn.obs.proprio"][None], stats)
    return t, meta, cfg, images, proprio, jnp.asarray(t["fn.text_embedding"]), stats


# ---------------------------------------------------------------------------------------------------
# Host-side pieces: aggregation, image averaging, selection, variance scale
# ---------------------------------------------------------------------------------------------------


def test_value_aggregation_every_scheme(fx):
    t, meta = fx
    cases = {k: v for k, v in meta["cases"]["agg"].items() if isinstance(v, dict) and "inputs" in v}
    assert cases
    for name in cases:
        inputs = t[f"agg.{name}.inputs"]
        for scheme in agg.VALUE_SCHEMES:
            ref = t[f"agg.{name}.{scheme}"]
            got = agg.aggregate_values(inputs, scheme)
            if scheme == "lcb" and inputs.shape[0] == 1:
                assert np.all(np.isnan(ref)), "the reference's one-member lcb is NaN"
                np.testing.assert_array_equal(got, np.clip(inputs[0], 0, 1), err_msg=f"{name}: one-member lcb")
                continue
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7, err_msg=f"agg.{name}.{scheme}")
    assert "ValueError" in meta["cases"]["agg"]["_unknown_scheme"]
    with pytest.raises(ValueError, match="gamma_weighted_average"):
        agg.aggregate_values(np.ones((2, 1), np.float32), "gamma_weighted_average")


def test_future_image_averaging(fx):
    t, meta = fx
    names = [k for k in meta["cases"]["agg"] if k.startswith("images_")]
    assert names
    for name in names:
        members = []
        i = 0
        while any(k.startswith(f"agg.{name}.in{i}.") for k in t):
            pre = f"agg.{name}.in{i}."
            members.append({k[len(pre) :]: v for k, v in t.items() if k.startswith(pre)})
            i += 1
        got = agg.aggregate_images(members, "average")
        for cam in meta["cases"]["agg"][name]:
            np.testing.assert_array_equal(got[cam], t[f"agg.{name}.{cam}"], err_msg=f"agg.{name}.{cam}")


def test_selection_ties_depth_and_nan(fx):
    t, meta = fx
    sel = meta["cases"]["sel"]
    base = int(sel["base_seed"])
    for name, case in sel["results"].items():
        values = t[f"sel.{name}.values"].astype(np.float64)
        per_query = agg.aggregate_depth(values, case["aggregation"]) if int(case["depth"]) > 1 else values[:, 0]
        chosen = agg.select_query(list(per_query))
        if case.get("response") == "error":
            # The reference cannot answer (NaN in its JSON); we take the best finite candidate.
            finite = np.where(np.isnan(per_query), -np.inf, per_query)
            assert np.isnan(per_query).any() and chosen == int(np.argmax(finite)), name
            continue
        np.testing.assert_allclose(per_query, case["all_value_predictions"], rtol=0, atol=1e-12, err_msg=name)
        assert base + chosen == int(case["selected_seed"]) == int(t[f"sel.{name}.selected_seed"]), name
        assert per_query[chosen] == pytest.approx(case["value_prediction"], abs=1e-12), name


def test_ensemble_step_lists(fx):
    _, meta = fx
    cases = meta["cases"]
    plan = meta["plan"]["fn"]
    for name, k in (
        ("fn.fs_ens_average", "steps_future"),
        ("fn.fs_ens_last", "steps_future"),
        ("fn.v_ens", "steps_value"),
    ):
        steps = cases[name]["steps_per_member"]
        assert agg.ensemble_steps(plan[k], len(steps)) == steps, name
        assert [c["num_steps"] for c in cases[name]["calls"]][: len(steps)] == steps, name
    # Step counts 1 and 2 both make one denoiser call (the reference's sampler).
    from cosmos_policy_jax.diffusion.sampler import solver_plan

    for name, case in cases.items():
        for call in case.get("calls", []) if isinstance(case, dict) else []:
            s = call["sampler"]
            plan_ = solver_plan(call["num_steps"], s["sigma_min"], s["sigma_max"], 7.0, s["solver_option"])
            assert plan_.num_calls == call["num_denoiser_calls"], f"{name}: {call['num_steps']} steps"


def test_variance_scale_draws(fx):
    t, meta = fx
    case = meta["cases"]["fn.act_vs"]
    hi, lo = variance_scales(case["seed"])
    np.testing.assert_array_equal(np.array([hi, lo]), t["fn.act_vs.scales"])
    s = case["calls"][0]["sampler"]
    base = meta["cases"]["fn.act"]["calls"][0]["sampler"]  # the same sampler without variance scaling
    assert s["sigma_max"] == pytest.approx(base["sigma_max"] * hi, rel=1e-12)
    assert s["sigma_min"] == pytest.approx(base["sigma_min"] * lo, rel=1e-12)


# ---------------------------------------------------------------------------------------------------
# Single generate calls with the fixture network (part fn)
# ---------------------------------------------------------------------------------------------------


def test_action_query(fx, model_info, models):
    t, meta, cfg, images, proprio, emb, stats = _fn(fx, model_info)
    np.testing.assert_array_equal(
        np.stack([images[s][0] for s in CAMERAS[meta["fn"]["suite"]].values()]), t["fn.pre.after_crop_resize"]
    )
    _close(search.bf16_proprio(t["fn.obs.proprio"][None], stats)[0], t["fn.act.proprio_in_batch"][0], "proprio", 0)
    call = meta["cases"]["fn.act"]["calls"][0]
    from cosmos_policy_jax.planning.generate import observation_video

    video = observation_video({k: jnp.asarray(v) for k, v in images.items()}, cfg)
    np.testing.assert_array_equal(video, t["fn.act.call0.video_uint8"])
    latent = encode_observation(models.vae, {k: jnp.asarray(v) for k, v in images.items()}, cfg)
    _close(latent, t["fn.act.call0.orig_clean_latent_frames"], "VAE latent of the observation", SINGLE)
    spec = CallSpec(call["num_conditional_frames"])
    sample = generate(models.policy, latent, jnp.asarray(proprio), emb, cfg, spec, [call["seed"]], [call["num_steps"]])
    _close(sample, t["fn.act.call0.sample"], "action sample", SINGLE)
    a = decode_action_latent(sample, cfg.layout, cfg.chunk_size, cfg.action_dim)
    _close(a, t["fn.act.actions_normalized"], "normalised actions", SINGLE)
    _close(search.unnormalize(np.asarray(a)[0], stats), t["fn.act.actions"], "actions", SINGLE)
    from cosmos_policy_jax.planning.generate import frame_value

    _close(frame_value(sample)[0], t["fn.act.value_prediction"], "parallel value", SINGLE)
    imgs = decode_images(models.vae, sample, latent, cfg)
    for cam in ("future_wrist_image", "future_wrist_image2", "future_image", "future_image2"):
        key = f"fn.act.future_image_predictions.{cam}"
        if key in t:
            _images_close(np.asarray(imgs[cam])[0], t[key], key)


def test_action_query_conditioning_and_noise(fx, model_info, models):
    from cosmos_policy_jax.planning.generate import call_plans, condition, initial_noises

    t, meta, cfg, _, proprio, _, _ = _fn(fx, model_info)
    call = meta["cases"]["fn.act"]["calls"][0]
    gt, mask = condition(
        jnp.asarray(t["fn.act.call0.orig_clean_latent_frames"]),
        jnp.asarray(proprio),
        cfg,
        CallSpec(call["num_conditional_frames"]),
    )
    _close(gt, t["fn.act.call0.gt_frames"], "gt_frames", 0)
    np.testing.assert_array_equal(mask, t["fn.act.call0.condition_mask_per_frame"])
    plans = call_plans([call["seed"]], [call["num_steps"]], cfg, False)
    x = initial_noises([call["seed"]], plans, t["fn.act.call0.x_sigma_max"].shape[1:])
    np.testing.assert_array_equal(x, t["fn.act.call0.x_sigma_max"])


def test_action_query_variance_scale(fx, model_info, models):
    from cosmos_policy_jax.planning.generate import call_plans, initial_noises

    t, meta, cfg, images, proprio, emb, stats = _fn(fx, model_info)
    call = meta["cases"]["fn.act_vs"]["calls"][0]
    assert call["use_variance_scale"]
    plans = call_plans([call["seed"]], [call["num_steps"]], cfg, True)
    _close(initial_noises([call["seed"]], plans, cfg_shape(t)), t["fn.act_vs.call0.x_sigma_max"], "x_T", 1e-7)
    from cosmos_policy_jax.diffusion.sampler import solver_plan

    n, lo, hi = plans[0]
    _close(solver_plan(n, lo, hi).sigmas, t["fn.act_vs.call0.denoiser_sigmas"], "denoiser sigmas", 1e-7)
    latent = encode_observation(models.vae, {k: jnp.asarray(v) for k, v in images.items()}, cfg)
    spec = CallSpec(call["num_conditional_frames"])
    sample = generate(
        models.policy,
        latent,
        jnp.asarray(proprio),
        emb,
        cfg,
        spec,
        [call["seed"]],
        [call["num_steps"]],
        variance_scale=True,
    )
    _close(sample, t["fn.act_vs.call0.sample"], "variance-scaled sample", SINGLE)
    a = decode_action_latent(sample, cfg.layout, cfg.chunk_size, cfg.action_dim)
    _close(search.unnormalize(np.asarray(a)[0], stats), t["fn.act_vs.actions"], "actions", SINGLE)


def cfg_shape(t) -> tuple[int, ...]:
    return tuple(t["fn.act.call0.sample"].shape[1:])


def _single_call(t, meta, cfg, models, proprio, emb, case: str):
    call = meta["cases"][case]["calls"][0]
    spec = CallSpec(
        call["num_conditional_frames"],
        mask_current_state_action=call["mask_current_state_action_for_value_prediction"],
        mask_future_state=call["mask_future_state_for_qvalue_prediction"],
    )
    from cosmos_policy_jax.planning.generate import condition

    prev = jnp.asarray(t[f"{case}.call0.previous_generated_latent"])
    gt, mask = condition(prev, jnp.asarray(proprio), cfg, spec)
    _close(gt, t[f"{case}.call0.gt_frames"], f"{case} gt_frames", 0)
    np.testing.assert_array_equal(mask, t[f"{case}.call0.condition_mask_per_frame"], err_msg=f"{case} mask")
    sample = generate(models.policy, prev, jnp.asarray(proprio), emb, cfg, spec, [call["seed"]], [call["num_steps"]])
    _close(sample, t[f"{case}.call0.sample"], f"{case} sample", SINGLE)
    return sample


def test_future_state_single(fx, model_info, models):
    t, meta, cfg, _, proprio, emb, _ = _fn(fx, model_info)
    np.testing.assert_array_equal(t["fn.fs.call0.previous_generated_latent"], t["fn.act.call0.sample"])
    sample = _single_call(t, meta, cfg, models, proprio, emb, "fn.fs")
    clean = jnp.asarray(t["fn.act.call0.orig_clean_latent_frames"])
    imgs = decode_images(models.vae, sample, clean, cfg)
    for cam, ref in ((k.rsplit(".", 1)[1], v) for k, v in t.items() if k.startswith("fn.fs.future_image_predictions.")):
        _images_close(np.asarray(imgs[cam])[0], ref, f"fn.fs {cam}")


@pytest.mark.parametrize("case", ["fn.fs_ens_average", "fn.fs_ens_last"])
def test_future_state_ensemble(fx, model_info, models, case):
    t, meta, cfg, _, proprio, emb, _ = _fn(fx, model_info)
    info = meta["cases"][case]
    scheme = case.rsplit("_", 1)[1]
    pcfg = PlanningConfig(
        ar_future_prediction=True,
        num_denoising_steps_future_state=info["num_denoising_steps_future_state"],
        use_ensemble_future_state_predictions=True,
        num_future_state_predictions_in_ensemble=len(info["steps_per_member"]),
        future_state_ensemble_aggregation_scheme=scheme,
    )
    pl = search._Planner(models, cfg, pcfg, jnp.asarray(proprio), emb)
    samples = pl.future(jnp.asarray(t["fn.act.call0.sample"]), [info["seed"]])
    for i in range(len(info["steps_per_member"])):
        if f"{case}.call{i}.sample" in t:
            _close(samples[i : i + 1], t[f"{case}.call{i}.sample"], f"{case} member {i}", SINGLE)
    clean = jnp.asarray(t["fn.act.call0.orig_clean_latent_frames"])
    got = search._future_images(
        models, cfg, pcfg, samples, search._rep(clean, samples.shape[0]), samples.shape[0], 1, 1
    )
    for cam in (k.rsplit(".", 1)[1] for k in t if k.startswith(f"{case}.future_image_predictions.")):
        _images_close(got[cam][0, 0], t[f"{case}.future_image_predictions.{cam}"], f"{case} {cam}")


@pytest.mark.parametrize("case", ["fn.v_nomask", "fn.v_mask", "fn.q_nomask", "fn.q_mask"])
def test_value_and_qvalue(fx, model_info, models, case):
    t, meta, cfg, _, proprio, emb, _ = _fn(fx, model_info)
    sample = _single_call(t, meta, cfg, models, proprio, emb, case)
    from cosmos_policy_jax.planning.generate import frame_value

    if f"{case}.value_frame_mean" in t:
        _close(
            np.mean(np.asarray(sample)[:, :, -1], axis=(1, 2, 3)), t[f"{case}.value_frame_mean"], "frame mean", SINGLE
        )
    _close(frame_value(sample)[0], t[f"{case}.value_prediction"], f"{case} value", SINGLE)
    if case.startswith("fn.q"):  # Q(s,a) scores the action sample itself
        np.testing.assert_array_equal(t[f"{case}.call0.previous_generated_latent"], t["fn.act.call0.sample"])


def test_value_ensemble(fx, model_info, models):
    t, meta, cfg, _, proprio, emb, _ = _fn(fx, model_info)
    info = meta["cases"]["fn.v_ens"]
    calls = info["calls"]
    m = len(info["steps_per_member"])
    n_src = len(calls) // m
    # The scored future samples: the future-state ensemble members of fn.fs_ens_average.
    src = jnp.concatenate([jnp.asarray(t[f"fn.fs_ens_average.call{i}.sample"]) for i in range(n_src)])
    pcfg = PlanningConfig(
        ar_future_prediction=True,
        ar_value_prediction=True,
        num_denoising_steps_value=meta["plan"]["fn"]["steps_value"],
        use_ensemble_value_predictions=True,
        num_value_predictions_in_ensemble=m,
        value_ensemble_aggregation_scheme=meta["plan"]["fn"]["value_scheme"],
        mask_current_state_action_for_value_prediction=calls[0]["mask_current_state_action_for_value_prediction"],
    )
    pl = search._Planner(models, cfg, pcfg, jnp.asarray(proprio), emb)
    value, samples = pl.values(src, [info["seed"]], n_src, pl.value_spec())
    for k in range(len(calls)):
        _close(samples[k : k + 1], t[f"fn.v_ens.call{k}.sample"], f"fn.v_ens call {k}", SINGLE)
    from cosmos_policy_jax.planning.generate import frame_value

    _close(frame_value(samples), t["fn.v_ens.member_values"], "member values", SINGLE)
    _close(value[0], t["fn.v_ens.value_prediction"], "aggregated value", SINGLE)


# ---------------------------------------------------------------------------------------------------
# Best-of-N through the whole planner (part act: the deploy server's layout)
# ---------------------------------------------------------------------------------------------------


def _planning_config(flags: dict) -> PlanningConfig:
    import dataclasses

    names = {f.name for f in dataclasses.fields(PlanningConfig)}
    return PlanningConfig(**{k: v for k, v in flags.items() if k in names})


def _expected_calls(res: search.PlanResult, pcfg: PlanningConfig, n: int) -> list[np.ndarray]:
    """Our samples in the reference's serial call order (query by query, depth by depth)."""
    lat = res.latents
    n_f = pcfg.future_members
    m = pcfg.value_members
    out = []
    for q in range(n):
        out.append(lat["action"][q])
        out += [lat["future"][q * n_f + i] for i in range(n_f)]
        k = n_f * m if pcfg.use_ensemble_value_predictions else 1
        out += [lat["value"][q * k + j] for j in range(k)]
        branches = 1 if n_f == 1 else n_f
        for d in range(2, pcfg.search_depth + 1):
            for b in range(branches):
                r = q * branches + b
                out.append(lat[f"depth{d}.action"][r])
                out += [lat[f"depth{d}.future"][r * n_f + i] for i in range(n_f)]
                out += [lat[f"depth{d}.value"][r * k + j] for j in range(k)]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bon1", "bon2"])
def test_best_of_n(fx, model_info, models, case):
    t, meta = fx
    part = meta["act"]
    info = meta["cases"][case]
    flags = info["cfg"]
    cfg = _cfg(model_info, part, _base_sampler(info["calls"][0]))
    pcfg = _planning_config(flags)
    assert not flags["randomize_seed"]
    spec = preprocess.ImagePreprocessing(
        image_size=part["image_size"],
        jpeg_quality=preprocess.DEFAULT_JPEG_QUALITY if flags["use_jpeg_compression"] else None,
        center_crop=flags["trained_with_image_aug"],
    )
    images = {
        slot: preprocess.preprocess_images(t[f"act.obs.{k}"][None], spec) for k, slot in CAMERAS[part["suite"]].items()
    }
    stats = {k[len("act.stats.") :]: v for k, v in t.items() if k.startswith("act.stats.")}
    proprio = search.bf16_proprio(t["act.obs.proprio"][None], stats)
    res = search.plan(models, cfg, pcfg, images, proprio, t["act.text_embedding"], return_future_images=True)

    n = pcfg.num_queries_best_of_n
    ours = _expected_calls(res, pcfg, n)
    assert len(ours) == len(info["calls"]), "number of generate calls"
    for k, (got, call) in enumerate(zip(ours, info["calls"])):
        _close(got[None], t[f"{case}.call{k}.sample"], f"{case} call {k} (seed {call['seed']})", CHAINED)
    assert int(res.selected_query[0]) == int(t[f"{case}.selected_query"]) == int(info["selected_query"])
    assert flags["seed"] + int(res.selected_query[0]) == int(info["selected_seed"])
    _close(
        search.unnormalize(res.actions_by_depth[0], stats),
        t[f"{case}.all_actions_by_depth"],
        "actions by depth",
        CHAINED,
    )
    _close(res.values_by_depth[0], t[f"{case}.all_value_predictions_by_depth"], "values by depth", CHAINED)
    _close(res.all_values[0], t[f"{case}.all_value_predictions"], "query values", CHAINED)
    _close(search.unnormalize(res.actions_normalized[0], stats), t[f"{case}.actions"], "returned actions", CHAINED)
    assert math.isclose(float(res.value[0]), float(t[f"{case}.value_prediction"]), rel_tol=CHAINED)
    for scheme in agg.DEPTH_SCHEMES:
        key = f"{case}.depth_aggregated_{scheme}"
        if key in t:
            _close(agg.aggregate_depth(res.values_by_depth[0], scheme), t[key], key, CHAINED)
    for cam in (k.rsplit(".", 1)[1] for k in t if k.startswith(f"{case}.future_image_predictions.")):
        _images_close(res.future_images[cam][0], t[f"{case}.future_image_predictions.{cam}"], f"{case} {cam}")


@pytest.mark.slow
def test_results_do_not_depend_on_batching(fx, model_info, models):
    """M observations x N queries in one call == every (observation, query) planned alone (seed base + q)."""
    _, _, cfg, images, proprio, emb, _ = _fn(fx, model_info)
    pcfg = PlanningConfig(
        num_queries_best_of_n=3,
        ar_future_prediction=True,
        ar_value_prediction=True,
        num_denoising_steps_action=3,
        num_denoising_steps_future_state=2,
        num_denoising_steps_value=3,
        use_ensemble_value_predictions=True,
        num_value_predictions_in_ensemble=2,
        value_ensemble_aggregation_scheme="average",
        mask_current_state_action_for_value_prediction=True,
        seed=7,
    )
    # Two different observations: the second one mirrored, with another proprio.
    imgs2 = {k: np.concatenate([v, v[:, :, ::-1]]) for k, v in images.items()}
    pro2 = np.concatenate([proprio, np.clip(-proprio, -1, 1)])
    emb2 = np.concatenate([np.asarray(emb)] * 2)
    batched = search.plan(models, cfg, pcfg, imgs2, pro2, emb2)
    for m in range(2):
        for q in range(pcfg.num_queries_best_of_n):
            one = dataclasses_replace(pcfg, num_queries_best_of_n=1, seed=pcfg.seed + q)
            alone = search.plan(
                models, cfg, one, {k: v[m : m + 1] for k, v in imgs2.items()}, pro2[m : m + 1], emb2[m : m + 1]
            )
            _close(
                batched.all_actions_normalized[m, q], alone.all_actions_normalized[0, 0], f"actions m={m} q={q}", SINGLE
            )
            _close(batched.all_values[m, q], alone.all_values[0, 0], f"value m={m} q={q}", SINGLE)
        assert batched.selected_query[m] == agg.select_query(list(batched.all_values[m]))


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)
