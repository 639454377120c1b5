"""crop_region: the square picture of one region that CLIP sees."""

from __future__ import annotations

import numpy as np
import pytest

from semret_ros.core.records import bbox_of_mask
from semret_ros.core.visual_prompt import CLIP_MEAN_RGB, VISUAL_PROMPTS, crop_region, square_crop


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[20:30, 10:50] = True  # 40 wide, 10 high
    return image, mask


@pytest.mark.parametrize("mode", VISUAL_PROMPTS)
def test_crops_are_square_uint8_and_keep_the_region(mode, scene):
    image, mask = scene
    crop = crop_region(image, mask, mode, padding=0.1)
    assert crop.dtype == np.uint8
    assert crop.shape == (48, 48, 3)  # longer side 40 + 2 * 4 padding
    # The bbox sits centred in the square; its masked pixels are the image's own.
    np.testing.assert_array_equal(crop[19:29, 4:44], image[20:30, 10:50])


def test_modes_differ_outside_the_mask(scene):
    image, mask = scene
    crops = {mode: crop_region(image, mask, mode, padding=0.1) for mode in VISUAL_PROMPTS}
    window = crops["bbox_crop"][15:33, 4:44]  # rows 16..33 of the image, all inside it
    np.testing.assert_array_equal(window, image[16:34, 10:50])
    outside = np.ones((48, 48), bool)
    outside[19:29, 4:44] = False
    assert np.all(crops["masked_crop"][outside] == CLIP_MEAN_RGB)
    for a, b in (("masked_crop", "blur"), ("blur", "bbox_crop"), ("masked_crop", "bbox_crop")):
        assert not np.array_equal(crops[a], crops[b])
    # Blur keeps the context's colour but not its texture.
    blurred, sharp = crops["blur"][15:19, 4:44].astype(float), window[:4].astype(float)
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.25 * np.abs(np.diff(sharp, axis=1)).mean()


def test_square_beyond_the_image_is_filled(scene):
    image, _ = scene
    mask = np.zeros(image.shape[:2], bool)
    mask[0:4, 70:80] = True  # a strip in the top-right corner
    crop = crop_region(image, mask, "bbox_crop", padding=0.0, fill=(1, 2, 3))
    assert crop.shape == (10, 10, 3)
    assert np.all(crop[:3] == (1, 2, 3))  # rows -3..-1 lie above the image
    np.testing.assert_array_equal(crop[3:], image[0:7, 70:80])


def test_bad_input_raises_value_error(scene):
    image, mask = scene
    with pytest.raises(ValueError, match="empty"):
        crop_region(image, np.zeros_like(mask), "masked_crop")
    with pytest.raises(ValueError, match="mask shape"):
        crop_region(image, mask[:-1], "masked_crop")
    with pytest.raises(ValueError, match="mode"):
        crop_region(image, mask, "outline")
    with pytest.raises(ValueError, match="padding"):
        crop_region(image, mask, "bbox_crop", padding=-1.0)
    with pytest.raises(ValueError, match="image must be"):
        crop_region(image[..., 0], mask, "bbox_crop")


@pytest.mark.parametrize("mode", VISUAL_PROMPTS)
def test_square_crop_from_an_id_window_equals_the_full_mask_crop(mode):
    """Reading the id image only inside the window gives crop_region's crop, edges included."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    ids = np.zeros((50, 70), np.int32)
    ids[0:12, 0:30] = 1  # touches two image edges, so the square leaves the image
    ids[20:50, 55:70] = 2
    ids[25:35, 10:40] = 3
    ids[30:32, 20:60] = 3  # not convex: the window holds other ids and background
    for label in (1, 2, 3):
        mask = ids == label
        crop = square_crop(
            image, bbox_of_mask(mask), lambda rows, cols, k=label: ids[rows, cols] == k, mode
        )
        np.testing.assert_array_equal(crop, crop_region(image, mask, mode))
        np.testing.assert_array_equal(crop, crop_region(image, mask.astype(np.uint8) * 255, mode))
    whole = square_crop(image, (0, 0, 70, 50), None, "bbox_crop", padding=0.0)
    np.testing.assert_array_equal(
        whole, crop_region(image, np.ones((50, 70), bool), "bbox_crop", padding=0.0)
    )
    if mode != "bbox_crop":
        with pytest.raises(ValueError, match="mask"):
            square_crop(image, (0, 0, 5, 5), None, mode)
