"""The demo dataset generator (``demo/generate.py``): deterministic in its parameters."""

import glob
import hashlib
import os

import h5py
import numpy as np

from cosmos_policy_jax.data.t5 import load_t5_embeddings
from cosmos_policy_jax.demo import generate

SMALL = dict(num_episodes=8, num_rollouts=8, image_size=16, action_dim=7, proprio_dim=9, text_len=8, text_dim=16)


def dataset_digest(root):
    """Hash of every HDF5 dataset's bytes and attributes (file names included), not of file metadata."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "**", "*.hdf5"), recursive=True)):
        h.update(os.path.relpath(path, root).encode())
        with h5py.File(path, "r") as f:
            for key, value in sorted(f.attrs.items()):
                h.update(f"{key}={value}".encode())

            def visit(name, obj, h=h):
                if isinstance(obj, h5py.Dataset):
                    h.update(name.encode())
                    for item in np.atleast_1d(obj[()]):
                        h.update(np.asarray(item).tobytes())

            f.visititems(visit)
    return h.hexdigest()


def test_generator_is_deterministic(tmp_path):
    m1 = generate.generate_demo_dataset(str(tmp_path / "a"), seed=3, **SMALL)
    m2 = generate.generate_demo_dataset(str(tmp_path / "b"), seed=3, **SMALL)
    generate.generate_demo_dataset(str(tmp_path / "c"), seed=4, **SMALL)
    assert m1 == m2
    assert dataset_digest(tmp_path / "a") == dataset_digest(tmp_path / "b")
    assert dataset_digest(tmp_path / "a") != dataset_digest(tmp_path / "c")
    t1 = load_t5_embeddings(tmp_path / "a" / "success_only" / "t5_embeddings.pkl")
    t2 = load_t5_embeddings(tmp_path / "b" / "success_only" / "t5_embeddings.pkl")
    assert sorted(t1) == sorted(m1["instructions"])
    for k in t1:
        np.testing.assert_array_equal(t1[k], t2[k])
