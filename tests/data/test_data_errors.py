"""Bad dataset input gives one clear ``DataError`` naming the file/key (reliability catalogue).

Each case breaks a copy of the fixture data (or a small written file) in ``tmp_path`` and checks the
exception type, that the message is one line naming the offending file or key, and that the data
directory was not modified by the failed construction.
"""

from __future__ import annotations

import io
import os
import pickle

import h5py
import numpy as np
import pytest
from PIL import Image

from cosmos_policy_jax.data.episodes import EpisodeOptions
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.libero import LiberoSource
from cosmos_policy_jax.data.t5 import load_t5_embeddings, save_t5_embeddings
from tests.data.dataset_files import copy_rollouts
from tests.fixture_utils import snapshot


def _expect(fn, *needles: str) -> DataError:
    with pytest.raises(DataError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return err.value


@pytest.fixture
def data(tmp_path):
    demo_dir, rollout_dir, t5, kwargs = copy_rollouts(tmp_path)
    demo_files = sorted(os.path.join(r, n) for r, _d, fs in os.walk(demo_dir) for n in fs if n.endswith(".hdf5"))
    rollout_files = sorted(os.path.join(rollout_dir, n) for n in os.listdir(rollout_dir))

    def build(**over):
        args = dict(data_dir=demo_dir, rollout_data_dir=rollout_dir, t5_text_embeddings_path=t5)
        return LiberoSource(EpisodeOptions(**{**args, **kwargs, **over}))

    return dict(
        build=build, demo_dir=demo_dir, rollout_dir=rollout_dir, t5=t5, demo_files=demo_files,
        rollout_files=rollout_files, root=str(tmp_path),
    )  # fmt: skip


def _raw_demo_file(data) -> str:
    for path in data["demo_files"]:
        with h5py.File(path) as f:
            if "agentview_rgb" in f["data/demo_0/obs"]:
                return path
    raise AssertionError("fixture has no raw-image demo file")


def _jpeg_rollout_file(data) -> str:
    for path in data["rollout_files"]:
        with h5py.File(path) as f:
            if "primary_images_jpeg" in f:
                return path
    raise AssertionError("fixture has no JPEG rollout file")


def _first_index_of(src, path: str) -> int:
    """An epoch index whose rollout episode lives in ``path``."""
    for i in range(len(src)):
        where = src.describe(i)
        if where["category"] != "demo" and src.rollouts[where["episode"]].path == path:
            return i
    raise AssertionError(f"no sample reads {path}")


def test_missing_dataset_directory(data, tmp_path):
    missing = str(tmp_path / "does_not_exist")
    _expect(lambda: data["build"](data_dir=missing), missing, "data_dir")
    _expect(lambda: data["build"](rollout_data_dir=missing), missing, "rollout_data_dir")


def test_directory_without_hdf5_files(data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect(lambda: data["build"](data_dir=str(empty)), str(empty), "no HDF5 files")


def test_hdf5_missing_required_dataset(data):
    path = _raw_demo_file(data)
    with h5py.File(path, "a") as f:
        del f["data/demo_1/robot_states"]
    before = snapshot(data["demo_dir"])
    _expect(data["build"], os.path.basename(path), "data/demo_1/robot_states")
    assert snapshot(data["demo_dir"]) == before


def test_rollout_missing_camera(data):
    path = data["rollout_files"][-1]
    with h5py.File(path, "a") as f:
        key = "wrist_images_jpeg" if "wrist_images_jpeg" in f else "wrist_images"
        del f[key]
    _expect(data["build"], os.path.basename(path), key)


def test_rollout_missing_proprio(data):
    path = data["rollout_files"][0]
    with h5py.File(path, "a") as f:
        del f["proprio"]
    _expect(data["build"], os.path.basename(path), "proprio")


def test_demo_without_camera(data):
    path = _raw_demo_file(data)
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/eye_in_hand_rgb"]
    _expect(data["build"], os.path.basename(path), "data/demo_0", "eye_in_hand_rgb")


def test_truncated_hdf5(data):
    path = _raw_demo_file(data)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 3)
    _expect(data["build"], os.path.basename(path))


def test_truncated_rollout_fails_at_read_time_with_the_file_name(data):
    # Keep the HDF5 metadata intact but destroy the first compressed image chunk.
    path, offset = None, 0
    for p in data["rollout_files"]:
        with h5py.File(p) as f:
            if "primary_images" in f:
                path = p
                offset = f["primary_images"].id.get_chunk_info(0).byte_offset
                break
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * 64)
    src = data["build"]()
    index = _first_index_of(src, path)
    _expect(lambda: src.get(index, sample_type="world_model"), os.path.basename(path), "primary_images")


def test_not_an_hdf5_file(data):
    bogus = os.path.join(data["rollout_dir"], "zzz_bogus.hdf5")
    with open(bogus, "wb") as f:
        f.write(b"this is not hdf5" * 100)
    _expect(data["build"], "zzz_bogus.hdf5", "cannot open HDF5")


def test_cameras_of_different_sizes(data):
    path = _raw_demo_file(data)
    with h5py.File(path, "a") as f:
        old = f["data/demo_0/obs/eye_in_hand_rgb"][()]
        del f["data/demo_0/obs/eye_in_hand_rgb"]
        f["data/demo_0/obs/eye_in_hand_rgb"] = old[:, :-4, :-4]
    _expect(data["build"], os.path.basename(path), "different image sizes")


def test_image_with_wrong_channels(data):
    path = _raw_demo_file(data)
    with h5py.File(path, "a") as f:
        old = f["data/demo_1/obs/agentview_rgb"][()]
        del f["data/demo_1/obs/agentview_rgb"]
        f["data/demo_1/obs/agentview_rgb"] = np.concatenate([old, old[..., :1]], axis=-1)
    _expect(data["build"], os.path.basename(path), "agentview_rgb", "(T, H, W, 3)")


def test_jpeg_frame_of_the_wrong_size(data):
    path = _jpeg_rollout_file(data)
    with h5py.File(path, "a") as f:
        ds = f["wrist_images_jpeg"]
        frame = np.asarray(Image.open(io.BytesIO(ds[0].tobytes())))
        buf = io.BytesIO()
        Image.fromarray(frame[: frame.shape[0] // 2]).save(buf, format="JPEG")
        for i in range(ds.shape[0]):
            ds[i] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    src = data["build"]()
    index = _first_index_of(src, path)
    _expect(lambda: src.get(index, sample_type="world_model"), os.path.basename(path), "different sizes")


def test_corrupt_jpeg_bytes(data):
    path = _jpeg_rollout_file(data)
    with h5py.File(path, "a") as f:
        ds = f["primary_images_jpeg"]
        for i in range(ds.shape[0]):
            ds[i] = np.frombuffer(b"not a jpeg at all", dtype=np.uint8)
    src = data["build"]()
    index = _first_index_of(src, path)
    _expect(lambda: src.get(index, sample_type="value_function"), os.path.basename(path), "primary_images_jpeg", "JPEG")


def test_t5_missing_instruction(data):
    table = load_t5_embeddings(data["t5"])
    dropped = sorted(table)[0]
    del table[dropped]
    save_t5_embeddings(table, data["t5"])
    for name in ("dataset_statistics.json", "dataset_statistics_post_norm.json"):
        os.remove(os.path.join(data["demo_dir"], name))
    before = snapshot(data["demo_dir"])
    _expect(data["build"], "t5_embeddings.pkl", dropped)
    assert snapshot(data["demo_dir"]) == before  # nothing written by the failed run


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch t5_pwned_marker",))


def test_t5_pickle_that_runs_code(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(data["t5"], "wb") as f:
        pickle.dump({"open the top drawer of the cabinet": _RunsCode()}, f)
    _expect(data["build"], "t5_embeddings.pkl", "refusing", "system")
    assert not os.path.exists(tmp_path / "t5_pwned_marker")


def test_t5_file_missing_or_garbage(data, tmp_path):
    missing = str(tmp_path / "nope.pkl")
    _expect(lambda: data["build"](t5_text_embeddings_path=missing), missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 10)
    _expect(lambda: data["build"](t5_text_embeddings_path=str(garbage)), "garbage.safetensors")
    _expect(lambda: data["build"](t5_text_embeddings_path=""), "t5_text_embeddings_path")


def test_bad_statistics_file(data):
    path = os.path.join(data["demo_dir"], "dataset_statistics.json")
    with open(path, "w") as f:
        f.write('{"actions_min": [0, 1]}')
    _expect(data["build"], "dataset_statistics.json", "actions_max")
    with open(path, "w") as f:
        f.write("{not json")
    _expect(data["build"], "dataset_statistics.json", "JSON")


def test_dimension_mismatch_with_config(data):
    _expect(lambda: data["build"](action_dim=14), "action_dim", "14")
    _expect(lambda: data["build"](proprio_dim=8), "proprio_dim")


def test_non_positive_sizes():
    _expect(lambda: LiberoSource(EpisodeOptions(data_dir="/nonexistent", chunk_size=0)), "chunk_size")


def test_dataset_root_that_is_a_file(data, tmp_path):
    afile = tmp_path / "not_a_dir"
    afile.write_text("x")
    _expect(lambda: data["build"](data_dir=str(afile)), str(afile), "is a file, not a directory", "data_dir")
    _expect(lambda: data["build"](rollout_data_dir=str(afile)), "is a file, not a directory", "rollout_data_dir")


@pytest.mark.parametrize(
    "where,value,needle",
    [
        ("demo", np.array([[b"left"] * 7] * 4), "holds |S4 values, expected numbers"),
        ("demo", "nan", "has a non-finite value (nan) at index (2, 3)"),
        ("rollout", "inf", "has a non-finite value (inf) at index (2, 3)"),
        ("rollout", np.array([["x"] * 7] * 4, dtype=object), "holds object values, expected numbers"),
    ],
)
def test_non_numeric_or_non_finite_actions_name_file_and_key(data, where, value, needle):
    path = _raw_demo_file(data) if where == "demo" else data["rollout_files"][0]
    key = "data/demo_1/actions" if where == "demo" else "actions"
    with h5py.File(path, "a") as f:
        if isinstance(value, str):
            actions = f[key][()]
            actions[2, 3] = float(value)
        else:
            actions = value
        del f[key]
        if actions.dtype == object:
            f.create_dataset(key, data=actions.astype("S"), dtype=h5py.string_dtype())
        else:
            f[key] = actions
    before = snapshot(data["root"])
    _expect(data["build"], os.path.basename(path), repr(key), needle)
    assert snapshot(data["root"]) == before
