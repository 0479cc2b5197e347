"""Saving recorded episodes: an animated GIF and a PNG strip of evenly spaced frames (PIL only)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

CAMERA_ORDER = ("current_image", "current_image2", "current_wrist_image", "current_wrist_image2")


def side_by_side(frames: dict[str, Sequence[np.ndarray]], min_height: int = 128) -> list[np.ndarray]:
    """One ``(H, W_total, 3)`` frame per step with the cameras next to each other, upscaled (nearest) to ``min_height``."""
    keys = [k for k in CAMERA_ORDER if k in frames] + sorted(k for k in frames if k not in CAMERA_ORDER)
    n = min(len(frames[k]) for k in keys)
    out = []
    for t in range(n):
        row = np.concatenate([frames[k][t] for k in keys], axis=1)
        scale = max(1, -(-min_height // row.shape[0]))
        out.append(np.repeat(np.repeat(row, scale, axis=0), scale, axis=1) if scale > 1 else row)
    return out


def save_gif(frames: Sequence[np.ndarray], path: str, fps: float = 10.0) -> str:
    if not frames:
        raise ValueError("no frames to save")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def save_strip(frames: Sequence[np.ndarray], path: str, num: int = 8) -> str:
    """``num`` frames evenly spaced from first to last, left to right, separated by a 2 px white gap."""
    if not frames:
        raise ValueError("no frames to save")
    idx = np.unique(np.linspace(0, len(frames) - 1, min(num, len(frames))).round().astype(int))
    h = frames[0].shape[0]
    gap = np.full((h, 2, 3), 255, np.uint8)
    parts = []
    for i in idx:
        parts += [frames[i], gap]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.concatenate(parts[:-1], axis=1)).save(path)
    return path
