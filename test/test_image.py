import numpy as np
import pytest

from semret_ros.core.image import check_image, to_rgb


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
