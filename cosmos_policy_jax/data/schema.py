"""What every source hands over: the sample constants and the in-memory episode record."""

from __future__ import annotations

import dataclasses

import numpy as np

SAMPLE_TYPES = ("demo", "world_model", "value_function")
# Camera role -> slot name suffix (``current_<suffix>`` / ``future_<suffix>``).
CAMERA_SLOT = {"wrist": "wrist_image", "wrist2": "wrist_image2", "primary": "image", "primary2": "image2"}
FPS = 16
TEXT_MASK_LEN = 512


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
