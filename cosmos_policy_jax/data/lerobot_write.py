"""Write episodes as a LeRobot dataset through the real ``lerobot`` package (an optional, separate install).

The project only *reads* LeRobot data (``data/lerobot.py``, pyarrow + PyAV). Writing goes through
``lerobot`` itself so that what we read is what LeRobot writes: ``lerobot`` 0.3.x writes format v2.1,
0.4.x writes v3.0. ``lerobot`` needs PyTorch, so it usually lives in its own virtual environment;
this module imports nothing from the project and runs there as a script::

    /path/to/lerobot-venv/bin/python -m cosmos_policy_jax.data.lerobot_write EPISODES_DIR OUT_ROOT

``EPISODES_DIR`` holds ``spec.json`` (fps, robot_type, camera/state/action/success keys, optional
v3.0 ``chunk_settings`` for ``update_chunk_settings``) and
``episode_<n>.npz`` files with ``frames/<camera>`` ``(T, H, W, 3)`` uint8, ``state`` and ``action``
``(T, D)`` float32, optional ``success`` ``(T,)`` bool and the 0-d string ``task``.
:func:`write_episodes_dir` is the same writer called in-process.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import types
from typing import Any

import numpy as np

SPEC = "spec.json"


def import_lerobot() -> tuple[Any, str]:
    """``(LeRobotDataset, lerobot version)``.

    The PyPI build of torchvision links CUDA PyTorch libraries; next to a CPU-only PyTorch its C++
    operators cannot load and the import of its meta-kernel registrations fails. The dataset writer
    never uses those operators, so when (and only when) that import fails, it is skipped and the rest
    of torchvision imports as released.
    """
    try:
        import torchvision
    except (RuntimeError, ImportError, OSError) as e:
        if "torchvision::" not in str(e) and "_meta_registrations" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset, str(getattr(lerobot, "__version__", "unknown"))


def _features(spec: dict, first: Any) -> dict[str, dict]:
    feats: dict[str, dict] = {}
    for cam in spec["cameras"]:
        h, w, c = first[f"frames/{cam}"].shape[1:]
        feats[cam] = {"dtype": "video", "shape": (int(h), int(w), int(c)), "names": ["height", "width", "channels"]}
    for key, name in ((spec["state_key"], "state"), (spec["action_key"], "action")):
        feats[key] = {"dtype": "float32", "shape": (int(first[name].shape[1]),), "names": None}
    if spec.get("success_key"):
        feats[spec["success_key"]] = {"dtype": "bool", "shape": (1,), "names": None}
    return feats


def write_episodes_dir(episodes_dir: str, out_root: str) -> str:
    """Write every ``episode_<n>.npz`` of ``episodes_dir`` (in order) to a new LeRobot dataset at ``out_root``."""
    LeRobotDataset, version = import_lerobot()
    with open(os.path.join(episodes_dir, SPEC)) as f:
        spec = json.load(f)
    names = sorted(n for n in os.listdir(episodes_dir) if n.startswith("episode_") and n.endswith(".npz"))
    if not names:
        raise SystemExit(f"{episodes_dir}: no episode_<n>.npz files")
    with np.load(os.path.join(episodes_dir, names[0])) as first:
        features = _features(spec, first)
    ds = LeRobotDataset.create(
        repo_id=spec.get("repo_id", "local/cosmos_policy_export"),
        fps=int(spec["fps"]),
        features=features,
        root=out_root,
        robot_type=spec.get("robot_type"),
        use_videos=True,
        image_writer_threads=0,
    )
    if spec.get("chunk_settings"):  # v3.0: smaller files, so that episodes spread over several
        ds.meta.update_chunk_settings(**spec["chunk_settings"])
    task_is_argument = "task" in inspect.signature(ds.add_frame).parameters  # lerobot 0.3.x
    for name in names:
        with np.load(os.path.join(episodes_dir, name)) as ep:
            task = str(ep["task"])
            for t in range(ep["action"].shape[0]):
                frame: dict[str, Any] = {cam: ep[f"frames/{cam}"][t] for cam in spec["cameras"]}
                frame[spec["state_key"]] = ep["state"][t].astype(np.float32)
                frame[spec["action_key"]] = ep["action"][t].astype(np.float32)
                if spec.get("success_key"):
                    frame[spec["success_key"]] = np.array([bool(ep["success"][t])])
                if task_is_argument:
                    ds.add_frame(frame, task=task)
                else:
                    ds.add_frame({**frame, "task": task})
        ds.save_episode()
    if hasattr(ds, "finalize"):  # v3.0 writers buffer parquet rows until finalize()
        ds.finalize()
    print(f"lerobot {version} wrote {len(names)} episodes to {out_root}")
    return version


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m cosmos_policy_jax.data.lerobot_write EPISODES_DIR OUT_ROOT")
    write_episodes_dir(sys.argv[1], sys.argv[2])
