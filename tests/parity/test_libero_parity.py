"""Parity of the dataset sources with the reference's LIBERO dataset (fixture README sections 5 and 6).

Every size, flag and index comes from the fixtures' ``info`` metadata or tensor shapes; the fixture
directories are copied to ``tmp_path`` first (the statistics files may be written next to the data).
uint8 and integer entries must match exactly, floats within 1e-6.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from cosmos_policy_jax.data import transforms as T
from cosmos_policy_jax.data.episodes import EpisodeSource
from cosmos_policy_jax.data.epoch import CATEGORIES, calculate_epoch_structure
from cosmos_policy_jax.data.registry import SOURCES
from cosmos_policy_jax.data.statistics import POST_NORM_STATS_FILE, STATS_FILE
from tests.fixture_utils import fixture_path, load_fixture

FLOAT_ATOL = 1e-6
SAMPLE_TYPE_CODES = ("demo", "world_model", "value_function")


def _copy(name: str, tmp_path) -> str:
    dst = tmp_path / name
    shutil.copytree(fixture_path(name), dst)
    return str(dst)


def _kind_from_keys(keys) -> str:
    if "current_wrist_image2_latent_idx" in keys:
        return "aloha"
    if "current_image2_latent_idx" in keys:
        return "robocasa"
    return "libero"


def _kwargs_from_sample(sample_keys: dict, tensors: dict, prefix: str) -> dict:
    """Reader settings implied by one recorded sample (for fixture sets that do not list them)."""
    idx = {k[: -len("_latent_idx")]: int(v[1]) for k, v in sample_keys.items() if k.endswith("_latent_idx")}
    video = tensors[f"{prefix}.video"]
    state_t = max(idx.values()) + 1
    return dict(
        chunk_size=tensors[f"{prefix}.actions"].shape[0],
        final_image_size=video.shape[-1],
        num_duplicates_per_image=(video.shape[1] - 1) // (state_t - 1),
        use_proprio=idx.get("current_proprio", -1) >= 0,
        use_wrist_images=idx.get("current_wrist_image", -1) >= 0,
        use_third_person_images=idx.get("current_image", -1) >= 0,
        return_value_function_returns=idx.get("value", -1) >= 0,
    )


def _reader_kwargs(dataset_kwargs: dict) -> dict:
    return {k: v for k, v in dataset_kwargs.items() if k != "normalize_images"}


def _assert_value(got, ref: np.ndarray, what: str) -> None:
    got = np.asarray(got)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    if ref.dtype.kind == "f":
        assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype} != {ref.dtype}"
        np.testing.assert_allclose(got, ref, rtol=0, atol=FLOAT_ATOL, err_msg=what)
    else:
        assert got.dtype.kind in "iub", f"{what}: dtype {got.dtype} is not an integer type"
        assert np.array_equal(got, ref), f"{what}: {int(np.sum(got != ref))} values differ"


def _assert_sample(sample: dict, tensors: dict, prefix: str, keys) -> None:
    missing = [k for k in keys if k not in sample]
    assert not missing, f"{prefix}: missing keys {missing}"
    for key in keys:
        ref = tensors[f"{prefix}.{key}"]
        _assert_value(sample[key], ref, f"{prefix}.{key}")
        if ref.ndim == 0 and ref.dtype.kind in "iu":  # the reference's Python ints stay Python ints
            assert isinstance(sample[key], int), f"{prefix}.{key} is {type(sample[key]).__name__}, not int"


# ----------------------------------------------------------------------------------------------
# libero_synthetic + libero_dataset_samples: demos only, augmentation off
# ----------------------------------------------------------------------------------------------


def _demo_only_source(root: str, info: dict, tensors: dict) -> EpisodeSource:
    first = next(iter(info["samples"]))
    keys = info["samples"][first]
    kwargs = _kwargs_from_sample(keys, tensors, f"sample{first}")
    kwargs.update(_reader_kwargs(info.get("dataset_kwargs", {})))
    kwargs.update(use_image_aug=False, demonstration_sampling_prob=1.0)
    cls = SOURCES[_kind_from_keys(keys)]
    return cls.from_config(
        dict(data_dir=root, t5_text_embeddings_path=os.path.join(root, "t5_embeddings.pkl")), **kwargs
    )


def test_dataset_samples(tmp_path):
    tensors, info = load_fixture("libero_dataset_samples.safetensors")
    root = _copy("libero_synthetic", tmp_path)
    src = _demo_only_source(root, info, tensors)
    assert len(src) == int(tensors["len"]) == info["len"]
    assert set(src.instructions) == set(info["commands"])
    for idx, keys in info["samples"].items():
        sample = src[int(idx)]
        _assert_sample(sample, tensors, f"sample{idx}", keys)
        assert set(keys) <= set(sample)


def test_dataset_statistics_computed_and_saved(tmp_path):
    tensors, info = load_fixture("libero_dataset_samples.safetensors")
    root = _copy("libero_synthetic", tmp_path)
    recorded = {}
    for name in (STATS_FILE, POST_NORM_STATS_FILE):
        with open(os.path.join(root, name)) as f:
            recorded[name] = json.load(f)
        os.remove(os.path.join(root, name))
    src = _demo_only_source(root, info, tensors)
    for name in (STATS_FILE, POST_NORM_STATS_FILE):
        path = os.path.join(root, name)
        assert os.path.exists(path), f"{name} was not written"
        with open(path) as f:
            written = json.load(f)
        assert set(written) == set(recorded[name])
        for key, value in recorded[name].items():
            np.testing.assert_allclose(written[key], value, rtol=1e-12, atol=1e-14, err_msg=f"{name}:{key}")
    for key, value in recorded[STATS_FILE].items():
        assert src.statistics[key].dtype == np.float64
        np.testing.assert_allclose(src.statistics[key], value, rtol=1e-12, atol=1e-14)
    for idx, keys in info["samples"].items():
        _assert_sample(src[int(idx)], tensors, f"sample{idx}", keys)


# ----------------------------------------------------------------------------------------------
# libero_rollouts + libero_rollout_samples: demos and rollouts, raw and JPEG
# ----------------------------------------------------------------------------------------------


def _rollout_source(tmp_path, info: dict, **overrides) -> EpisodeSource:
    root = _copy("libero_rollouts", tmp_path)
    demo_sub = info["demo_episodes"][0]["file"].split("/")[0]
    rollout_sub = info["rollout_episodes"][0]["file"].split("/")[0]
    demo_dir = os.path.join(root, demo_sub)
    kwargs = _reader_kwargs(info["dataset_kwargs"])
    kwargs.update(overrides)
    first = next(iter(info.get("sample_keys", info["samples"])))
    keys = info.get("sample_keys", {}).get(first, {})
    cls = SOURCES[_kind_from_keys(keys)]
    paths = dict(
        data_dir=demo_dir,
        rollout_data_dir=os.path.join(root, rollout_sub),
        t5_text_embeddings_path=os.path.join(demo_dir, "t5_embeddings.pkl"),
    )
    return cls.from_config(paths, **kwargs)


@pytest.fixture
def rollouts(tmp_path):
    tensors, info = load_fixture("libero_rollout_samples.safetensors")
    return _rollout_source(tmp_path, info), tensors, info


def test_rollout_epoch_counts(rollouts):
    src, tensors, info = rollouts
    e = src.epoch_structure
    assert len(src) == int(tensors["len"]) == info["len"]
    for name in info["epoch"]:
        assert int(getattr(e, name)) == int(tensors[f"epoch.{name}"]) == info["epoch"][name], name


def test_epoch_cases():
    tensors, info = load_fixture("libero_rollout_samples.safetensors")
    cols = info["epoch_case_columns"]
    cases = tensors["epoch_cases"]
    assert cases.shape == (cases.shape[0], len(cols)) and cases.shape[0] > 0
    for row in cases:
        r = dict(zip(cols, row.tolist()))
        e = calculate_epoch_structure(
            int(r["num_demo_steps"]),
            int(r["num_success_rollout_steps"]),
            int(r["num_failure_rollout_steps"]),
            r["demonstration_sampling_prob"],
            r["success_rollout_sampling_prob"],
        )
        got = (e.adjusted_demo_count, e.adjusted_success_rollout_count, e.adjusted_failure_rollout_count)
        want = tuple(int(r[k]) for k in cols[5:8])
        assert got == want, f"case {r}: {got} != {want}"
        assert e.epoch_length == int(r["epoch_length"])


def test_rollout_load_order(rollouts):
    src, _tensors, info = rollouts
    assert len(src.demos) == len(info["demo_episodes"])
    for ep, rec in zip(src.demos, info["demo_episodes"]):
        assert ep.path.endswith(rec["file"]) and ep.label == rec["group"]
        assert (ep.num_steps, ep.command, ep.is_jpeg) == (rec["num_steps"], rec["command"], rec["storage"] == "jpeg")
    assert len(src.rollouts) == len(info["rollout_episodes"])
    for ep, rec in zip(src.rollouts, info["rollout_episodes"]):
        assert ep.path.endswith(rec["file"])
        assert (ep.num_steps, ep.command, ep.success) == (rec["num_steps"], rec["command"], rec["success"])
        assert ep.is_jpeg == (rec["storage"] == "jpeg")


def test_rollout_returns(rollouts):
    src, tensors, info = rollouts
    for k in range(len(info["demo_episodes"])):
        _assert_value(src.demos[k].returns, tensors[f"returns.demo{k}"], f"returns.demo{k}")
    for k in range(len(info["rollout_episodes"])):
        _assert_value(src.rollouts[k].returns, tensors[f"returns.rollout{k}"], f"returns.rollout{k}")


def test_rollout_sample_table(rollouts):
    src, tensors, info = rollouts
    cols = info["sample_table_columns"]
    table = tensors["sample_table"]
    assert table.shape == (len(info["samples"]), len(cols))
    for row in table:
        r = dict(zip(cols, row.tolist()))
        d = src.describe(r["index"])
        assert CATEGORIES.index(d["category"]) == r["category"]
        for key in ("index_in_category", "step_after_wrap", "t", "future_t", "num_steps"):
            assert d[key] == r[key], (r["index"], key)
        assert d["episode"] == r["episode_load_index"]
        assert int(d["is_jpeg"]) == r["is_jpeg"]
        assert int(d["step_after_wrap"] != d["index_in_category"]) == r["wrapped"]


def test_rollout_samples(rollouts):
    src, tensors, info = rollouts
    for idx, rec in info["samples"].items():
        sample = src.get(int(idx), sample_type=rec["sample_type"])
        _assert_sample(sample, tensors, f"sample{idx}", info["sample_keys"][idx])
        code = SAMPLE_TYPE_CODES.index(rec["sample_type"])
        assert sample["world_model_sample_mask"] == int(code == 1)
        assert sample["value_function_sample_mask"] == int(code == 2)


def test_rollout_jpeg_frames(rollouts):
    src, tensors, info = rollouts
    checked = 0
    for idx in info["samples"]:
        if f"frames{idx}" not in tensors:
            continue
        d = src.describe(int(idx))
        ep = src.demos[d["episode"]] if d["category"] == "demo" else src.rollouts[d["episode"]]
        frames = [src._frame(ep, role, step) for step in (d["t"], d["future_t"]) for role in ("wrist", "primary")]
        _assert_value(np.stack(frames), tensors[f"frames{idx}"], f"frames{idx}")
        checked += 1
    assert checked > 0


# ----------------------------------------------------------------------------------------------
# libero_augmentation: recorded parameters and per-op intermediates
# ----------------------------------------------------------------------------------------------


def _aug_params(rec: dict) -> T.AugParams:
    return T.AugParams(**{f.name: rec["params"][f.name] for f in T.dataclasses.fields(T.AugParams)})


def test_augmentation_recorded_params(tmp_path):
    tensors, info = load_fixture("libero_augmentation.safetensors")
    size = tensors["aug0.video"].shape[-1]
    for k, rec in info["samples"].items():
        p = _aug_params(rec)
        assert [p.crop_top, p.crop_left, p.crop_height, p.crop_width] == tensors[f"aug{k}.crop"].tolist()
        assert p.crop_height == p.crop_width == T.crop_side(size)
        assert 0 <= p.crop_top <= size - p.crop_height and 0 <= p.crop_left <= size - p.crop_width
        for name in ("angle", "brightness", "contrast", "saturation", "hue"):
            assert getattr(p, name) == float(tensors[f"aug{k}.{name}"])


def _apply_op(op: str, x: np.ndarray, p: T.AugParams, size: int) -> tuple[str, np.ndarray]:
    """(recorded tensor suffix, our result) of one reference op name."""
    if op == "resized_crop":
        return "after_crop", T.resized_crop(x, p.crop_top, p.crop_left, p.crop_height, p.crop_width, size)
    if op == "rotate":
        return "after_rotate", T.rotate(x, p.angle)
    color = {
        "adjust_brightness": ("after_brightness", T.adjust_brightness, p.brightness),
        "adjust_contrast": ("after_contrast", T.adjust_contrast, p.contrast),
        "adjust_saturation": ("after_saturation", T.adjust_saturation, p.saturation),
        "adjust_hue": ("after_hue", T.adjust_hue, p.hue),
    }
    if op not in color:
        raise AssertionError(f"unknown augmentation op {op!r} in the fixture")
    name, fn, factor = color[op]
    return name, fn(x, factor)


def test_augmentation_each_op(tmp_path):
    tensors, info = load_fixture("libero_augmentation.safetensors")
    for k, rec in info["samples"].items():
        p = _aug_params(rec)
        pre = f"aug{k}."
        video = tensors[pre + "video_unaugmented"]
        groups = tensors[pre + "groups"]
        assert [tuple(g) for g in groups[:, :2].tolist()] == T.frame_runs(video)
        assert (groups[:, 1] - groups[:, 0] == groups[:, 2]).all()
        x = np.ascontiguousarray(np.moveaxis(video[:, groups[:, 0]], 1, 0))
        size = video.shape[-1]
        for op in info["ops_in_order"]:
            name, out = _apply_op(op, x, p, size)
            ref = tensors[pre + name]
            _assert_value(out, ref, pre + name)
            x = ref  # each op from the recorded input of that op
        _assert_value(T.augment_video(video, p), tensors[pre + "video"], pre + "video")


def test_augmentation_samples_through_source(tmp_path):
    tensors, info = load_fixture("libero_augmentation.safetensors")
    rollout_info = load_fixture("libero_rollout_samples.safetensors")[1]
    src = _rollout_source(tmp_path, {**rollout_info, "dataset_kwargs": info["dataset_kwargs"]})
    plain = _rollout_source(
        tmp_path / "plain", {**rollout_info, "dataset_kwargs": info["dataset_kwargs"]}, use_image_aug=False
    )
    for k, rec in info["samples"].items():
        assert src.describe(rec["index"])["episode"] == rec["episode_load_index"]
        sample = src.get(rec["index"], sample_type=rec["sample_type"], aug_params=_aug_params(rec))
        _assert_value(sample["video"], tensors[f"aug{k}.video"], f"aug{k}.video")
        unaug = plain.get(rec["index"], sample_type=rec["sample_type"])["video"]
        _assert_value(unaug, tensors[f"aug{k}.video_unaugmented"], f"aug{k}.video_unaugmented")
