"""Overlays: shapes, channel order, legend, deterministic colours, PNG round trip."""

import cv2
import numpy as np
import pytest

from semret_ros.core.viz import (
    colorize,
    heatmap_overlay,
    instance_overlay,
    label_overlay,
    mask_overlay,
    palette,
    panel,
    save_png,
)


def gray_image(height=40, width=60, value=128) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def test_heatmap_hot_is_red_and_cold_is_blue():
    similarity = np.zeros((40, 60), np.float32)
    similarity[:, 30:] = 1.0
    out = heatmap_overlay(np.zeros((40, 60, 3), np.uint8), similarity, alpha=1.0)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    hot, cold = out[20, 45].astype(int), out[20, 10].astype(int)
    assert hot[0] > 100 and hot[0] > hot[2] + 100  # red in RGB order
    assert cold[2] > 100 and cold[2] > cold[0] + 100  # blue in RGB order


def test_heatmap_blend_and_normalisation():
    image = gray_image()
    similarity = np.full((40, 60), 0.2, np.float32)
    similarity[0, 0] = 0.4
    half = heatmap_overlay(image, similarity, alpha=0.5)
    expected = np.rint(0.5 * image.astype(float) + 0.5 * colorize(similarity)).astype(np.uint8)
    np.testing.assert_array_equal(half, expected)
    assert np.array_equal(heatmap_overlay(image, similarity, alpha=0.0), image)
    stretched = colorize(similarity, normalize=True)
    assert stretched[0, 0, 0] > 100 and stretched[5, 5, 2] > 100  # max -> red, min -> blue
    assert np.array_equal(
        colorize(np.full((2, 2), 0.7), normalize=True), colorize(np.zeros((2, 2)))
    )
    assert np.array_equal(colorize(np.full((2, 2), np.nan)), colorize(np.zeros((2, 2))))


def test_heatmap_rejects_bad_input():
    with pytest.raises(ValueError, match="similarity"):
        heatmap_overlay(gray_image(), np.zeros((10, 10)))
    with pytest.raises(ValueError, match="image"):
        heatmap_overlay(np.zeros((40, 60)), np.zeros((40, 60)))
    with pytest.raises(ValueError, match="alpha"):
        heatmap_overlay(gray_image(), np.zeros((40, 60)), alpha=1.5)


def test_mask_overlay_tints_only_the_mask():
    mask = np.zeros((40, 60), bool)
    mask[10:30, 10:30] = True
    out = mask_overlay(gray_image(), mask, color=(255, 0, 0), alpha=0.5)
    assert tuple(out[20, 20]) == (192, 64, 64)
    assert tuple(out[10, 20]) == (255, 0, 0)  # outline
    assert tuple(out[0, 0]) == (128, 128, 128)


def test_palette_is_deterministic_and_distinct():
    colors = palette(20)
    assert colors.shape == (20, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(palette(5), colors[:5])
    np.testing.assert_array_equal(palette(257)[256], colors[0])
    neighbours = np.abs(colors[1:].astype(int) - colors[:-1].astype(int)).sum(axis=1)
    assert neighbours.min() > 60
    assert len({tuple(c) for c in colors}) == 20


def test_instance_overlay_colours_ids_and_draws_boundaries():
    ids = np.zeros((40, 60), np.int32)
    ids[:, 20:40] = 1
    ids[:, 40:] = 2
    image = np.zeros((40, 60, 3), np.uint8)
    out = instance_overlay(image, ids, alpha=1.0)
    np.testing.assert_array_equal(out[5, 30], palette(1)[0])
    np.testing.assert_array_equal(out[5, 50], palette(2)[1])
    assert tuple(out[5, 5]) == (0, 0, 0)  # id 0 keeps the image
    assert tuple(out[5, 39]) == (255, 255, 255)  # boundary between 1 and 2
    np.testing.assert_array_equal(out, instance_overlay(image, ids, alpha=1.0))


def test_label_overlay_draws_legend():
    labels = ["ceiling", "ground"]
    label_image = np.zeros((80, 120), np.uint16)
    label_image[60:, :] = 2
    plain = gray_image(80, 120)
    out = label_overlay(plain, label_image, labels, alpha=1.0)
    colors = palette(2)
    legend = out[:30, :70]
    for color in colors:
        assert np.all(legend == color, axis=-1).sum() >= 16  # a swatch of each label colour
    assert np.all(legend > 200, axis=-1).sum() > 30  # white legend text
    np.testing.assert_array_equal(out[70, 100], colors[1])
    assert tuple(out[45, 100]) == (128, 128, 128)  # unlabelled, outside the legend
    with pytest.raises(ValueError, match="label_image"):
        label_overlay(plain, label_image, ["only one"])


def test_panel_tiles_with_titles():
    big = gray_image(40, 60)
    small = np.zeros((20, 20), bool)
    small[:10] = True
    tiled = panel([big, small], ["frame", "mask"], gap=4)
    assert tiled.dtype == np.uint8 and tiled.ndim == 3
    assert tiled.shape[1] == 60 + 4 + 40
    strip = tiled.shape[0] - 40
    assert strip > 0
    assert tuple(tiled[strip + 5, 80]) == (255, 255, 255)
    assert tuple(tiled[strip + 30, 80]) == (0, 0, 0)
    assert (tiled[:strip] == 255).any()  # title text
    assert panel([big]).shape == (40, 60, 3)
    with pytest.raises(ValueError, match="titles"):
        panel([big, big], ["one"])


def test_save_png_round_trips_rgb(tmp_path):
    image = np.zeros((4, 5, 3), np.uint8)
    image[0, 0] = (255, 0, 0)
    path = save_png(tmp_path / "sub" / "out.png", image)
    read = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert tuple(read[0, 0]) == (0, 0, 255)  # red stored as BGR on disk
    np.testing.assert_array_equal(cv2.cvtColor(read, cv2.COLOR_BGR2RGB), image)
    with pytest.raises(ValueError, match="path"):
        save_png(tmp_path / "out.jpg", image)
