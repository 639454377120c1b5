"""Evaluation metrics: embedding consistency (seed 000), semantic localization (seed 001), IoU.

These only measure; nothing here changes a frame. Refinement (the actual merging of
regions) lives in ``core/refine.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage


@dataclass
class ConsistencySummary:
    """How tightly region features cluster by label and how separable the labels are."""

    labels: np.ndarray
    """(L,) the distinct labels, ascending; rows/columns below follow this order."""
    spread: np.ndarray
    """(L,) float64 mean ||f - mu_l|| over the features of label l (lower = more consistent)."""
    counts: np.ndarray
    """(L,) int64 number of features per label."""
    cosine: np.ndarray
    """(L, L) float64 cosine between centred, normalised label means (diagonal 1)."""
    mean_spread: float
    """Feature-weighted mean of ``spread``."""
    mean_between_cosine: float
    """Mean off-diagonal cosine (lower = labels more contrastive); 0 with one label."""


def semantic_consistency(features: np.ndarray, labels: np.ndarray) -> ConsistencySummary:
    """Within-label spread and between-label cosine of features grouped by label (seed 000).

    Features are used as given (the project's embeddings are already L2-normalised, as the
    seed's). Label means are centred on their own average before normalising, as in the
    seed, so the cosine measures how labels differ from each other rather than the large
    component every CLIP feature shares. A label whose centred mean is zero (e.g. the only
    label) gets a zero row and column except the diagonal.
    """
    vectors = np.asarray(features, dtype=np.float64)
    groups = np.asarray(labels).reshape(-1)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"features: expected a non-empty (N, D) array, got {vectors.shape}")
    if groups.shape[0] != vectors.shape[0]:
        raise ValueError(f"labels: expected {vectors.shape[0]} labels, got {groups.shape[0]}")
    if not np.isfinite(vectors).all():
        raise ValueError("features: contains NaN or inf")

    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    sums = np.zeros((unique.shape[0], vectors.shape[1]))
    np.add.at(sums, inverse, vectors)
    means = sums / counts[:, None]
    distances = np.linalg.norm(vectors - means[inverse], axis=1)
    spread = np.bincount(inverse, weights=distances) / counts

    centred = means - means.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 1e-12)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, 1.0)
    off_diagonal = cosine[~np.eye(len(unique), dtype=bool)]
    return ConsistencySummary(
        labels=unique,
        spread=spread,
        counts=counts.astype(np.int64),
        cosine=cosine,
        mean_spread=float(distances.mean()),
        mean_between_cosine=float(off_diagonal.mean()) if off_diagonal.size else 0.0,
    )


@dataclass
class MergeDeletionReport:
    """What the seed's merge-and-deletion step would do to a set of labels."""

    deleted: list[int]
    """Labels too generic to keep: row sum above mean + std of all row sums."""
    merged: list[tuple[int, int]]
    """(kept, absorbed) pairs with cosine above the merge threshold; kept is the smaller id."""
    row_sums: np.ndarray
    """(L,) s_l = sum_j C_lj - 1."""


def merge_deletion_diagnostic(
    summary: ConsistencySummary, merge_threshold: float = 0.6
) -> MergeDeletionReport:
    """Which labels the seed's merge-and-deletion would delete or merge (a report only).

    Deleted labels are left out of the merge pairs, since they would be gone first.
    """
    cosine = summary.cosine
    row_sums = cosine.sum(axis=1) - 1.0
    limit = row_sums.mean() + row_sums.std()
    generic = row_sums > limit + 1e-12
    deleted = [int(label) for label in summary.labels[generic]]
    merged = []
    for i, j in zip(*np.nonzero(np.triu(cosine > merge_threshold, k=1)), strict=True):
        if not (generic[i] or generic[j]):
            low, high = sorted((int(summary.labels[i]), int(summary.labels[j])))
            merged.append((low, high))
    return MergeDeletionReport(deleted=deleted, merged=merged, row_sums=row_sums)


@dataclass
class SlmConfig:
    """Parameters of the semantic localization metrics, as fractions of the image size.

    Upstream (SLM) works on ~10k x 10k remote-sensing images with a 251 px smoothing
    kernel and a 1000 px peak window; the fractions below keep those proportions
    (2.5 % and 10 % of the longer image side) so results do not depend on resolution.
    """

    smooth_fraction: float = 0.025
    """Box-filter size / longer image side (at least 3 px, odd)."""
    peak_window_fraction: float = 0.1
    """Local-maximum window / longer image side (at least 3 px)."""
    peak_threshold: float = 0.5
    """A peak must reach this smoothed probability."""
    radius_factor: float = 1.5
    """Search radius r = radius_factor x mean boundary distance from the region centre."""


@dataclass
class SlmResult:
    """Semantic localization metrics of one heatmap against ground-truth regions."""

    rsu: float
    """Salient-area utilisation, higher better, in [0, 1]."""
    ras: float
    """Attention shift of the peaks from the region centres, lower better, in [0, 1]."""
    rda: float
    """Attention dispersion (one tight peak per region is best), higher better, in [0, 1]."""
    rmi: float
    """0.4 Rsu + 0.35 (1 - Ras) + 0.25 Rda, higher better, in [0, 1]."""
    peaks: np.ndarray
    """(K, 2) float64 (x, y) peak centres found in the smoothed map."""


def _odd_size(fraction: float, side: int) -> int:
    size = max(3, round(fraction * side))
    return size if size % 2 else size + 1


def heatmap_peaks(probability: np.ndarray, config: SlmConfig | None = None) -> np.ndarray:
    """(K, 2) float64 (x, y) centres of the local maxima of the box-smoothed map.

    A plateau of equal maxima (common after smoothing a flat map) counts as one peak: its
    centroid when that falls on the plateau, else the plateau pixel nearest the centroid
    (a ring-shaped plateau around a cold region must not put a peak in the cold centre).
    """
    config = config or SlmConfig()
    side = max(probability.shape)
    smoothed = cv2.blur(
        probability.astype(np.float32),
        (_odd_size(config.smooth_fraction, side),) * 2,
        borderType=cv2.BORDER_REFLECT,
    )
    window = max(3, round(config.peak_window_fraction * side))
    maxima = (smoothed == ndimage.maximum_filter(smoothed, size=window, mode="nearest")) & (
        smoothed >= config.peak_threshold
    )
    components, count = ndimage.label(maxima, structure=np.ones((3, 3)))
    peaks = np.zeros((count, 2))
    for index, rows_cols in enumerate(ndimage.find_objects(components)):
        ys, xs = np.nonzero(components[rows_cols] == index + 1)
        points = np.stack([xs + rows_cols[1].start, ys + rows_cols[0].start], axis=1)
        centroid = points.mean(axis=0)
        x, y = np.rint(centroid).astype(int)
        if components[y, x] == index + 1:
            peaks[index] = centroid
        else:
            peaks[index] = points[np.argmin(np.linalg.norm(points - centroid, axis=1))]
    return peaks


def region_centre_radius(mask: np.ndarray, radius_factor: float = 1.5) -> tuple[np.ndarray, float]:
    """Centre (x, y) of a region mask and its search radius.

    Upstream regions are polygons and r = factor x mean distance of the vertices from the
    centre; a mask has no vertices, so the mean distance of its boundary pixels (every
    outer-contour point) from the pixel centroid stands in for it. For a square of side s
    that is about 0.57 s (vertices would give 0.71 s). At least 1 px, so one-pixel regions
    still have a radius.
    """
    ys, xs = np.nonzero(mask)
    centre = np.array([xs.mean(), ys.mean()])
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    boundary = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    mean_distance = float(np.linalg.norm(boundary - centre, axis=1).mean())
    return centre, radius_factor * max(mean_distance, 1.0)


def _check_probability(probability: np.ndarray) -> np.ndarray:
    heat = np.asarray(probability, dtype=np.float64)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"probability: expected a non-empty HxW map, got {heat.shape}")
    return np.clip(np.nan_to_num(heat, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def semantic_localization(
    probability: np.ndarray, regions: Sequence[np.ndarray], config: SlmConfig | None = None
) -> SlmResult:
    """SLM metrics (seed 001) of a heatmap P in [0, 1] against boolean region masks.

    M is the union of the regions. Rsu = 1 - exp(-0.707 * inside/outside mass ratio *
    background/foreground area ratio). Per region (centre c, radius r), the peaks within r:
    offset = mean peak distance to c (r if none), and dispersion = n if n <= 1, else
    0.5 (1 - mean distance of the peaks from their centroid / r) + exp(-0.5 (n + 2)).
    Ras = (e^{3g} - 1) / (e^3 - 1) with g = mean(offset / r); Rda = mean dispersion.

    Edge cases give defined values, never NaN: an all-zero heatmap scores Rsu 0, Ras 1,
    Rda 0; no regions (or only empty masks) also gives these worst values, because there
    is nothing to localize; a region covering the whole image gives Rsu 0 (the area ratio is 0).
    NaN in the heatmap counts as 0.
    """
    config = config or SlmConfig()
    heat = _check_probability(probability)
    masks = [np.asarray(region, dtype=bool) for region in regions]
    for index, mask in enumerate(masks):
        if mask.shape != heat.shape:
            raise ValueError(f"regions[{index}]: expected shape {heat.shape}, got {mask.shape}")
    masks = [mask for mask in masks if mask.any()]
    peaks = heatmap_peaks(heat, config)
    if not masks:
        return SlmResult(rsu=0.0, ras=1.0, rda=0.0, rmi=0.0, peaks=peaks)

    union = np.logical_or.reduce(masks)
    inside = float(heat[union].sum())
    outside = float(heat.sum()) - inside
    foreground = float(union.sum())
    background = float(union.size) - foreground
    ratio = (inside / (outside + 1e-8)) * (background / foreground)
    rsu = 1.0 - math.exp(-0.707 * min(ratio, 1e6))

    shifts, dispersions = [], []
    for mask in masks:
        centre, radius = region_centre_radius(mask, config.radius_factor)
        distances = np.linalg.norm(peaks - centre, axis=1)
        near = peaks[distances <= radius]
        shifts.append((distances[distances <= radius].mean() if len(near) else radius) / radius)
        if len(near) <= 1:
            dispersions.append(float(len(near)))
        else:
            spread = np.linalg.norm(near - near.mean(axis=0), axis=1).mean() / radius
            dispersions.append(0.5 * (1.0 - spread) + math.exp(-0.5 * (len(near) + 2)))
    g = float(np.mean(shifts))
    ras = (math.exp(3.0 * g) - 1.0) / (math.exp(3.0) - 1.0)
    rda = float(np.clip(np.mean(dispersions), 0.0, 1.0))
    rmi = 0.4 * rsu + 0.35 * (1.0 - ras) + 0.25 * rda
    return SlmResult(rsu=rsu, ras=ras, rda=rda, rmi=rmi, peaks=peaks)


def iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty.

    Two empty masks agree perfectly that the thing is absent, so they score 1 (and do not
    drag an average down for a correctly absent object).
    """
    a = np.asarray(prediction, dtype=bool)
    b = np.asarray(target, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"prediction: shape {a.shape} differs from target shape {b.shape}")
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return np.count_nonzero(a & b) / union


def best_mask_ious(
    proposals: Sequence[np.ndarray] | np.ndarray, targets: Sequence[np.ndarray] | np.ndarray
) -> np.ndarray:
    """(T,) float: for each target mask, the highest IoU any proposal reaches with it.

    Mask recall at an IoU threshold is ``(best_mask_ious(...) >= threshold).mean()``: the share
    of objects some proposal outlines that well, whatever else is proposed (class-agnostic
    proposals are judged by what they find; extra masks cost nothing here). 0 for a target
    when there are no proposals.
    """
    targets = [np.asarray(t, dtype=bool) for t in targets]
    best = np.zeros(len(targets), dtype=np.float64)
    if not targets or len(proposals) == 0:
        return best
    stack = np.stack([np.asarray(p, dtype=bool) for p in proposals]).reshape(len(proposals), -1)
    if stack.shape[1] != targets[0].size:
        raise ValueError(
            f"proposals: shape {np.asarray(proposals[0]).shape} differs from target shape "
            f"{targets[0].shape}"
        )
    areas = stack.sum(axis=1)
    for index, target in enumerate(targets):
        flat = target.reshape(-1)
        if flat.shape[0] != stack.shape[1]:
            raise ValueError(f"targets: shape {target.shape} differs from the proposals'")
        inside = stack[:, flat].sum(axis=1)
        union = areas + np.count_nonzero(flat) - inside
        best[index] = float(np.max(inside / np.maximum(union, 1)))
    return best


def mean_iou(
    prediction: np.ndarray, target: np.ndarray, ignore_index: int | None = None
) -> tuple[float, dict[int, float]]:
    """Mean IoU over the classes present in the prediction or the target, and per class.

    Classes absent from both images are skipped (they would score a vacuous 1). Pixels whose
    target is ``ignore_index`` are left out of both images, and that value is not a class.
    Use ``ignore_index=0`` when 0 means "unlabelled" (as in ``LabelResult.label_image``).
    """
    pred = np.asarray(prediction)
    true = np.asarray(target)
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(
            f"prediction: expected an HxW image shaped like target {true.shape}, got {pred.shape}"
        )
    keep = np.ones(true.shape, bool) if ignore_index is None else true != ignore_index
    pred, true = pred[keep], true[keep]
    classes = np.union1d(np.unique(pred), np.unique(true))
    if ignore_index is not None:
        classes = classes[classes != ignore_index]
    if classes.size == 0:
        raise ValueError("target: no pixels or classes left to evaluate after ignore_index")
    per_class = {int(c): iou(pred == c, true == c) for c in classes}
    return float(np.mean(list(per_class.values()))), per_class


@dataclass
class LabelScores:
    """How a label image agrees with K objects when label k + 1 names object k (0 = none)."""

    accuracy: np.ndarray
    """(K,) float64 share of object k's pixels labelled k + 1 (its own label)."""
    iou: np.ndarray
    """(K,) float64 IoU of the pixels labelled k + 1 with object k's mask; its mean over the
    objects is the scene's label mIoU."""
    background_labelled: float
    """Share of the pixels outside every object that got some label (0 when there are none)."""


def label_scores(label_image: np.ndarray, masks: Sequence[np.ndarray] | np.ndarray) -> LabelScores:
    """Per-object pixel accuracy and IoU of a multi-label answer (``LabelResult.label_image``).

    Accuracy says whether each object got its own label (unlabelled and wrongly labelled
    pixels both count against it); IoU also charges pixels the label spills onto other
    objects and the background, so a rule that labels everything cannot score well on both.
    """
    labels = np.asarray(label_image)
    if labels.ndim != 2:
        raise ValueError(f"label_image: expected an HxW image, got shape {labels.shape}")
    objects = np.asarray(masks, dtype=bool)
    if objects.ndim != 3 or objects.shape[1:] != labels.shape:
        raise ValueError(
            f"masks: expected (K, {labels.shape[0]}, {labels.shape[1]}) object masks, "
            f"got shape {objects.shape}"
        )
    sizes = objects.reshape(objects.shape[0], -1).sum(axis=1)
    if np.any(sizes == 0):
        raise ValueError(f"masks: object {int(np.argmin(sizes))} is empty")
    own = np.array([np.count_nonzero(labels[mask] == k + 1) for k, mask in enumerate(objects)])
    accuracy = own / sizes
    ious = np.array([iou(labels == k + 1, mask) for k, mask in enumerate(objects)])
    background = ~objects.any(axis=0)
    outside = int(np.count_nonzero(background))
    spilled = np.count_nonzero(labels[background] > 0) / outside if outside else 0.0
    return LabelScores(accuracy=accuracy, iou=ious, background_labelled=float(spilled))


HIT_IOU = 0.5
"""hit@1: the top-ranked region must overlap the named object at least this much (IoU)."""


def top_region(relevance: np.ndarray) -> int:
    """0-based index of the best-ranked region (first on ties); -1 for a frame without regions."""
    scores = np.asarray(relevance, dtype=np.float64).reshape(-1)
    return int(np.argmax(scores)) if scores.size else -1


def hit_at_1(
    instance_ids: np.ndarray, relevance: np.ndarray, target: np.ndarray, min_iou: float = HIT_IOU
) -> tuple[bool, float]:
    """Whether the top-ranked region (argmax relevance, no threshold) is the named object.

    Returns (hit, IoU of that region with ``target``). Ranking rather than thresholding makes
    the measure independent of the threshold a user picks; the threshold is judged separately
    by the query mask's IoU.
    """
    best = top_region(relevance)
    if best < 0:
        return False, 0.0
    overlap = iou(np.asarray(instance_ids) == best + 1, target)
    return overlap >= min_iou, overlap


@dataclass(frozen=True)
class RetrievalScores:
    """Cross-modal retrieval figures of paired image and caption features (seed 004).

    Recall@k is the share of pairs whose correct partner ranks in the top k; ranks are 1-based.
    """

    i2t_r1: float
    i2t_r5: float
    t2i_r1: float
    t2i_r5: float
    i2t_mean_rank: float
    t2i_mean_rank: float
    pairs: int
    captions: int


def retrieval_metrics(
    image_features: np.ndarray, caption_ids: np.ndarray, caption_features: np.ndarray
) -> RetrievalScores:
    """Image-to-text and text-to-image retrieval of N image features against C captions.

    ``caption_ids[i]`` names image i's caption (a row of ``caption_features``). Generated
    scenes repeat captions (many crops are "red circle"), so another crop of the same caption
    is never counted against a pair: image to text ranks the C distinct captions for each
    image; text to image ranks image i, for its caption, among the images of other captions.
    Cosine similarity; ties count in the pair's favour.
    """
    images = np.asarray(image_features, dtype=np.float64)
    texts = np.asarray(caption_features, dtype=np.float64)
    ids = np.asarray(caption_ids)
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"features: expected (N, D) images and (C, D) captions, got {images.shape} and "
            f"{texts.shape}"
        )
    if images.shape[0] == 0:
        raise ValueError("image_features: no pairs to rank")
    if ids.shape != (images.shape[0],) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"caption_ids: expected ({images.shape[0]},) integers, got {ids.shape}")
    if ids.min() < 0 or ids.max() >= texts.shape[0]:
        raise ValueError(f"caption_ids: values must lie in 0..{texts.shape[0] - 1}")
    images /= np.maximum(np.linalg.norm(images, axis=1, keepdims=True), 1e-12)
    texts /= np.maximum(np.linalg.norm(texts, axis=1, keepdims=True), 1e-12)
    similarity = images @ texts.T  # (N, C)
    rows = np.arange(images.shape[0])
    correct = similarity[rows, ids]
    i2t_rank = 1 + np.count_nonzero(similarity > correct[:, None], axis=1)
    # For image i's caption: how many images of other captions score above image i.
    column = similarity[:, ids]  # (N images, N pairs): image j against pair i's caption
    other = ids[:, None] != ids[None, :]
    t2i_rank = 1 + np.count_nonzero((column > correct[None, :]) & other, axis=0)
    return RetrievalScores(
        i2t_r1=float(np.mean(i2t_rank <= 1)),
        i2t_r5=float(np.mean(i2t_rank <= 5)),
        t2i_r1=float(np.mean(t2i_rank <= 1)),
        t2i_r5=float(np.mean(t2i_rank <= 5)),
        i2t_mean_rank=float(np.mean(i2t_rank)),
        t2i_mean_rank=float(np.mean(t2i_rank)),
        pairs=int(images.shape[0]),
        captions=int(texts.shape[0]),
    )
