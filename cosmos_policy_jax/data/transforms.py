"""Image preprocessing and augmentation in numpy, bit-exact with the reference's torch/torchvision ops.

The reference resizes every frame to the final size with PIL, then draws one
augmentation parameter set per sample and applies, per frame: crop + antialiased bilinear resize back,
rotation (nearest), brightness, contrast, saturation, hue. Each op below reproduces torchvision's
tensor semantics on uint8 images (float32 arithmetic, truncation back to uint8), as written out in
the fixture README section 6; the parameters are explicit arguments so they can be drawn separately
(``draw_aug_params``) or fed from a recording.

Images are ``(..., C, H, W)`` uint8 with C = 3 (RGB); every op accepts leading batch dimensions and
is vectorised over them.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from PIL import Image

_F32 = np.float32
# Grayscale weights of torchvision's rgb_to_grayscale.
_GREY = (_F32(0.2989), _F32(0.587), _F32(0.114))


@dataclasses.dataclass(frozen=True)
class AugParams:
    """One augmentation draw, applied identically to every frame of a sample.

    Float factors hold float32 values (as drawn by the reference) stored as Python floats.
    ``angle`` is in degrees, counter-clockwise; 0 skips the rotation (the default, non-"stronger"
    augmentation never rotates).
    """

    crop_top: int
    crop_left: int
    crop_height: int
    crop_width: int
    angle: float
    brightness: float
    contrast: float
    saturation: float
    hue: float


def crop_side(image_size: int, scale: float = 0.9) -> int:
    """Side of the square random-resized crop covering ``scale`` of the area (torchvision's rounding)."""
    # torch draws the area fraction as a float32 uniform(scale, scale): the float32 value, widened.
    return round(math.sqrt(image_size * image_size * float(_F32(scale))))


def draw_aug_params(rng: np.random.Generator, image_size: int, stronger: bool) -> AugParams:
    """Draw one parameter set with the reference's distributions.

    Crop: square of side ``crop_side(S)`` at a uniform integer offset. Stronger: angle U(-5, 5) deg,
    brightness U(0.7, 1.3), contrast U(0.6, 1.4), saturation U(0.5, 1.5); default: no rotation and all
    three U(0.8, 1.2). Hue U(-0.05, 0.05) in both. Floats are rounded to float32 like torch's draws.
    """
    side = crop_side(image_size)
    top = int(rng.integers(0, image_size - side + 1))
    left = int(rng.integers(0, image_size - side + 1))

    def u(lo: float, hi: float) -> float:
        return float(_F32(rng.uniform(lo, hi)))

    if stronger:
        angle = u(-5.0, 5.0)
        brightness, contrast, saturation = u(0.7, 1.3), u(0.6, 1.4), u(0.5, 1.5)
    else:
        angle = 0.0
        brightness, contrast, saturation = u(0.8, 1.2), u(0.8, 1.2), u(0.8, 1.2)
    hue = u(-0.05, 0.05)
    return AugParams(top, left, side, side, angle, brightness, contrast, saturation, hue)


# ----------------------------------------------------------------------------------------------
# PIL resize (the reference's resize to the final size, before augmentation)
# ----------------------------------------------------------------------------------------------


def pil_resize(frames_thwc: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(T, H, W, 3)`` uint8 frames to ``(T, size, size, 3)`` with PIL's default filter (bicubic).

    Frames already at the target size are returned unchanged (copied), as in the reference.
    """
    if frames_thwc.ndim != 4 or frames_thwc.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames_thwc.shape}")
    if frames_thwc.shape[1:3] == (size, size):
        return frames_thwc.copy()
    out = np.empty((frames_thwc.shape[0], size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames_thwc):
        if not frame.any():  # a black frame stays black through any resampling filter
            out[i] = 0
        else:
            out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((size, size)))
    return out


# ----------------------------------------------------------------------------------------------
# 1. crop + antialiased bilinear resize (torch's separable AA kernel, float32, FMA accumulation)
# ----------------------------------------------------------------------------------------------


def _fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 ``a * b + c`` (what a fused multiply-add returns).

    The float32 product is exact in float64, so the float64 sum is off only by its own rounding
    error; that error can change the float32 result only when the float64 sum lies exactly halfway
    between two float32 values (the low 29 mantissa bits are ``100...0``). Those rare elements are
    corrected with the exact error term (TwoSum).
    """
    p = np.multiply(a, b, dtype=np.float64)
    s = np.add(p, c, dtype=np.float64)
    r = s.astype(np.float32)
    halfway = (s.view(np.int64) & 0x1FFFFFFF) == 0x10000000
    if halfway.any():
        hp, hs = p[halfway], s[halfway]
        hc = np.asarray(c, dtype=np.float64)[halfway] if np.ndim(c) else np.full(hs.shape, float(c))
        bb = hs - hp
        err = (hp - (hs - bb)) + (hc - bb)
        hr = r[halfway]
        up = np.nextafter(hr, np.float32(np.inf))
        down = np.nextafter(hr, np.float32(-np.inf))
        fixed = np.where(err > 0, np.where(hr > hs, hr, up), np.where(err < 0, np.where(hr < hs, hr, down), hr))
        r[halfway] = fixed
    return r


@functools.lru_cache(maxsize=64)
def _aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tap indices ``(out, K)`` and float32 weights ``(out, K)`` of torch's antialiased bilinear filter.

    Unused taps get index 0 and weight 0 (adding ``x * 0`` to the accumulator changes nothing).
    """
    scale = _F32(in_size) / _F32(out_size)
    support = _F32(scale) if scale >= 1.0 else _F32(1.0)
    invscale = float(_F32(1.0) / scale) if scale >= 1.0 else 1.0
    taps: list[list[int]] = []
    weights: list[list[np.float32]] = []
    for i in range(out_size):
        center = _F32(scale * _F32(i + 0.5))
        xmin = max(int(float(_F32(center - support)) + 0.5), 0)
        xmax = min(int(float(_F32(center + support)) + 0.5), in_size)
        ws = []
        total = _F32(0.0)
        for j in range(xmax - xmin):
            x = abs(_F32((float(_F32(_F32(j + xmin) - center)) + 0.5) * invscale))
            w = _F32(1.0) - x if x < 1.0 else _F32(0.0)
            ws.append(_F32(w))
            total = _F32(total + w)
        if total != 0:
            ws = [_F32(w / total) for w in ws]
        taps.append(list(range(xmin, xmax)))
        weights.append(ws)
    k = max(len(t) for t in taps)
    idx = np.zeros((out_size, k), dtype=np.int64)
    wts = np.zeros((out_size, k), dtype=np.float32)
    for i, (t, w) in enumerate(zip(taps, weights)):
        idx[i, : len(t)] = t
        wts[i, : len(w)] = w
    idx.flags.writeable = False  # cached: shared by every call
    wts.flags.writeable = False
    return idx, wts


def _aa_resize_last_axis(x: np.ndarray, out_size: int) -> np.ndarray:
    """Resample the last axis of a float32 array: first tap a plain product, then one FMA per tap."""
    idx, wts = _aa_weights(x.shape[-1], out_size)
    acc = np.take(x, idx[:, 0], axis=-1) * wts[:, 0]
    for k in range(1, idx.shape[1]):
        acc = _fma_f32(np.take(x, idx[:, k], axis=-1), wts[:, k], acc)
    return acc


def resized_crop(img: np.ndarray, top: int, left: int, height: int, width: int, size: int) -> np.ndarray:
    """torchvision ``resized_crop(img, top, left, h, w, [size, size], antialias=True)`` on uint8.

    Float32 separable antialiased bilinear (width pass, then height pass), round half to even.
    """
    h_in, w_in = img.shape[-2:]
    if top < 0 or left < 0 or top + height > h_in or left + width > w_in or height <= 0 or width <= 0:
        raise ValueError(f"crop [{top}, {left}, {height}, {width}] does not fit an image of {h_in}x{w_in}")
    x = img[..., top : top + height, left : left + width].astype(np.float32)
    if width != size:
        x = _aa_resize_last_axis(x, size)
    if height != size:
        x = np.swapaxes(_aa_resize_last_axis(np.swapaxes(x, -1, -2), size), -1, -2)
    return np.rint(x).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# 2. rotation (torchvision rotate: affine grid + grid_sample nearest, zeros outside)
# ----------------------------------------------------------------------------------------------


def _rotation_sources(height: int, width: int, angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source row, column and validity ``(H, W)`` of a counter-clockwise rotation about the centre.

    Follows torch's float32 path: inverse matrix, affine grid normalised by half the size, then
    grid_sample's unnormalisation ``(g + 1) * size / 2 - 0.5`` and round half to even.
    """
    rot = math.radians(-angle)
    cos_t, sin_t = _F32(math.cos(rot)), _F32(math.sin(rot))
    half_w, half_h = _F32(0.5 * width), _F32(0.5 * height)
    # theta = [[cos, sin, 0], [-sin, cos, 0]] of rot = -angle; grid = [x, y, 1] @ (theta^T / [w/2, h/2]).
    r00, r10 = cos_t / half_w, sin_t / half_w
    r01, r11 = -sin_t / half_h, cos_t / half_h
    xs = (np.arange(width, dtype=np.float32) - _F32((width - 1) / 2))[None, :]
    ys = (np.arange(height, dtype=np.float32) - _F32((height - 1) / 2))[:, None]
    gx = (xs * r00 + ys * r10).astype(np.float32)
    gy = (xs * r01 + ys * r11).astype(np.float32)
    ix = np.rint((gx + _F32(1.0)) * half_w - _F32(0.5))
    iy = np.rint((gy + _F32(1.0)) * half_h - _F32(0.5))
    valid = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    return np.where(valid, iy, 0).astype(np.int64), np.where(valid, ix, 0).astype(np.int64), valid


def rotate(img: np.ndarray, angle: float) -> np.ndarray:
    """torchvision ``rotate(img, angle)`` on uint8: nearest neighbour, same size, zeros outside."""
    height, width = img.shape[-2:]
    rows, cols, valid = _rotation_sources(height, width, angle)
    out = img[..., rows, cols]
    return np.where(valid, out, np.uint8(0)).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# 3-6. colour ops (torchvision tensor semantics on uint8)
# ----------------------------------------------------------------------------------------------


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # clamp(0, 255) then truncation toward zero, as tensor.to(torch.uint8) after a float blend.
    return np.clip(x, _F32(0.0), _F32(255.0)).astype(np.uint8)


def _grayscale(img: np.ndarray) -> np.ndarray:
    """uint8 grey ``(..., 1, H, W)``: truncate(0.2989 R + 0.587 G + 0.114 B) in float32."""
    r, g, b = (img[..., c : c + 1, :, :].astype(np.float32) for c in range(3))
    return ((_GREY[0] * r + _GREY[1] * g) + _GREY[2] * b).astype(np.uint8)


def _blend(img: np.ndarray, other: np.ndarray | np.float32, ratio: float) -> np.ndarray:
    return _to_uint8(_F32(ratio) * img.astype(np.float32) + _F32(1.0 - ratio) * other)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """``factor * x`` in float32, clamped and truncated to uint8."""
    return _to_uint8(_F32(factor) * img.astype(np.float32))


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the float32 mean of the uint8 grey image."""
    grey = _grayscale(img)
    n = grey.shape[-1] * grey.shape[-2]
    # The sum of integer grey levels is exact in float32 below 2**24 (any image up to 256x256).
    total = grey.reshape(*grey.shape[:-3], -1).sum(axis=-1, dtype=np.int64).astype(np.float32)
    mean = (total / _F32(n))[..., None, None, None]
    return _blend(img, mean.astype(np.float32), factor)


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the uint8 grey image of the same frame."""
    return _blend(img, _grayscale(img).astype(np.float32), factor)


def adjust_hue(img: np.ndarray, hue_factor: float) -> np.ndarray:
    """Shift the hue by ``hue_factor`` turns through float32 HSV; back with ``x * 255.999`` truncated.

    Same float32 operations as torchvision's ``_rgb2hsv`` / ``_hsv2rgb``; its masked sums
    (``mask * value`` added over the three cases) are written as selections, which give the same
    values because exactly one term is non-zero.
    """
    one, zero = _F32(1.0), _F32(0.0)
    x = img.astype(np.float32)
    x /= _F32(255.0)
    r, g, b = x[..., 0, :, :], x[..., 1, :, :], x[..., 2, :, :]
    maxc = np.maximum(np.maximum(r, g), b)
    minc = np.minimum(np.minimum(r, g), b)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / np.where(eqc, one, maxc)
    cr_div = np.where(eqc, one, cr)
    rc = (maxc - r) / cr_div
    gc = (maxc - g) / cr_div
    bc = (maxc - b) / cr_div
    is_r = maxc == r
    is_g = maxc == g
    h = np.where(is_r, bc - gc, np.where(is_g, (_F32(2.0) + rc) - bc, (_F32(4.0) + gc) - rc))
    h /= _F32(6.0)
    h += one
    h = np.fmod(h, one)
    h += _F32(hue_factor)
    h = np.fmod(h, one)
    h = np.where(h < zero, h + one, h)
    v = maxc

    h *= _F32(6.0)  # h6
    i = np.floor(h)
    f = h - i
    sector = i.astype(np.int32) % 6
    p = np.clip(v * (one - s), zero, one)
    q = np.clip(v * (one - s * f), zero, one)
    t = np.clip(v * (one - s * (one - f)), zero, one)
    out = np.empty(img.shape, dtype=np.float32)
    # torchvision's hsv -> rgb table: sector k takes (R, G, B) from
    # 0: (v, t, p)  1: (q, v, p)  2: (p, v, t)  3: (p, q, v)  4: (t, p, v)  5: (v, p, q).
    s0, s1, s2, s3, s4 = (sector == k for k in range(5))
    out[..., 0, :, :] = np.where(s0 | (sector == 5), v, np.where(s1, q, np.where(s4, t, p)))
    out[..., 1, :, :] = np.where(s1 | s2, v, np.where(s0, t, np.where(s3, q, p)))
    out[..., 2, :, :] = np.where(s3 | s4, v, np.where(s2, t, np.where(s0 | s1, p, q)))
    out *= _F32(255.999)
    return out.astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Whole-sample augmentation
# ----------------------------------------------------------------------------------------------


def augment_frames(frames: np.ndarray, params: AugParams) -> np.ndarray:
    """Apply the six ops in order to ``(N, 3, S, S)`` uint8 frames (all frames, one parameter set).

    All-black frames are passed through untouched: every op maps black to black.
    """
    size = frames.shape[-1]
    if frames.shape[-2] != size:
        raise ValueError(f"augmentation expects square frames, got {frames.shape[-2]}x{size}")
    out = np.zeros_like(frames)
    live = np.flatnonzero(frames.reshape(frames.shape[0], -1).any(axis=1))
    if live.size == 0:
        return out
    x = frames[live]
    p = params
    x = resized_crop(x, p.crop_top, p.crop_left, p.crop_height, p.crop_width, size)
    if p.angle != 0.0:
        x = rotate(x, p.angle)
    x = adjust_brightness(x, p.brightness)
    x = adjust_contrast(x, p.contrast)
    x = adjust_saturation(x, p.saturation)
    x = adjust_hue(x, p.hue)
    out[live] = x
    return out


def frame_runs(video_cthw: np.ndarray) -> list[tuple[int, int]]:
    """``[first, end)`` of each run of identical consecutive frames of a ``(C, T, H, W)`` video."""
    num = video_cthw.shape[1]
    if num == 0:
        return []
    frames = np.moveaxis(video_cthw, 1, 0).reshape(num, -1)
    same = np.all(frames[1:] == frames[:-1], axis=1)
    starts = [0, *[int(k) + 1 for k in np.flatnonzero(~same)]]
    ends = [*starts[1:], num]
    return list(zip(starts, ends))


def augment_video(video_cthw: np.ndarray, params: AugParams) -> np.ndarray:
    """Augment a ``(C, T, H, W)`` uint8 video with one parameter set; each run of identical frames once."""
    if video_cthw.dtype != np.uint8 or video_cthw.ndim != 4 or video_cthw.shape[0] != 3:
        raise ValueError(f"expected a (3, T, H, W) uint8 video, got {video_cthw.shape} {video_cthw.dtype}")
    runs = frame_runs(video_cthw)
    firsts = np.array([a for a, _ in runs], dtype=np.int64)
    unique = np.moveaxis(video_cthw[:, firsts], 1, 0)  # (N, C, H, W)
    done = augment_frames(unique, params)
    lengths = np.array([b - a for a, b in runs], dtype=np.int64)
    return np.ascontiguousarray(np.moveaxis(np.repeat(done, lengths, axis=0), 0, 1))
