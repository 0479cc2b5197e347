"""Test-time preprocessing on images whose results can be predicted by hand."""

import numpy as np
import pytest

from cosmos_policy_jax.eval import preprocess as pp


def _ramp(size: int) -> np.ndarray:
    """R = column index, G = row index, B = 0: every pixel names its own position."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([cols, rows, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def test_center_crop_box_matches_reference_numbers():
    # int(224 * sqrt(0.9)) = int(212.5) = 212; torchvision centre offset round(12 / 2) = 6.
    assert pp.center_crop_box(224) == (6, 6, 212)
    # 256: int(242.86) = 242, offset round(7.0) = 7.
    assert pp.center_crop_box(256) == (7, 7, 242)
    # 32 (demo size): int(30.36) = 30, offset 1.
    assert pp.center_crop_box(32) == (1, 1, 30)


def test_flip_vertical_reverses_rows_only():
    img = _ramp(224)
    out = pp.flip_vertical(img)
    assert out[0, 5, 1] == 223 and out[223, 5, 1] == 0  # rows reversed
    np.testing.assert_array_equal(out[:, :, 0], img[:, :, 0])  # columns untouched
    np.testing.assert_array_equal(pp.flip_vertical(out), img)
    batch = np.stack([img, img[::-1]])
    np.testing.assert_array_equal(pp.flip_vertical(batch)[1], img)  # the image axis, not the batch axis


def test_center_crop_resize_of_a_ramp_is_the_interpolated_ramp():
    size = 224
    top, left, side = pp.center_crop_box(size)
    out = pp.center_crop_resize(_ramp(size))
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    # Bilinear (half-pixel centres, edge clamp) of a linear ramp is exact: output column j samples the
    # crop at x = (j + 0.5) * side / size - 0.5, i.e. the original column left + clip(x, 0, side - 1).
    x = np.clip((np.arange(size) + 0.5) * side / size - 0.5, 0, side - 1)
    expected_cols = left + x
    frac = expected_cols - np.floor(expected_cols)
    clear = np.abs(frac - 0.5) > 1e-3  # away from rounding ties
    np.testing.assert_array_equal(out[0, clear, 0], np.rint(expected_cols[clear]).astype(np.uint8))
    np.testing.assert_array_equal(out[clear, 0, 1], np.rint(top + x[clear]).astype(np.uint8))
    assert np.abs(out[0, :, 0].astype(int) - expected_cols).max() <= 0.5 + 1e-6
    assert out[0, 0, 0] == left and out[0, -1, 0] == left + side - 1


def test_center_crop_ignores_exactly_the_pixels_outside_the_box():
    size = 224
    top, left, side = pp.center_crop_box(size)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    outside = base.copy()
    mask = np.ones((size, size), bool)
    mask[top : top + side, left : left + side] = False
    outside[mask] = 255 - outside[mask]
    np.testing.assert_array_equal(pp.center_crop_resize(base), pp.center_crop_resize(outside))
    # The first row and column inside the box do matter.
    for r, c in ((top, size // 2), (size // 2, left), (top + side - 1, size // 2), (size // 2, left + side - 1)):
        changed = base.copy()
        changed[r, c] = 255 - changed[r, c]
        assert not np.array_equal(pp.center_crop_resize(base), pp.center_crop_resize(changed)), (r, c)


def test_jpeg_roundtrip_is_close_on_smooth_images_and_really_applied():
    smooth = _ramp(224)
    out = pp.jpeg_roundtrip(smooth, 95)
    assert out.shape == smooth.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - smooth.astype(int))
    assert err.mean() < 1.0 and err.max() <= 8
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert not np.array_equal(pp.jpeg_roundtrip(noise, 95), noise)  # lossy: the step ran
    lo, hi = pp.jpeg_roundtrip(noise, 10), pp.jpeg_roundtrip(noise, 95)
    assert np.abs(lo.astype(int) - noise).mean() > np.abs(hi.astype(int) - noise).mean()


def test_full_chain_flips_resizes_and_crops():
    # A 256 px LIBERO-like render: top half red, bottom half blue, rendered upside down.
    img = np.zeros((256, 256, 3), np.uint8)
    img[:128, :, 0] = 220
    img[128:, :, 2] = 220
    spec = pp.ImagePreprocessing(image_size=224, flip=True, jpeg_quality=95, center_crop=True)
    out = pp.preprocess_images(np.stack([img, img]), spec)
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.uint8
    # After the flip the top is blue; far from the boundary colours survive JPEG/resize/crop.
    assert out[0, :100, :, 2].mean() > 200 and out[0, :100, :, 0].mean() < 20
    assert out[0, -100:, :, 0].mean() > 200 and out[0, -100:, :, 2].mean() < 20
    # Without a crop the boundary stays at row 112 (128 * 224 / 256); the crop magnifies it about the
    # centre, so it stays at 112 as well: compare the two.
    no_crop = pp.preprocess_images(
        img, pp.ImagePreprocessing(image_size=224, flip=True, jpeg_quality=None, center_crop=False)
    )
    assert no_crop.shape == (224, 224, 3)
    assert no_crop[110, 50, 2] > 200 and no_crop[113, 50, 0] > 200


def test_full_chain_is_the_composition_of_the_steps():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    spec = pp.ImagePreprocessing(image_size=224, flip=True, jpeg_quality=95, center_crop=True)
    manual = pp.center_crop_resize(pp.resize(pp.jpeg_roundtrip(img[:, ::-1], 95), 224))
    np.testing.assert_array_equal(pp.preprocess_images(img, spec), manual)


def test_same_size_input_is_not_resized():
    img = _ramp(224)
    spec = pp.ImagePreprocessing(image_size=224, flip=False, jpeg_quality=None, center_crop=False)
    np.testing.assert_array_equal(pp.preprocess_images(img, spec), img)


def test_proprio_normalisation_is_a_min_max_map():
    stats = {"proprio_min": np.array([-1.0, 0.0, 2.0]), "proprio_max": np.array([1.0, 4.0, 3.0])}
    np.testing.assert_allclose(pp.normalize_proprio(np.array([0.0, 4.0, 2.0]), stats), [0.0, 1.0, -1.0])
    with pytest.raises(ValueError, match="statistics have 3"):
        pp.normalize_proprio(np.zeros(9), stats)


def test_bad_images_are_rejected_with_one_line():
    with pytest.raises(ValueError, match="uint8 RGB"):
        pp.flip_vertical(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="square"):
        pp.center_crop_resize(np.zeros((4, 6, 3), np.uint8))
