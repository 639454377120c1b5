"""Per-frame merge-and-deletion: overlapping proposals to one instance-id image.

Seed 000 refines masks offline over a whole image set; a robot needs the same clean-up per
frame. Overlaps are resolved so every pixel belongs to one region (its query score is then
unambiguous), regions too small for a reliable CLIP crop are dropped, and touching regions
whose embeddings agree are merged so one object is not split into several answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from semret_ros.core.image import check_instance_ids
from semret_ros.core.records import Region, Segmentation


@dataclass
class RefineConfig:
    """Refinement settings.

    ``min_area`` 256 px (a 16x16 patch, ~0.1% of a 640x480 frame): smaller regions turn into a
    few blurry pixels once their crop is resized to CLIP's 224x224 input, so their embeddings
    are noise. ``merge_threshold`` 0.95: CLIP embeddings of unrelated neighbouring regions in
    one frame commonly reach cosine 0.8-0.9 (they share the scene's context, more so once
    blended with the global feature), so only near-identical ones are merged. Any value > 1
    disables merging.
    """

    min_area: int = 256
    merge_threshold: float = 0.95

    def __post_init__(self) -> None:
        if self.min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {self.min_area!r}")
        if not np.isfinite(self.merge_threshold) or self.merge_threshold <= 0:
            raise ValueError(
                f"merge_threshold must be a finite number > 0, got {self.merge_threshold!r}"
            )


def _paint(masks: list[np.ndarray], order: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Paint masks in ``order`` (later on top); pixel value = 1 + index into ``masks``."""
    ids = np.zeros(shape, dtype=np.int32)
    for index in order:
        ids[masks[index]] = index + 1
    return ids


def assign_pixels_with_sources(
    regions: list[Region], min_area: int, *, shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`assign_pixels`, also returning which input region each id came from.

    Returns:
        ``(ids, sources)``: ids as in :func:`assign_pixels`; ``sources`` (N,) int64, the index
        in ``regions`` of the region that became id ``i + 1`` (e.g. to carry its score).
    """
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area!r}")
    masks = [np.asarray(region.mask, dtype=bool) for region in regions]
    if shape is None:
        if not masks:
            raise ValueError("shape is required when regions is empty")
        shape = masks[0].shape
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be (H, W), got {shape}")
    for index, mask in enumerate(masks):
        if mask.shape != shape:
            raise ValueError(f"regions[{index}].mask has shape {mask.shape}, expected {shape}")
    areas = np.array([np.count_nonzero(mask) for mask in masks], dtype=np.int64)
    scores = np.array([float(region.score) for region in regions], dtype=np.float64)
    # Largest first so smaller, more specific regions end on top; equal areas: higher score on top.
    order = np.lexsort((scores, -areas))
    order = order[areas[order] >= max(min_area, 1)]
    ids = _paint(masks, order, shape)
    owned = np.bincount(ids.ravel(), minlength=len(masks) + 1)[1:]
    keep = owned[order] >= max(min_area, 1)
    if not keep.all():
        # Repainting without the losers hands their pixels to the regions beneath; survivors
        # only gain pixels, so one repaint settles it.
        order = order[keep]
        ids = _paint(masks, order, shape)
    sources = np.sort(order)
    lut = np.zeros(len(masks) + 1, dtype=np.int32)
    lut[sources + 1] = np.arange(1, sources.size + 1, dtype=np.int32)
    return lut[ids], sources.astype(np.int64)


def assign_pixels(
    regions: list[Region], min_area: int, *, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Resolve overlapping proposals into one instance-id image.

    Rule: the smaller, more specific region wins a contested pixel (masks are painted largest
    first, smaller on top), because automatic mask generators emit both an object and its
    parts and the parts are what a query names. Regions under ``min_area`` pixels are dropped
    before painting, and again if what they own after painting falls below it (their pixels
    go back to the region beneath). Ids follow the surviving regions' input order.

    Args:
        regions: :class:`~semret_ros.core.records.Region` list, all masks HxW.
        min_area: smallest region kept, in pixels.
        shape: (H, W) of the image; required only when ``regions`` may be empty.

    Returns:
        HxW int32, ids 1..N consecutive, 0 where no region.
    """
    return assign_pixels_with_sources(regions, min_area, shape=shape)[0]


def assign_labels(segmentation: Segmentation, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`assign_pixels_with_sources` for proposals that do not overlap, on their labels.

    Nothing is contested, so the rule reduces to dropping labels under ``min_area`` pixels
    (their pixels become 0) and numbering the rest 1..N in label order: one bincount and one
    table lookup over the label image, the ids that painting one mask per label would give.

    Returns:
        ``(ids, sources)``: HxW int32 ids 1..N; (N,) int64, the label - 1 of each id.
    """
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area!r}")
    areas = np.bincount(segmentation.labels.ravel(), minlength=segmentation.scores.size + 1)[1:]
    sources = np.flatnonzero(areas >= max(min_area, 1))
    lut = np.zeros(areas.size + 1, dtype=np.int32)
    lut[sources + 1] = np.arange(1, sources.size + 1, dtype=np.int32)
    return lut[segmentation.labels], sources.astype(np.int64)


def assign_proposals(
    proposals: Segmentation | list[Region], min_area: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One instance-id image from a segmenter's output, and the score of each id.

    A label image (superpixels) is renumbered as it is (:func:`assign_labels`); overlapping
    masks (SAM2) are painted by :func:`assign_pixels_with_sources`. Either way the result is
    the pipeline's id image, validated here once for every later stage.

    Returns:
        ``(ids, scores)``: HxW int32 ids 1..N, 0 where no region; (N,) float32 scores.
    """
    if isinstance(proposals, Segmentation):
        if proposals.labels.shape != tuple(shape):
            raise ValueError(
                f"segmentation labels have shape {proposals.labels.shape}, expected {shape}"
            )
        ids, sources = assign_labels(proposals, min_area)
        return ids, proposals.scores[sources]
    ids, sources = assign_pixels_with_sources(proposals, min_area, shape=shape)
    return ids, np.array([proposals[i].score for i in sources], dtype=np.float32)


def region_stats(instance_ids: np.ndarray, num_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and pixel counts of regions 1..N in one pass each over the image.

    Returns:
        ``(bboxes, areas)``: (N, 4) int32 (x, y, width, height), zeros for an absent id; and
        (N,) int64 pixel counts.
    """
    if num_regions < 0:
        raise ValueError(f"num_regions must be >= 0, got {num_regions!r}")
    ids = check_instance_ids(instance_ids, num_regions)
    areas = np.bincount(ids.ravel().astype(np.int64), minlength=num_regions + 1)[1:]
    bboxes = np.zeros((num_regions, 4), dtype=np.int32)
    if num_regions:
        for index, box in enumerate(ndimage.find_objects(ids, max_label=num_regions)):
            if box is not None:
                rows, cols = box
                bboxes[index] = (
                    cols.start,
                    rows.start,
                    cols.stop - cols.start,
                    rows.stop - rows.start,
                )
    return bboxes, areas.astype(np.int64)


def touching_pairs(instance_ids: np.ndarray) -> np.ndarray:
    """(P, 2) int64 unique id pairs (a < b, both > 0) that share a 4-neighbour edge."""
    ids = np.asarray(instance_ids)
    lows, highs = [], []
    # Compared in the image's own dtype; only the boundary pixels are widened to int64.
    for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1, :], ids[1:, :])):
        boundary = (a != b) & (a > 0) & (b > 0)
        a, b = a[boundary].astype(np.int64), b[boundary].astype(np.int64)
        lows.append(np.minimum(a, b))
        highs.append(np.maximum(a, b))
    stride = int(ids.max(initial=0)) + 1
    codes = np.unique(np.concatenate(lows) * stride + np.concatenate(highs))
    return np.stack([codes // stride, codes % stride], axis=1)


def merge_similar_regions(
    instance_ids: np.ndarray, embeddings: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge touching regions whose embeddings agree (cosine >= ``threshold``), transitively.

    Only touching regions merge: two separate cups look alike to CLIP but are two answers to
    "cup". Chains merge too (A~B and B~C joins A, B and C). A merged embedding is the
    area-weighted mean of its members, renormalised. ``threshold`` > 1 disables merging.

    Args:
        instance_ids: HxW int ids 0..N (0 = no region).
        embeddings: (N, D) finite row embeddings, row i for id i + 1.
        threshold: cosine threshold.

    Returns:
        ``(ids, merged, parent)``: HxW int32 ids 1..M in order of each group's lowest old id;
        (M, D) float32 L2-normalised embeddings; (N,) int64 new id of each old region.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or inf")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    num = embeddings.shape[0]
    ids = check_instance_ids(instance_ids, num)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if num and norms.min() == 0:
        raise ValueError("embeddings contain an all-zero row")
    unit = embeddings / np.where(norms > 0, norms, 1.0)
    if num == 0:
        return ids.astype(np.int32), unit.astype(np.float32), np.zeros(0, np.int64)

    pairs = touching_pairs(ids) if threshold <= 1 else np.zeros((0, 2), np.int64)
    if pairs.size:
        cosine = np.einsum("pd,pd->p", unit[pairs[:, 0] - 1], unit[pairs[:, 1] - 1])
        pairs = pairs[cosine >= threshold]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0] - 1, pairs[:, 1] - 1)), shape=(num, num))
    _, component = connected_components(graph, directed=False)
    # Number groups by their lowest old id so an unmerged frame keeps its ids.
    _, first, group = np.unique(component, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(first.size)
    parent = (rank[group] + 1).astype(np.int64)
    groups = first.size

    areas = np.bincount(ids.ravel().astype(np.int64), minlength=num + 1)[1:]
    # max(area, 1): an id absent from the image still contributes, instead of dividing 0 by 0.
    weighted = unit * np.maximum(areas, 1)[:, None]
    merged = np.zeros((groups, embeddings.shape[1]), dtype=np.float64)
    np.add.at(merged, parent - 1, weighted)
    merged_norms = np.linalg.norm(merged, axis=1, keepdims=True)
    if (merged_norms == 0).any():
        # Members cancelled out exactly (only possible with low thresholds): keep the largest.
        largest = np.lexsort((-areas, parent))
        firsts = largest[np.r_[True, parent[largest][1:] != parent[largest][:-1]]]
        cancelled = merged_norms[:, 0] == 0
        merged[cancelled] = unit[firsts][cancelled]
        merged_norms = np.linalg.norm(merged, axis=1, keepdims=True)
    merged = (merged / merged_norms).astype(np.float32)

    lut = np.zeros(num + 1, dtype=np.int32)
    lut[1:] = parent
    return lut[ids], merged, parent
