r"""Compute a dataset's normalisation statistics (the reference's ``dataset_statistics.json``) ahead of training.

    python -m cosmos_policy_jax.data.stats --config=configs/cosmos_policy.py:lerobot \
        --config.dataloader_train.dataset.data_dir=/data/my_lerobot_dataset

For a LeRobot dataset (``dataset.kind=lerobot``, or the demo with the ``lerobot`` modifier) only the
state and action parquet columns are read (one pass over the files, whole columns at a time; no
video is decoded, video headers are checked), the demonstrations are the episodes not marked as
failures, and two files are written into ``dataset.data_dir``, exactly what the training source
would write on first use: ``dataset_statistics.json`` (per-dimension min/max/mean/std/median of
actions and proprio, the file the reference's deploy and eval scripts read) and
``dataset_statistics_post_norm.json`` (the same after the [-1, 1] rescaling). Existing files are
replaced (``--overwrite=false`` keeps them). For HDF5 kinds (libero/robocasa/aloha) the source itself
is opened, which writes missing files. Bad data exits 2 with a one-line error naming file and key.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from cosmos_policy_jax import cli
from cosmos_policy_jax.data import statistics as stats_lib
from cosmos_policy_jax.data.errors import DataError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and arg, e.g. configs/cosmos_policy.py:lerobot")
_SECTION = flags.DEFINE_string("section", "dataloader_train", "Loader section whose dataset to use.")
_OVERWRITE = flags.DEFINE_bool("overwrite", True, "Replace existing statistics files.")


def progress_bar(label: str, stream: Any = None) -> Callable[[int, int], None]:
    """``update(done, total)`` drawing ``label [#####.....] done/total  elapsed`` on one stderr line."""
    out = stream or sys.stderr
    start = time.monotonic()

    def update(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(1, total)
        out.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {time.monotonic() - start:.1f}s")
        if done >= total:
            out.write("\n")
        out.flush()

    return update


def lerobot_statistics(
    dataset_cfg: Any, *, progress: Callable[[int, int], None] | None = None
) -> tuple[dict, dict | None, int]:
    """(statistics, post-normalisation statistics or None, number of demo episodes) of a LeRobot dataset config."""
    import numpy as np

    from cosmos_policy_jax.data.lerobot import LeRobotDataset

    lr = dataset_cfg["lerobot"]
    cams = {r: k for r, k in dict(lr["cameras"]).items() if k}
    ds = LeRobotDataset(dataset_cfg["data_dir"])
    for role, key in cams.items():
        ds.require_feature(key, f"cameras.{role}", video=True)
    keys = [lr["state_key"], lr["action_key"]]
    for key, field in zip(keys, ("state_key", "action_key")):
        ds.require_feature(key, field)
    success_key = lr.get("success_key") or ""
    if success_key:
        ds.require_feature(success_key, "success_key")
        keys.append(success_key)
    ds.check_videos(list(cams.values()))
    cols = ds.columns(keys, progress=progress)
    actions, proprio = [], []
    for ep in ds.episodes:
        c = cols[ep.index]
        if success_key and not bool(np.asarray(c[success_key]).reshape(ep.length, -1)[-1].all()):
            continue  # a failure: a rollout, not a demonstration
        for out, key in ((actions, lr["action_key"]), (proprio, lr["state_key"])):
            arr = c[key]
            out.append((arr[:, None] if arr.ndim == 1 else arr).astype(np.float32, copy=False))
    if not actions:
        raise DataError(f"{ds.root}: no successful episodes to compute statistics from")
    stats = stats_lib.compute_statistics(actions, proprio)
    post = None
    if dataset_cfg.get("normalize_actions", True) or dataset_cfg.get("normalize_proprio", True):
        if dataset_cfg.get("normalize_actions", True):
            actions = [stats_lib.normalize(a, stats, "actions") for a in actions]
        if dataset_cfg.get("normalize_proprio", True):
            proprio = [stats_lib.normalize(p, stats, "proprio") for p in proprio]
        post = stats_lib.compute_statistics(actions, proprio)
    return stats, post, len(actions)


def _resolve_dataset(config: Any, section: str) -> dict[str, Any]:
    from cosmos_policy_jax.data.registry import expanded_paths

    # Only the data paths matter here (the embeddings file may not exist yet).
    raw = config[section].dataset.to_dict()
    cfg = {**raw, **expanded_paths({k: raw.get(k, "") for k in ("data_dir", "rollout_data_dir")})}
    if cfg.get("kind") == "demo" and cfg.get("demo_format", "hdf5") == "lerobot":
        from cosmos_policy_jax.demo import dataset as demo_dataset
        from cosmos_policy_jax.demo import lerobot_copy

        cfg = lerobot_copy.demo_lerobot_config(cfg, demo_dataset.ensure_demo_dataset(cfg))
    return cfg


def run(config: Any, *, section: str = "dataloader_train", overwrite: bool = True) -> list[str]:
    """Write the statistics files of ``config[section].dataset``; returns their paths."""
    cfg = _resolve_dataset(config, section)
    kind = cfg.get("kind")
    directory = cfg["data_dir"]
    paths = [os.path.join(directory, stats_lib.STATS_FILE), os.path.join(directory, stats_lib.POST_NORM_STATS_FILE)]
    if kind == "lerobot":
        if not overwrite and os.path.exists(paths[0]):
            return [p for p in paths if os.path.exists(p)]
        stats, post, n = lerobot_statistics(cfg, progress=progress_bar("parquet files"))
        stats_lib.save_statistics(stats, paths[0])
        if post is not None:
            stats_lib.save_statistics(post, paths[1])
        print(f"statistics of {n} demonstration episodes written to {directory}")
        return [p for p in paths if os.path.exists(p)]
    if kind in ("libero", "robocasa", "aloha"):
        if overwrite:
            for p in paths:
                if os.path.exists(p):
                    os.remove(p)
        from cosmos_policy_jax.data.registry import make_source

        make_source(cfg).close()
        return [p for p in paths if os.path.exists(p)]
    raise DataError(
        f"{section}.dataset.kind {kind!r}: statistics come from dataset files (lerobot, libero, robocasa, aloha)"
    )


def main(argv: list[str]) -> None:
    del argv
    if _CONFIG.value is None:
        cli.fail("--config is required, e.g. --config=configs/cosmos_policy.py:lerobot")
    try:
        for path in run(_CONFIG.value, section=_SECTION.value, overwrite=_OVERWRITE.value):
            print(path)
    except DataError as e:
        cli.fail(str(e))


if __name__ == "__main__":
    app.run(main)
