"""Latent-frame slots of the policy's diffusion sequence and the reference layouts (pure Python).

A layout maps each slot to its latent frame index (-1: unused); frame 0 is always the blank frame.
Shared by the configs, the datasets (which write the indices into every sample) and the model
code (which reads them from the config), so it imports nothing.
"""

from __future__ import annotations

SLOTS: tuple[str, ...] = (
    "current_proprio",
    "current_wrist_image",
    "current_wrist_image2",
    "current_image",
    "current_image2",
    "action",
    "future_proprio",
    "future_wrist_image",
    "future_wrist_image2",
    "future_image",
    "future_image2",
    "value",
)

LAYOUTS: dict[str, dict[str, int]] = {
    # blank, proprio, wrist, primary, action, f-proprio, f-wrist, f-primary, value.
    "libero": dict(
        current_proprio=1, current_wrist_image=2, current_image=3, action=4,
        future_proprio=5, future_wrist_image=6, future_image=7, value=8,
    ),
    # a second third-person camera.
    "robocasa": dict(
        current_proprio=1, current_wrist_image=2, current_image=3, current_image2=4, action=5,
        future_proprio=6, future_wrist_image=7, future_image=8, future_image2=9, value=10,
    ),
    # left and right wrist cameras, one primary camera.
    "aloha": dict(
        current_proprio=1, current_wrist_image=2, current_wrist_image2=3, current_image=4, action=5,
        future_proprio=6, future_wrist_image=7, future_wrist_image2=8, future_image=9, value=10,
    ),
}  # fmt: skip


def full_layout(name: str) -> dict[str, int]:
    """Every slot of the named layout, -1 for the unused ones."""
    out = dict.fromkeys(SLOTS, -1)
    out.update(LAYOUTS[name])
    return out
