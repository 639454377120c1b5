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
import hashlib
import importlib.util
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from semret_ros.core.image import check_image
from semret_ros.core.records import Prompt, Region, Segmentation, bbox_of_mask

SUPERPIXEL_METHODS = ("felzenszwalb", "slic")


@dataclass
class SuperpixelConfig:
    """Weight-free region proposals from scikit-image.

    Defaults give roughly 20-80 regions on a 640x480 indoor/outdoor photo in ~0.1 s on one
    CPU core: few enough that embedding every region with CLIP stays affordable.
    """

    method: str = "felzenszwalb"
    """``felzenszwalb`` (follows colour edges) or ``slic`` (compact, roughly equal cells)."""
    scale: float = 300.0
    """felzenszwalb: higher prefers larger regions."""
    sigma: float = 0.8
    """felzenszwalb: Gaussian pre-smoothing width, in proposal-resolution pixels."""
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


@dataclass
class Sam2Config:
    """SAM2 automatic mask generation (and prompted segmentation with the same weights).

    Threshold defaults are sam2's own, tuned for real weights; random weights need them at 0.
    ``points_per_side`` is 16 rather than sam2's 32 because the decoder cost grows with its
    square (~25-40 s per 640x480 frame on 2 CPU cores at 16, ~4x that at 32).
    """

    model_cfg: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    """Hydra config name inside the sam2 package; must match the checkpoint's architecture."""
    checkpoint: str | None = ""
    """Path to a sam2 checkpoint (``torch.save({"model": state_dict})``, e.g.
    ``sam2.1_hiera_tiny.pt``). ``""`` means not configured and is rejected; ``None`` explicitly
    asks for random initialisation, which only makes sense for tests and benchmarks."""
    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    """Removes small islands and holes in each mask (needs OpenCV); 0 disables it."""
    device: str = "cpu"
    """Torch device; on ``cuda`` inference runs under bfloat16 autocast as sam2 recommends."""

    def __post_init__(self) -> None:
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


def _image_key(image: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    """Cheap identity of an image's content (~1 ms at 640x480) for SAM2's embedding cache."""
    return image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).digest()


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
        # Upsampling can drop a tiny label entirely; relabel so labels stay consecutive.
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


def _sam2_config_names() -> list[str]:
    spec = importlib.util.find_spec("sam2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the sam2 package is not installed (pip install sam2==1.1.0)")
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(str(p.relative_to(root)) for p in (root / "configs").rglob("*.yaml"))


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
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"SAM2 checkpoint file not found: {checkpoint!r} (expected a file saved as "
                f"torch.save({{'model': state_dict}}) matching model_cfg {config.model_cfg!r}, "
                "e.g. sam2.1_hiera_tiny.pt for configs/sam2.1/sam2.1_hiera_t.yaml)"
            )
        names = _sam2_config_names()
        if config.model_cfg not in names:
            raise ValueError(f"model_cfg must be one of {names}, got {config.model_cfg!r}")

        import torch

        try:
            device = torch.device(config.device)
        except RuntimeError as error:
            raise ValueError(f"device {config.device!r} is not a torch device") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} requested but CUDA is not available")

        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.config = config
        self.name = f"sam2:{Path(config.model_cfg).stem}"
        self._torch = torch
        self._device = device
        self.model = build_sam2(config.model_cfg, ckpt_path=checkpoint, device=device)
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
        # A second predictor on the same weights: the generator resets its own after each
        # image, while prompted requests want the last image's embedding kept.
        self._predictor = SAM2ImagePredictor(self.model)
        self._generate_lock = threading.Lock()
        self._predict_lock = threading.Lock()
        self._embedded_key: tuple[tuple[int, ...], bytes] | None = None

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        torch = self._torch
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self._device.type == "cuda":
                stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
            yield

    def segment(self, image: np.ndarray) -> list[Region]:
        """Automatic masks (overlapping; refine.assign_pixels resolves overlaps).

        Scores are sam2's predicted IoU clipped to [0, 1]; empty or non-finite masks are
        dropped.
        """
        image = check_image(image)
        with self._generate_lock, self._inference():
            annotations = self._generator.generate(image)
        regions = []
        for annotation in annotations:
            mask = np.asarray(annotation["segmentation"], dtype=bool)
            score = float(annotation["predicted_iou"])
            if not mask.any() or not np.isfinite(score):
                continue
            regions.append(
                Region(mask=mask, score=min(max(score, 0.0), 1.0), bbox=bbox_of_mask(mask))
            )
        return regions

    def segment_prompted(self, image: np.ndarray, prompt: Prompt) -> Region | None:
        """The best of sam2's three candidate masks by predicted IoU; None if it is empty.

        The image embedding is cached for the last image, so several prompts on one frame
        pay for the image encoder once.
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
        key = _image_key(image)
        with self._predict_lock, self._inference():
            if key != self._embedded_key:
                self._embedded_key = None
                self._predictor.set_image(image)
                self._embedded_key = key
            masks, ious, _ = self._predictor.predict(
                point_coords=points, point_labels=labels, box=box, multimask_output=True
            )
        ious = np.where(np.isfinite(ious), ious, -np.inf)
        best = int(np.argmax(ious))
        mask = masks[best] > 0.5
        if not mask.any():
            return None
        score = float(ious[best]) if np.isfinite(ious[best]) else 0.0
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
