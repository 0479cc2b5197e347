"""Unit tests of the numpy augmentation ops (parity with the reference is in tests/parity)."""

from __future__ import annotations

import colorsys
from fractions import Fraction

import numpy as np
import pytest

from cosmos_policy_jax.data import transforms as T


def _img(rng: np.random.Generator, n: int = 2, size: int = 24) -> np.ndarray:
    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def test_crop_side_matches_torchvision_rounding():
    # round(sqrt(S*S*float32(0.9))): 213 at 224, 30 at 32 (fixture README 6).
    assert T.crop_side(224) == 213
    assert T.crop_side(32) == 30
    for s in (16, 64, 100, 256):
        side = T.crop_side(s)
        assert abs(side * side - 0.9 * s * s) <= side + 1


def test_draw_aug_params_ranges_and_determinism():
    params = [T.draw_aug_params(np.random.default_rng(i), 224, stronger=True) for i in range(300)]
    assert all(p.crop_height == p.crop_width == 213 for p in params)
    tops = {p.crop_top for p in params}
    assert tops <= set(range(12)) and len(tops) > 6
    assert all(-5 <= p.angle <= 5 and 0.7 <= p.brightness <= 1.3 for p in params)
    assert all(0.6 <= p.contrast <= 1.4 and 0.5 <= p.saturation <= 1.5 and -0.05 <= p.hue <= 0.05 for p in params)
    # floats are float32 values
    assert all(float(np.float32(p.angle)) == p.angle for p in params)
    weak = [T.draw_aug_params(np.random.default_rng(i), 64, stronger=False) for i in range(100)]
    assert all(p.angle == 0.0 and min(p.brightness, p.contrast, p.saturation) >= 0.8 for p in weak)
    assert all(max(p.brightness, p.contrast, p.saturation) <= 1.2 for p in weak)
    a = T.draw_aug_params(np.random.default_rng([0, 1, 2]), 224, True)
    b = T.draw_aug_params(np.random.default_rng([0, 1, 2]), 224, True)
    assert a == b


def test_fma_is_correctly_rounded():
    rng = np.random.default_rng(1)
    a = rng.random(4000).astype(np.float32)
    b = (rng.random(4000) * 3).astype(np.float32)
    c = (rng.random(4000) * 300).astype(np.float32)
    got = T._fma_f32(a, b, c)
    for i in range(0, 4000, 7):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        lo = np.nextafter(got[i], np.float32(-np.inf))
        hi = np.nextafter(got[i], np.float32(np.inf))
        err = abs(Fraction(float(got[i])) - exact)
        assert err <= abs(Fraction(float(lo)) - exact) and err <= abs(Fraction(float(hi)) - exact)


def test_fma_double_rounding_case():
    # a*b = 1 + d with 0 < d < 2**-29, c = 2**24: the float64 sum rounds to 2**24 + 1, exactly halfway
    # between the float32 neighbours 2**24 and 2**24 + 2, so a naive float32 cast ties to even (down)
    # while the correctly rounded fused result is 2**24 + 2.
    m1 = np.arange(2**23, 2**23 + 200_000, dtype=np.int64)
    m2 = -(-(2**46) // m1)
    r = m1 * m2 - 2**46
    k = int(np.flatnonzero((r > 0) & (r < 2**16) & (m2 < 2**24))[0])
    a = np.float32(m1[k] / 2**23)
    b = np.float32(m2[k] / 2**23)
    c = np.float32(2.0**24)
    naive = np.float32(float(a) * float(b) + float(c))
    got = T._fma_f32(np.array([a]), np.array([b]), np.array([c]))[0]
    assert naive == np.float32(2.0**24)
    assert got == np.float32(2.0**24 + 2)


def test_black_stays_black_and_identity_factors():
    rng = np.random.default_rng(2)
    x = _img(rng)
    zero = np.zeros_like(x)
    p = T.AugParams(1, 2, 20, 20, 3.0, 1.2, 0.7, 1.3, 0.04)
    assert not T.augment_frames(zero, p).any()
    assert np.array_equal(T.adjust_brightness(x, 1.0), x)
    assert np.array_equal(T.adjust_contrast(x, 1.0), x)
    assert np.array_equal(T.adjust_saturation(x, 1.0), x)
    assert np.array_equal(T.rotate(x, 0.0), x)
    assert np.array_equal(T.resized_crop(x, 0, 0, 24, 24, 24), x)
    # A zero hue shift goes through float32 HSV and back; it may only lose the truncation slack.
    assert np.abs(T.adjust_hue(x, 0.0).astype(int) - x).max() <= 1


def test_brightness_and_saturation_formulas():
    rng = np.random.default_rng(3)
    x = _img(rng)
    b = 1.25
    want = np.minimum(np.floor(np.float32(b) * x.astype(np.float32)), 255).astype(np.uint8)
    assert np.array_equal(T.adjust_brightness(x, b), want)
    # Saturation 0 gives the truncated grey image on every channel.
    grey = np.floor(np.float32(0.2989) * x[:, 0] + np.float32(0.587) * x[:, 1] + np.float32(0.114) * x[:, 2])
    out = T.adjust_saturation(x, 0.0)
    assert np.array_equal(out, np.repeat(grey[:, None].astype(np.uint8), 3, axis=1))
    # Contrast 0 gives the (float32) mean grey level everywhere.
    flat = T.adjust_contrast(x, 0.0)
    assert all(len(np.unique(f)) == 1 for f in flat)
    np.testing.assert_allclose(flat[:, 0, 0, 0], grey.reshape(2, -1).mean(axis=1), atol=1.0)


def test_hue_matches_colorsys():
    rng = np.random.default_rng(4)
    x = _img(rng, 1, 16)
    shift = 0.03
    out = T.adjust_hue(x, shift)
    ref = np.empty_like(out)
    for i in range(16):
        for j in range(16):
            r, g, b = (x[0, :, i, j] / 255.0).tolist()
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            rr, gg, bb = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
            ref[0, :, i, j] = [int(c * 255.999) for c in (rr, gg, bb)]
    assert np.abs(out.astype(int) - ref).max() <= 1


def test_rotate_quarter_turn_is_counter_clockwise():
    rng = np.random.default_rng(5)
    x = _img(rng, 1, 9)
    out = T.rotate(x, 90.0)
    # Counter-clockwise by 90 degrees about the centre == np.rot90 (k=1) on the (H, W) axes.
    assert np.array_equal(out, np.rot90(x, k=1, axes=(-2, -1)))
    out = T.rotate(x, -90.0)
    assert np.array_equal(out, np.rot90(x, k=-1, axes=(-2, -1)))


def test_rotate_fills_corners_with_zero():
    x = np.full((1, 3, 32, 32), 200, dtype=np.uint8)
    out = T.rotate(x, 45.0)
    assert (out[0, :, 0, 0] == 0).all() and (out[0, :, 16, 16] == 200).all()


def test_resized_crop_constant_and_bounds():
    x = np.full((3, 32, 32), 77, dtype=np.uint8)
    assert (T.resized_crop(x, 1, 2, 30, 30, 32) == 77).all()
    with pytest.raises(ValueError, match="does not fit"):
        T.resized_crop(x, 3, 3, 30, 30, 32)


def test_resized_crop_linear_ramp_is_linear():
    # Bilinear interpolation of a horizontal ramp stays (nearly) a ramp inside the image.
    ramp = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (3, 30, 1))  # 30 columns
    out = T.resized_crop(ramp, 0, 0, 30, 30, 32).astype(float)
    assert np.all(np.diff(out[0, 0]) >= 0)
    assert np.allclose(out[0], out[0, :1], atol=0)  # every row equal


def test_augment_video_equals_per_frame_ops():
    rng = np.random.default_rng(6)
    frames = _img(rng, 3, 32)
    order = [0, 0, 0, 1, 1, 2, 0, 2]
    video = np.ascontiguousarray(np.moveaxis(frames[order], 0, 1))  # (3, 8, 32, 32)
    p = T.draw_aug_params(rng, 32, stronger=True)
    out = T.augment_video(video, p)
    assert T.frame_runs(video) == [(0, 3), (3, 5), (5, 6), (6, 7), (7, 8)]
    for t, k in enumerate(order):
        one = frames[k]
        one = T.resized_crop(one, p.crop_top, p.crop_left, p.crop_height, p.crop_width, 32)
        one = T.rotate(one, p.angle)
        for fn, arg in (
            (T.adjust_brightness, p.brightness),
            (T.adjust_contrast, p.contrast),
            (T.adjust_saturation, p.saturation),
            (T.adjust_hue, p.hue),
        ):
            one = fn(one, arg)
        assert np.array_equal(out[:, t], one), t


def test_pil_resize_black_and_passthrough():
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    frames[1] = 0
    out = T.pil_resize(frames, 32)
    assert out.shape == (3, 32, 32, 3) and not out[1].any()
    same = T.pil_resize(out, 32)
    assert np.array_equal(same, out) and same is not out
