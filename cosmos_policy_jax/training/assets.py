"""What a saved policy needs besides its weights: dataset statistics and the training instructions' T5 embeddings.

Saved with every checkpoint (the ``inference`` item, JSON) and with the export (``export/policy.json``
next to ``export/net.safetensors``), so that a checkpoint is enough to serve or evaluate the policy:

* ``dataset_statistics``: the normalisation statistics training used (``<data_dir>/dataset_statistics.json``),
  inline (a few hundred numbers);
* ``t5_embeddings``: the instruction embeddings file, copied into the job directory
  (``assets/t5_embeddings.<ext>``, ``export/t5_embeddings.<ext>``) and referenced by relative path
  and SHA-256 (LIBERO's file is ~80 MB: too large to inline in JSON).

Only the main process writes files; every process returns the same dictionary (orbax saves JSON
items from each process).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax

from cosmos_policy_jax.common.files import atomic_path, atomic_write_json, sha256_of
from cosmos_policy_jax.common.paths import expand_path
from cosmos_policy_jax.common.plain import to_plain

FORMAT = "cosmos_policy_jax.policy_assets/1"
ASSETS_DIR = "assets"
EXPORT_MANIFEST = "policy.json"


def _expanded(path: str) -> str:
    expanded, missing = expand_path(path)
    return "" if missing else os.path.abspath(expanded)


def _copy_once(src: str, dst: str, digest: str) -> None:
    """Copy ``src`` to ``dst`` (atomically) unless ``dst`` already holds the same bytes."""
    if jax.process_index() != 0:
        return
    if os.path.isfile(dst) and sha256_of(dst) == digest:
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def build_policy_assets(config: Any, job_dir: str) -> dict[str, Any]:
    """The ``inference`` item for ``config``'s training data; copies the T5 file to ``job_dir/assets``."""
    ds = config.dataloader_train.dataset
    out: dict[str, Any] = {"format": FORMAT, "dataset_statistics": None, "t5_embeddings": None}
    data_dir = _expanded(str(ds.get("data_dir", "") or ""))
    stats_path = os.path.join(data_dir, "dataset_statistics.json") if data_dir else ""
    if stats_path and os.path.isfile(stats_path):
        with open(stats_path) as f:
            out["dataset_statistics"] = json.load(f)
    t5_src = _expanded(str(ds.get("t5_text_embeddings_path", "") or ""))
    if t5_src and os.path.isfile(t5_src):
        digest = sha256_of(t5_src)
        rel = os.path.join(ASSETS_DIR, "t5_embeddings" + os.path.splitext(t5_src)[1])
        _copy_once(t5_src, os.path.join(job_dir, rel), digest)
        out["t5_embeddings"] = {"file": rel, "sha256": digest, "source": t5_src}
    return out


def write_export_manifest(config_dict: dict, assets: dict[str, Any] | None, job_dir: str, export_dir: str) -> str:
    """``export_dir/policy.json`` (config + statistics + T5 reference) and a copy of the T5 file; main process."""
    assets = dict(assets or {"format": FORMAT, "dataset_statistics": None, "t5_embeddings": None})
    t5 = assets.get("t5_embeddings")
    if t5:
        name = os.path.basename(t5["file"])
        _copy_once(os.path.join(job_dir, t5["file"]), os.path.join(export_dir, name), t5["sha256"])
        assets["t5_embeddings"] = {**t5, "file": name}
    path = os.path.join(export_dir, EXPORT_MANIFEST)
    atomic_write_json(path, to_plain({**assets, "config": config_dict}), indent=1)
    return path
