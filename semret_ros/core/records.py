"""Records passed between the core's stages, the node and the offline tools."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from semret_ros.core.depth import DepthFrame, SegmentPosition
from semret_ros.core.image import check_instance_ids

BBox = tuple[int, int, int, int]
"""Axis-aligned box (x, y, width, height) in pixels, as in sensor_msgs/RegionOfInterest."""


def bbox_of_mask(mask: np.ndarray) -> BBox:
    """Tight (x, y, width, height) box of a boolean mask; (0, 0, 0, 0) for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


@dataclass(frozen=True)
class Region:
    """One proposal from a segmenter, before refinement."""

    mask: np.ndarray
    """Boolean HxW mask."""
    score: float
    """Segmenter quality (SAM2 predicted IoU; 1.0 for superpixels)."""
    bbox: BBox

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @classmethod
    def from_mask(cls, mask: np.ndarray, score: float = 1.0) -> Region:
        mask = np.asarray(mask, dtype=bool)
        return cls(mask=mask, score=float(score), bbox=bbox_of_mask(mask))


@dataclass(frozen=True)
class Segmentation:
    """Non-overlapping proposals as one label image: what superpixel methods produce.

    Handing the pipeline the label image itself, not one full-size mask per region, is what
    keeps a frame of a few hundred superpixels cheap: every later stage (assignment, crops,
    merging) works on this image and per-label slices of it. The labels are validated here,
    once, where a segmenter's output enters the core.
    """

    labels: np.ndarray
    """HxW int32: 0 = no proposal, k = proposal k (1..K); labels may be absent."""
    scores: np.ndarray
    """(K,) float32 segmenter quality of each label, in [0, 1]."""

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=np.float32)
        if scores.ndim != 1 or not np.all((scores >= 0) & (scores <= 1)):
            raise ValueError(f"scores: expected (K,) values in [0, 1], got shape {scores.shape}")
        labels = check_instance_ids(self.labels, scores.size).astype(np.int32, copy=False)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "scores", scores)


@dataclass(frozen=True)
class Prompt:
    """A prompt for segmenting one object: points in pixel (x, y) and/or a box."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    """(P, 2) float pixel coordinates (x, y)."""
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    """(P,) 1 = foreground, 0 = background."""
    box: BBox | None = None
    """(x, y, width, height) or None."""


@dataclass(frozen=True)
class Match:
    """A region ranked against a phrase."""

    id: int
    """Value of the region in the instance-id image (1..N)."""
    score: float
    """Relevance in [0, 1]."""
    bbox: BBox
    area: int
    label: str = ""
    position: SegmentPosition | None = None
    """Where the region is in 3D, when its frame had depth (see ``SemanticFrame.positions``)."""


@dataclass
class SemanticFrame:
    """Everything the store keeps of one processed camera frame.

    Row ``i`` of ``embeddings`` (and of ``scores``, ``bboxes``, ``areas``) belongs to the
    region whose value in ``instance_ids`` is ``i + 1``; 0 in ``instance_ids`` is no region.
    """

    stamp_ns: int
    frame_id: str
    image: np.ndarray
    """HxWx3 uint8 RGB, kept for overlays and prompted segmentation."""
    instance_ids: np.ndarray
    """HxW int32."""
    embeddings: np.ndarray
    """(N, D) float32, L2-normalized rows."""
    global_embedding: np.ndarray
    """(D,) float32, L2-normalized whole-image feature."""
    scores: np.ndarray
    """(N,) float32 segmenter quality."""
    bboxes: np.ndarray
    """(N, 4) int32 (x, y, width, height)."""
    areas: np.ndarray
    """(N,) int64 pixel counts."""
    model: str
    depth: DepthFrame | None = None
    """The depth image paired with this frame, resampled to its size; None: 2D only."""
    positions: tuple[SegmentPosition | None, ...] = ()
    """Per region (row order), its 3D position from ``depth`` (None: too few valid depth
    points); empty without depth."""
    grid_shape: tuple[int, int] | None = None
    """Mask-free frames (``segmenter.type: dense``): the regions are the cells of this (h, w)
    dense feature grid, row-major (``instance_ids`` is ``dense.cell_ids``), and answers
    upsample the cells' relevance bicubically instead of painting it per region. None: the
    regions are segments."""

    @property
    def num_regions(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def height(self) -> int:
        return int(self.instance_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.instance_ids.shape[1])


@dataclass
class QueryResult:
    """The answer to one phrase on one frame."""

    text: str
    threshold: float
    relevance: np.ndarray
    """(N,) float32 in [0, 1], one per region (row order of the frame's embeddings)."""
    margin: np.ndarray
    """(N,) float64, what relevance increases with, unsaturated: the cosine to the phrase minus
    the highest cosine to a negative (contrastive mode) or the cosine (cosine mode); -inf for
    a region without a finite embedding. It breaks ties where float32 relevance saturates."""
    similarity: np.ndarray
    """HxW float32 in [0, 1]; 0 where no region."""
    mask: np.ndarray
    """HxW bool, similarity >= threshold."""
    matches: list[Match]
    """Regions with relevance >= threshold, best first, at most max_results."""
    regions: np.ndarray | None = None
    """Mask-free frames: HxW int32 image of the mask's connected regions, the ids of
    ``matches`` (0 outside the mask). None: match ids are the frame's ``instance_ids``."""


@dataclass
class LabelResult:
    """The answer to a multi-label request on one frame."""

    labels: list[str]
    threshold: float
    relevance: np.ndarray
    """(N, L) float32 in [0, 1]: each label's relevance to each region, as a query for it."""
    label_image: np.ndarray
    """HxW uint16: i + 1 where labels[i] is the region's most relevant label and passes the
    threshold, 0 elsewhere (see ``scoring.choose_labels``)."""
    scores: np.ndarray
    """(L,) float32 best relevance of each label over the frame's regions."""


@dataclass
class DescribeResult:
    """The answer to a prompted 'what is this?' request."""

    mask: np.ndarray
    """HxW bool, the prompted object."""
    labels: list[str]
    """Vocabulary ranked best first."""
    scores: np.ndarray
    """(len(labels),) float32, same order."""
