"""Random-access dataset sources reading the reference's on-disk formats (REFERENCE.md 6, 10, 12).

One source per robot family, sharing one base (:class:`EpisodeSource`):

* :class:`LiberoSource`: ``LIBERO-Cosmos-Policy`` demos (``data/demo_<n>`` groups, raw or JPEG images,
  instruction from the file name) and evaluation rollouts (one episode per file).
* :class:`RobocasaSource`: adds a second third-person camera (``current_image2`` / ``future_image2``).
* :class:`AlohaSource`: two wrist cameras (``current_wrist_image2`` / ``future_wrist_image2``), demos
  under ``train/`` or ``val/``, demos optionally reused as successful rollouts.

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
import io
import logging
import operator
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import h5py
import numpy as np
from PIL import Image

from cosmos_policy_jax.data import statistics as stats_lib
from cosmos_policy_jax.data import transforms
from cosmos_policy_jax.data.epoch import EpochStructure, StepIndex, calculate_epoch_structure
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.open_files import OpenFiles
from cosmos_policy_jax.data.returns import monte_carlo_returns
from cosmos_policy_jax.data.t5 import load_t5_embeddings
from cosmos_policy_jax.layouts import SLOTS

_log = logging.getLogger(__name__)

HDF5_EXTENSIONS = (".h5", ".hdf5", ".he5")
SAMPLE_TYPES = ("demo", "world_model", "value_function")
# Camera role -> slot name suffix.
_CAMERA_SLOT = {"wrist": "wrist_image", "wrist2": "wrist_image2", "primary": "image", "primary2": "image2"}
_FPS = 16
_TEXT_MASK_LEN = 512
_MAX_OPEN_FILES = 32


@dataclasses.dataclass
class Episode:
    """One episode: where its frames live and its (normalised) low-dimensional data."""

    path: str
    cameras: dict[str, tuple[str, bool]]  # role -> (dataset path in the file, stored as JPEG)
    num_steps: int
    command: str
    actions: np.ndarray
    proprio: np.ndarray
    success: bool = True
    terminal_reward: float = 1.0
    returns: np.ndarray | None = None
    label: str = ""  # group name, for messages

    @property
    def is_jpeg(self) -> bool:
        return any(jpeg for _, jpeg in self.cameras.values())


def require_dir(directory: str, what: str) -> None:
    """``DataError`` naming ``what`` unless ``directory`` is an existing directory."""
    if directory and os.path.exists(directory) and not os.path.isdir(directory):
        raise DataError(f"dataset directory {directory!r} is a file, not a directory ({what})")
    if not directory or not os.path.isdir(directory):
        raise DataError(f"dataset directory not found: {directory!r} ({what})")


def find_hdf5_files(directory: str, *, what: str = "data_dir", split: str | None = None) -> list[str]:
    """Every ``*.h5/.hdf5/.he5`` under ``directory`` (recursive, symlinks followed), sorted by path.

    ``split`` keeps only files with a path component equal to it (ALOHA's ``train`` / ``val``).
    """
    require_dir(directory, what)
    files = []
    for root, _dirs, names in os.walk(directory, followlinks=True):
        for name in names:
            if name.lower().endswith(HDF5_EXTENSIONS):
                path = os.path.join(root, name)
                if split is not None:
                    parts = os.path.normpath(os.path.relpath(path, directory)).split(os.sep)
                    if split not in parts:
                        continue
                files.append(path)
    return sorted(files)


def _open_h5(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: cannot open HDF5 file ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)


def _read_array(f: h5py.File, key: str, path: str) -> np.ndarray:
    if key not in f:
        raise DataError(f"{path}: missing required dataset {key!r}")
    try:
        return f[key][()]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: cannot read dataset {key!r} ({_first_line(e)})") from e


def _read_numbers(f: h5py.File, key: str, path: str) -> np.ndarray:
    """A numeric dataset (actions, proprio): strings or other types and NaN/inf values are refused,
    naming the file, the dataset and the first bad index (a NaN action would only surface later as a
    diverging loss that names nothing)."""
    arr = _read_array(f, key, path)
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: dataset {key!r} holds {arr.dtype} values, expected numbers")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise DataError(f"{path}: dataset {key!r} has a non-finite value ({arr[first]}) at index {first}")
    return arr


def _decode_jpeg(data: np.ndarray, where: str) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(np.asarray(data).tobytes()))
        img.load()
    except Exception as e:
        raise DataError(f"{where}: not a decodable JPEG ({_first_line(e)})") from e
    if img.mode != "RGB":
        raise DataError(f"{where}: JPEG frame has mode {img.mode}, expected RGB")
    return np.asarray(img, dtype=np.uint8)


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


class EpisodeSource:
    """Shared reader: episodes, statistics, returns, epoch structure and ``get``.

    Subclasses say which cameras exist and how to read one demo file / one rollout file.
    """

    KIND: ClassVar[str] = ""
    # Current-camera frames in video order (the future frames use the same order).
    CAMERAS: ClassVar[tuple[str, ...]] = ()
    # Slots whose ``<slot>_latent_idx`` key appears in samples (the reference's key set).
    SAMPLE_SLOTS: ClassVar[tuple[str, ...]] = ()
    CAST_DEMOS_TO_FLOAT32: ClassVar[bool] = True

    def __init__(
        self,
        data_dir: str,
        rollout_data_dir: str = "",
        t5_text_embeddings_path: str = "",
        *,
        chunk_size: int,
        final_image_size: int = 224,
        use_image_aug: bool = True,
        use_stronger_image_aug: bool = True,
        use_wrist_images: bool = True,
        use_third_person_images: bool = True,
        use_proprio: bool = True,
        normalize_proprio: bool = True,
        normalize_actions: bool = True,
        num_duplicates_per_image: int = 4,
        demonstration_sampling_prob: float = 0.5,
        success_rollout_sampling_prob: float = 0.5,
        treat_success_rollouts_as_demos: bool = False,
        treat_demos_as_success_rollouts: bool = False,
        return_value_function_returns: bool = True,
        gamma: float = 0.99,
        action_dim: int | None = None,
        proprio_dim: int | None = None,
        text_dim: int | None = None,
        seed: int = 0,
    ):
        for name, value in (
            ("chunk_size", chunk_size),
            ("final_image_size", final_image_size),
            ("num_duplicates_per_image", num_duplicates_per_image),
        ):
            if int(value) <= 0:
                raise DataError(f"dataset.{name} must be positive, got {value}")
        if int(seed) < 0:
            raise DataError(f"dataset seed must be non-negative, got {seed}")
        if not (use_wrist_images or use_third_person_images):
            raise DataError("dataset: at least one of use_wrist_images / use_third_person_images must be on")
        self.kind = self.KIND
        self.data_dir = os.fspath(data_dir)
        self.rollout_data_dir = os.fspath(rollout_data_dir or "")
        self.t5_text_embeddings_path = os.fspath(t5_text_embeddings_path or "")
        self.chunk_size = int(chunk_size)
        self.final_image_size = int(final_image_size)
        self.use_image_aug = bool(use_image_aug)
        self.use_stronger_image_aug = bool(use_stronger_image_aug)
        self.use_wrist_images = bool(use_wrist_images)
        self.use_third_person_images = bool(use_third_person_images)
        self.use_proprio = bool(use_proprio)
        self.normalize_proprio = bool(normalize_proprio)
        self.normalize_actions = bool(normalize_actions)
        self.num_duplicates_per_image = int(num_duplicates_per_image)
        self.demonstration_sampling_prob = float(demonstration_sampling_prob)
        self.success_rollout_sampling_prob = float(success_rollout_sampling_prob)
        self.treat_success_rollouts_as_demos = bool(treat_success_rollouts_as_demos)
        self.treat_demos_as_success_rollouts = bool(treat_demos_as_success_rollouts)
        self.return_value_function_returns = bool(return_value_function_returns)
        self.gamma = float(gamma)
        self.action_dim = action_dim
        self.proprio_dim = proprio_dim
        self.seed = int(seed)
        self._handles = OpenFiles(_open_h5, _MAX_OPEN_FILES)

        self.cameras = self._active_cameras()
        self.layout = self._compute_layout()

        # 1. Demonstrations (skipped entirely when they are never sampled, as in the reference).
        require_dir(self.data_dir, "dataset.data_dir")
        demos: list[Episode] = self._load_demos() if self.demonstration_sampling_prob > 0 else []
        self._check_dims(demos)

        # 2. Rollouts (metadata + low-dimensional arrays; frames are read per sample).
        rollouts: list[Episode] = self._load_rollouts()
        self._check_dims(rollouts)

        # 3. Text embeddings for every instruction, checked before anything is written to disk.
        self.instructions = sorted({ep.command for ep in [*demos, *rollouts]})
        self.t5_embeddings = self._load_embeddings(text_dim)

        # 4. Statistics over the demos' own arrays, then normalisation (REFERENCE.md 6.2).
        self.statistics = stats_lib.load_or_compute_statistics(
            self.data_dir, [e.actions for e in demos], [e.proprio for e in demos]
        )
        for ep in demos:
            self._normalize(ep)
        if (self.normalize_actions or self.normalize_proprio) and demos:
            self.post_norm_statistics = stats_lib.load_or_compute_statistics(
                self.data_dir,
                [e.actions for e in demos],
                [e.proprio for e in demos],
                filename=stats_lib.POST_NORM_STATS_FILE,
            )
        for ep in rollouts:
            self._normalize(ep)

        # 5. Returns, then the category lists.
        for ep in [*demos, *rollouts]:
            if self.return_value_function_returns:
                ep.returns = monte_carlo_returns(ep.num_steps, ep.terminal_reward, self.gamma)
        if self.treat_demos_as_success_rollouts:
            rollouts = [dataclasses.replace(ep, success=True) for ep in demos] + rollouts
        if self.treat_success_rollouts_as_demos:
            demos = demos + [ep for ep in rollouts if ep.success]
        self.demos = demos
        self.rollouts = rollouts
        self._success_ids = [i for i, ep in enumerate(rollouts) if ep.success]
        self._failure_ids = [i for i, ep in enumerate(rollouts) if not ep.success]
        self._demo_steps = StepIndex([ep.num_steps for ep in demos])
        self._success_steps = StepIndex([rollouts[i].num_steps for i in self._success_ids])
        self._failure_steps = StepIndex([rollouts[i].num_steps for i in self._failure_ids])

        # 6. Epoch structure (REFERENCE.md 6.4).
        self.epoch_structure: EpochStructure = calculate_epoch_structure(
            self._demo_steps.total,
            self._success_steps.total,
            self._failure_steps.total,
            self.demonstration_sampling_prob,
            self.success_rollout_sampling_prob,
        )
        if self.epoch_structure.epoch_length == 0:
            raise DataError(
                f"dataset under {self.data_dir} has no samples (demo steps {self._demo_steps.total}, "
                f"rollout steps {self._success_steps.total + self._failure_steps.total})"
            )

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_config(cls, dataset_cfg: Any, *, seed: int = 0, **overrides: Any) -> EpisodeSource:
        """Build from the ``dataloader_*.dataset`` config section (paths already expanded)."""
        keys = (
            "chunk_size",
            "final_image_size",
            "use_image_aug",
            "use_stronger_image_aug",
            "use_wrist_images",
            "use_third_person_images",
            "use_proprio",
            "normalize_proprio",
            "normalize_actions",
            "num_duplicates_per_image",
            "demonstration_sampling_prob",
            "success_rollout_sampling_prob",
            "treat_success_rollouts_as_demos",
            "treat_demos_as_success_rollouts",
            "return_value_function_returns",
            "gamma",
            "action_dim",
            "proprio_dim",
            "text_dim",
        )
        kwargs = {k: _cfg_get(dataset_cfg, k) for k in keys if _cfg_get(dataset_cfg, k) is not None}
        kwargs.update(overrides)
        return cls(
            _cfg_get(dataset_cfg, "data_dir", ""),
            _cfg_get(dataset_cfg, "rollout_data_dir", "") or "",
            _cfg_get(dataset_cfg, "t5_text_embeddings_path", "") or "",
            seed=seed,
            **kwargs,
        )

    def _active_cameras(self) -> tuple[str, ...]:
        keep = []
        for role in self.CAMERAS:
            if role.startswith("wrist") and not self.use_wrist_images:
                continue
            if role.startswith("primary") and not self.use_third_person_images:
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
            if self.use_proprio:
                layout[f"{when}_proprio"] = nxt
                nxt += 1
            for role in self.cameras:
                layout[f"{when}_{_CAMERA_SLOT[role]}"] = nxt
                nxt += 1
        if self.return_value_function_returns:
            layout["value"] = nxt
        return layout

    @property
    def state_t(self) -> int:
        """Number of latent frames of a sample."""
        return max(self.layout.values()) + 1

    @property
    def num_frames(self) -> int:
        """Number of pixel frames of a sample's video: one blank frame plus ``n`` per latent slot."""
        return 1 + self.num_duplicates_per_image * (self.state_t - 1)

    def _demo_files(self) -> list[str]:
        return find_hdf5_files(self.data_dir, what="dataset.data_dir")

    def _load_demos(self) -> list[Episode]:
        """Every demonstration episode (HDF5 readers: each demo file in path order)."""
        files = self._demo_files()
        if not files:
            raise DataError(f"no HDF5 files ({', '.join(HDF5_EXTENSIONS)}) under {self.data_dir}")
        return [ep for path in files for ep in self._read_demo_file(path)]

    def _load_rollouts(self) -> list[Episode]:
        """Every rollout episode (HDF5 readers: one per file under ``rollout_data_dir``, unreadable ones skipped)."""
        if not self.rollout_data_dir:
            return []
        found = (
            self._read_rollout_file(p) for p in find_hdf5_files(self.rollout_data_dir, what="dataset.rollout_data_dir")
        )
        return [ep for ep in found if ep is not None]

    def _read_demo_file(self, path: str) -> list[Episode]:
        raise NotImplementedError

    def _read_rollout_file(self, path: str) -> Episode | None:
        raise NotImplementedError

    def _camera_entry(
        self, f: h5py.File, path: str, label: str, role: str, raw_key: str, jpeg_key: str, prefer_jpeg: bool | None
    ) -> tuple[str, bool]:
        """Dataset of one camera: raw ``(T,H,W,3)`` uint8 or variable-length JPEG bytes."""
        order = [(jpeg_key, True), (raw_key, False)] if prefer_jpeg else [(raw_key, False), (jpeg_key, True)]
        for key, jpeg in order:
            if key in f:
                ds = f[key]
                if not isinstance(ds, h5py.Dataset):
                    break
                if not jpeg and (ds.ndim != 4 or ds.shape[-1] != 3 or ds.dtype != np.uint8):
                    raise DataError(
                        f"{path}: {key} has shape {ds.shape} and dtype {ds.dtype}, expected (T, H, W, 3) uint8 images"
                    )
                if jpeg and ds.ndim != 1:
                    raise DataError(f"{path}: {key} has shape {ds.shape}, expected one JPEG byte string per frame")
                return key, jpeg
        raise DataError(f"{path}: {label} has no {role} camera dataset ({raw_key!r} or {jpeg_key!r})")

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
        for name, want in (("actions", self.action_dim), ("proprio", self.proprio_dim)):
            if want is None:
                continue
            for ep in episodes:
                got = getattr(ep, name).shape[1]
                if got != int(want):
                    raise DataError(
                        f"{ep.path}: {ep.label} {name} have dimension {got}, but dataset.{name[:-1] if name == 'actions' else name}_dim is {want}"
                    )

    def _normalize(self, ep: Episode) -> None:
        if self.normalize_actions:
            ep.actions = stats_lib.normalize(ep.actions, self.statistics, "actions")
        if self.normalize_proprio:
            ep.proprio = stats_lib.normalize(ep.proprio, self.statistics, "proprio")

    def _load_embeddings(self, text_dim: int | None) -> dict[str, np.ndarray]:
        if not self.t5_text_embeddings_path:
            raise DataError("dataset.t5_text_embeddings_path is empty: the T5 embeddings file is required")
        table = load_t5_embeddings(self.t5_text_embeddings_path)
        path = self.t5_text_embeddings_path
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
            raise DataError(f"{ep.path}: cannot read frame {step} of {key} ({_first_line(e)})") from e
        if jpeg:
            return _decode_jpeg(data, f"{ep.path}: {key}[{step}]")
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
            future_t=min(t + self.chunk_size, ep.num_steps - 1),
            num_steps=ep.num_steps,
            is_jpeg=ep.is_jpeg,
        )

    def draw(self, index: int, epoch: int) -> tuple[float, transforms.AugParams | None]:
        """The sample's random draws: a uniform for the world-model choice, then augmentation parameters."""
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        u = float(rng.random())
        aug = (
            transforms.draw_aug_params(rng, self.final_image_size, self.use_stronger_image_aug)
            if self.use_image_aug
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
        """The sample at ``index`` of epoch ``epoch`` (REFERENCE.md 6.5).

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
        if category == "demo":
            ep = self.demos[where["episode"]]
            global_rollout_idx = -1
        else:
            ep = self.rollouts[where["episode"]]
            global_rollout_idx = where["step_after_wrap"]
        t, future = where["t"], where["future_t"]

        u, drawn_aug = self.draw(index, epoch)
        kind = self._sample_type(category, u, sample_type, index)
        aug = aug_params if aug_params is not None else drawn_aug  # explicit parameters always apply

        video = self._video(ep, t, future, aug)
        actions = _action_chunk(ep.actions, t, self.chunk_size)
        next_start = min(t + self.chunk_size, ep.num_steps - 1)
        next_future = min(next_start + self.chunk_size, ep.num_steps - 1)
        if self.return_value_function_returns:
            value = np.float32(ep.returns[future])
            next_value = np.float32(ep.returns[next_future])
        else:
            value = next_value = np.float32(-100.0)
        size = self.final_image_size
        sample: dict[str, Any] = {
            "video": video,
            "actions": actions,
            "t5_text_embeddings": self.t5_embeddings[ep.command].astype(np.float32),
            "t5_text_mask": np.ones(_TEXT_MASK_LEN, dtype=np.int64),
            "fps": _FPS,
            "padding_mask": np.zeros((1, size, size), dtype=np.float32),
            "image_size": np.full(4, size, dtype=np.float32),
            # Copies: a consumer writing into the sample must not change the episode.
            "proprio": ep.proprio[t].copy() if self.use_proprio else np.zeros_like(ep.proprio[t]),
            "future_proprio": ep.proprio[future].copy() if self.use_proprio else np.zeros_like(ep.proprio[future]),
            "__key__": index,
            "rollout_data_mask": int(category != "demo"),
            "rollout_data_success_mask": int(category == "success_rollout"),
            "world_model_sample_mask": int(kind == "world_model"),
            "value_function_sample_mask": int(kind == "value_function"),
            "global_rollout_idx": global_rollout_idx,
        }
        for slot in ("action", "value", *[s for s in SLOTS if s not in ("action", "value")]):
            if slot in self.SAMPLE_SLOTS:
                sample[f"{slot}_latent_idx"] = self.layout[slot]
        sample["value_function_return"] = value
        sample["next_action_chunk"] = _action_chunk(ep.actions, next_start, self.chunk_size)
        sample["next_value_function_return"] = next_value
        return sample

    def _sample_type(self, category: str, u: float, forced: str | None, index: int) -> str:
        if forced is not None:
            if forced not in SAMPLE_TYPES:
                raise ValueError(f"sample_type must be one of {SAMPLE_TYPES}, got {forced!r}")
            if (forced == "demo") != (category == "demo"):
                raise ValueError(f"sample_type {forced!r} does not fit index {index}, a {category} sample")
            if forced == "value_function" and not self.return_value_function_returns:
                raise ValueError("sample_type 'value_function' needs return_value_function_returns")
            return forced
        if category == "demo":
            return "demo"
        if not self.return_value_function_returns:
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
        n = self.num_duplicates_per_image
        for when, step in (("current", t), ("future", future)):
            if when == "future":
                runs.append((0, n))  # action slot
            if self.use_proprio:
                runs.append((0, n))
            for role in self.cameras:
                unique.append(frames[(role, step)])
                runs.append((len(unique) - 1, n))
        if self.return_value_function_returns:
            runs.append((0, n))
        stack = transforms.pil_resize(np.stack(unique), self.final_image_size)
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


_DEMO_KEY = re.compile(r"^demo_(\d+)$")


def libero_instruction(path: str) -> str:
    """Instruction of a LIBERO demo file: basename minus ``_demo.hdf5``, words after the last ``SCENE`` token."""
    words = os.path.basename(path)[:-10].split("_")
    kept: list[str] = []
    for w in words:
        if "SCENE" in w:
            kept = []
            continue
        kept.append(w)
    return " ".join(kept)


class _DemoGroupReader(EpisodeSource):
    """Demo files holding ``data/demo_<n>`` groups (LIBERO, RoboCasa)."""

    # role -> (raw dataset, JPEG dataset) inside ``data/demo_<n>``; the first role gives the step count.
    DEMO_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {}
    ROLLOUT_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {}

    def _demo_command(self, path: str, group: h5py.Group, label: str) -> str:
        raise NotImplementedError

    def _rollout_command(self, path: str, f: h5py.File) -> str:
        raise NotImplementedError

    def _slice_actions(self, actions: np.ndarray) -> np.ndarray:
        return actions

    def _read_demo_file(self, path: str) -> list[Episode]:
        episodes = []
        with _open_h5(path) as f:
            if "data" not in f or not isinstance(f["data"], h5py.Group):
                raise DataError(f"{path}: no 'data' group (expected data/demo_<n> episodes)")
            names = [k for k in f["data"] if _DEMO_KEY.match(k)]
            for name in sorted(names, key=lambda k: int(_DEMO_KEY.match(k).group(1))):
                label = f"data/{name}"
                group = f[label]
                count_role = next(iter(self.DEMO_CAMERAS))
                roles = dict.fromkeys([count_role, *self.cameras])
                cameras = {}
                for role in roles:
                    raw, jpeg = self.DEMO_CAMERAS[role]
                    key, is_jpeg = self._camera_entry(f, path, label, role, f"{label}/{raw}", f"{label}/{jpeg}", None)
                    cameras[role] = (key, is_jpeg)
                num_steps = int(f[cameras[count_role][0]].shape[0])
                cameras = {r: cameras[r] for r in self.cameras}
                actions = self._slice_actions(_read_numbers(f, f"{label}/actions", path))
                proprio = _read_numbers(f, f"{label}/robot_states", path)
                if self.CAST_DEMOS_TO_FLOAT32:
                    actions, proprio = actions.astype(np.float32), proprio.astype(np.float32)
                command = self._demo_command(path, group, label)
                episodes.append(self._finish_episode(path, label, f, cameras, num_steps, actions, proprio, command))
        if not episodes:
            raise DataError(f"{path}: no data/demo_<n> episodes")
        return episodes

    def _read_rollout_file(self, path: str) -> Episode | None:
        with _open_h5(path) as f:
            count_role = next(iter(self.ROLLOUT_CAMERAS))
            raw, jpeg = self.ROLLOUT_CAMERAS[count_role]
            # JPEG or raw is decided by the primary camera alone (REFERENCE.md 12).
            if raw in f:
                prefer_jpeg = False
            elif jpeg in f:
                prefer_jpeg = True
            else:
                raise DataError(f"{path}: rollout file has neither {raw!r} nor {jpeg!r}")
            cameras = {}
            for role in dict.fromkeys([count_role, *self.cameras]):
                r_key, j_key = self.ROLLOUT_CAMERAS[role]
                key = j_key if prefer_jpeg else r_key
                if key not in f:
                    raise DataError(f"{path}: missing required dataset {key!r}")
                cameras[role] = self._camera_entry(f, path, "rollout", role, r_key, j_key, prefer_jpeg)
            num_steps = int(f[cameras[count_role][0]].shape[0])
            cameras = {r: cameras[r] for r in self.cameras}
            actions = self._slice_actions(_read_numbers(f, "actions", path)).astype(np.float32)
            proprio = _read_numbers(f, "proprio", path).astype(np.float32)
            command = self._rollout_command(path, f)
            success = bool(f.attrs.get("success", False))
            return self._finish_episode(
                path, "rollout", f, cameras, num_steps, actions, proprio, command,
                success=success, terminal_reward=1.0 if success else 0.0,
            )  # fmt: skip


class LiberoSource(_DemoGroupReader):
    """LIBERO (REFERENCE.md 6): wrist + primary camera, 9 latent frames with all flags on."""

    KIND = "libero"
    CAMERAS = ("wrist", "primary")
    SAMPLE_SLOTS = (
        "action",
        "value",
        "current_proprio",
        "current_wrist_image",
        "current_image",
        "future_proprio",
        "future_wrist_image",
        "future_image",
    )
    DEMO_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {
        "primary": ("obs/agentview_rgb", "obs/agentview_rgb_jpeg"),
        "wrist": ("obs/eye_in_hand_rgb", "obs/eye_in_hand_rgb_jpeg"),
    }
    ROLLOUT_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {
        "primary": ("primary_images", "primary_images_jpeg"),
        "wrist": ("wrist_images", "wrist_images_jpeg"),
    }

    def _demo_command(self, path: str, group: h5py.Group, label: str) -> str:
        return libero_instruction(path)

    def _rollout_command(self, path: str, f: h5py.File) -> str:
        return _attr_str(f.attrs.get("task_description", ""))


class RobocasaSource(_DemoGroupReader):
    """RoboCasa (REFERENCE.md 10): a second third-person camera; actions cut to ``action_dim`` (7)."""

    KIND = "robocasa"
    CAMERAS = ("wrist", "primary", "primary2")
    SAMPLE_SLOTS = (*LiberoSource.SAMPLE_SLOTS, "current_image2", "future_image2")
    DEMO_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {
        "primary": ("obs/robot0_agentview_left_rgb", "obs/robot0_agentview_left_rgb_jpeg"),
        "primary2": ("obs/robot0_agentview_right_rgb", "obs/robot0_agentview_right_rgb_jpeg"),
        "wrist": ("obs/robot0_eye_in_hand_rgb", "obs/robot0_eye_in_hand_rgb_jpeg"),
    }
    ROLLOUT_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {
        "primary": ("primary_images", "primary_images_jpeg"),
        "primary2": ("secondary_images", "secondary_images_jpeg"),
        "wrist": ("wrist_images", "wrist_images_jpeg"),
    }

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("action_dim", 7)
        super().__init__(*args, **kwargs)

    def _slice_actions(self, actions: np.ndarray) -> np.ndarray:
        # The full RoboCasa action has 12 dims; the last ones drive the mobile base and are unused.
        return actions[:, : int(self.action_dim)] if actions.ndim == 2 else actions

    def _demo_command(self, path: str, group: h5py.Group, label: str) -> str:
        if "task_description" not in group.attrs:
            raise DataError(f"{path}: {label} has no 'task_description' attribute")
        return _attr_str(group.attrs["task_description"])

    def _rollout_command(self, path: str, f: h5py.File) -> str:
        if "task_description" not in f.attrs:
            raise DataError(f"{path}: rollout file has no 'task_description' attribute")
        return _attr_str(f.attrs["task_description"])


# ALOHA demo folders name their task; the reference maps them to instructions by substring.
_ALOHA_TASKS = (
    ("fold_shirt", "fold shirt"),
    ("candies_in_bowl", "put candies in bowl"),
    ("candy_in_bag", "put candy in bag"),
    ("flatten_shirt", "flatten shirt"),
    ("brown_chicken_wing_on_plate", "put brown chicken wing on plate"),
    ("purple_eggplant_on_plate", "put purple eggplant on plate"),
)


def aloha_instruction(path: str, attrs: Mapping[str, Any] | None = None) -> str:
    """Instruction of an ALOHA episode: its ``task_description`` attribute, else its task folder's name."""
    if attrs is not None and _attr_str(attrs.get("task_description", "")):
        return _attr_str(attrs["task_description"])
    folder = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    for token, instruction in _ALOHA_TASKS:
        if token in folder:
            return instruction
    raise DataError(f"{path}: no 'task_description' attribute and task folder {folder!r} is not a known ALOHA task")


class AlohaSource(EpisodeSource):
    """ALOHA (REFERENCE.md 10): left/right wrist + top camera, 14-dim actions and proprio.

    Demo files ``.../<task>/<split>/episode_*.hdf5`` hold ``observations/images/cam_{high,left_wrist,
    right_wrist}``, ``observations/qpos`` and ``action``; only files under a ``split`` folder
    (``train`` by default, ``val`` for validation, None for all) are read. Rollout files hold the
    same raw layout, or top-level JPEG datasets (``primary_images_jpeg``, ``wrist_left_images_jpeg``
    (or ``wrist_images_jpeg``), ``wrist_right_images_jpeg``), attributes ``success`` and optionally
    ``success_score`` (terminal reward) and ``task_description``. Rollouts whose frame count differs
    from their action count are skipped with a warning, as in the reference. MP4-backed episodes are
    not supported.
    """

    KIND = "aloha"
    CAMERAS = ("wrist", "wrist2", "primary")
    SAMPLE_SLOTS = (*LiberoSource.SAMPLE_SLOTS, "current_wrist_image2", "future_wrist_image2")
    CAST_DEMOS_TO_FLOAT32 = False
    RAW_CAMERAS: ClassVar[dict[str, str]] = {
        "primary": "observations/images/cam_high",
        "wrist": "observations/images/cam_left_wrist",
        "wrist2": "observations/images/cam_right_wrist",
    }
    JPEG_CAMERAS: ClassVar[dict[str, tuple[str, ...]]] = {
        "primary": ("primary_images_jpeg",),
        "wrist": ("wrist_left_images_jpeg", "wrist_images_jpeg"),
        "wrist2": ("wrist_right_images_jpeg",),
    }

    def __init__(self, *args: Any, split: str | None = "train", use_jpeg_for_rollouts: bool = False, **kwargs: Any):
        # The reference's ALOHA dataset always uses all three cameras.
        kwargs["use_wrist_images"] = True
        kwargs["use_third_person_images"] = True
        self.split = split
        # As the reference: JPEG rollout datasets are read only when asked for (else the raw frames).
        self.use_jpeg_for_rollouts = bool(use_jpeg_for_rollouts)
        super().__init__(*args, **kwargs)

    @classmethod
    def from_config(cls, dataset_cfg: Any, *, seed: int = 0, **overrides: Any) -> EpisodeSource:
        """As the base, plus an optional ``split`` field ("train" / "val"; "" for all demo files)."""
        split = _cfg_get(dataset_cfg, "split")
        if split is not None:
            overrides.setdefault("split", split or None)
        if _cfg_get(dataset_cfg, "use_jpeg_for_rollouts") is not None:
            overrides.setdefault("use_jpeg_for_rollouts", bool(_cfg_get(dataset_cfg, "use_jpeg_for_rollouts")))
        return super().from_config(dataset_cfg, seed=seed, **overrides)

    def _demo_files(self) -> list[str]:
        return find_hdf5_files(self.data_dir, what="dataset.data_dir", split=self.split)

    def _raw_episode(self, f: h5py.File, path: str, label: str) -> tuple[dict, int]:
        if "observations/video_paths" in f and "observations/images" not in f:
            raise DataError(f"{path}: MP4-backed episodes are not supported; store the frames in the HDF5 file")
        cameras = {}
        for role in self.cameras:
            key = self.RAW_CAMERAS[role]
            if key not in f:
                raise DataError(f"{path}: missing required dataset {key!r}")
            cameras[role] = self._camera_entry(f, path, label, role, key, key + "_jpeg", False)
        return cameras, int(f[self.RAW_CAMERAS["primary"]].shape[0])

    def _read_demo_file(self, path: str) -> list[Episode]:
        with _open_h5(path) as f:
            cameras, num_steps = self._raw_episode(f, path, "demo")
            actions = _read_numbers(f, "action", path)
            proprio = _read_numbers(f, "observations/qpos", path)
            command = aloha_instruction(path)  # the reference: always the task folder's name
            return [self._finish_episode(path, "demo", f, cameras, num_steps, actions, proprio, command)]

    def _read_rollout_file(self, path: str) -> Episode | None:
        with _open_h5(path) as f:
            jpeg = {role: next((k for k in keys if k in f), None) for role, keys in self.JPEG_CAMERAS.items()}
            if jpeg["primary"] is not None and not self.use_jpeg_for_rollouts and self.RAW_CAMERAS["primary"] not in f:
                raise DataError(f"{path}: JPEG-only rollout; set dataset.use_jpeg_for_rollouts=True to read it")
            if jpeg["primary"] is not None and self.use_jpeg_for_rollouts:
                missing = [role for role, key in jpeg.items() if key is None]
                if missing:
                    names = " / ".join(self.JPEG_CAMERAS[missing[0]])
                    raise DataError(f"{path}: JPEG rollout is missing the {missing[0]} camera ({names})")
                cameras = {
                    role: self._camera_entry(f, path, "rollout", role, "", jpeg[role], True) for role in self.cameras
                }
                num_steps = int(f[jpeg["primary"]].shape[0])
            else:
                cameras, num_steps = self._raw_episode(f, path, "rollout")
            actions = _read_numbers(f, "action", path).astype(np.float32)
            proprio = _read_numbers(f, "observations/qpos", path).astype(np.float32)
            if actions.shape[0] != num_steps:
                _log.warning("%s: %d frames but %d actions; skipping this rollout", path, num_steps, actions.shape[0])
                return None
            success = bool(f.attrs.get("success", False))
            score = f.attrs.get("success_score")
            try:
                terminal = float(score) if score is not None else (1.0 if success else 0.0)
            except (TypeError, ValueError):
                terminal = 1.0 if success else 0.0
            command = aloha_instruction(path, f.attrs)
            return self._finish_episode(
                path, "rollout", f, cameras, num_steps, actions, proprio, command,
                success=success, terminal_reward=terminal,
            )  # fmt: skip


SOURCES: dict[str, type[EpisodeSource]] = {
    "libero": LiberoSource,
    "robocasa": RobocasaSource,
    "aloha": AlohaSource,
}


def make_source(dataset_cfg: Any, *, seed: int = 0, **overrides: Any) -> EpisodeSource:
    """The source for ``dataset_cfg.kind`` (libero / robocasa / aloha), built from the config section."""
    kind = _cfg_get(dataset_cfg, "kind", "libero")
    if kind not in SOURCES:
        raise DataError(f"dataset.kind {kind!r} has no file reader; choose one of {', '.join(SOURCES)}")
    return SOURCES[kind].from_config(dataset_cfg, seed=seed, **overrides)


def list_instructions(kind: str, data_dir: str, rollout_data_dir: str = "", *, split: str | None = None) -> list[str]:
    """Sorted unique instructions of a dataset's demos and rollouts (for computing T5 embeddings)."""
    if kind not in SOURCES:
        raise DataError(f"dataset kind {kind!r} has no file reader; choose one of {', '.join(SOURCES)}")
    found: set[str] = set()
    for path in find_hdf5_files(data_dir, what="data_dir", split=split if kind == "aloha" else None):
        with _open_h5(path) as f:
            if kind == "libero":
                found.add(libero_instruction(path))
            elif kind == "robocasa":
                for name in f.get("data", {}):
                    found.add(_attr_str(f[f"data/{name}"].attrs.get("task_description", "")))
            else:
                found.add(aloha_instruction(path, f.attrs))
    if rollout_data_dir:
        for path in find_hdf5_files(rollout_data_dir, what="rollout_data_dir"):
            with _open_h5(path) as f:
                found.add(
                    aloha_instruction(path, f.attrs)
                    if kind == "aloha"
                    else _attr_str(f.attrs.get("task_description", ""))
                )
    return sorted(found)
