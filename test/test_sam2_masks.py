"""SAM2 automatic masks (sam2's stock grid and the project's superpixel-prompted path), the
image features kept so that describe runs no second image-encoder pass, batching, device and
precision.

The model is the shipped small SAM2's architecture (256 px input) with random weights: its
masks are noise, so the tests assert structure, equality with sam2's own code, which prompts
get decoded and how many encoder passes run, not mask quality (the benchmark and semret-eval
measure that with the trained weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semret_ros.core.metrics import best_mask_ious
from semret_ros.core.pipeline import SemanticPipeline
from semret_ros.core.records import Prompt, bbox_of_mask
from semret_ros.core.sam2_model import SHIPPED_CONFIG_FILE, SHIPPED_SAM2
from semret_ros.core.segmenters import (
    EMBEDDING_CACHE_FRAMES,
    MAX_COVERING_FRACTION,
    ImageFeatures,
    Sam2Config,
    Sam2Segmenter,
    prompt_points,
)
from semret_ros.shapes.world import generate_scene

SMALL_CFG = str(SHIPPED_SAM2["shapes_default"] / SHIPPED_CONFIG_FILE)
CUDA = torch.cuda.is_available()


def _config(**fields: object) -> Sam2Config:
    """Random weights, every threshold at 0 so that random masks are kept."""
    values: dict[str, object] = {
        "model_cfg": SMALL_CFG,
        "checkpoint": None,
        "points_per_side": 4,
        "points_per_batch": 8,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
    }
    values.update(fields)
    return Sam2Config(**values)


def _build(**fields: object) -> Sam2Segmenter:
    torch.manual_seed(0)  # the same random weights in every segmenter built here
    return Sam2Segmenter(_config(**fields))


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [generate_scene(seed, 160, 120, hard=True).image for seed in (11, 12, 13)]


@pytest.fixture(scope="module")
def segmenter() -> Sam2Segmenter:
    """Small batches, so that prompts are deduplicated against the masks of earlier ones."""
    return _build(points_per_batch=2)


class _Calls:
    """Counts a module's forward passes and records what a hook extracts from each."""

    def __init__(self, module: torch.nn.Module, record=None, pre: bool = False) -> None:
        self.count = 0
        self.records: list[object] = []
        self._record = record
        if pre:
            self._handle = module.register_forward_pre_hook(self._pre, with_kwargs=True)
        else:
            self._handle = module.register_forward_hook(self._post)

    def _pre(self, module, args, kwargs):
        self.count += 1
        if self._record is not None:
            self.records.append(self._record(kwargs))

    def _post(self, module, args, output):
        self.count += 1
        if self._record is not None:
            self.records.append(self._record(output))

    def remove(self) -> None:
        self._handle.remove()


def _check_regions(regions, shape) -> None:
    assert regions
    for region in regions:
        assert region.mask.dtype == bool and region.mask.shape == shape and region.mask.any()
        assert 0.0 <= region.score <= 1.0
        assert tuple(region.bbox) == bbox_of_mask(region.mask)


# --------------------------------------------------------------------------- prompts
def test_prompt_points_lie_inside_their_regions_largest_first():
    labels = np.ones((60, 80), np.int32)
    labels[5:55, 40:45] = 2
    labels[5:15, 45:75] = 2
    labels[30:50, 5:25] = 3
    points = prompt_points(labels, grid_side=3)
    interior, grid = points[:3], points[3:]
    under = labels[interior[:, 1].astype(int), interior[:, 0].astype(int)]
    areas = np.bincount(labels.ravel())[under]
    np.testing.assert_array_equal(np.sort(under), [1, 2, 3])
    assert (np.diff(areas) <= 0).all()  # largest region first
    rows, cols = np.nonzero(labels == 2)  # an L: its centroid is outside it, the point is not
    assert labels[round(rows.mean()), round(cols.mean())] != 2
    assert grid.shape == (9, 2)
    np.testing.assert_allclose(np.unique(grid[:, 0]), [80 / 6, 40, 80 * 5 / 6])
    with pytest.raises(ValueError, match="grid_side"):
        prompt_points(labels, -1)


# --------------------------------------------------------------------------- automatic masks
@pytest.mark.slow
def test_superpixel_path_returns_valid_deduplicated_masks(segmenter, images):
    image = images[0]
    regions = segmenter.segment(image)
    _check_regions(regions, image.shape[:2])
    scores = [r.score for r in regions]
    assert scores == sorted(scores, reverse=True)  # sam2's box NMS keeps the best first
    for i, a in enumerate(regions):  # ... and no two boxes overlap beyond box_nms_thresh
        for b in regions[i + 1 :]:
            assert _box_iou(a.bbox, b.bbox) <= segmenter.config.box_nms_thresh + 1e-6


def _box_iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


@pytest.mark.slow
def test_superpixel_path_decodes_no_prompt_inside_an_accepted_mask(segmenter, images):
    """Every decoder batch holds at most points_per_batch prompts, none of them inside a mask
    accepted from an earlier batch, and fewer prompts are decoded than proposed."""
    image = images[1]
    height, width = image.shape[:2]
    size = segmenter.model.image_size
    transforms = segmenter._generator.predictor._transforms
    prompts = _Calls(
        segmenter.model.sam_prompt_encoder,
        lambda kwargs: kwargs["points"][0][:, 0, :].float().numpy() / size * [width, height],
        pre=True,
    )

    def best_masks(out):  # each prompt's candidate with the highest predicted IoU
        best = out[0][torch.arange(len(out[0])), out[1].argmax(dim=1)][:, None]
        return transforms.postprocess_masks(best.float(), (height, width))[:, 0] > 0

    decoded = _Calls(segmenter.model.sam_mask_decoder, best_masks)
    try:
        segmenter.segment(image)
    finally:
        prompts.remove()
        decoded.remove()
    proposed = prompt_points(segmenter._proposals.labels(image)[::2, ::2], 2)
    batches = [np.asarray(p) for p in prompts.records]
    assert len(batches) >= 2
    assert all(1 <= len(b) <= segmenter.config.points_per_batch for b in batches)
    assert sum(len(b) for b in batches) < len(proposed)
    covered = np.zeros((height, width), bool)
    for points, masks in zip(batches, decoded.records, strict=True):
        rows = np.clip(np.round(points[:, 1]).astype(int), 0, height - 1)
        cols = np.clip(np.round(points[:, 0]).astype(int), 0, width - 1)
        assert not covered[rows, cols].any()
        small = masks.flatten(1).sum(1) <= MAX_COVERING_FRACTION * height * width
        covered |= masks[small].numpy().any(axis=0)


@pytest.mark.slow
def test_grid_path_is_sam2s_stock_generator(images):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from semret_ros.core.sam2_model import fit_predictor

    segmenter = _build(prompts="grid")
    image = images[0]
    batches = _Calls(segmenter.model.sam_mask_decoder, lambda out: out[0].shape[0])
    try:
        regions = segmenter.segment(image)
    finally:
        batches.remove()
    assert batches.records == [8, 8]  # 4 x 4 grid points in batches of points_per_batch
    stock = SAM2AutomaticMaskGenerator(
        segmenter.model,
        points_per_side=4,
        points_per_batch=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    fit_predictor(stock.predictor, segmenter.model)
    with torch.inference_mode():
        expected = [a for a in stock.generate(image) if a["segmentation"].any()]
    assert len(regions) == len(expected)
    for region, annotation in zip(regions, expected, strict=True):
        np.testing.assert_array_equal(region.mask, annotation["segmentation"])
    # The same frame's masks from the project path are scored by the same metric.
    assert best_mask_ious([r.mask for r in regions], [regions[0].mask])[0] == 1.0


# --------------------------------------------------------------------------- describe reuse
@pytest.mark.slow
@pytest.mark.parametrize("prompts", ["superpixel", "grid"])
def test_describe_reuses_the_frames_image_features(prompts, images, tiny_embedder):
    """Describing a processed frame runs no image-encoder pass, and gives the mask sam2's
    predictor gives after encoding that image itself."""
    from semret_ros.core.sam2_model import image_predictor

    segmenter = _build(prompts=prompts)
    pipeline = SemanticPipeline(segmenter, tiny_embedder, vocabulary=("red box", "blue disc"))
    encoder = _Calls(segmenter.model.image_encoder)
    try:
        frames = [pipeline.process(image, stamp_ns=i) for i, image in enumerate(images)]
        assert encoder.count == len(images)
        point = Prompt(np.array([[60.0, 50.0]]), np.array([1]))
        box = Prompt(box=(20, 20, 60, 50))
        results = [pipeline.describe(frame, point) for frame in frames]
        results += [pipeline.describe(frames[-1], box)]
        assert encoder.count == len(images)  # kept for the last EMBEDDING_CACHE_FRAMES frames
        assert len(images) <= EMBEDDING_CACHE_FRAMES

        reference = image_predictor(segmenter.model)
        with torch.inference_mode():
            reference.set_image(images[0])
            masks, ious, _ = reference.predict(point_coords=point.points, point_labels=[1])
        np.testing.assert_array_equal(results[0].mask, masks[int(np.argmax(ious))] > 0.5)
        assert encoder.count == len(images) + 1  # the reference encoded once, by itself

        # Not the same pixels: a copy, and a buffer refilled in place, are encoded again.
        copy = images[0].copy()
        segmenter.segment_prompted(copy, point)
        assert encoder.count == len(images) + 2
        copy[:] = images[1]
        segmenter.segment_prompted(copy, point)
        assert encoder.count == len(images) + 3
    finally:
        encoder.remove()


def test_image_features_keep_the_newest_and_forget_dead_images():
    features = ImageFeatures(2)
    a, b, c = (np.full((8, 8, 3), v, np.uint8) for v in (1, 2, 3))
    features.put(a, "A")
    features.put(b, "B")
    assert features.get(a) == "A" and features.get(a[0:8, 0:8]) == "A"  # a view of a hits
    assert features.get(a.copy()) is None  # equal pixels elsewhere: not the same frame
    features.put(c, "C")  # a was used last, so b goes
    assert features.get(b) is None and features.get(c) == "C" and features.get(a) == "A"
    a[2, 3] = 9  # refilled in place
    assert features.get(a) is None
    del c
    features.put(b, "B")
    assert len(features) == 1
    with pytest.raises(ValueError, match="size"):
        ImageFeatures(0)


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"prompts": "blind"}, "prompts must be one of"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"precision": "fp16"}, "precision 'fp16' needs a cuda device"),
    ],
)
def test_sam2_config_rejects_bad_values(fields, needle):
    with pytest.raises(ValueError, match=needle):
        Sam2Config(**fields)


def test_node_parameters_select_the_prompts_and_reject_bad_values(tmp_path):
    from semret_ros.ros import params

    checkpoint = tmp_path / "sam2.pt"
    checkpoint.write_bytes(b"")
    values = {spec.name: spec.default for spec in params.PARAMETERS}
    assert values["segmenter.sam2.prompts"] == Sam2Config().prompts
    values.update(
        {
            "segmenter.type": "sam2",
            "segmenter.sam2.checkpoint": str(checkpoint),
            "segmenter.sam2.prompts": "grid",
            "segmenter.sam2.precision": "bf16",
        }
    )
    params.check_values(values)
    config = params.pipeline_config(values).segmenter
    assert (config.prompts, config.precision) == ("grid", "bf16")
    for name, bad in (("segmenter.sam2.prompts", "blind"), ("segmenter.sam2.precision", "fp8")):
        with pytest.raises(ValueError, match=name):
            params.check_values({**values, name: bad})
    with pytest.raises(ValueError, match=r"segmenter\.sam2\.precision 'fp16' needs a cuda device"):
        params.pipeline_config({**values, "segmenter.sam2.precision": "fp16"})


# --------------------------------------------------------------------------- device, dtype
def _decoder_dtype(segmenter: Sam2Segmenter, image: np.ndarray) -> torch.dtype:
    """The dtype of the mask logits the decoder computes for an automatic-mask frame."""
    calls = _Calls(segmenter.model.sam_mask_decoder, lambda out: out[0].dtype)
    try:
        segmenter.segment(image)
    finally:
        calls.remove()
    return calls.records[0]


@pytest.mark.slow
@pytest.mark.parametrize("prompts", ["superpixel", "grid"])
def test_precision_is_honoured_on_cpu(prompts, images):
    fp32 = _build(prompts=prompts)
    bf16 = _build(prompts=prompts, precision="bf16")
    assert _decoder_dtype(fp32, images[2]) == torch.float32
    assert _decoder_dtype(bf16, images[2]) == torch.bfloat16
    _check_regions(bf16.segment(images[0]), images[0].shape[:2])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("prompts", ["superpixel", "grid"])
@pytest.mark.parametrize(("precision", "dtype"), [("auto", "bfloat16"), ("fp16", "float16")])
def test_cuda_device_precision_and_batching(prompts, precision, dtype, images):
    segmenter = _build(prompts=prompts, precision=precision, device="cuda", points_per_batch=4)
    assert next(segmenter.model.parameters()).device.type == "cuda"
    assert _decoder_dtype(segmenter, images[2]) == getattr(torch, dtype)
    batches = _Calls(segmenter.model.sam_mask_decoder, lambda out: out[0].shape[0])
    try:
        regions = segmenter.segment(images[0])
    finally:
        batches.remove()
    _check_regions(regions, images[0].shape[:2])
    assert batches.records and max(batches.records) <= 4
    region = segmenter.segment_prompted(images[0], Prompt(np.array([[60.0, 50.0]]), [1]))
    assert region is None or region.mask.shape == images[0].shape[:2]
