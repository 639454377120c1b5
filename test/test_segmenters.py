from pathlib import Path

import cv2
import numpy as np
import pytest

from semret_ros.core.records import Prompt, Region, Segmentation, bbox_of_mask
from semret_ros.core.segmenters import (
    Sam2Config,
    Sam2Segmenter,
    SuperpixelConfig,
    SuperpixelSegmenter,
    build_segmenter,
    check_prompt,
    select_regions,
    snap_edges,
)

SAM2_CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A 160x120 image: three coloured objects on a mildly noisy grey background."""
    height, width = 120, 160
    rows, cols = np.mgrid[0:height, 0:width]
    objects = {
        "red_disc": (rows - 35) ** 2 + (cols - 40) ** 2 <= 20**2,
        "blue_square": (rows >= 60) & (rows < 100) & (cols >= 90) & (cols < 130),
        "green_disc": (rows - 85) ** 2 + (cols - 35) ** 2 <= 18**2,
    }
    colours = {"red_disc": (220, 40, 40), "blue_square": (40, 60, 210), "green_disc": (40, 190, 60)}
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 128.0) + rng.normal(0, 4, (height, width, 3))
    for name, mask in objects.items():
        image[mask] = np.asarray(colours[name]) + rng.normal(0, 4, (np.count_nonzero(mask), 3))
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _check_regions(regions: list[Region], shape: tuple[int, int]) -> None:
    assert regions
    for region in regions:
        assert region.mask.dtype == bool
        assert region.mask.shape == shape
        assert region.mask.any()
        assert 0.0 <= region.score <= 1.0
        assert tuple(region.bbox) == bbox_of_mask(region.mask)


def _superpixel_masks(segmentation: Segmentation, image: np.ndarray) -> list[np.ndarray]:
    """The superpixels of a segmentation as masks, after checking its label image."""
    labels = segmentation.labels
    assert isinstance(segmentation, Segmentation)
    assert labels.dtype == np.int32
    assert labels.shape == image.shape[:2]
    count = segmentation.scores.size
    # Every pixel labelled, labels 1..K consecutive (a partition of the image).
    np.testing.assert_array_equal(np.unique(labels), np.arange(1, count + 1))
    np.testing.assert_array_equal(segmentation.scores, np.ones(count, np.float32))
    return [labels == k for k in range(1, count + 1)]


@pytest.mark.parametrize("downscale", [1.0, 2.0])
def test_felzenszwalb_recovers_each_object(scene, downscale):
    image, objects = scene
    segmenter = build_segmenter(SuperpixelConfig(method="felzenszwalb", downscale=downscale))
    assert segmenter.name == "superpixel:felzenszwalb"
    segmentation = segmenter.segment(image)
    np.testing.assert_array_equal(segmentation.labels, segmenter.labels(image))
    masks = _superpixel_masks(segmentation, image)
    for name, truth in objects.items():
        best = max(_iou(mask, truth) for mask in masks)
        assert best > 0.8, name


def test_slic_cells_follow_object_boundaries(scene):
    image, objects = scene
    segmenter = build_segmenter(SuperpixelConfig(method="slic", n_segments=40, downscale=1.0))
    masks = _superpixel_masks(segmenter.segment(image), image)
    assert 20 <= len(masks) <= 80
    for name, truth in objects.items():
        inside = [m for m in masks if np.count_nonzero(m & truth) > np.count_nonzero(m) / 2]
        assert _iou(np.any(inside, axis=0), truth) > 0.8, name


@pytest.fixture(scope="module")
def blurred_scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Flat objects on a colour gradient, blurred like a camera's optics, with sensor noise.

    An object's true extent is where it covers at least half of a pixel, the middle of the
    blurred outline's ramp.
    """
    height, width = 120, 160
    rows, cols = np.mgrid[0:height, 0:width]
    objects = {
        "orange_disc": (rows - 50) ** 2 + (cols - 60) ** 2 <= 25**2,
        "blue_square": (rows >= 70) & (rows < 105) & (cols >= 100) & (cols < 140),
    }
    image = np.stack([90 + 0.4 * cols, 120 + 0 * cols, 140 - 0.3 * cols], axis=-1).astype(float)
    image[objects["orange_disc"]] = (230, 150, 30)
    image[objects["blue_square"]] = (40, 40, 200)
    noise = np.random.default_rng(1).normal(0, 3, image.shape)
    image = cv2.GaussianBlur(image, (0, 0), 2.0) + noise
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _main_region_cover(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of an object's pixels in the region that holds most of them."""
    counts = np.unique(labels[truth], return_counts=True)[1]
    return counts.max() / np.count_nonzero(truth)


def test_superpixels_keep_blurred_outlines_with_their_object(blurred_scene):
    """felzenszwalb gives an object's blurred rim to the background (the disc keeps 0.76 of its
    pixels at sigma 0.8 without edge snapping, 0.83 at sigma 0.5); snapping takes it back."""
    image, objects = blurred_scene
    snapped = SuperpixelSegmenter(SuperpixelConfig()).labels(image)
    unsnapped = SuperpixelSegmenter(SuperpixelConfig(edge_passes=0)).labels(image)
    for name, truth in objects.items():
        before, after = _main_region_cover(unsnapped, truth), _main_region_cover(snapped, truth)
        assert after > before + 0.05, name
    assert _main_region_cover(snapped, objects["orange_disc"]) > 0.9


@pytest.mark.parametrize("misplaced", ["inside", "outside"])
def test_snap_edges_moves_an_edge_onto_the_blurred_outline(blurred_scene, misplaced):
    image, objects = blurred_scene
    truth = objects["orange_disc"]
    kernel = np.ones((7, 7), np.uint8)
    shifted = cv2.erode if misplaced == "inside" else cv2.dilate
    region = shifted(truth.astype(np.uint8), kernel).astype(bool)  # 3 px off the outline
    labels = np.where(region, 2, 1).astype(np.int32)
    labels[:, :5] = 0  # no region: never taken, never changed

    assert _iou(labels == 2, truth) < 0.8
    one = snap_edges(image, labels, 1)
    snapped = snap_edges(image, labels, 6)
    assert _iou(labels == 2, truth) < _iou(one == 2, truth) < _iou(snapped == 2, truth)
    assert _iou(snapped == 2, truth) > 0.95
    np.testing.assert_array_equal(snapped == 0, labels == 0)
    assert snapped.dtype == np.int32
    np.testing.assert_array_equal(snap_edges(image, labels, 0), labels)


def test_snap_edges_keeps_an_edge_between_equal_colours_where_it_is():
    """On a flat image no side is closer: an edge does not wander (ties keep the own label)."""
    image = np.full((40, 50, 3), 100, np.uint8)
    labels = np.ones((40, 50), np.int32)
    labels[:, 20:] = 2
    np.testing.assert_array_equal(snap_edges(image, labels, 6), labels)


def test_snap_edges_rejects_bad_input():
    image = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="passes"):
        snap_edges(image, np.ones((10, 12), np.int32), -1)
    with pytest.raises(ValueError, match=r"\(10, 12\)"):
        snap_edges(image, np.ones((12, 10), np.int32), 1)
    with pytest.raises(ValueError, match="edge_passes"):
        SuperpixelConfig(edge_passes=-1)


def test_segmentation_validates_its_labels_once_at_construction():
    labels = np.array([[0, 1], [2, 2]], np.int64)
    segmentation = Segmentation(labels=labels, scores=[0.5, 1.0])
    assert segmentation.labels.dtype == np.int32
    assert segmentation.scores.dtype == np.float32
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        Segmentation(labels=labels, scores=[1.0])
    with pytest.raises(ValueError, match="integer"):
        Segmentation(labels=labels.astype(np.float32), scores=[1.0, 1.0])
    with pytest.raises(ValueError, match="scores"):
        Segmentation(labels=labels, scores=[1.0, 1.5])


def test_superpixel_prompts(scene):
    image, objects = scene
    segmenter = SuperpixelSegmenter(SuperpixelConfig())
    red, blue = objects["red_disc"], objects["blue_square"]
    on_red, on_blue = [40.0, 35.0], [110.0, 80.0]

    one = segmenter.segment_prompted(image, Prompt(np.array([on_red]), np.array([1])))
    assert _iou(one.mask, red) > 0.8
    assert one.score == 1.0
    assert one.bbox == bbox_of_mask(one.mask)

    both = segmenter.segment_prompted(image, Prompt(np.array([on_red, on_blue]), np.array([1, 1])))
    assert _iou(both.mask, red | blue) > 0.8

    box = segmenter.segment_prompted(image, Prompt(box=(85, 55, 50, 50)))
    assert _iou(box.mask, blue) > 0.8

    minus = segmenter.segment_prompted(
        image, Prompt(np.array([on_blue]), np.array([0]), box=(85, 55, 50, 50))
    )
    assert minus is None


def test_select_regions_on_instance_ids():
    labels = np.array(
        [
            [1, 1, 2, 2, 0],
            [1, 1, 2, 2, 0],
            [3, 3, 3, 4, 4],
        ],
        np.int32,
    )
    fg = Prompt(np.array([[0.5, 0.5], [2.9, 1.2]]), np.array([1, 1]))
    np.testing.assert_array_equal(select_regions(labels, fg), np.isin(labels, [1, 2]))
    on_background = Prompt(np.array([[4.0, 0.0]]), np.array([1]))
    assert not select_regions(labels, on_background).any()
    # Box over columns 0-2, rows 0-2 holds all of 1 and 3 but only half of 2 (not > 0.5).
    box = Prompt(box=(0, 0, 3, 3))
    np.testing.assert_array_equal(select_regions(labels, box), np.isin(labels, [1, 3]))
    box_minus = Prompt(np.array([[1.0, 2.0]]), np.array([0]), box=(0, 0, 3, 3))
    np.testing.assert_array_equal(select_regions(labels, box_minus), labels == 1)


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        (Prompt(np.array([[160.0, 5.0]]), np.array([1])), r"\(160.0, 5.0\)"),
        (Prompt(np.array([[3.0, -0.5]]), np.array([1])), r"\(3.0, -0.5\)"),
        (Prompt(np.array([[np.nan, 1.0]]), np.array([1])), r"\(nan, 1.0\)"),
        (Prompt(np.array([[3.0, 4.0]]), np.array([2])), "point_labels"),
        (Prompt(np.array([[3.0, 4.0]]), np.array([1, 0])), "point_labels"),
        (Prompt(np.array([3.0, 4.0]), np.array([1])), "points"),
        (Prompt(box=(150, 10, 20, 10)), r"box .*\(150, 10, 20, 10\)"),
        (Prompt(box=(10, 10, 0, 10)), "box"),
        (Prompt(), "neither"),
    ],
)
def test_bad_prompts_raise(prompt, needle):
    with pytest.raises(ValueError, match=needle):
        check_prompt(prompt, 120, 160)
    image = np.zeros((120, 160, 3), np.uint8)
    with pytest.raises(ValueError, match=needle):
        SuperpixelSegmenter(SuperpixelConfig()).segment_prompted(image, prompt)


def test_superpixel_rejects_bad_image_and_config():
    segmenter = SuperpixelSegmenter(SuperpixelConfig())
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        segmenter.segment(np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="method"):
        SuperpixelConfig(method="watershed")
    with pytest.raises(ValueError, match="downscale"):
        SuperpixelConfig(downscale=0.5)
    with pytest.raises(ValueError, match="Sam2Config"):
        build_segmenter(object())


def test_missing_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "sam2.1_hiera_tiny.pt"
    with pytest.raises(FileNotFoundError, match=r"sam2\.1_hiera_tiny\.pt") as info:
        build_segmenter(Sam2Config(checkpoint=str(missing)))
    assert str(missing) in str(info.value)
    assert "model" in str(info.value)


def test_unset_checkpoint_and_bad_model_cfg_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        Sam2Segmenter(Sam2Config())
    checkpoint = tmp_path / "sam2.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(ValueError, match=r"sam2\.1_hiera_t\.yaml"):
        Sam2Segmenter(Sam2Config(model_cfg="configs/sam9/none.yaml", checkpoint=str(checkpoint)))


@pytest.fixture(scope="module")
def sam2_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    """A random-init SAM2.1 hiera-tiny saved in sam2's own checkpoint format."""
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(SAM2_CFG, ckpt_path=None, device="cpu")
    path = tmp_path_factory.mktemp("sam2") / "sam2.pt"
    state = {key: value.clone() for key, value in model.state_dict().items()}
    torch.save({"model": state}, path)
    return path, state


@pytest.fixture(scope="module")
def sam2_segmenter(sam2_checkpoint) -> Sam2Segmenter:
    import torch

    torch.manual_seed(1)  # a different random init, so only loading the file gives equal weights
    config = Sam2Config(
        model_cfg=SAM2_CFG,
        checkpoint=str(sam2_checkpoint[0]),
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        device="cpu",
    )
    return build_segmenter(config)


@pytest.mark.slow
def test_sam2_loads_weights_from_the_file(sam2_checkpoint, sam2_segmenter):
    import torch

    _, saved = sam2_checkpoint
    loaded = sam2_segmenter.model.state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    assert sam2_segmenter.name == "sam2:sam2.1_hiera_t"


@pytest.mark.slow
def test_sam2_automatic_masks(scene, sam2_segmenter):
    image = scene[0]
    regions = sam2_segmenter.segment(image)
    _check_regions(regions, image.shape[:2])


@pytest.mark.slow
def test_sam2_prompted_matches_sam2_predictor(scene, sam2_segmenter):
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = scene[0]
    reference = SAM2ImagePredictor(sam2_segmenter.model)
    with torch.inference_mode():
        reference.set_image(image)
    prompts = {
        "point": (Prompt(np.array([[40.0, 35.0]]), np.array([1])), None),
        "point_and_box": (
            Prompt(np.array([[110.0, 80.0]]), np.array([1]), box=(85, 55, 50, 50)),
            np.array([85, 55, 135, 105], np.float32),
        ),
    }
    produced = 0
    for name, (prompt, xyxy) in prompts.items():
        region = sam2_segmenter.segment_prompted(image, prompt)
        with torch.inference_mode():
            masks, ious, _ = reference.predict(
                point_coords=prompt.points, point_labels=prompt.point_labels, box=xyxy
            )
        expected = masks[int(np.argmax(ious))] > 0.5
        if not expected.any():
            assert region is None, name
            continue
        produced += 1
        np.testing.assert_array_equal(region.mask, expected, err_msg=name)
        assert region.score == pytest.approx(float(np.clip(ious.max(), 0, 1)), abs=1e-6)
        assert region.bbox == bbox_of_mask(expected)
    assert produced  # random weights still give non-empty masks; otherwise this checks nothing
    with pytest.raises(ValueError, match=r"\(500.0, 1.0\)"):
        sam2_segmenter.segment_prompted(image, Prompt(np.array([[500.0, 1.0]]), np.array([1])))
