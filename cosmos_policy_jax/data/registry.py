"""Dataset kind -> source: the one place that turns a ``dataloader_*.dataset`` section into a source.

``make_source`` serves every ``dataset.kind``: the HDF5 readers (``libero`` / ``robocasa`` /
``aloha``), ``lerobot``, ``synthetic`` (random samples with the model's input spec) and ``demo``
(the demo task's dataset, generated on first use). Factories that need optional packages or the
demo package import them when called, so ``data/`` never imports ``demo/`` at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cosmos_policy_jax.common.paths import expand_required
from cosmos_policy_jax.data.aloha import AlohaSource, aloha_instruction
from cosmos_policy_jax.data.episodes import EpisodeSource, cfg_get
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.hdf5 import attr_str, find_hdf5_files, open_h5
from cosmos_policy_jax.data.libero import LiberoSource, RobocasaSource, libero_instruction

# The HDF5 file readers, by kind.
SOURCES: dict[str, type[EpisodeSource]] = {
    "libero": LiberoSource,
    "robocasa": RobocasaSource,
    "aloha": AlohaSource,
}


def expanded_paths(dataset_cfg: Any) -> dict[str, Any]:
    """Plain-dict copy of a dataset config with ``${VAR}``/``~`` expanded in its path fields."""
    cfg = dict(dataset_cfg.to_dict()) if hasattr(dataset_cfg, "to_dict") else dict(dataset_cfg)
    for key in ("data_dir", "rollout_data_dir", "t5_text_embeddings_path"):
        value = cfg.get(key)
        if isinstance(value, str) and value:
            cfg[key] = expand_required(value, f"dataset.{key}", DataError)
    return cfg


def _file_reader(dataset_cfg: Any, *, seed: int, layout: Any, state_t: Any, **overrides: Any) -> Any:
    del layout, state_t  # a reader's layout follows from its cameras and flags
    cfg = expanded_paths(dataset_cfg)
    return SOURCES[cfg.get("kind", "libero")].from_config(cfg, seed=seed, **overrides)


def _lerobot(dataset_cfg: Any, *, seed: int, layout: Any, state_t: Any, **overrides: Any) -> Any:
    del layout, state_t
    from cosmos_policy_jax.data.lerobot import LeRobotSource  # pyarrow and av only when used

    return LeRobotSource.from_config(expanded_paths(dataset_cfg), seed=seed, **overrides)


def _synthetic(dataset_cfg: Any, *, seed: int, layout: Any, state_t: Any, **overrides: Any) -> Any:
    from cosmos_policy_jax.data.synthetic import SyntheticSource

    # Needs no files, so its path fields are not expanded (they may hold unset variables).
    return SyntheticSource.from_config(dataset_cfg, seed=seed, layout=layout, state_t=state_t, **overrides)


def _demo(dataset_cfg: Any, *, seed: int, layout: Any, state_t: Any, **overrides: Any) -> Any:
    del layout, state_t
    from cosmos_policy_jax.demo.dataset import demo_source  # the demo package builds on data/, not the reverse

    return demo_source(expanded_paths(dataset_cfg), seed=seed, **overrides)


FACTORIES: dict[str, Callable[..., Any]] = {
    "libero": _file_reader,
    "robocasa": _file_reader,
    "aloha": _file_reader,
    "lerobot": _lerobot,
    "synthetic": _synthetic,
    "demo": _demo,
}
# The values ``dataset.kind`` may take (config validation checks against this).
DATASET_KINDS = tuple(FACTORIES)
# The files the demo factory reads its generated episodes from (``dataset.demo_format``).
DEMO_FORMATS = ("hdf5", "lerobot")


def make_source(
    dataset_cfg: Any,
    *,
    seed: int = 0,
    layout: Mapping[str, int] | None = None,
    state_t: int | None = None,
    **overrides: Any,
) -> Any:
    """The random-access source for a ``dataloader_*.dataset`` section, chosen by its ``kind``.

    ``layout``/``state_t`` are the model's latent layout (``config.model.latent_layout`` /
    ``config.model.state_t``), used by ``synthetic`` (LIBERO's by default); the file readers derive
    their own. ``overrides`` replace fields of the section for the episode readers (``from_config``).
    """
    kind = cfg_get(dataset_cfg, "kind", "libero")
    if kind not in FACTORIES:
        raise DataError(f"dataset.kind {kind!r} has no source; choose one of {', '.join(FACTORIES)}")
    return FACTORIES[kind](dataset_cfg, seed=seed, layout=layout, state_t=state_t, **overrides)


def list_instructions(kind: str, data_dir: str, rollout_data_dir: str = "", *, split: str | None = None) -> list[str]:
    """Sorted unique instructions of a dataset's demos and rollouts (for computing T5 embeddings)."""
    if kind not in SOURCES:
        raise DataError(f"dataset kind {kind!r} has no file reader; choose one of {', '.join(SOURCES)}")
    found: set[str] = set()
    for path in find_hdf5_files(data_dir, what="data_dir", split=split if kind == "aloha" else None):
        with open_h5(path) as f:
            if kind == "libero":
                found.add(libero_instruction(path))
            elif kind == "robocasa":
                for name in f.get("data", {}):
                    found.add(attr_str(f[f"data/{name}"].attrs.get("task_description", "")))
            else:
                found.add(aloha_instruction(path, f.attrs))
    if rollout_data_dir:
        for path in find_hdf5_files(rollout_data_dir, what="rollout_data_dir"):
            with open_h5(path) as f:
                found.add(
                    aloha_instruction(path, f.attrs)
                    if kind == "aloha"
                    else attr_str(f.attrs.get("task_description", ""))
                )
    return sorted(found)
