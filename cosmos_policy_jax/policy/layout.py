"""Latent layout: which latent frame holds which modality.

A layout maps each slot name of ``configs/cosmos_policy.py:SLOTS`` to a latent frame index (-1: unused).
It is static (hashable) so jitted code can index frames with Python ints. Frame 0 is always the blank
frame; image slots hold plain VAE latents, the proprio/action/value slots are overwritten by injection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from cosmos_policy_jax.layouts import SLOTS

CURRENT_IMAGE_SLOTS = ("current_wrist_image", "current_wrist_image2", "current_image", "current_image2")
FUTURE_IMAGE_SLOTS = ("future_wrist_image", "future_wrist_image2", "future_image", "future_image2")
IMAGE_SLOTS = CURRENT_IMAGE_SLOTS + FUTURE_IMAGE_SLOTS
# Frames the network must predict for each sample type (inputs of the loss masks).
FUTURE_STATE_SLOTS = ("future_proprio", *FUTURE_IMAGE_SLOTS)
CURRENT_STATE_SLOTS = ("current_proprio", *CURRENT_IMAGE_SLOTS)


def batch_key(slot: str) -> str:
    """Batch entry holding a slot's latent index (the datasets' name)."""
    return f"{slot}_latent_idx"


@dataclasses.dataclass(frozen=True)
class LatentLayout:
    """Static latent layout: ``indices`` holds one entry per slot of ``SLOTS`` (-1 when unused)."""

    state_t: int
    num_conditional_frames: int
    indices: tuple[int, ...]

    def __post_init__(self):
        if len(self.indices) != len(SLOTS):
            raise ValueError(f"latent layout needs {len(SLOTS)} slot indices, got {len(self.indices)}")
        if self.state_t < 2:
            raise ValueError(f"latent layout state_t must be >= 2, got {self.state_t}")
        if not 1 <= self.num_conditional_frames <= self.state_t:
            raise ValueError(
                f"num_conditional_frames must be in [1, state_t={self.state_t}], got {self.num_conditional_frames}"
            )
        used = {}
        for slot, idx in zip(SLOTS, self.indices):
            if idx == -1:
                continue
            if not 1 <= idx < self.state_t:
                raise ValueError(f"latent_layout.{slot}={idx} is outside 1..{self.state_t - 1} (frame 0 is blank)")
            if idx in used:
                raise ValueError(f"latent_layout.{slot} and latent_layout.{used[idx]} share latent frame {idx}")
            used[idx] = slot
        if self.index("action") == -1:
            raise ValueError("latent_layout.action is -1: the policy needs an action frame")

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], state_t: int, num_conditional_frames: int) -> LatentLayout:
        """From ``{slot: index}`` (missing slots are unused); unknown slot names raise."""
        unknown = sorted(set(mapping) - set(SLOTS))
        if unknown:
            raise ValueError(f"unknown latent_layout slot(s) {unknown}; known: {', '.join(SLOTS)}")
        return cls(
            state_t=int(state_t),
            num_conditional_frames=int(num_conditional_frames),
            indices=tuple(int(mapping.get(slot, -1)) for slot in SLOTS),
        )

    @classmethod
    def from_config(cls, config: Any) -> LatentLayout:
        """From the full config (``config.model``) or the model section itself."""
        model = config.model if hasattr(config, "model") else config
        layout = model.latent_layout
        mapping = dict(layout.items()) if hasattr(layout, "items") else dict(layout)
        return cls.from_mapping(mapping, model.state_t, model.num_conditional_frames)

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any], state_t: int, num_conditional_frames: int) -> LatentLayout:
        """From the ``<slot>_latent_idx`` entries of a (host) batch; every sample must share the layout."""
        mapping = {}
        for slot in SLOTS:
            key = batch_key(slot)
            if key not in batch:
                continue
            values = np.unique(np.asarray(batch[key]).reshape(-1))
            if values.size != 1:
                raise ValueError(f"batch[{key!r}] holds several layouts {values.tolist()}; a batch must share one")
            mapping[slot] = int(values[0])
        if "action" not in mapping:
            raise ValueError(f"batch has no {batch_key('action')!r} entry")
        return cls.from_mapping(mapping, state_t, num_conditional_frames)

    # -- queries ------------------------------------------------------------------------------------
    def index(self, slot: str) -> int:
        """Latent frame of ``slot`` (-1 if unused)."""
        try:
            return self.indices[SLOTS.index(slot)]
        except ValueError:
            raise ValueError(f"unknown latent slot {slot!r}; known: {', '.join(SLOTS)}") from None

    def has(self, slot: str) -> bool:
        return self.index(slot) != -1

    def frames(self, slots: tuple[str, ...] | list[str]) -> tuple[int, ...]:
        """Latent frames of the used slots among ``slots``."""
        return tuple(self.index(s) for s in slots if self.has(s))

    @property
    def image_slots(self) -> tuple[str, ...]:
        return tuple(s for s in IMAGE_SLOTS if self.has(s))

    @property
    def current_image_slots(self) -> tuple[str, ...]:
        return tuple(s for s in CURRENT_IMAGE_SLOTS if self.has(s))

    def num_pixel_frames(self, temporal_compression: int = 4) -> int:
        """Pixel frames of the video: one blank frame then ``temporal_compression`` per latent frame."""
        return 1 + temporal_compression * (self.state_t - 1)

    def pixel_frames(self, latent_frame: int, temporal_compression: int = 4) -> range:
        """Pixel frames that encode into ``latent_frame`` (frame 0 alone maps to latent 0)."""
        if latent_frame == 0:
            return range(0, 1)
        start = 1 + temporal_compression * (latent_frame - 1)
        return range(start, start + temporal_compression)

    def batch_entries(self, batch_size: int) -> dict[str, np.ndarray]:
        """``<slot>_latent_idx`` arrays (int64, (B,)) as the datasets emit them, for every slot."""
        return {batch_key(s): np.full((batch_size,), self.index(s), np.int64) for s in SLOTS}

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Raise if concrete ``<slot>_latent_idx`` entries of ``batch`` disagree with this layout.

        Entries that are missing or traced (inside jit) are not checked.
        """
        for slot in SLOTS:
            value = batch.get(batch_key(slot))
            if value is None or isinstance(value, jax.core.Tracer):
                continue
            got = np.unique(np.asarray(value).reshape(-1))
            if got.size and (got.size != 1 or int(got[0]) != self.index(slot)):
                raise ValueError(
                    f"batch[{batch_key(slot)!r}]={got.tolist()} does not match the configured latent layout "
                    f"({slot}={self.index(slot)})"
                )
