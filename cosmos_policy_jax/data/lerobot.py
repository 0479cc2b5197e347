"""Local LeRobot datasets (format v3.0 and v2.1) as a Cosmos Policy source (pyarrow + PyAV, no PyTorch).

Formats (as ``lerobot`` writes them; ``meta/info.json:codebase_version`` says which):

* **v3.0** (lerobot >= 0.4): ``meta/episodes/chunk-*/file-*.parquet`` (one row per episode: length,
  tasks, which data file and which span of which video file holds it), ``meta/tasks.parquet``,
  ``data/chunk-*/file-*.parquet`` (many episodes per file), ``videos/<camera>/chunk-*/file-*.mp4``
  (many episodes per file, each starting at its ``from_timestamp``).
* **v2.1** (lerobot 0.1-0.3): ``meta/episodes.jsonl``, ``meta/tasks.jsonl``, one parquet file per
  episode (``data/chunk-XXX/episode_XXXXXX.parquet``) and one mp4 per episode and camera.

:class:`LeRobotDataset` reads the metadata and the low-dimensional columns (every parquet file read
once, only the needed columns, values bit-exact). :class:`LeRobotSource` maps the user's features onto
the policy's slots (``dataset.lerobot`` in the config): cameras to primary / primary2 / wrist / wrist2
(which picks the LIBERO-, RoboCasa- or ALOHA-like latent layout), the state and action columns, and an
optional per-frame success flag: an episode whose flag is false on its last frame is a failed
rollout, the others are demonstrations. An optional second LeRobot dataset (``rollout_data_dir``)
holds policy rollouts, success or failure by the same flag. The instruction of an episode is its task
string. Everything else (statistics, returns, epoch structure, sampling, augmentation) is the
shared :class:`EpisodeSource`; frames are decoded per sample by :mod:`video`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from cosmos_policy_jax.common.errors import first_line
from cosmos_policy_jax.data.episodes import EpisodeOptions, EpisodeSource, cfg_get
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.schema import CAMERA_SLOT, Episode
from cosmos_policy_jax.data.video import VideoFrames, probe

SUPPORTED_VERSIONS = ("v2.1", "v3.0")
INFO = "meta/info.json"
# Which camera roles make which reference layout (and the video order of the cameras in it).
LAYOUT_CAMERAS: dict[str, tuple[str, ...]] = {
    "libero": ("wrist", "primary"),
    "robocasa": ("wrist", "primary", "primary2"),
    "aloha": ("wrist", "wrist2", "primary"),
}
ROLES = ("primary", "primary2", "wrist", "wrist2")


def _pa():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:  # pragma: no cover - pyarrow is a declared dependency of the lerobot extra
        raise DataError("reading LeRobot datasets needs pyarrow: pip install 'cosmos_policy_jax[lerobot]'") from e
    return pyarrow


def layout_for_cameras(cameras: Mapping[str, str]) -> str:
    """The reference layout implied by which camera roles are mapped (``primary`` is required)."""
    used = {role for role, key in cameras.items() if key}
    unknown = used - set(ROLES)
    if unknown:
        raise DataError(f"dataset.lerobot.cameras: unknown role(s) {sorted(unknown)}; roles: {', '.join(ROLES)}")
    if "primary" not in used:
        raise DataError("dataset.lerobot.cameras.primary: a primary (third-person) camera key is required")
    if "primary2" in used and "wrist2" in used:
        raise DataError("dataset.lerobot.cameras: map either primary2 (RoboCasa-like) or wrist2 (ALOHA-like), not both")
    for name, roles in LAYOUT_CAMERAS.items():
        if used == set(roles):
            return name
    raise DataError(
        f"dataset.lerobot.cameras: roles {sorted(used)} match no layout; use {{primary, wrist}} (LIBERO-like), "
        f"{{primary, primary2, wrist}} (RoboCasa-like) or {{primary, wrist, wrist2}} (ALOHA-like)"
    )


# ---------------------------------------------------------------------------------------------
# Metadata and columns
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VideoSpan:
    """Where one camera's frames of one episode are: the file and the episode's first timestamp."""

    path: str
    start: float


@dataclasses.dataclass
class EpisodeMeta:
    index: int
    length: int
    tasks: tuple[str, ...]
    data_file: str
    videos: dict[str, VideoSpan]


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: not found (not a LeRobot dataset?)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: not found (a v2.1 LeRobot dataset has it)") from None
    return rows


def _read_parquet(path: str, columns: Sequence[str] | None = None) -> Any:
    pa = _pa()
    if not os.path.isfile(path):
        raise DataError(f"{path}: parquet file not found")
    try:
        schema = pa.parquet.read_schema(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable parquet file ({first_line(e)})") from None
    if columns is not None:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(schema.names)})")
    try:
        return pa.parquet.read_table(path, columns=list(columns) if columns is not None else None)
    except Exception as e:
        raise DataError(f"{path}: cannot read parquet ({first_line(e)})") from None


def column_array(table: Any, key: str, path: str) -> np.ndarray:
    """One column as numpy: ``(N,)`` for scalars, ``(N, D)`` for fixed- or equal-length list columns."""
    pa = _pa()
    col = table.column(key).combine_chunks()
    kind = col.type
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        if col.null_count:
            raise DataError(f"{path}: column {key!r} has {col.null_count} null rows")
        if pa.types.is_fixed_size_list(kind):
            width = kind.list_size
        else:
            lengths = np.asarray(col.value_lengths())
            if len(lengths) and (lengths != lengths[0]).any():
                raise DataError(f"{path}: column {key!r} has rows of different lengths {sorted(set(lengths.tolist()))}")
            width = int(lengths[0]) if len(lengths) else 0
        values = col.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(col), width)
    return col.to_numpy(zero_copy_only=False)


class LeRobotDataset:
    """Metadata of a local LeRobot dataset and its parquet columns (no video decoding)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise DataError(f"LeRobot dataset directory not found: {root!r}")
        self.info_path = os.path.join(self.root, INFO)
        self.info = _read_json(self.info_path)
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in SUPPORTED_VERSIONS:
            raise DataError(
                f"{self.info_path}: codebase_version {self.version!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_VERSIONS)} (convert older datasets with lerobot's converter)"
            )
        for key in ("fps", "features", "data_path"):
            if key not in self.info:
                raise DataError(f"{self.info_path}: missing key {key!r}")
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = dict(self.info["features"])
        if self.version == "v3.0":
            self.task_names = self._tasks_v30()
            self.episodes = self._episodes_v30()
        else:
            self.task_names = self._tasks_v21()
            self.episodes = self._episodes_v21()
        if not self.episodes:
            raise DataError(f"{self.root}: the dataset has no episodes")

    # -- metadata per version

    def _tasks_v30(self) -> dict[int, str]:
        path = os.path.join(self.root, "meta/tasks.parquet")
        table = _read_parquet(path)
        if "task_index" not in table.column_names:
            raise DataError(f"{path}: no column 'task_index'")
        names = [c for c in table.column_names if c != "task_index"]
        if not names:
            raise DataError(f"{path}: no task string column")
        text = "task" if "task" in names else names[0]  # pandas stores the index as __index_level_0__
        return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))

    def _tasks_v21(self) -> dict[int, str]:
        path = os.path.join(self.root, "meta/tasks.jsonl")
        try:
            return {int(r["task_index"]): str(r["task"]) for r in _read_jsonl(path)}
        except KeyError as e:
            raise DataError(f"{path}: a row has no {e.args[0]!r}") from None

    def _episodes_v30(self) -> list[EpisodeMeta]:
        ep_dir = os.path.join(self.root, "meta/episodes")
        files = sorted(os.path.join(d, n) for d, _, names in os.walk(ep_dir) for n in names if n.endswith(".parquet"))
        if not files:
            raise DataError(f"{ep_dir}: no episode metadata parquet files")
        video_keys = self.video_keys
        out = []
        for path in files:
            table = _read_parquet(path)
            rows = table.select([c for c in table.column_names if not c.startswith("stats/")]).to_pylist()
            for row in rows:
                try:
                    data_file = os.path.join(
                        self.root,
                        self.info["data_path"].format(
                            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
                        ),
                    )
                    videos = {}
                    for key in video_keys:
                        rel = self.info["video_path"].format(
                            video_key=key,
                            chunk_index=row[f"videos/{key}/chunk_index"],
                            file_index=row[f"videos/{key}/file_index"],
                        )
                        videos[key] = VideoSpan(
                            os.path.join(self.root, rel), float(row[f"videos/{key}/from_timestamp"])
                        )
                    out.append(
                        EpisodeMeta(
                            int(row["episode_index"]), int(row["length"]), tuple(row["tasks"]), data_file, videos
                        )
                    )
                except KeyError as e:
                    raise DataError(f"{path}: no column {e.args[0]!r}") from None
        return sorted(out, key=lambda e: e.index)

    def _episodes_v21(self) -> list[EpisodeMeta]:
        path = os.path.join(self.root, "meta/episodes.jsonl")
        chunks = int(self.info.get("chunks_size", 1000))
        out = []
        for row in _read_jsonl(path):
            try:
                idx = int(row["episode_index"])
                chunk = idx // chunks
                data_file = os.path.join(
                    self.root, self.info["data_path"].format(episode_chunk=chunk, episode_index=idx)
                )
                videos = {
                    key: VideoSpan(
                        os.path.join(
                            self.root,
                            self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=idx),
                        ),
                        0.0,
                    )
                    for key in self.video_keys
                }
                out.append(EpisodeMeta(idx, int(row["length"]), tuple(row.get("tasks", ())), data_file, videos))
            except KeyError as e:
                raise DataError(f"{path}: an episode row has no {e.args[0]!r}") from None
        return sorted(out, key=lambda e: e.index)

    # -- features and columns

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    def require_feature(self, key: str, field: str, *, video: bool = False) -> None:
        """A config-named feature must exist (and be a video for cameras); the error names both."""
        if key not in self.features:
            raise DataError(
                f"{self.info_path}: no feature {key!r} (dataset.lerobot.{field}); features: {', '.join(self.features)}"
            )
        dtype = self.features[key].get("dtype")
        if video and dtype != "video":
            raise DataError(
                f"{self.info_path}: feature {key!r} (dataset.lerobot.{field}) has dtype {dtype!r}; "
                f"cameras must be stored as video"
            )

    def columns(
        self, keys: Sequence[str], *, progress: Callable[[int, int], None] | None = None
    ) -> dict[int, dict[str, np.ndarray]]:
        """``{episode_index: {key: array}}`` for ``keys`` plus ``frame_index``/``task_index``; every parquet file read once.

        Checks that each episode has ``length`` rows with frame indices ``0..length-1``.
        """
        by_file: dict[str, list[EpisodeMeta]] = {}
        for ep in self.episodes:
            by_file.setdefault(ep.data_file, []).append(ep)
        wanted = list(dict.fromkeys(["episode_index", "frame_index", "task_index", *keys]))
        out: dict[int, dict[str, np.ndarray]] = {}
        for n, (path, eps) in enumerate(by_file.items()):
            table = _read_parquet(path, wanted)
            arrays = {k: column_array(table, k, path) for k in wanted}
            ep_col = arrays["episode_index"]
            order = np.argsort(ep_col, kind="stable")
            sorted_eps = ep_col[order]
            for ep in eps:
                lo, hi = np.searchsorted(sorted_eps, [ep.index, ep.index + 1])
                rows = order[lo:hi]
                if len(rows) != ep.length:
                    raise DataError(
                        f"{path}: episode {ep.index} has {len(rows)} rows but its metadata says length {ep.length}"
                    )
                rows = rows[np.argsort(arrays["frame_index"][rows], kind="stable")]
                if not np.array_equal(arrays["frame_index"][rows], np.arange(ep.length)):
                    raise DataError(f"{path}: episode {ep.index} frame_index is not 0..{ep.length - 1}")
                out[ep.index] = {k: v[rows] for k, v in arrays.items() if k != "episode_index"}
            if progress is not None:
                progress(n + 1, len(by_file))
        return out

    def instruction(self, ep: EpisodeMeta, task_index: np.ndarray) -> str:
        """The episode's instruction: the task of its first frame."""
        t = int(task_index[0]) if len(task_index) else -1
        if t in self.task_names:
            return self.task_names[t]
        if ep.tasks:
            return ep.tasks[0]
        raise DataError(f"{ep.data_file}: episode {ep.index} task_index {t} is not in the dataset's tasks")

    def check_videos(self, keys: Sequence[str]) -> None:
        """Every video file of ``keys`` opens and is long enough for its episodes (headers only)."""
        ends: dict[tuple[str, str], float] = {}
        for ep in self.episodes:
            for key in keys:
                span = ep.videos[key]
                end = span.start + (ep.length - 1) / self.fps
                ends[(span.path, key)] = max(ends.get((span.path, key), 0.0), end)
        for (path, key), end in ends.items():
            info = probe(path, key, until=end, fps=self.fps)
            if np.isfinite(info.duration_s) and info.duration_s + 0.5 / self.fps < end:
                raise DataError(
                    f"{path}: video of {key!r} lasts {info.duration_s:.3f}s but its episodes need frames up to "
                    f"{end:.3f}s (mismatched lengths or a truncated file)"
                )


# ---------------------------------------------------------------------------------------------
# Source
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LeRobotEpisode(Episode):
    videos: dict[str, VideoSpan] = dataclasses.field(default_factory=dict)  # role -> span
    fps: float = 0.0


def read_episodes(
    root: str,
    cameras: Mapping[str, str],
    state_key: str,
    action_key: str,
    success_key: str = "",
    *,
    check_videos: bool = True,
) -> list[LeRobotEpisode]:
    """Every episode of the dataset at ``root`` with the mapped features (``success`` from ``success_key``)."""
    ds = LeRobotDataset(root)
    for role, key in cameras.items():
        ds.require_feature(key, f"cameras.{role}", video=True)
    ds.require_feature(state_key, "state_key")
    ds.require_feature(action_key, "action_key")
    keys = [state_key, action_key]
    if success_key:
        ds.require_feature(success_key, "success_key")
        keys.append(success_key)
    if check_videos:
        ds.check_videos(list(cameras.values()))
    cols = ds.columns(keys)
    episodes = []
    for ep in ds.episodes:
        c = cols[ep.index]
        arrays = {}
        for name, key in (("actions", action_key), ("proprio", state_key)):
            arr = c[key]
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.dtype.kind not in "fiub":
                raise DataError(f"{ep.data_file}: column {key!r} has dtype {arr.dtype}, expected numbers")
            arrays[name] = arr.astype(np.float32, copy=False)
        success = bool(np.asarray(c[success_key]).reshape(ep.length, -1)[-1].all()) if success_key else True
        episodes.append(
            LeRobotEpisode(
                path=ep.data_file,
                cameras={role: (key, False) for role, key in cameras.items()},
                num_steps=ep.length,
                command=ds.instruction(ep, c["task_index"]),
                actions=arrays["actions"],
                proprio=arrays["proprio"],
                success=success,
                terminal_reward=1.0 if success else 0.0,
                label=f"episode {ep.index}",
                videos={role: ep.videos[key] for role, key in cameras.items()},
                fps=ds.fps,
            )
        )
    return episodes


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeRobotOptions(EpisodeOptions):
    """The episode options plus the ``dataset.lerobot`` feature mapping."""

    cameras: Mapping[str, str] = dataclasses.field(default_factory=dict)  # role -> video feature
    state_key: str = "observation.state"
    action_key: str = "action"
    success_key: str = ""


class LeRobotSource(EpisodeSource):
    """A local LeRobot dataset (v3.0 / v2.1) with the user's feature mapping (see the module docstring)."""

    KIND = "lerobot"
    OPTIONS = LeRobotOptions
    _SLOTS_BASE: ClassVar[tuple[str, ...]] = (
        "action",
        "value",
        "current_proprio",
        "future_proprio",
    )

    def __init__(self, options: LeRobotOptions):
        cams = {role: str(key) for role, key in dict(options.cameras).items() if key}
        self.layout_name = layout_for_cameras(cams)
        self.CAMERAS = LAYOUT_CAMERAS[self.layout_name]
        self.SAMPLE_SLOTS = self._SLOTS_BASE + tuple(
            f"{when}_{CAMERA_SLOT[r]}" for r in self.CAMERAS for when in ("current", "future")
        )
        self.lerobot_cameras = cams
        self._videos = VideoFrames()
        keys = (options.state_key, options.action_key, options.success_key)
        all_eps = read_episodes(options.data_dir, cams, *keys)
        self._lerobot_demos = [e for e in all_eps if e.success]
        self._lerobot_rollouts = [e for e in all_eps if not e.success]
        if options.rollout_data_dir:
            if not options.success_key:
                raise DataError(
                    "dataset.lerobot.success_key: required to tell successes from failures in dataset.rollout_data_dir"
                )
            self._lerobot_rollouts += read_episodes(options.rollout_data_dir, cams, *keys)
        super().__init__(options)

    @classmethod
    def from_config(cls, dataset_cfg: Any, *, seed: int = 0, **overrides: Any) -> EpisodeSource:
        """As the base, plus the ``dataset.lerobot`` mapping section."""
        lr = cfg_get(dataset_cfg, "lerobot")
        if lr is None:
            raise DataError("dataset.lerobot: the feature mapping section is required for kind 'lerobot'")
        cams = cfg_get(lr, "cameras", {}) or {}
        cams = dict(cams.to_dict() if hasattr(cams, "to_dict") else cams)
        overrides.setdefault("cameras", cams)
        for key in ("state_key", "action_key", "success_key"):
            value = cfg_get(lr, key)
            if value is not None:
                overrides.setdefault(key, value)
        return super().from_config(dataset_cfg, seed=seed, **overrides)

    # -- EpisodeSource hooks

    def _load_demos(self) -> list[Episode]:
        if not self._lerobot_demos:
            raise DataError(f"{self.options.data_dir}: no successful episodes to use as demonstrations")
        return list(self._lerobot_demos)

    def _load_rollouts(self) -> list[Episode]:
        return list(self._lerobot_rollouts)

    def _frame(self, ep: Episode, role: str, step: int) -> np.ndarray:
        assert isinstance(ep, LeRobotEpisode)
        span = ep.videos[role]
        key = ep.cameras[role][0]
        return self._videos.frame(span.path, span.start + step / ep.fps, ep.fps, f"{key}, {ep.label}, frame {step}")

    def close(self) -> None:
        self._videos.close()


def list_instructions(data_dir: str, rollout_data_dir: str = "") -> list[str]:
    """Sorted unique task strings of a LeRobot dataset (and of its rollout dataset), from metadata only."""
    found: set[str] = set()
    for root in (data_dir, rollout_data_dir):
        if root:
            found.update(LeRobotDataset(root).task_names.values())
    return sorted(found)
