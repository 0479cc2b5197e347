"""The shared episode source: options, episodes, statistics, returns, epoch structure and ``get``.

Readers for one robot family (``libero.py``, ``aloha.py``, ``lerobot.py``) subclass
:class:`EpisodeSource` and say which cameras exist and how to read one demo / one rollout;
``registry.make_source`` picks the reader for a config's ``dataset.kind``.

``source[i]`` / ``source.get(i, epoch)`` returns the reference's sample dict (numpy arrays and Python
ints). Randomness (world-model vs value-function choice for rollout samples, augmentation parameters)
is a pure function of ``(seed, epoch, index)`` through ``np.random.default_rng([seed, epoch, index])``;
the parity tests force both explicitly.

Differences from the reference, none of which changes a sample:

* files are listed in sorted path order (the reference uses the file system's ``os.walk`` order);
* demo images are read lazily per sample (the reference decodes all demos into RAM at start-up);
  only actions and proprio of every episode are loaded up front, which also validates every file;
* ``t5_text_embeddings`` is float32 (the reference hands over the pickle's dtype, bf16 in production);
* every kind returns ``next_action_chunk`` / ``next_value_function_return`` (the reference's RoboCasa
  dataset does not) and none returns the instruction string;
* bad input raises :class:`DataError` naming the file and key.

Worker processes only need numpy, PIL and h5py; the source pickles without its open file handles.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import h5py
import numpy as np

from cosmos_policy_jax.common.errors import first_line
from cosmos_policy_jax.data import statistics as stats_lib
from cosmos_policy_jax.data import transforms
from cosmos_policy_jax.data.epoch import EpochStructure, StepIndex, calculate_epoch_structure
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.hdf5 import (
    HDF5_EXTENSIONS,
    decode_jpeg,
    find_hdf5_files,
    open_h5,
    require_dir,
)
from cosmos_policy_jax.data.open_files import OpenFiles
from cosmos_policy_jax.data.returns import monte_carlo_returns
from cosmos_policy_jax.data.schema import CAMERA_SLOT, FPS, SAMPLE_TYPES, TEXT_MASK_LEN, Episode
from cosmos_policy_jax.data.t5 import load_t5_embeddings
from cosmos_policy_jax.layouts import SLOTS

_MAX_OPEN_FILES = 32


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for a mapping, ``cfg.key`` otherwise (ConfigDict sections, plain objects)."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


# Field type as written in the annotation (a string: this module and its subclasses' modules use
# ``from __future__ import annotations``) -> how a config or caller value is normalised.
_COERCE = {"int": int, "bool": bool, "float": float, "str": lambda v: os.fspath(v or ""), "int | None": _optional_int}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpisodeOptions:
    """Everything an :class:`EpisodeSource` is built from (the ``dataloader_*.dataset`` fields + seed)."""

    data_dir: str = ""
    rollout_data_dir: str = ""
    t5_text_embeddings_path: str = ""
    chunk_size: int
    final_image_size: int = 224
    use_image_aug: bool = True
    use_stronger_image_aug: bool = True
    use_wrist_images: bool = True
    use_third_person_images: bool = True
    use_proprio: bool = True
    normalize_proprio: bool = True
    normalize_actions: bool = True
    num_duplicates_per_image: int = 4
    demonstration_sampling_prob: float = 0.5
    success_rollout_sampling_prob: float = 0.5
    treat_success_rollouts_as_demos: bool = False
    treat_demos_as_success_rollouts: bool = False
    return_value_function_returns: bool = True
    gamma: float = 0.99
    action_dim: int | None = None
    proprio_dim: int | None = None
    text_dim: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            convert = _COERCE.get(str(field.type))
            if convert is not None:
                object.__setattr__(self, field.name, convert(getattr(self, field.name)))
        for name in ("chunk_size", "final_image_size", "num_duplicates_per_image"):
            if getattr(self, name) <= 0:
                raise DataError(f"dataset.{name} must be positive, got {getattr(self, name)}")
        if self.seed < 0:
            raise DataError(f"dataset seed must be non-negative, got {self.seed}")
        if not (self.use_wrist_images or self.use_third_person_images):
            raise DataError("dataset: at least one of use_wrist_images / use_third_person_images must be on")

    @classmethod
    def from_config(cls, dataset_cfg: Any, *, seed: int = 0, **overrides: Any) -> EpisodeOptions:
        """The options of a ``dataloader_*.dataset`` section (paths already expanded).

        Fields the section leaves unset (or None) keep their defaults; ``overrides`` win over both.
        """
        names = [f.name for f in dataclasses.fields(cls) if f.name != "seed"]
        values = {k: cfg_get(dataset_cfg, k) for k in names if cfg_get(dataset_cfg, k) is not None}
        values.update(overrides)
        return cls(**{**values, "seed": seed})


class EpisodeSource:
    """Shared reader: episodes, statistics, returns, epoch structure and ``get``.

    Subclasses say which cameras exist and how to read one demo file / one rollout file.
    """

    KIND: ClassVar[str] = ""
    OPTIONS: ClassVar[type[EpisodeOptions]] = EpisodeOptions
    # Current-camera frames in video order (the future frames use the same order).
    CAMERAS: ClassVar[tuple[str, ...]] = ()
    # Slots whose ``<slot>_latent_idx`` key appears in samples (the reference's key set).
    SAMPLE_SLOTS: ClassVar[tuple[str, ...]] = ()
    CAST_DEMOS_TO_FLOAT32: ClassVar[bool] = True

    def __init__(self, options: EpisodeOptions):
        self.options = options
        self.kind = self.KIND
        self._handles = OpenFiles(open_h5, _MAX_OPEN_FILES)
        self.cameras = self._active_cameras()
        self.layout = self._compute_layout()
        demos, rollouts = self._read_episodes()
        # Text embeddings for every instruction, checked before anything is written to disk.
        self.instructions = sorted({ep.command for ep in [*demos, *rollouts]})
        self.t5_embeddings = self._load_embeddings(options.text_dim)
        self._normalize_all(demos, rollouts)
        self._set_categories(demos, rollouts)
        self.epoch_structure: EpochStructure = self._epoch_structure()

    @classmethod
    def from_config(cls, dataset_cfg: Any, *, seed: int = 0, **overrides: Any) -> EpisodeSource:
        """Build from the ``dataloader_*.dataset`` config section (paths already expanded).

        ``overrides`` replace option fields (any field of ``cls.OPTIONS``).
        """
        return cls(cls.OPTIONS.from_config(dataset_cfg, seed=seed, **overrides))

    # ------------------------------------------------------------------ construction steps

    def _read_episodes(self) -> tuple[list[Episode], list[Episode]]:
        """Demonstrations (skipped when never sampled, as in the reference), then rollouts."""
        opts = self.options
        require_dir(opts.data_dir, "dataset.data_dir")
        demos: list[Episode] = self._load_demos() if opts.demonstration_sampling_prob > 0 else []
        self._check_dims(demos)
        # Rollouts: metadata + low-dimensional arrays; frames are read per sample.
        rollouts: list[Episode] = self._load_rollouts()
        self._check_dims(rollouts)
        return demos, rollouts

    def _normalize_all(self, demos: list[Episode], rollouts: list[Episode]) -> None:
        """Statistics over the demos' own arrays, then normalisation and returns."""
        opts = self.options
        actions, proprio = [e.actions for e in demos], [e.proprio for e in demos]
        self.statistics = stats_lib.load_or_compute_statistics(opts.data_dir, actions, proprio)
        for ep in demos:
            self._normalize(ep)
        if (opts.normalize_actions or opts.normalize_proprio) and demos:
            self.post_norm_statistics = stats_lib.load_or_compute_statistics(
                opts.data_dir,
                [e.actions for e in demos],
                [e.proprio for e in demos],
                filename=stats_lib.POST_NORM_STATS_FILE,
            )
        for ep in rollouts:
            self._normalize(ep)
        if opts.return_value_function_returns:
            for ep in [*demos, *rollouts]:
                ep.returns = monte_carlo_returns(ep.num_steps, ep.terminal_reward, opts.gamma)

    def _set_categories(self, demos: list[Episode], rollouts: list[Episode]) -> None:
        """The demo / success / failure lists and their step indexes."""
        if self.options.treat_demos_as_success_rollouts:
            rollouts = [dataclasses.replace(ep, success=True) for ep in demos] + rollouts
        if self.options.treat_success_rollouts_as_demos:
            demos = demos + [ep for ep in rollouts if ep.success]
        self.demos = demos
        self.rollouts = rollouts
        self._success_ids = [i for i, ep in enumerate(rollouts) if ep.success]
        self._failure_ids = [i for i, ep in enumerate(rollouts) if not ep.success]
        self._demo_steps = StepIndex([ep.num_steps for ep in demos])
        self._success_steps = StepIndex([rollouts[i].num_steps for i in self._success_ids])
        self._failure_steps = StepIndex([rollouts[i].num_steps for i in self._failure_ids])

    def _epoch_structure(self) -> EpochStructure:
        """Epoch structure; an empty dataset is an error."""
        structure = calculate_epoch_structure(
            self._demo_steps.total,
            self._success_steps.total,
            self._failure_steps.total,
            self.options.demonstration_sampling_prob,
            self.options.success_rollout_sampling_prob,
        )
        if structure.epoch_length == 0:
            raise DataError(
                f"dataset under {self.options.data_dir} has no samples (demo steps {self._demo_steps.total}, "
                f"rollout steps {self._success_steps.total + self._failure_steps.total})"
            )
        return structure

    def _active_cameras(self) -> tuple[str, ...]:
        keep = []
        for role in self.CAMERAS:
            if role.startswith("wrist") and not self.options.use_wrist_images:
                continue
            if role.startswith("primary") and not self.options.use_third_person_images:
                continue
            keep.append(role)
        return tuple(keep)

    def _compute_layout(self) -> dict[str, int]:
        """Latent index of every slot (-1 if unused): blank frame first, then the slots in video order."""
        layout = dict.fromkeys(SLOTS, -1)
        nxt = 1
        for when in ("current", "future"):
            if when == "future":
                layout["action"] = nxt
                nxt += 1
            if self.options.use_proprio:
                layout[f"{when}_proprio"] = nxt
                nxt += 1
            for role in self.cameras:
                layout[f"{when}_{CAMERA_SLOT[role]}"] = nxt
                nxt += 1
        if self.options.return_value_function_returns:
            layout["value"] = nxt
        return layout

    @property
    def state_t(self) -> int:
        """Number of latent frames of a sample."""
        return max(self.layout.values()) + 1

    @property
    def num_frames(self) -> int:
        """Number of pixel frames of a sample's video: one blank frame plus ``n`` per latent slot."""
        return 1 + self.options.num_duplicates_per_image * (self.state_t - 1)

    def _demo_files(self) -> list[str]:
        return find_hdf5_files(self.options.data_dir, what="dataset.data_dir")

    def _load_demos(self) -> list[Episode]:
        """Every demonstration episode (HDF5 readers: each demo file in path order)."""
        files = self._demo_files()
        if not files:
            raise DataError(f"no HDF5 files ({', '.join(HDF5_EXTENSIONS)}) under {self.options.data_dir}")
        return [ep for path in files for ep in self._read_demo_file(path)]

    def _load_rollouts(self) -> list[Episode]:
        """Every rollout episode (HDF5 readers: one per file under ``rollout_data_dir``, unreadable ones skipped)."""
        if not self.options.rollout_data_dir:
            return []
        found = (
            self._read_rollout_file(p)
            for p in find_hdf5_files(self.options.rollout_data_dir, what="dataset.rollout_data_dir")
        )
        return [ep for ep in found if ep is not None]

    def _read_demo_file(self, path: str) -> list[Episode]:
        raise NotImplementedError

    def _read_rollout_file(self, path: str) -> Episode | None:
        raise NotImplementedError

    def _finish_episode(
        self,
        path: str,
        label: str,
        f: h5py.File,
        cameras: dict[str, tuple[str, bool]],
        num_steps: int,
        actions: np.ndarray,
        proprio: np.ndarray,
        command: str,
        **extra: Any,
    ) -> Episode:
        """Consistency checks shared by every reader; returns the episode."""
        if num_steps <= 0:
            raise DataError(f"{path}: {label} has no frames")
        shapes = {}
        for role, (key, jpeg) in cameras.items():
            ds = f[key]
            if ds.shape[0] != num_steps:
                raise DataError(f"{path}: {key} has {ds.shape[0]} frames, expected {num_steps}")
            if not jpeg:
                shapes[key] = tuple(ds.shape[1:3])
            del role
        if len(set(shapes.values())) > 1:
            listing = ", ".join(f"{k} {h}x{w}" for k, (h, w) in shapes.items())
            raise DataError(f"{path}: {label} cameras have different image sizes ({listing})")
        for name, arr in (("actions", actions), ("proprio", proprio)):
            if arr.ndim != 2 or arr.shape[0] != num_steps:
                raise DataError(f"{path}: {label} {name} has shape {arr.shape}, expected ({num_steps}, D)")
            if arr.dtype.kind != "f":
                raise DataError(f"{path}: {label} {name} has dtype {arr.dtype}, expected floats")
        return Episode(path, cameras, num_steps, command, actions, proprio, label=label, **extra)

    def _check_dims(self, episodes: Sequence[Episode]) -> None:
        for name, want in (("actions", self.options.action_dim), ("proprio", self.options.proprio_dim)):
            if want is None:
                continue
            for ep in episodes:
                got = getattr(ep, name).shape[1]
                if got != int(want):
                    raise DataError(
                        f"{ep.path}: {ep.label} {name} have dimension {got}, but dataset.{name[:-1] if name == 'actions' else name}_dim is {want}"
                    )

    def _normalize(self, ep: Episode) -> None:
        if self.options.normalize_actions:
            ep.actions = stats_lib.normalize(ep.actions, self.statistics, "actions")
        if self.options.normalize_proprio:
            ep.proprio = stats_lib.normalize(ep.proprio, self.statistics, "proprio")

    def _load_embeddings(self, text_dim: int | None) -> dict[str, np.ndarray]:
        if not self.options.t5_text_embeddings_path:
            raise DataError("dataset.t5_text_embeddings_path is empty: the T5 embeddings file is required")
        table = load_t5_embeddings(self.options.t5_text_embeddings_path)
        path = self.options.t5_text_embeddings_path
        missing = [c for c in self.instructions if c not in table]
        if missing:
            raise DataError(f"{path}: no T5 embedding for instruction {missing[0]!r} ({len(missing)} missing)")
        # Kept in the file's dtype (bf16 in production, half the memory per worker); float32 per sample.
        embeddings = {c: table[c][0] if table[c].ndim == 3 else table[c] for c in self.instructions}
        shapes = {v.shape for v in embeddings.values()}
        if len(shapes) > 1:
            raise DataError(f"{path}: T5 embeddings have different shapes {sorted(shapes)}")
        if text_dim is not None and shapes and next(iter(shapes))[1] != int(text_dim):
            raise DataError(
                f"{path}: T5 embeddings have dimension {next(iter(shapes))[1]}, dataset.text_dim is {text_dim}"
            )
        return embeddings

    # ------------------------------------------------------------------ file handles

    def _file(self, path: str) -> h5py.File:
        return self._handles.get(path)

    def close(self) -> None:
        self._handles.close()

    def _frame(self, ep: Episode, role: str, step: int) -> np.ndarray:
        key, jpeg = ep.cameras[role]
        f = self._file(ep.path)
        try:
            data = f[key][step]
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{ep.path}: cannot read frame {step} of {key} ({first_line(e)})") from e
        if jpeg:
            return decode_jpeg(data, f"{ep.path}: {key}[{step}]")
        return np.asarray(data, dtype=np.uint8)

    # ------------------------------------------------------------------ sampling

    def __len__(self) -> int:
        return self.epoch_structure.epoch_length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index, epoch=0)

    def describe(self, index: int) -> dict[str, Any]:
        """Where an epoch index points: category, offsets, episode (load order), step and future step."""
        category, offset, step = self.epoch_structure.locate(operator.index(index))
        if category == "demo":
            episode, t = self._demo_steps(step)
            ep = self.demos[episode]
        else:
            ids, steps = (
                (self._success_ids, self._success_steps)
                if category == "success_rollout"
                else (self._failure_ids, self._failure_steps)
            )
            k, t = steps(step)
            episode = ids[k]
            ep = self.rollouts[episode]
        return dict(
            category=category,
            index_in_category=offset,
            step_after_wrap=step,
            episode=episode,
            t=t,
            future_t=min(t + self.options.chunk_size, ep.num_steps - 1),
            num_steps=ep.num_steps,
            is_jpeg=ep.is_jpeg,
        )

    def draw(self, index: int, epoch: int) -> tuple[float, transforms.AugParams | None]:
        """The sample's random draws: a uniform for the world-model choice, then augmentation parameters."""
        rng = np.random.default_rng([self.options.seed, int(epoch), int(index)])
        u = float(rng.random())
        aug = (
            transforms.draw_aug_params(rng, self.options.final_image_size, self.options.use_stronger_image_aug)
            if self.options.use_image_aug
            else None
        )
        return u, aug

    def get(
        self,
        index: int,
        epoch: int = 0,
        *,
        sample_type: str | None = None,
        aug_params: transforms.AugParams | None = None,
    ) -> dict[str, Any]:
        """The sample at ``index`` of epoch ``epoch``.

        ``sample_type`` forces the rollout choice ("world_model" / "value_function"; "demo" only for
        demo indices) and ``aug_params`` the augmentation (applied even when ``use_image_aug`` is off);
        otherwise both come from ``default_rng([seed, epoch, index])`` (no augmentation when
        ``use_image_aug`` is off).
        """
        index = operator.index(index)
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        where = self.describe(index)
        category = where["category"]
        ep = self.demos[where["episode"]] if category == "demo" else self.rollouts[where["episode"]]
        u, drawn_aug = self.draw(index, epoch)
        kind = self._sample_type(category, u, sample_type, index)
        aug = aug_params if aug_params is not None else drawn_aug  # explicit parameters always apply

        sample = self._inputs(ep, where["t"], where["future_t"], aug)
        sample.update(
            {
                "__key__": index,
                "rollout_data_mask": int(category != "demo"),
                "rollout_data_success_mask": int(category == "success_rollout"),
                "world_model_sample_mask": int(kind == "world_model"),
                "value_function_sample_mask": int(kind == "value_function"),
                "global_rollout_idx": -1 if category == "demo" else where["step_after_wrap"],
            }
        )
        sample.update(self._targets(ep, where["t"], where["future_t"]))
        return sample

    def _inputs(self, ep: Episode, t: int, future: int, aug: transforms.AugParams | None) -> dict[str, Any]:
        """Video, action chunk, text and proprio of one sample (the first keys of the reference's dict)."""
        opts = self.options
        size = opts.final_image_size
        return {
            "video": self._video(ep, t, future, aug),
            "actions": _action_chunk(ep.actions, t, opts.chunk_size),
            "t5_text_embeddings": self.t5_embeddings[ep.command].astype(np.float32),
            "t5_text_mask": np.ones(TEXT_MASK_LEN, dtype=np.int64),
            "fps": FPS,
            "padding_mask": np.zeros((1, size, size), dtype=np.float32),
            "image_size": np.full(4, size, dtype=np.float32),
            # Copies: a consumer writing into the sample must not change the episode.
            "proprio": ep.proprio[t].copy() if opts.use_proprio else np.zeros_like(ep.proprio[t]),
            "future_proprio": ep.proprio[future].copy() if opts.use_proprio else np.zeros_like(ep.proprio[future]),
        }

    def _targets(self, ep: Episode, t: int, future: int) -> dict[str, Any]:
        """Latent slot indices, the value target and the next chunk's action and value."""
        opts = self.options
        next_start = min(t + opts.chunk_size, ep.num_steps - 1)
        next_future = min(next_start + opts.chunk_size, ep.num_steps - 1)
        if opts.return_value_function_returns:
            value = np.float32(ep.returns[future])
            next_value = np.float32(ep.returns[next_future])
        else:
            value = next_value = np.float32(-100.0)
        out: dict[str, Any] = {}
        for slot in ("action", "value", *[s for s in SLOTS if s not in ("action", "value")]):
            if slot in self.SAMPLE_SLOTS:
                out[f"{slot}_latent_idx"] = self.layout[slot]
        out["value_function_return"] = value
        out["next_action_chunk"] = _action_chunk(ep.actions, next_start, opts.chunk_size)
        out["next_value_function_return"] = next_value
        return out

    def _sample_type(self, category: str, u: float, forced: str | None, index: int) -> str:
        if forced is not None:
            if forced not in SAMPLE_TYPES:
                raise ValueError(f"sample_type must be one of {SAMPLE_TYPES}, got {forced!r}")
            if (forced == "demo") != (category == "demo"):
                raise ValueError(f"sample_type {forced!r} does not fit index {index}, a {category} sample")
            if forced == "value_function" and not self.options.return_value_function_returns:
                raise ValueError("sample_type 'value_function' needs return_value_function_returns")
            return forced
        if category == "demo":
            return "demo"
        if not self.options.return_value_function_returns:
            return "world_model"
        return "world_model" if u < 0.5 else "value_function"

    def _video(self, ep: Episode, t: int, future: int, aug: transforms.AugParams | None) -> np.ndarray:
        """``(3, T, S, S)`` uint8: blank, then each slot's frame repeated ``num_duplicates_per_image`` times."""
        frames: dict[tuple[str, int], np.ndarray] = {}
        for role in self.cameras:
            for step in (t, future):
                if (role, step) not in frames:
                    frames[(role, step)] = self._frame(ep, role, step)
        shapes = {k: v.shape for k, v in frames.items()}
        if len(set(shapes.values())) > 1:
            listing = ", ".join(f"{ep.cameras[r][0]}[{s}] {shape}" for (r, s), shape in shapes.items())
            raise DataError(f"{ep.path}: frames of one sample have different sizes ({listing})")
        first = next(iter(frames.values()))
        if first.ndim != 3 or first.shape[-1] != 3:
            raise DataError(
                f"{ep.path}: {ep.cameras[self.cameras[0]][0]} frames have shape {first.shape}, expected (H, W, 3)"
            )

        # Unique frames (index 0 = black) and how many video frames each run covers.
        unique = [np.zeros_like(first)]
        runs: list[tuple[int, int]] = [(0, 1)]
        n = self.options.num_duplicates_per_image
        for when, step in (("current", t), ("future", future)):
            if when == "future":
                runs.append((0, n))  # action slot
            if self.options.use_proprio:
                runs.append((0, n))
            for role in self.cameras:
                unique.append(frames[(role, step)])
                runs.append((len(unique) - 1, n))
        if self.options.return_value_function_returns:
            runs.append((0, n))
        stack = transforms.pil_resize(np.stack(unique), self.options.final_image_size)
        chw = np.ascontiguousarray(np.moveaxis(stack, -1, 1))  # (N, 3, S, S)
        if aug is not None:
            chw = transforms.augment_frames(chw, aug)
        order = np.repeat(np.array([u for u, _ in runs]), np.array([r for _, r in runs]))
        return np.ascontiguousarray(np.moveaxis(chw[order], 0, 1))


def _action_chunk(actions: np.ndarray, start: int, chunk_size: int) -> np.ndarray:
    """``actions[start:start+chunk]``, padded by repeating the episode's last action."""
    chunk = actions[start : start + chunk_size]
    if chunk.shape[0] < chunk_size:
        pad = np.repeat(actions[-1:], chunk_size - chunk.shape[0], axis=0)
        chunk = np.concatenate([chunk, pad], axis=0)
    return np.array(chunk, copy=True)
