"""Turn region embeddings and phrase embeddings into relevance, masks and labels.

Everything here works on embeddings that were already computed (no model call), so a
query on a stored frame costs a matrix-vector product and one table lookup per pixel.

Why a single phrase cannot be scored with a softmax over the prompts (seed 000 does):
with one prompt the softmax is identically 1 for every pixel, so the "heatmap" carries no
information. Two scorings that do carry information are offered:

- ``"cosine"``: the raw cosine between region and phrase, clipped to [0, 1]. Simple, but
  CLIP image-text cosines live in a narrow band (about 0.15-0.35), so a fixed threshold means
  different things for different phrases and models.
- ``"contrastive"`` (LERF): for every negative phrase, the probability that the region
  prefers the query over that negative, ``softmax(scale * [cos_q, cos_neg])[0]``; the
  relevance is the minimum over negatives, so a region must beat every negative. 0.5 means
  "as close to the query as to the closest negative", which makes 0.5 a meaningful default
  threshold for any phrase.

Labels (``~/label``, and ~/segments with standing queries) follow one rule,
:func:`choose_labels`: each label is scored as a query for it is, and a region takes its most
relevant label, or none when even that one is below the threshold. The seed's single softmax
over every label and negative made similar labels ("red circle", "red square") share the
probability, so a region that was clearly one of them often stayed under 0.5 and unlabelled.

Non-finite numbers never reach an output: a region whose embedding holds NaN/inf gets
relevance 0, and a query or negative/label/vocabulary embedding holding NaN/inf makes every
relevance 0 (there is nothing trustworthy to compare with).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from semret_ros.core.image import check_instance_ids
from semret_ros.core.records import LabelResult, Match, QueryResult, SemanticFrame

MODES = ("contrastive", "cosine")


@dataclass
class QueryConfig:
    """Defaults of a language query; every field can be overridden per request.

    ``negatives`` are LERF's canonical phrases: generic words that any region matches a
    little, so beating them means the region is specifically about the query.
    ``contrast_scale`` is LERF's factor 10 on the cosines before the pairwise softmax: CLIP's
    own logit scale (100) saturates the pair softmax to 0/1 for cosine gaps of ~0.05, which
    would make the threshold meaningless, while 1 leaves every relevance near 0.5.
    ``max_results`` 0 means no limit.
    """

    mode: str = "contrastive"
    negatives: tuple[str, ...] = ("object", "things", "stuff", "texture")
    threshold: float = 0.5
    max_results: int = 10
    contrast_scale: float = 10.0
    normalize: bool = False
    """Min-max normalise each phrase's relevance over the frame's regions (seed 003): the most
    relevant region gets 1 and the least 0, so the threshold becomes relative to the frame
    and the best region always matches. Off by default: an absent object should not match."""

    def __post_init__(self) -> None:
        self.negatives = tuple(self.negatives)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (also call after mutating a field)."""
        check_mode(self.mode)
        if self.negatives:
            check_phrases("negatives", self.negatives)
        elif self.mode == "contrastive":
            raise ValueError("negatives: contrastive mode needs at least one negative phrase")
        check_threshold(self.threshold)
        check_max_results(self.max_results)
        check_scale(self.contrast_scale)


def check_mode(mode: str) -> None:
    """Reject an unknown scoring mode with the valid choices in the message."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")


def check_threshold(threshold: float) -> float:
    """Thresholds compare against relevance in [0, 1]; anything else is a caller bug."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"threshold: expected a number in [0, 1], got {threshold!r}")
    return value


def check_max_results(max_results: int) -> None:
    """0 means no limit; negatives or non-integers are caller bugs."""
    if (
        not isinstance(max_results, (int, np.integer))
        or isinstance(max_results, bool)
        or max_results < 0
    ):
        raise ValueError(
            f"max_results: expected an integer >= 0 (0 = no limit), got {max_results!r}"
        )


def check_scale(scale: float) -> None:
    """The contrast scale multiplies cosines before a softmax; it must be finite and > 0."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"scale: expected a finite number > 0, got {scale!r}")


def check_phrases(name: str, phrases: Sequence[str]) -> None:
    """Phrases become message fields and table keys, so empty or repeated ones are rejected."""
    if isinstance(phrases, str):
        raise ValueError(
            f"{name}: expected a sequence of phrases, got the single string {phrases!r}"
        )
    if len(phrases) == 0:
        raise ValueError(f"{name}: expected at least one phrase")
    seen: set[str] = set()
    for phrase in phrases:
        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError(f"{name}: phrases must be non-empty strings, got {phrase!r}")
        # Compared as the embedder caches them: "red  cube" and "red cube" are one phrase.
        key = " ".join(phrase.split())
        if key in seen:
            raise ValueError(f"{name}: duplicate phrase {phrase!r}")
        seen.add(key)


def _as_rows(name: str, array: np.ndarray | None, dim: int | None) -> np.ndarray:
    """(K, D) float64 view of a phrase/region matrix; None is an empty (0, D) matrix."""
    if array is None:
        return np.zeros((0, dim or 0), np.float64)
    rows = np.asarray(array, dtype=np.float64)
    if rows.size == 0 and dim is not None:
        return np.zeros((0, dim), np.float64)
    if rows.ndim != 2 or (dim is not None and rows.shape[1] != dim):
        expected = f"(K, {dim})" if dim is not None else "(N, D)"
        raise ValueError(f"{name}: expected shape {expected}, got {rows.shape}")
    return rows


def _unit_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised rows and a mask of rows that were finite with non-zero norm.

    The contract already normalises embeddings; doing it again costs nothing at these sizes
    and keeps "cosine" literally a cosine if a caller passes raw features.
    """
    valid = np.isfinite(rows).all(axis=1)
    clean = np.where(valid[:, None], rows, 0.0)
    norms = np.linalg.norm(clean, axis=1)
    valid &= norms > 0
    unit = np.divide(clean, norms[:, None], out=np.zeros_like(clean), where=valid[:, None])
    return unit, valid


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so large scales cannot overflow."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


def _candidates_and_negatives(
    name: str,
    count: int,
    candidate_embeddings: np.ndarray,
    negative_embeddings: np.ndarray | None,
    dim: int,
) -> np.ndarray:
    """Candidate rows stacked over negative rows: the phrases one softmax runs over.

    A softmax over a single phrase is identically 1 (the seed's mistake), so one candidate
    without a negative is refused rather than reported as a perfect match.
    """
    candidates = _as_rows(f"{name}_embeddings", candidate_embeddings, dim)
    if candidates.shape[0] != count:
        raise ValueError(
            f"{name}_embeddings: expected {count} rows (one per {name}), got {candidates.shape[0]}"
        )
    negatives = _as_rows("negative_embeddings", negative_embeddings, dim)
    if candidates.shape[0] + negatives.shape[0] < 2:
        raise ValueError(
            f"negative_embeddings: a single {name} needs at least one negative "
            "(a softmax over a single phrase is identically 1)"
        )
    return np.vstack([candidates, negatives])


def _phrase_probabilities(
    embeddings: np.ndarray, phrases: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of scale * cosine over phrase rows for every embedding row.

    Returns (probabilities (N, P) float64, valid (N,) bool); invalid rows and every row when
    any phrase is non-finite are all-zero.
    """
    units, valid = _unit_rows(embeddings)
    phrase_units, phrase_valid = _unit_rows(phrases)
    if not phrase_valid.all():
        valid = np.zeros_like(valid)
    probabilities = _softmax(scale * (units @ phrase_units.T))
    probabilities[~valid] = 0.0
    return probabilities, valid


def _phrase_scores(
    embeddings: np.ndarray,
    phrases: np.ndarray,
    negatives: np.ndarray | None,
    mode: str,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Relevance and margin ((N, P) float64 each) of N regions to P phrases, each phrase alone.

    Every phrase is scored exactly as a query is (against the negatives only, never against
    the other phrases). The margin is the unsaturated number the relevance increases with:
    in contrastive mode the phrase's cosine minus the highest negative's cosine, in cosine
    mode the cosine itself. It orders regions/phrases where the relevance saturates (several
    at 1.0 in float32, or at 0 in cosine mode); a region whose embedding is not finite, or
    every region when a phrase or negative is not finite, gets relevance 0 and margin -inf.
    """
    check_mode(mode)
    check_scale(scale)
    regions = _as_rows("embeddings", embeddings, None)
    dim = regions.shape[1]
    phrase_rows = _as_rows("phrases", phrases, dim)
    negative_rows = _as_rows("negatives", negatives, dim)
    if mode == "contrastive" and negative_rows.shape[0] == 0:
        raise ValueError(
            "negatives: contrastive mode needs at least one negative phrase embedding "
            "(a softmax over the query alone is identically 1); use mode='cosine' otherwise"
        )

    count = phrase_rows.shape[0]
    shape = (regions.shape[0], count)
    units, valid = _unit_rows(regions)
    if mode == "contrastive":
        phrase_rows = np.vstack([phrase_rows, negative_rows])
    phrase_units, phrase_valid = _unit_rows(phrase_rows)
    if not phrase_valid.all():
        return np.zeros(shape), np.full(shape, -np.inf)
    cosines = units @ phrase_units.T
    if mode == "cosine":
        relevance = np.clip(cosines, 0.0, 1.0)
        margin = cosines.copy()
    else:
        # softmax over the pair (phrase, negative_k) = sigmoid(scale * (cos_p - cos_k)).
        phrase_cos, negative_cos = cosines[:, :count, None], cosines[:, None, count:]
        gaps = np.clip(scale * (phrase_cos - negative_cos), -500.0, 500.0)
        relevance = (1.0 / (1.0 + np.exp(-gaps))).min(axis=2)
        margin = cosines[:, :count] - cosines[:, count:].max(axis=1, keepdims=True)
    relevance[~valid] = 0.0
    margin[~valid] = -np.inf
    return relevance, margin


def _query_scores(
    embeddings: np.ndarray,
    query: np.ndarray,
    negatives: np.ndarray | None,
    mode: str,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) float32 relevance and (N,) float64 margin of every region to one phrase."""
    dim = _as_rows("embeddings", embeddings, None).shape[1]
    query_vector = np.asarray(query, dtype=np.float64)
    if query_vector.shape != (dim,):
        raise ValueError(f"query: expected shape ({dim},), got {query_vector.shape}")
    relevance, margin = _phrase_scores(embeddings, query_vector[None, :], negatives, mode, scale)
    return relevance[:, 0].astype(np.float32), margin[:, 0]


def region_relevance(
    embeddings: np.ndarray,
    query: np.ndarray,
    negatives: np.ndarray | None,
    mode: str = "contrastive",
    scale: float = 10.0,
) -> np.ndarray:
    """Relevance in [0, 1] of each of N regions to one phrase ((N,) float32).

    ``negatives`` (K, D) may be None or empty only in ``"cosine"`` mode, which ignores them.
    """
    return _query_scores(embeddings, query, negatives, mode, scale)[0]


def choose_labels(
    relevance: np.ndarray, margin: np.ndarray, thresholds: float | Sequence[float] | np.ndarray
) -> np.ndarray:
    """The one labelling rule: for N regions and L labels, which label each region takes.

    ``relevance`` and ``margin`` are (N, L): each label's relevance to each region, scored
    as a query answer is, and the margin behind it (see ``QueryResult.margin``). A region
    takes the label of highest relevance (ties broken by the higher margin, then the lower
    index), and none when that relevance is below the label's threshold (``thresholds``:
    one value, or one per label). Labels do not compete inside one softmax, so a region that
    clearly is one of two similar labels is not left unlabelled because the other took part
    of the probability. A region whose winning margin is -inf (no finite embedding to judge)
    takes none, even at threshold 0. Returns (N,) int64: i + 1 for label i, 0 for none.
    """
    scores = np.asarray(relevance, dtype=np.float64)
    margins = np.asarray(margin, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"relevance: expected shape (N, L), got {scores.shape}")
    if margins.shape != scores.shape:
        raise ValueError(f"margin: expected shape {scores.shape}, got {margins.shape}")
    count = scores.shape[1]
    values = np.atleast_1d(np.asarray(thresholds, dtype=object)).reshape(-1)
    limits = np.array([check_threshold(value) for value in values], np.float64)
    if limits.size == 1:
        limits = np.repeat(limits, count)
    if limits.shape != (count,):
        raise ValueError(f"thresholds: expected one value or {count}, got {values.size}")
    if scores.shape[0] == 0 or count == 0:
        return np.zeros(scores.shape[0], np.int64)
    top = scores == scores.max(axis=1, keepdims=True)
    winner = np.where(top, margins, -np.inf).argmax(axis=1)
    rows = np.arange(scores.shape[0])
    labelled = np.isfinite(margins[rows, winner]) & (scores[rows, winner] >= limits[winner])
    return np.where(labelled, winner + 1, 0).astype(np.int64)


def _lookup(instance_ids: np.ndarray, per_region: np.ndarray, background: object) -> np.ndarray:
    """Paint per-region values into an HxW image by indexing a (N+1,) table with the ids."""
    ids = check_instance_ids(instance_ids, per_region.shape[0])
    table = np.empty(per_region.shape[0] + 1, per_region.dtype)
    table[0] = background
    table[1:] = per_region
    return np.take(table, ids)


def similarity_image(instance_ids: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """HxW float32 relevance of the region under each pixel; 0 where no region."""
    values = np.nan_to_num(
        np.asarray(relevance, dtype=np.float32).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0
    )
    return _lookup(instance_ids, np.clip(values, 0.0, 1.0), 0.0)


def normalize_relevance(relevance: np.ndarray) -> np.ndarray:
    """Min-max normalise relevance over regions (axis 0), per phrase (seed 003).

    A phrase whose relevance is the same everywhere carries no information about where it
    is, so it becomes 0 everywhere rather than a division by zero.
    """
    values = np.asarray(relevance, dtype=np.float32)
    if values.shape[0] == 0:
        return values
    low, high = values.min(axis=0), values.max(axis=0)
    span = high - low
    scaled = np.divide(values - low, span, out=np.zeros_like(values), where=span > 1e-12)
    return np.clip(scaled, 0.0, 1.0)


def upsample_cells(
    values: np.ndarray, grid_shape: tuple[int, int], height: int, width: int
) -> np.ndarray:
    """(N,) or (N, L) per-cell values of an (h, w) grid, bicubically upsampled to HxW(xL).

    Bicubic (seed 003) rather than nearest, so a mask follows a smooth relevance surface
    instead of the cells' staircase. float32; cubic overshoot is left to the caller to clip.
    """
    rows, cols = grid_shape
    grid = np.asarray(values, dtype=np.float32).reshape(rows, cols, -1)
    out = np.stack(
        [
            cv2.resize(grid[:, :, k], (width, height), interpolation=cv2.INTER_CUBIC)
            for k in range(grid.shape[2])
        ],
        axis=-1,
    )
    return out[:, :, 0] if np.ndim(values) == 1 else out


def _connected_matches(
    similarity: np.ndarray, mask: np.ndarray, text: str, max_results: int
) -> tuple[np.ndarray, list[Match]]:
    """The mask's 8-connected regions as matches, ranked by their mean similarity.

    Returns the HxW int32 image of the regions renumbered best first (1 = best) and the
    matches (at most ``max_results``, 0 = all); regions past ``max_results`` stay in the
    image with their ids, so it still covers the whole mask.
    """
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    if count <= 1:
        return np.zeros(mask.shape, np.int32), []
    sums = np.bincount(components.reshape(-1), similarity.reshape(-1), minlength=count)[1:]
    areas = stats[1:, cv2.CC_STAT_AREA]
    means = sums / areas
    order = np.argsort(-means, kind="stable")
    renumber = np.zeros(count, np.int32)
    renumber[order + 1] = np.arange(1, count, dtype=np.int32)
    regions = renumber[components]
    shown = order[:max_results] if max_results else order
    matches = [
        Match(
            id=rank + 1,
            score=float(np.clip(means[i], 0.0, 1.0)),
            bbox=tuple(
                int(v)
                for v in stats[
                    i + 1,
                    [cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT],
                ]
            ),
            area=int(areas[i]),
            label=text,
        )
        for rank, i in enumerate(shown)
    ]
    return regions, matches


def query_frame(
    frame: SemanticFrame,
    text: str,
    query_embedding: np.ndarray,
    negative_embeddings: np.ndarray | None,
    threshold: float = 0.5,
    max_results: int = 10,
    mode: str = "contrastive",
    scale: float = 10.0,
    normalize: bool = False,
) -> QueryResult:
    """Score every region of a stored frame against one phrase.

    ``mask`` holds every region that passes the threshold (it is not cut to
    ``max_results``) and never the no-region pixels, even at threshold 0; ``matches`` are
    the passing regions best first (ties by id), at most ``max_results`` (0 = no limit).
    ``normalize``: min-max normalise the relevance first (:func:`normalize_relevance`).

    On a mask-free frame (``frame.grid_shape``) the regions are feature cells: the
    similarity is their relevance upsampled bicubically, the mask is the similarity at or
    above the threshold, and the matches are the mask's connected regions ranked by their
    mean similarity (see ``QueryResult.regions``).
    """
    threshold = check_threshold(threshold)
    check_max_results(max_results)
    relevance, margin = _query_scores(
        frame.embeddings, query_embedding, negative_embeddings, mode, scale
    )
    if normalize:
        relevance = normalize_relevance(relevance)
    if frame.grid_shape is not None:
        similarity = np.clip(
            upsample_cells(relevance, frame.grid_shape, frame.height, frame.width), 0.0, 1.0
        )
        mask = similarity >= threshold
        regions, matches = _connected_matches(similarity, mask, text, max_results)
    else:
        regions = None
        similarity = similarity_image(frame.instance_ids, relevance)
        passing = relevance >= threshold
        # Pixels without a region have similarity 0, so only threshold 0 needs them excluded.
        mask = similarity >= threshold if threshold > 0 else frame.instance_ids > 0
        order = np.argsort(-relevance, kind="stable")
        order = order[passing[order]]
        if max_results:
            order = order[:max_results]
        matches = [
            Match(
                id=int(i) + 1,
                score=float(relevance[i]),
                bbox=tuple(int(v) for v in frame.bboxes[i]),
                area=int(frame.areas[i]),
                label=text,
                position=frame.positions[i] if frame.positions else None,
            )
            for i in order
        ]
    return QueryResult(
        text=text,
        threshold=float(threshold),
        relevance=relevance,
        margin=margin,
        similarity=similarity,
        mask=mask,
        matches=matches,
        regions=regions,
    )


def label_frame(
    frame: SemanticFrame,
    labels: Sequence[str],
    label_embeddings: np.ndarray,
    negative_embeddings: np.ndarray | None,
    threshold: float = 0.5,
    mode: str = "contrastive",
    scale: float = 10.0,
    normalize: bool = False,
) -> LabelResult:
    """Give every region at most one of several labels (the seed's multi-phrase mode).

    Each label's relevance to each region is what a query for that label would answer
    (against the negatives only, or the cosine in cosine mode); :func:`choose_labels` then
    gives each region its most relevant label, or none when even that one is below the
    threshold. So a region that looks generic (closer to "object" or "texture" than to any
    label) stays unlabelled instead of being forced into the least bad label, and a label
    is present exactly where a query for it would have matched and no other label matched
    better. ``normalize`` min-max normalises each label's relevance first, as a query does.

    On a mask-free frame the same rule runs per pixel, on the labels' relevance and margins
    upsampled as a query's similarity is, so a label covers what its query's mask would.
    """
    check_phrases("labels", labels)
    threshold = check_threshold(threshold)
    dim = _as_rows("embeddings", frame.embeddings, None).shape[1]
    label_rows = _as_rows("label_embeddings", label_embeddings, dim)
    if label_rows.shape[0] != len(labels):
        raise ValueError(
            f"label_embeddings: expected {len(labels)} rows (one per label), "
            f"got {label_rows.shape[0]}"
        )
    scores, margin = _phrase_scores(frame.embeddings, label_rows, negative_embeddings, mode, scale)
    relevance = scores.astype(np.float32)
    if normalize:
        relevance = normalize_relevance(relevance)
    if frame.grid_shape is not None:
        height, width = frame.height, frame.width
        pixels = upsample_cells(relevance, frame.grid_shape, height, width).reshape(
            height * width, -1
        )
        # Margins are cosine differences in [-2, 2]; -inf (no finite feature) stays lowest.
        margins = np.nan_to_num(margin, nan=-2.0, posinf=2.0, neginf=-2.0)
        pixel_margins = upsample_cells(margins, frame.grid_shape, height, width)
        label_image = (
            choose_labels(
                np.clip(pixels, 0.0, 1.0), pixel_margins.reshape(height * width, -1), threshold
            )
            .astype(np.uint16)
            .reshape(height, width)
        )
    else:
        region_labels = choose_labels(relevance, margin, threshold).astype(np.uint16)
        label_image = _lookup(frame.instance_ids, region_labels, 0)
    best = relevance.max(axis=0) if relevance.shape[0] else np.zeros(len(labels), np.float32)
    return LabelResult(
        labels=list(labels),
        threshold=float(threshold),
        relevance=relevance,
        label_image=label_image,
        scores=best,
    )


def rank_vocabulary(
    embedding: np.ndarray,
    vocabulary: Sequence[str],
    vocabulary_embeddings: np.ndarray,
    negative_embeddings: np.ndarray | None,
    scale: float = 10.0,
) -> tuple[list[str], np.ndarray]:
    """Vocabulary ranked best first with its softmax probabilities ((V,) float32).

    The softmax runs over vocabulary + negatives, so probabilities sum to < 1 when a generic
    negative takes part of the mass: a low top score then says "none of these fit well".
    """
    check_phrases("vocabulary", vocabulary)
    check_scale(scale)
    vector = np.asarray(embedding, dtype=np.float64)
    if vector.ndim != 1:
        raise ValueError(f"embedding: expected shape (D,), got {vector.shape}")
    dim = vector.shape[0]
    phrase_rows = _candidates_and_negatives(
        "vocabulary", len(vocabulary), vocabulary_embeddings, negative_embeddings, dim
    )
    probabilities, _ = _phrase_probabilities(vector[None, :], phrase_rows, scale)
    scores = probabilities[0, : len(vocabulary)]
    order = np.argsort(-scores, kind="stable")
    return [vocabulary[i] for i in order], scores[order].astype(np.float32)
