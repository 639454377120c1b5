"""Class-agnostic region proposals: weight-free superpixels or SAM2.

Both segmenters share one interface (RGB uint8 in, proposals out) so the pipeline never
branches on which one it runs: superpixels hand over the label image they compute (a
:class:`Segmentation`, no per-region mask), SAM2 its overlapping masks (a :class:`Region`
list), and ``refine.assign_proposals`` turns either into the frame's instance-id image.
Superpixels are the default because no SAM2 weights can be downloaded on the project's
machines; SAM2 is used when a checkpoint file is configured.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from scipy import ndimage

from semret_ros.core.image import check_image
from semret_ros.core.records import Prompt, Region, Segmentation, bbox_of_mask
from semret_ros.core.sam2_model import (
    build_sam2_model,
    fit_predictor,
    predict_one_mask,
    resolve_sam2_checkpoint,
)

SUPERPIXEL_METHODS = ("felzenszwalb", "slic")
SAM2_PROMPTS = ("superpixel", "grid")
SAM2_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class SuperpixelConfig:
    """Weight-free region proposals from scikit-image.

    Defaults give roughly 20-80 regions on a 640x480 indoor/outdoor photo in ~0.2 s on one
    CPU core (a third of it edge snapping): few enough that embedding every region with CLIP
    stays affordable.
    """

    method: str = "felzenszwalb"
    """``felzenszwalb`` (follows colour edges) or ``slic`` (compact, roughly equal cells)."""
    scale: float = 300.0
    """felzenszwalb: higher prefers larger regions."""
    sigma: float = 0.5
    """felzenszwalb: Gaussian pre-smoothing width, in proposal-resolution pixels. More smoothing
    blends an object's blurred outline with its surroundings, so regions leak across it: on the
    independent shapes test renderer (with edge snapping), at 0.8 one object in fifteen shared
    its region with a background patch of over a fifth of the region, at 0.5 one in a hundred."""
    min_size: int = 400
    """felzenszwalb: smallest region, in full-resolution pixels (scaled by the downscale)."""
    n_segments: int = 64
    """slic: approximate number of cells."""
    compactness: float = 10.0
    """slic: higher trades colour adherence for square cells."""
    downscale: float = 2.0
    """Propose on the image shrunk by this factor (area-averaged) and upsample the labels back
    with nearest neighbour; 2 makes felzenszwalb ~5x faster at 640x480 for slightly blockier
    boundaries. 1 disables it."""
    edge_passes: int = 6
    """Passes of :func:`snap_edges` on the full-resolution labels (0 disables it). Blurred or
    anti-aliased object outlines otherwise end up in the surrounding region: superpixels
    (more so at a downscale) give the ramp between two colours to the larger, more varied
    region, which cost the shapes scenes about a tenth of every object's pixels. Each pass
    moves an edge by at most one pixel, and an outline ramp is a few pixels wide (more after
    the downscale's block edges); passes stop early once no edge moves."""

    def __post_init__(self) -> None:
        if self.method not in SUPERPIXEL_METHODS:
            raise ValueError(f"method must be one of {SUPERPIXEL_METHODS}, got {self.method!r}")
        for name in ("scale", "sigma", "compactness"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size!r}")
        if self.n_segments < 1:
            raise ValueError(f"n_segments must be >= 1, got {self.n_segments!r}")
        if not np.isfinite(self.downscale) or self.downscale < 1:
            raise ValueError(f"downscale must be a finite number >= 1, got {self.downscale!r}")
        if self.edge_passes < 0:
            raise ValueError(f"edge_passes must be >= 0, got {self.edge_passes!r}")


@dataclass
class Sam2Config:
    """SAM2 automatic mask generation (and prompted segmentation with the same weights).

    Threshold defaults are sam2's own, tuned for real weights; random weights need them at 0.
    ``points_per_side`` is 16 rather than sam2's 32 because the stock generator's cost grows
    with its square (~25-40 s per 640x480 frame on 2 CPU cores at 16, ~4x that at 32).
    """

    model_cfg: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    """Hydra config name inside the sam2 package; must match the checkpoint's architecture."""
    checkpoint: str | None = ""
    """Path to a sam2 checkpoint (``torch.save({"model": state_dict})``, e.g.
    ``sam2.1_hiera_tiny.pt``). ``""`` means not configured and is rejected; ``None`` explicitly
    asks for random initialisation, which only makes sense for tests and benchmarks."""
    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.5
    """Measured with the shipped small SAM2 (``benchmarks/sweep_sam2_thresholds.py``, at
    stability 0.85): 0.5 keeps every object 0 keeps (recall at IoU 0.5 0.945) with 13 masks
    per frame instead of 15; sam2's own 0.8 loses 2 % of the objects and 5 % at IoU 0.75.
    Released sam2 models are calibrated for 0.8."""
    stability_score_thresh: float = 0.85
    """Measured as above: sam2's 0.95 drops a fifth of this model's objects (recall at IoU 0.5
    0.945 -> 0.764), whose 64 x 64 masks have soft edges; 0.85 keeps them at 13 masks per
    frame (0.7: one more object of 55, 15 masks)."""
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    """Removes small islands and holes in each mask (needs OpenCV); 0 disables it."""
    device: str = "cpu"
    """Torch device."""
    precision: str = "auto"
    """Autocast dtype of inference: ``auto`` (bfloat16 on cuda as sam2 recommends, float32 on
    cpu), ``fp32`` (no autocast), ``bf16`` (cpu or cuda) or ``fp16`` (cuda only)."""
    prompts: str = "superpixel"
    """How automatic masks are prompted. ``superpixel``: the project's path, one point inside
    each superpixel plus a grid of ``points_per_side // 2`` per side for what superpixels
    merge, largest regions first, prompts inside an already accepted mask (under half the
    frame) dropped before decoding, sam2's three candidate masks per prompt (only the best by
    predicted IoU marks pixels as covered), then sam2's own predicted-IoU, stability and
    box-NMS filtering.
    ``grid``: sam2's stock ``SAM2AutomaticMaskGenerator`` on a ``points_per_side`` grid (three
    candidate masks per point)."""

    def __post_init__(self) -> None:
        if self.prompts not in SAM2_PROMPTS:
            raise ValueError(f"prompts must be one of {SAM2_PROMPTS}, got {self.prompts!r}")
        if self.precision not in SAM2_PRECISIONS:
            raise ValueError(f"precision must be one of {SAM2_PRECISIONS}, got {self.precision!r}")
        if self.precision == "fp16" and not str(self.device).startswith("cuda"):
            raise ValueError(f"precision 'fp16' needs a cuda device, got device {self.device!r}")
        if self.points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {self.points_per_side!r}")
        if self.points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {self.points_per_batch!r}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
            value = getattr(self, name)
            if not np.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.min_mask_region_area < 0:
            raise ValueError(
                f"min_mask_region_area must be >= 0, got {self.min_mask_region_area!r}"
            )


class Segmenter(Protocol):
    """What the pipeline needs from a segmenter."""

    name: str

    def segment(self, image: np.ndarray) -> Segmentation | list[Region]:
        """Propose regions covering the objects in an RGB image.

        A label image when the proposals do not overlap (cheapest for the pipeline), else
        a list of possibly overlapping masks.
        """
        ...

    def segment_prompted(self, image: np.ndarray, prompt: Prompt) -> Region | None:
        """Segment the one object a prompt points at; None when nothing is found."""
        ...


def check_prompt(prompt: Prompt, height: int, width: int) -> None:
    """Reject prompts that do not fit an image of ``height`` x ``width``.

    Points are pixel coordinates (x, y) and must fall on a pixel; the box must lie inside the
    image and cover at least one pixel. Shared by both segmenters so that the same prompt is
    accepted or rejected identically whichever one is configured.

    Raises:
        ValueError: naming the offending point, label or box.
    """
    points = np.asarray(prompt.points, dtype=np.float64)
    labels = np.asarray(prompt.point_labels)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"prompt points must have shape (P, 2), got {points.shape}")
    if labels.shape != (points.shape[0],):
        raise ValueError(
            f"prompt point_labels must have shape ({points.shape[0]},), got {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"prompt point_labels must be 0 or 1, got {labels.tolist()}")
    for x, y in points:
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < width and 0 <= y < height):
            raise ValueError(f"prompt point ({x}, {y}) is outside the {width}x{height} image")
    if prompt.box is not None:
        x, y, w, h = prompt.box
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
            raise ValueError(
                f"prompt box (x, y, width, height) = {tuple(prompt.box)} must have a positive "
                f"size and lie inside the {width}x{height} image"
            )
    if points.shape[0] == 0 and prompt.box is None:
        raise ValueError("prompt has neither points nor a box")


def select_regions(labels: np.ndarray, prompt: Prompt, box_fraction: float = 0.5) -> np.ndarray:
    """The mask of the labelled regions a prompt selects.

    Works on any label image where 0 is "no region" (superpixel labels, or the pipeline's
    refined instance ids). A foreground point selects the region under it (several are
    united); a box selects the regions with more than ``box_fraction`` of their pixels inside
    it (added to the point selection); a background point removes the region under it.

    Raises:
        ValueError: the prompt does not fit the label image (see :func:`check_prompt`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty HxW array, got shape {labels.shape}")
    check_prompt(prompt, labels.shape[0], labels.shape[1])
    points = np.asarray(prompt.points, dtype=np.float64)
    point_labels = np.asarray(prompt.point_labels)
    cols = points[:, 0].astype(np.int64)
    rows = points[:, 1].astype(np.int64)
    under = labels[rows, cols]
    selected = set(under[point_labels == 1].tolist())
    if prompt.box is not None:
        x, y, w, h = prompt.box
        flat = labels.ravel().astype(np.int64)
        total = np.bincount(flat)
        inside = np.bincount(
            labels[y : y + h, x : x + w].ravel().astype(np.int64), minlength=total.size
        )
        fraction = inside / np.maximum(total, 1)
        selected.update(np.flatnonzero(fraction > box_fraction).tolist())
    selected -= set(under[point_labels == 0].tolist())
    selected.discard(0)
    return np.isin(labels, sorted(selected))


_SNAP_OFFSETS = tuple(
    (3 * dy, 3 * dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
)
"""Where :func:`snap_edges` samples a region's nearby colour: 3 px away in 8 directions, past
the pixel's own blend of the two colours yet close enough to follow shading (2 and 4 px as
well kept the same share of the shapes scenes' object pixels in their regions, and cost more)."""

_NO_LABEL = np.iinfo(np.int32).max


def label_edges(labels: np.ndarray) -> np.ndarray:
    """HxW bool: pixels with a 4-neighbour of another label (both sides of every edge)."""
    edges = np.zeros(labels.shape, bool)
    across = labels[:, 1:] != labels[:, :-1]
    edges[:, 1:] |= across
    edges[:, :-1] |= across
    down = labels[1:] != labels[:-1]
    edges[1:] |= down
    edges[:-1] |= down
    return edges


def snap_edges(image: np.ndarray, labels: np.ndarray, passes: int) -> np.ndarray:
    """Move region edges onto the colour edges of ``image`` (a new HxW int32 label image).

    In each pass every pixel on an edge (a 4-neighbour has another label) takes the label,
    among its own and its 4-neighbours' (at most two others), whose pixels sampled around it
    (:data:`_SNAP_OFFSETS`) have the mean RGB colour closest to the pixel's. A pixel of a
    blurred outline mixes the two sides' colours in proportion to how much each covers it,
    so it joins the side that covers most of it, wherever the superpixels put the edge; a
    local mean rather than a region's mean follows gradients and shading. Label 0 (no region)
    is neither taken nor changed. Each pass moves an edge by at most one pixel.
    """
    if passes < 0:
        raise ValueError(f"passes must be >= 0, got {passes!r}")
    ids = np.array(labels, dtype=np.int32)
    colours = np.asarray(check_image(image), dtype=np.float32)
    if ids.ndim != 2 or colours.shape[:2] != ids.shape:
        raise ValueError(f"labels: expected the image's shape {colours.shape[:2]}, got {ids.shape}")
    pad = max(max(abs(dy), abs(dx)) for dy, dx in _SNAP_OFFSETS)
    stride = ids.shape[1] + 2 * pad
    # Flat offsets into the padded images: one gather per pass instead of one per offset.
    neighbours = np.array([stride, -stride, 1, -1])
    samples = np.array([dy * stride + dx for dy, dx in _SNAP_OFFSETS])
    padded_colours = np.pad(colours, ((pad, pad), (pad, pad), (0, 0))).reshape(-1, 3)
    # Only pixels whose samples changed can decide differently in the next pass.
    active = ids > 0
    for _ in range(passes):
        rows, cols = np.nonzero(label_edges(ids) & active & (ids > 0))
        if rows.size == 0:
            break
        padded = np.pad(ids, pad).reshape(-1)
        centre = (rows + pad) * stride + cols + pad
        own = ids[rows, cols]
        # Own label and the lowest and highest other label among the 4-neighbours: every
        # candidate where at most three regions meet, which is all but a few corner pixels.
        near = np.take(padded, centre[:, None] + neighbours)
        other = (near != own[:, None]) & (near > 0)
        lowest = np.where(other, near, _NO_LABEL).min(axis=1)
        highest = np.where(other, near, 0).max(axis=1)
        candidates = np.stack(
            [own, np.where(lowest == _NO_LABEL, own, lowest), np.where(highest == 0, own, highest)],
            axis=1,
        )
        around = np.take(padded, centre[:, None] + samples)
        member = (candidates[:, :, None] == around[:, None, :]) & (candidates[:, :, None] > 0)
        count = member.sum(axis=2)
        # np.take, not fancy indexing: several times faster for rows of a 2-D array.
        sampled = np.take(padded_colours, centre[:, None] + samples, axis=0)
        sums = np.matmul(member.astype(np.float32), sampled)
        means = sums / np.maximum(count, 1)[:, :, None]
        distance = ((means - colours[rows, cols][:, None, :]) ** 2).sum(axis=2)
        distance[count == 0] = np.inf
        # argmin keeps the first of equal distances: the pixel's own label on a tie.
        choice = candidates[np.arange(rows.size), distance.argmin(axis=1)]
        moved = choice != own
        if not moved.any():
            break
        ids[rows, cols] = choice
        active = np.zeros(ids.shape, np.uint8)
        active[rows[moved], cols[moved]] = 1
        active = cv2.dilate(active, np.ones((2 * pad + 1, 2 * pad + 1), np.uint8)).astype(bool)
    return ids


class SuperpixelSegmenter:
    """Region proposals from felzenszwalb or slic; no weights, deterministic, CPU only."""

    def __init__(self, config: SuperpixelConfig) -> None:
        self.config = config
        self.name = f"superpixel:{config.method}"

    def labels(self, image: np.ndarray) -> np.ndarray:
        """HxW int32 superpixel labels 1..K covering every pixel (0 is never used)."""
        from skimage.segmentation import felzenszwalb, slic

        image = check_image(image)
        cfg = self.config
        height, width = image.shape[:2]
        small_h = max(1, round(height / cfg.downscale))
        small_w = max(1, round(width / cfg.downscale))
        small = image
        if (small_h, small_w) != (height, width):
            small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
        if cfg.method == "felzenszwalb":
            min_size = round(cfg.min_size * small_h * small_w / (height * width))
            labels = felzenszwalb(
                small, scale=cfg.scale, sigma=cfg.sigma, min_size=min_size, channel_axis=-1
            )
            labels = labels + 1
        else:
            labels = slic(
                small,
                n_segments=cfg.n_segments,
                compactness=cfg.compactness,
                start_label=1,
                channel_axis=-1,
            )
        if labels.shape != (height, width):
            rows = np.arange(height) * small_h // height
            cols = np.arange(width) * small_w // width
            labels = labels[rows[:, None], cols[None, :]]
        labels = snap_edges(image, labels, cfg.edge_passes)
        # Upsampling or snapping can drop a tiny label; relabel so labels stay consecutive.
        present = np.bincount(labels.ravel()) > 0
        return np.cumsum(present, dtype=np.int32)[labels]

    def segment(self, image: np.ndarray) -> Segmentation:
        """The superpixel label image as it is, each superpixel with score 1.0."""
        labels = self.labels(image)
        return Segmentation(labels=labels, scores=np.ones(int(labels.max()), np.float32))

    def segment_prompted(self, image: np.ndarray, prompt: Prompt) -> Region | None:
        """Union of the superpixels the prompt selects (see :func:`select_regions`).

        The pipeline's describe does not come here: it selects regions of the frame's own
        id image. This recomputes the superpixels, for callers that hold only an image.
        """
        image = check_image(image)
        check_prompt(prompt, image.shape[0], image.shape[1])
        mask = select_regions(self.labels(image), prompt)
        if not mask.any():
            return None
        return Region.from_mask(mask, 1.0)


def prompt_points(labels: np.ndarray, grid_side: int) -> np.ndarray:
    """(P, 2) float (x, y) point prompts for automatic masks from a label image.

    First the most interior pixel of every labelled region (the farthest from its edge and the
    image border, so the point lies inside even a concave region), largest region first; then
    a ``grid_side`` x ``grid_side`` grid laid out as sam2's ``build_point_grid``, the fallback
    for objects the regions merged into their surroundings.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty HxW array, got shape {labels.shape}")
    if grid_side < 0:
        raise ValueError(f"grid_side must be >= 0, got {grid_side!r}")
    height, width = labels.shape
    edges = label_edges(labels)
    edges[[0, -1], :] = True
    edges[:, [0, -1]] = True
    distance = cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, 3)
    present = np.flatnonzero(np.bincount(labels.ravel().astype(np.int64))[1:]) + 1
    areas = np.bincount(labels.ravel().astype(np.int64))[present]
    rows_cols = np.array(ndimage.maximum_position(distance, labels, present), np.float64)
    interior = rows_cols.reshape(-1, 2)[np.argsort(-areas, kind="stable")][:, ::-1]
    line = (np.arange(grid_side) + 0.5) / max(grid_side, 1)
    grid_x, grid_y = np.meshgrid(line * width, line * height)
    grid = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    return np.concatenate([interior, grid]).astype(np.float64)


MAX_COVERING_FRACTION = 0.5
"""Superpixel-prompted masks: an accepted mask larger than this share of the frame does not
stop the prompts inside it from being decoded (see ``Sam2Segmenter.segment``)."""

EMBEDDING_CACHE_FRAMES = 3
"""Images whose SAM2 image features a :class:`Sam2Segmenter` keeps, so that ``~/describe`` on
one of the last frames processed decodes its prompt without running the image encoder again."""


def _pixel_sample(image: np.ndarray) -> bytes:
    """About 1500 pixels spread over the image (a few microseconds): tells a buffer refilled in
    place with another picture from the one whose features were kept."""
    return image[:: max(1, image.shape[0] // 32), :: max(1, image.shape[1] // 48)].tobytes()


class ImageFeatures:
    """SAM2 image-encoder outputs of the last few images, so each image is encoded once.

    The key is the pixel buffer itself: its address, shape and strides, with a weak reference
    to the array that owns the memory. It costs no pass over the pixels (the per-frame path
    hashes nothing), a view of the same pixels hits (sam2's generator encodes
    ``image[0:h, 0:w]``), and an entry whose owner is gone is never hit (its memory may be
    reused). Frames are not modified once processed (``SemanticPipeline.process`` says so), so
    the pipeline's describe finds the features its ``process`` computed; a pixel sample also
    compared on every hit catches a caller who refills one buffer with each new picture.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self.size = size
        self._entries: OrderedDict[tuple[Any, ...], tuple[weakref.ref, bytes, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(image: np.ndarray) -> tuple[tuple[Any, ...], np.ndarray]:
        owner = image
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        return (image.__array_interface__["data"][0], image.shape, image.strides), owner

    def get(self, image: np.ndarray) -> Any | None:
        """The features kept for exactly these pixels, or None."""
        key, owner = self._key(image)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0]() is not owner or entry[1] != _pixel_sample(image):
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[2]

    def put(self, image: np.ndarray, features: Any) -> None:
        """Keep ``features`` for ``image``, dropping the least recently used beyond ``size``."""
        key, owner = self._key(image)
        with self._lock:
            self._entries[key] = (weakref.ref(owner), _pixel_sample(image), features)
            self._entries.move_to_end(key)
            for gone in [k for k, entry in self._entries.items() if entry[0]() is None]:
                del self._entries[gone]
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@functools.cache
def _caching_predictor_class() -> type:
    """``SAM2ImagePredictor`` whose ``set_image`` takes kept features (see
    :class:`ImageFeatures`) instead of encoding again; built on first use because importing
    sam2 takes seconds."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    class CachingImagePredictor(SAM2ImagePredictor):
        def __init__(self, model: Any, features: ImageFeatures, **kwargs: Any) -> None:
            super().__init__(model, **kwargs)
            self.kept = features

        def set_image(self, image: np.ndarray) -> None:
            features = self.kept.get(image)
            if features is None:
                super().set_image(image)
                self.kept.put(image, self._features)
                return
            self.reset_predictor()
            self._features = features
            self._orig_hw = [image.shape[:2]]
            self._is_image_set = True

    return CachingImagePredictor


class Sam2Segmenter:
    """SAM2 automatic masks for ``segment`` and the image predictor for ``segment_prompted``.

    The model is loaded once in the constructor (so a bad config fails at start-up, not on the
    first frame); sam2 and torch are imported only here because importing them takes seconds.
    """

    def __init__(self, config: Sam2Config) -> None:
        checkpoint = config.checkpoint
        if checkpoint == "":
            raise ValueError(
                "Sam2Config.checkpoint is not set: give the path of a SAM2 checkpoint file "
                "(e.g. sam2.1_hiera_tiny.pt) or None for random weights (tests only)"
            )
        # A shipped name (shapes_default) brings its own architecture YAML.
        source = resolve_sam2_checkpoint(checkpoint, config.model_cfg)
        if source.checkpoint is not None and not Path(source.checkpoint).is_file():
            raise FileNotFoundError(
                f"SAM2 checkpoint file not found: {source.checkpoint!r} (expected a file saved "
                f"as torch.save({{'model': state_dict}}) matching model_cfg "
                f"{source.model_cfg!r}, e.g. sam2.1_hiera_tiny.pt for "
                "configs/sam2.1/sam2.1_hiera_t.yaml, or 'shapes_default')"
            )

        import torch

        try:
            device = torch.device(config.device)
        except RuntimeError as error:
            raise ValueError(f"device {config.device!r} is not a torch device") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} requested but CUDA is not available")

        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        self.config = config
        self.name = f"sam2:{Path(source.model_cfg).stem}"
        self._torch = torch
        self._device = device
        self.model = build_sam2_model(source.model_cfg, source.checkpoint, device=device)
        self._generator = SAM2AutomaticMaskGenerator(
            self.model,
            points_per_side=config.points_per_side,
            points_per_batch=config.points_per_batch,
            pred_iou_thresh=config.pred_iou_thresh,
            stability_score_thresh=config.stability_score_thresh,
            box_nms_thresh=config.box_nms_thresh,
            min_mask_region_area=config.min_mask_region_area,
            output_mode="binary_mask",
        )
        # Every predictor shares one feature cache, so an image is encoded once whichever path
        # (stock grid, superpixel prompts, prompted describe) meets it first. The generator's
        # predictor also fills holes and removes islands (min_mask_region_area) in both
        # automatic paths; prompted requests get sam2's plain predictor behaviour.
        self.features = ImageFeatures(EMBEDDING_CACHE_FRAMES)
        predictor = _caching_predictor_class()
        self._generator.predictor = fit_predictor(
            predictor(
                self.model,
                self.features,
                max_hole_area=config.min_mask_region_area,
                max_sprinkle_area=config.min_mask_region_area,
            ),
            self.model,
        )
        self._predictor = fit_predictor(predictor(self.model, self.features), self.model)
        # Prompts need one interior point per region, not exact edges: no edge snapping, and
        # the smoothing the SAM2 figures were measured with.
        self._proposals = SuperpixelSegmenter(SuperpixelConfig(sigma=0.8, edge_passes=0))
        self._generate_lock = threading.Lock()
        self._predict_lock = threading.Lock()

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        torch = self._torch
        precision = self.config.precision
        if precision == "auto":
            precision = "bf16" if self._device.type == "cuda" else "fp32"
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if precision != "fp32":
                dtype = torch.bfloat16 if precision == "bf16" else torch.float16
                stack.enter_context(torch.autocast(self._device.type, dtype=dtype))
            yield

    def segment(self, image: np.ndarray) -> list[Region]:
        """Automatic masks (overlapping; refine.assign_pixels resolves overlaps), prompted as
        ``config.prompts`` says.

        Scores are sam2's predicted IoU clipped to [0, 1]; empty or non-finite masks are
        dropped. The image's features are kept for ``segment_prompted`` (see
        :class:`ImageFeatures`).
        """
        image = check_image(image)
        with self._generate_lock, self._inference():
            if self.config.prompts == "grid":
                annotations = self._generator.generate(image)
                masks = [np.asarray(a["segmentation"], dtype=bool) for a in annotations]
                scores = [float(a["predicted_iou"]) for a in annotations]
            else:
                masks, scores = self._superpixel_prompted_masks(image)
        regions = []
        for mask, score in zip(masks, scores, strict=True):
            if not mask.any() or not np.isfinite(score):
                continue
            regions.append(
                Region(mask=mask, score=min(max(score, 0.0), 1.0), bbox=bbox_of_mask(mask))
            )
        return regions

    def _superpixel_prompted_masks(self, image: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
        """The ``superpixel`` path: masks and predicted IoUs, best first.

        Why it is cheaper than the stock grid at the same filtering: prompts come from where
        objects are (superpixels) rather than everywhere; a prompt inside a mask already
        accepted is dropped before it is decoded; and only masks that pass the predicted-IoU
        threshold are upsampled to full size (the stock generator upsamples, scores and
        run-length encodes every candidate). All three candidates of a prompt are kept, not
        only the best: with the best one alone, recall at IoU 0.5 was 0.05 below the stock
        grid's (a prompt's best-scored mask is sometimes two touching objects together), with
        all three it is 0.02 above (``benchmarks/bench_sam2_masks.py``, shipped small SAM2).
        """
        torch = self._torch
        from sam2.utils.amg import batched_mask_to_box, calculate_stability_score
        from torchvision.ops.boxes import batched_nms

        config = self.config
        predictor = self._generator.predictor
        predictor.set_image(image)
        height, width = image.shape[:2]
        # Points from every other pixel: 4x cheaper, and a region too thin to survive that
        # is too thin to prompt.
        labels = self._proposals.labels(image)[::2, ::2]
        points = prompt_points(labels, config.points_per_side // 2) * 2
        covered = np.zeros((height, width), bool)
        kept_masks, kept_scores, kept_boxes = [], [], []
        start = 0
        while start < len(points):
            batch = []
            while start < len(points) and len(batch) < config.points_per_batch:
                x, y = points[start]
                start += 1
                if not covered[int(y), int(x)]:
                    batch.append((x, y))
            if not batch:
                break
            low_res, scores, best = self._decode_points(predictor, np.array(batch))
            # Every candidate that passes the filters is kept (box NMS removes duplicates at the
            # end); only each prompt's best one marks pixels as covered.
            is_best = torch.nn.functional.one_hot(best, scores.shape[1]).bool().flatten()
            low_res, scores = low_res.flatten(0, 1)[:, None], scores.flatten()
            if config.pred_iou_thresh > 0.0:
                keep = scores > config.pred_iou_thresh
                low_res, scores, is_best = low_res[keep], scores[keep], is_best[keep]
            if not len(scores):
                continue
            logits = predictor._transforms.postprocess_masks(low_res, (height, width))[:, 0]
            stability = calculate_stability_score(logits, predictor.mask_threshold, 1.0)
            masks = logits > predictor.mask_threshold
            keep = masks.flatten(1).any(1)
            if config.stability_score_thresh > 0.0:
                keep &= stability >= config.stability_score_thresh
            masks, scores, is_best = masks[keep], scores[keep], is_best[keep]
            if len(masks):
                # A mask over half the frame is a background or the whole scene: what lies
                # on it still needs its own prompts.
                small = masks.flatten(1).sum(1) <= MAX_COVERING_FRACTION * height * width
                covered |= masks[small & is_best].any(0).cpu().numpy()
                kept_masks.append(masks.cpu())
                kept_scores.append(scores.float().cpu())
                kept_boxes.append(batched_mask_to_box(masks).float().cpu())
        if not kept_masks:
            return [], []
        masks = torch.cat(kept_masks)
        scores = torch.cat(kept_scores)
        best = batched_nms(
            torch.cat(kept_boxes), scores, torch.zeros(len(scores)), config.box_nms_thresh
        )
        return [m.numpy() for m in masks[best]], scores[best].tolist()

    def _decode_points(self, predictor: Any, points: np.ndarray) -> tuple[Any, Any, Any]:
        """Low-resolution logits of the three candidate masks (B, 3, h, w), their predicted
        IoUs (B, 3) and each point's best candidate (B,) for B single positive points, all
        decoded in one batch from the predictor's current image features.

        sam2's ``_predict`` without its upsampling of every mask to full size. Not the
        single-mask output: sam2 takes it whenever it is "stable", and it counts an empty mask
        as perfectly stable, which a weakly trained model often predicts there.
        """
        torch = self._torch
        model = self.model
        coords = predictor._transforms.transform_coords(
            torch.as_tensor(points, dtype=torch.float32, device=self._device),
            normalize=True,
            orig_hw=predictor._orig_hw[0],
        )
        labels = torch.ones((len(points), 1), dtype=torch.int, device=self._device)
        sparse, dense = model.sam_prompt_encoder(
            points=(coords[:, None, :], labels), boxes=None, masks=None
        )
        features = predictor._features
        low_res, scores, _, _ = model.sam_mask_decoder(
            image_embeddings=features["image_embed"][-1:],
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=len(points) > 1,
            high_res_features=[level[-1:] for level in features["high_res_feats"]],
        )
        return low_res.float(), scores.float(), scores.argmax(dim=1)

    def segment_prompted(self, image: np.ndarray, prompt: Prompt) -> Region | None:
        """The mask sam2 answers the prompt with (:func:`predict_one_mask`: the best of three
        candidates for one click, the single output otherwise); None if it is empty.

        The image features come from :class:`ImageFeatures` when this image was segmented or
        prompted recently, so describing a processed frame runs no image encoder.
        """
        image = check_image(image)
        check_prompt(prompt, image.shape[0], image.shape[1])
        points = labels = box = None
        if len(prompt.points):
            points = np.asarray(prompt.points, dtype=np.float32)
            labels = np.asarray(prompt.point_labels, dtype=np.int32)
        if prompt.box is not None:
            x, y, w, h = prompt.box
            box = np.array([x, y, x + w, y + h], dtype=np.float32)
        with self._predict_lock, self._inference():
            self._predictor.set_image(image)
            mask, score = predict_one_mask(self._predictor, points, labels, box)
        if not mask.any():
            return None
        return Region.from_mask(mask, min(max(score, 0.0), 1.0))


def build_segmenter(config: SuperpixelConfig | Sam2Config) -> Segmenter:
    """The segmenter a config describes; the config's type picks the kind."""
    if isinstance(config, SuperpixelConfig):
        return SuperpixelSegmenter(config)
    if isinstance(config, Sam2Config):
        return Sam2Segmenter(config)
    raise ValueError(
        f"segmenter config must be SuperpixelConfig or Sam2Config, got {type(config).__name__}"
    )
