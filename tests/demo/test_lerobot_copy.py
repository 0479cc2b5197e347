"""The demo's LeRobot copy (``demo/lerobot_copy.py``): written by the real ``lerobot`` package only."""

from __future__ import annotations

import pytest

from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.demo import lerobot_copy


def test_demo_copy_needs_the_real_writer(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("lerobot") is not None:
        pytest.skip("lerobot is installed here: the writer would run")
    monkeypatch.delenv(lerobot_copy.LEROBOT_PYTHON_ENV, raising=False)
    with pytest.raises(DataError, match=r"real lerobot package.*COSMOS_POLICY_LEROBOT_PYTHON"):
        lerobot_copy._run_lerobot_writer(str(tmp_path / "in"), str(tmp_path / "out"))
    monkeypatch.setenv(lerobot_copy.LEROBOT_PYTHON_ENV, "/bin/false")
    with pytest.raises(DataError, match="lerobot writer failed"):
        lerobot_copy._run_lerobot_writer(str(tmp_path / "in"), str(tmp_path / "out"))
