import cv2
import numpy as np
import pytest

from semret_ros.core.image import check_image, check_image_scale, resize, scaled_size, to_rgb


def _rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)


def _check_output(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert out.dtype == np.uint8
    assert out.shape == (*shape, 3)
    assert out.flags.c_contiguous
    assert out.flags.owndata


def test_rgb_is_copied_unchanged():
    rgb = _rgb()
    out = to_rgb(rgb, "rgb")
    _check_output(out, (4, 5))
    np.testing.assert_array_equal(out, rgb)
    rgb[0, 0] = 7
    assert not np.array_equal(out[0, 0], rgb[0, 0])


def test_bgr_is_reversed():
    rgb = _rgb()
    out = to_rgb(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr")
    _check_output(out, (4, 5))
    np.testing.assert_array_equal(out, rgb)


def test_rgba_and_bgra_drop_alpha():
    rgb = _rgb()
    alpha = np.full((4, 5, 1), 9, np.uint8)
    out = to_rgb(np.concatenate([rgb, alpha], axis=2), "rgba")
    _check_output(out, (4, 5))
    np.testing.assert_array_equal(out, rgb)
    out = to_rgb(np.concatenate([rgb[:, :, ::-1], alpha], axis=2), "bgra")
    _check_output(out, (4, 5))
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 1)])
def test_mono_is_replicated(shape):
    mono = np.arange(20, dtype=np.uint8).reshape(shape)
    out = to_rgb(mono, "mono")
    _check_output(out, (4, 5))
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], mono.reshape(4, 5))


def test_non_contiguous_input_gives_contiguous_output():
    rgb = np.asfortranarray(_rgb())
    out = to_rgb(rgb[::2], "rgb")
    _check_output(out, (2, 5))
    np.testing.assert_array_equal(out, rgb[::2])


@pytest.mark.parametrize(
    ("image", "order", "needle"),
    [
        (np.zeros((0, 0, 3), np.uint8), "rgb", "(0, 0, 3)"),
        (np.zeros((0, 5, 3), np.uint8), "bgr", "(0, 5, 3)"),
        (np.zeros((4, 0), np.uint8), "mono", "(4, 0)"),
        (np.zeros((12,), np.uint8), "rgb", "(12,)"),
        (np.zeros((2, 4, 5, 3), np.uint8), "rgb", "(2, 4, 5, 3)"),
        (np.zeros((4, 5), np.uint8), "rgb", "(4, 5)"),
        (np.zeros((4, 5, 4), np.uint8), "rgb", "(4, 5, 4)"),
        (np.zeros((4, 5, 3), np.uint8), "rgba", "(4, 5, 3)"),
        (np.zeros((4, 5, 3), np.uint8), "bgra", "(4, 5, 3)"),
        (np.zeros((4, 5, 3), np.uint8), "mono", "(4, 5, 3)"),
        (np.zeros((4, 5, 3), np.float32), "rgb", "float32"),
        (np.zeros((4, 5), np.uint16), "mono", "uint16"),
    ],
)
def test_bad_images_raise_naming_shape_and_dtype(image, order, needle):
    with pytest.raises(ValueError, match="shape") as info:
        to_rgb(image, order)
    assert needle in str(info.value)
    assert str(image.dtype) in str(info.value)


def test_unknown_color_order_is_named():
    with pytest.raises(ValueError, match="yuv422"):
        to_rgb(_rgb(), "yuv422")


def test_check_image_accepts_rgb_and_rejects_others():
    rgb = _rgb()
    assert check_image(rgb) is rgb
    bads = (
        np.zeros((4, 5), np.uint8),
        np.zeros((4, 5, 3), np.float64),
        np.zeros((0, 5, 3), np.uint8),
    )
    for bad in bads:
        with pytest.raises(ValueError, match=r"shape \(") as info:
            check_image(bad)
        assert str(bad.dtype) in str(info.value)


@pytest.mark.parametrize("bad", [-0.5, 1.5, float("nan"), float("inf"), -float("inf")])
def test_image_scale_outside_zero_one_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match="image_scale"):
        check_image_scale(bad)


def test_image_scale_zero_means_full_size():
    assert check_image_scale(0.0) == 1.0
    assert check_image_scale(0.25) == 0.25


def test_scaled_size_rounds_and_keeps_one_pixel():
    assert scaled_size(480, 640, 0.25) == (120, 160)
    assert scaled_size(5, 7, 0.5) == (2, 4)  # round half to even, as Python's round
    assert scaled_size(3, 3, 0.01) == (1, 1)


def test_resize_at_scale_one_is_the_array_itself():
    values = np.random.default_rng(1).random((6, 8), dtype=np.float32)
    assert resize(values, 1.0) is values


def test_nearest_resize_keeps_exact_values_and_masks_binary():
    ids = np.zeros((60, 80), np.int32)
    ids[10:40, 20:60] = 1
    ids[45:58, 5:30] = 2
    relevance = np.array([0.0, 0.8, 0.3], np.float32)
    similarity = relevance[ids]
    mask = similarity >= 0.5
    small_similarity, small_mask = resize(similarity, 0.25), resize(mask, 0.25)
    assert small_similarity.shape == small_mask.shape == (15, 20)
    assert small_mask.dtype == np.bool_
    assert set(np.unique(small_similarity).tolist()) <= set(relevance.tolist())
    # Sampled at the same pixels: the resized mask is the resized similarity thresholded.
    np.testing.assert_array_equal(small_mask, small_similarity >= 0.5)
    expected = cv2.resize(similarity, (20, 15), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(small_similarity, expected)


def test_area_resize_averages_a_picture():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, ::2] = 200  # alternate columns: every 2x2 block averages to 100
    np.testing.assert_array_equal(resize(image, 0.5, "area"), np.full((2, 2, 3), 100, np.uint8))
    with pytest.raises(ValueError, match="method"):
        resize(image, 0.5, "cubic")
