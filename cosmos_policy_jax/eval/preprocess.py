"""Test-time observation preprocessing, as pure numpy/PIL functions.

The reference's evaluation turns each simulator camera image into the training distribution with,
in order:

1. a vertical flip (LIBERO/robosuite render upside down; the training HDF5 images were flipped);
2. a JPEG encode/decode round trip at quality 95 (PIL defaults otherwise);
3. a resize to the model's image size (224) with PIL's default filter (bicubic), skipped when the
   image already has that size;
4. if the model was trained with random-resized-crop augmentation: a centre crop covering 90 % of
   the area, side ``int(S * sqrt(0.9))`` (212 px for 224; train-time crops are 213 px),
   at torchvision's ``center_crop`` offset ``round((S - side) / 2)``, resized
   back to S with antialiased bilinear interpolation (float32, round half to even).

Steps 3 and 4 reuse the bit-exact torchvision/PIL ops of ``cosmos_policy_jax.data.transforms``.
Proprio is normalised with the dataset statistics' min/max rule and predicted actions are mapped
back with its inverse.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image

from cosmos_policy_jax.data import transforms

CROP_AREA_FRACTION = 0.9
DEFAULT_JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """Which of the test-time steps run, and the model's image size."""

    image_size: int
    flip: bool = False
    jpeg_quality: int | None = DEFAULT_JPEG_QUALITY  # None: no JPEG round trip
    center_crop: bool = True  # the model was trained with crop augmentation

    def __post_init__(self):
        if self.image_size < 2:
            raise ValueError(f"image_size must be >= 2, got {self.image_size}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100] or None, got {self.jpeg_quality}")


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim < 3 or images.shape[-1] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"expected uint8 RGB images of shape (..., H, W, 3), got {got}")


def flip_vertical(images: np.ndarray) -> np.ndarray:
    """Upside down: row ``r`` of the result is row ``H - 1 - r`` of the input (``(..., H, W, 3)``)."""
    _check_images(images)
    return np.ascontiguousarray(images[..., ::-1, :, :])


def jpeg_roundtrip(images: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> np.ndarray:
    """Encode each ``(H, W, 3)`` image as JPEG with PIL at ``quality`` and decode it back."""
    _check_images(images)
    flat = images.reshape(-1, *images.shape[-3:])
    out = np.empty_like(flat)
    for i, img in enumerate(flat):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"))
    return out.reshape(images.shape)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """PIL default-filter (bicubic) resize of ``(..., H, W, 3)`` to ``size`` x ``size``; unchanged if already that size."""
    _check_images(images)
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    out = transforms.pil_resize(flat, size)
    return out.reshape(*lead, size, size, 3)


def center_crop_box(size: int, area_fraction: float = CROP_AREA_FRACTION) -> tuple[int, int, int]:
    """``(top, left, side)`` of the test-time centre crop of a ``size`` x ``size`` image.

    ``side = int(size * sqrt(area_fraction))`` (truncated, as the reference's eval); the offset is
    torchvision ``center_crop``'s ``int(round((size - side) / 2))``. For 224: (6, 6, 212).
    """
    if not 0.0 < area_fraction <= 1.0:
        raise ValueError(f"area_fraction must be in (0, 1], got {area_fraction}")
    side = int(size * math.sqrt(area_fraction))
    offset = round((size - side) / 2.0)  # Python rounds half to even, as torchvision's int(round(...))
    return offset, offset, side


def center_crop_resize(images: np.ndarray, area_fraction: float = CROP_AREA_FRACTION) -> np.ndarray:
    """Centre crop (``center_crop_box``) of square ``(..., S, S, 3)`` images, resized back to S (antialiased bilinear)."""
    _check_images(images)
    h, w = images.shape[-3:-1]
    if h != w:
        raise ValueError(f"centre crop needs square images, got {h}x{w}")
    top, left, side = center_crop_box(h, area_fraction)
    chw = np.moveaxis(images, -1, -3)  # (..., 3, S, S): the layout of transforms.resized_crop
    out = transforms.resized_crop(chw, top, left, side, side, h)
    return np.ascontiguousarray(np.moveaxis(out, -3, -1))


def preprocess_images(images: np.ndarray, spec: ImagePreprocessing) -> np.ndarray:
    """The whole test-time chain on ``(..., H, W, 3)`` uint8 camera images -> ``(..., S, S, 3)`` uint8."""
    _check_images(images)
    if spec.flip:
        images = flip_vertical(images)
    if spec.jpeg_quality is not None:
        images = jpeg_roundtrip(images, spec.jpeg_quality)
    images = resize(images, spec.image_size)
    if spec.center_crop:
        images = center_crop_resize(images)
    return images


def normalize_proprio(proprio: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """``2 * (x - min) / (max - min) - 1`` with the statistics' ``proprio_min/max`` (float64)."""
    lo, hi = np.asarray(stats["proprio_min"], np.float64), np.asarray(stats["proprio_max"], np.float64)
    x = np.asarray(proprio, np.float64)
    if x.shape[-1] != lo.shape[0]:
        raise ValueError(f"proprio has {x.shape[-1]} dims but the statistics have {lo.shape[0]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2 * ((x - lo) / (hi - lo)) - 1
