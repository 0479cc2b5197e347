"""A synthetic source: random but valid samples with the model's input spec (no files needed).

For the ``tiny`` and ``bench`` configs and for throughput runs. A sample has the keys, shapes and
dtypes of the LIBERO reader's samples for any latent ``layout``: ``video``
``(3, 1 + 4·(state_t − 1), S, S)`` uint8 with black frames on non-image slots and a low-frequency
random image repeated over the frames of each image slot; normalised ``actions``/``proprio`` in
[-1, 1]; stand-in text embeddings (``text_stub``, zero padded like T5); and a mix of sample types by
index (half demos, a quarter success rollouts, a quarter failure rollouts, the rollouts split
between world-model and value-function samples). Everything is a function of ``(seed, epoch, index)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cosmos_policy_jax.data.schema import FPS, TEXT_MASK_LEN
from cosmos_policy_jax.layouts import LAYOUTS, SLOTS

LIBERO_LAYOUT = LAYOUTS["libero"]
IMAGE_SLOTS = tuple(s for s in SLOTS if "image" in s)
INSTRUCTIONS = (
    "pick up the red block and place it in the basket",
    "open the top drawer of the cabinet",
    "put the bowl on the plate",
    "turn on the stove",
)
_DEFAULT_LENGTH = 4096


def _get(cfg: Any, key: str, default: Any) -> Any:
    value = cfg.get(key, default) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


class SyntheticSource:
    """Random-access source of synthetic samples; ``get(index, epoch)`` like the file sources."""

    def __init__(
        self,
        *,
        length: int = _DEFAULT_LENGTH,
        layout: Mapping[str, int] | None = None,
        state_t: int | None = None,
        image_size: int = 224,
        chunk_size: int = 16,
        action_dim: int = 7,
        proprio_dim: int = 9,
        text_len: int = 512,
        text_dim: int = 1024,
        num_duplicates_per_image: int = 4,
        gamma: float = 0.99,
        seed: int = 0,
    ):
        if length < 1:
            raise ValueError(f"synthetic source length must be >= 1, got {length}")
        full = dict.fromkeys(SLOTS, -1)
        given = dict(LIBERO_LAYOUT if layout is None else layout)
        unknown = sorted(set(given) - set(SLOTS))
        if unknown:
            raise ValueError(f"unknown latent slot(s) {unknown} in the layout; known: {', '.join(SLOTS)}")
        full.update({k: int(v) for k, v in given.items()})
        used = [v for v in full.values() if v != -1]
        self.state_t = int(state_t) if state_t is not None else max(used) + 1
        if any(not 1 <= v < self.state_t for v in used) or len(set(used)) != len(used):
            raise ValueError(
                f"latent layout {given} does not fit state_t={self.state_t} (indices in [1, state_t), unique)"
            )
        for key, value in (("image_size", image_size), ("chunk_size", chunk_size), ("text_len", text_len)):
            if value < 1:
                raise ValueError(f"synthetic source {key} must be >= 1, got {value}")
        self.layout = full
        self.length = int(length)
        self.image_size = int(image_size)
        self.chunk_size = int(chunk_size)
        self.action_dim = int(action_dim)
        self.proprio_dim = int(proprio_dim)
        self.text_len = int(text_len)
        self.text_dim = int(text_dim)
        self.num_duplicates_per_image = int(num_duplicates_per_image)
        self.gamma = float(gamma)
        self.seed = int(seed)
        # The demo's stand-in encoder (imported here: data/ does not import demo/ at module level).
        from cosmos_policy_jax.demo import text_stub

        self.t5_embeddings = text_stub.stub_embeddings(INSTRUCTIONS, text_len=self.text_len, text_dim=self.text_dim)
        self._image_slot_frames = {self.layout[s]: s for s in IMAGE_SLOTS if self.layout[s] != -1}

    @classmethod
    def from_config(
        cls,
        dataset_cfg: Any,
        *,
        seed: int = 0,
        layout: Mapping[str, int] | None = None,
        state_t: int | None = None,
        length: int | None = None,
    ) -> SyntheticSource:
        """From a ``dataloader_*.dataset`` section; ``layout``/``state_t`` from ``config.model`` (LIBERO's if None)."""
        return cls(
            length=length or int(_get(dataset_cfg, "synthetic_length", _DEFAULT_LENGTH)),
            layout=dict(layout) if layout is not None else None,
            state_t=state_t,
            image_size=int(_get(dataset_cfg, "final_image_size", 224)),
            chunk_size=int(_get(dataset_cfg, "chunk_size", 16)),
            action_dim=int(_get(dataset_cfg, "action_dim", 7)),
            proprio_dim=int(_get(dataset_cfg, "proprio_dim", 9)),
            text_len=int(_get(dataset_cfg, "text_len", 512)),
            text_dim=int(_get(dataset_cfg, "text_dim", 1024)),
            num_duplicates_per_image=int(_get(dataset_cfg, "num_duplicates_per_image", 4)),
            gamma=float(_get(dataset_cfg, "gamma", 0.99)),
            seed=seed,
        )

    @property
    def num_frames(self) -> int:
        return 1 + self.num_duplicates_per_image * (self.state_t - 1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index, 0)

    def category(self, index: int) -> str:
        """Sample category by index: demo (indices 0, 1 mod 4), success rollout (2), failure rollout (3)."""
        return ("demo", "demo", "success_rollout", "failure_rollout")[int(index) % 4]

    def _image(self, rng: np.random.Generator) -> np.ndarray:
        """(S, S, 3) uint8: a random 8x8 colour grid upsampled (smooth, VAE-friendly content)."""
        s = self.image_size
        cells = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        rows = np.arange(s) * 8 // s
        return cells[rows][:, rows]

    def get(self, index: int, epoch: int = 0, *, sample_type: str | None = None, aug_params: Any = None) -> dict:
        del aug_params  # synthetic images are not augmented
        index, epoch = int(index), int(epoch)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a synthetic source of length {self.length}")
        rng = np.random.default_rng([self.seed, epoch, index])
        category = self.category(index)
        if sample_type is None:
            sample_type = "demo" if category == "demo" else ("world_model" if rng.random() < 0.5 else "value_function")
        s, n = self.image_size, self.num_duplicates_per_image
        video = np.zeros((3, self.num_frames, s, s), np.uint8)
        for latent in sorted(self._image_slot_frames):
            start = 1 + n * (latent - 1)
            video[:, start : start + n] = np.moveaxis(self._image(rng), -1, 0)[:, None]
        actions = rng.uniform(-1.0, 1.0, size=(self.chunk_size, self.action_dim))
        steps_left = int(rng.integers(0, 64))
        if category == "failure_rollout":
            value = np.float32(-1.0)
        else:
            value = np.float32(2.0 * self.gamma**steps_left - 1.0)
        instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]
        sample: dict[str, Any] = {
            "video": video,
            "actions": actions,
            "t5_text_embeddings": self.t5_embeddings[instruction],
            "t5_text_mask": np.ones(TEXT_MASK_LEN, np.int64),
            "fps": FPS,
            "padding_mask": np.zeros((1, s, s), np.float32),
            "image_size": np.full(4, s, np.float32),
            "proprio": rng.uniform(-1.0, 1.0, size=self.proprio_dim),
            "future_proprio": rng.uniform(-1.0, 1.0, size=self.proprio_dim),
            "__key__": index,
            "rollout_data_mask": int(category != "demo"),
            "rollout_data_success_mask": int(category == "success_rollout"),
            "world_model_sample_mask": int(sample_type == "world_model"),
            "value_function_sample_mask": int(sample_type == "value_function"),
            "global_rollout_idx": -1 if category == "demo" else index // 4,
            "value_function_return": value,
            "next_action_chunk": rng.uniform(-1.0, 1.0, size=(self.chunk_size, self.action_dim)),
            "next_value_function_return": value,
        }
        for slot in SLOTS:  # like the file readers: keys for the layout's slots only
            if self.layout[slot] != -1:
                sample[f"{slot}_latent_idx"] = self.layout[slot]
        return sample
