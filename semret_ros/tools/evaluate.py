"""`semret-eval`: how well the whole pipeline finds named objects in generated shapes-world scenes.

The pipeline is measured end to end (segmenter, refinement, CLIP regions, query scoring) on
scenes whose objects, masks and names are known exactly. Two region sources separate the two
ways a query can fail: ``--masks gt`` hands the pipeline the true object masks, so a miss is
the model's or the scoring's; with ``--masks superpixel`` (or ``sam2``) the "oracle" IoU, the
best any single region reaches with the object, says whether a correct answer was even
available. Every object is queried three ways (colour + shape, colour only, shape only); a
scene's objects have pairwise distinct colours and shapes, so each query names one object.
Each scene also gets one multi-label request (``~/label``) with the full names of its
objects, judged per object by pixel accuracy and IoU of its own label.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from semret_ros.core.dense import DenseConfig, MaskFreeConfig
from semret_ros.core.depth import DepthFrame
from semret_ros.core.embedder import REGION_FEATURES, ClipConfig, ClipEmbedder
from semret_ros.core.image import interior_point
from semret_ros.core.metrics import (
    HIT_IOU,
    hit_at_1,
    iou,
    label_scores,
    merge_deletion_diagnostic,
    retrieval_metrics,
    semantic_consistency,
    semantic_localization,
    top_region,
)
from semret_ros.core.object_guided import REGION_ENCODERS
from semret_ros.core.pipeline import PipelineConfig, SemanticPipeline
from semret_ros.core.records import Prompt, QueryResult, Region, SemanticFrame
from semret_ros.core.refine import RefineConfig
from semret_ros.core.sam2_model import resolve_sam2_checkpoint
from semret_ros.core.scoring import MODES, QueryConfig
from semret_ros.core.segmenters import (
    SAM2_PROMPTS,
    SUPERPIXEL_METHODS,
    Sam2Config,
    Segmenter,
    SuperpixelConfig,
    build_segmenter,
    select_regions,
)
from semret_ros.core.viz import heatmap_overlay, mask_overlay, panel, save_png
from semret_ros.shapes.paraphrases import PARAPHRASE_KINDS, SYNONYM_LISTS, paraphrases_for
from semret_ros.shapes.test_renderer import render_scene
from semret_ros.shapes.world import (
    ALL_COMBOS,
    KINDS,
    QUERY_PHRASES,
    DepthScene,
    Scene,
    SceneObject,
    generate_scene,
    query_phrase,
    render_depth,
)
from semret_ros.tools.cli import add_clip_arguments

GROUPS: tuple[str, ...] = ("seen", "held_out")
MASK_MODES = ("superpixel", "gt", "sam2", "dense")
"""Region sources; ``dense`` is mask-free mode (the regions are dense feature cells, a query's
matches the connected regions of its mask)."""
RENDERERS = ("train", "test")
"""Scene sources: the shapes world the embedded model is trained on, or the independent
test renderer (:mod:`semret_ros.shapes.test_renderer`), which training never sees."""
VOCABULARY: tuple[str, ...] = tuple(f"{c} {s}" for c, s in ALL_COMBOS)
"""What ``~/describe`` ranks for each object: every colour-shape name."""
_PANEL_TRUTH_RGB = (40, 220, 60)
_PANEL_MASK_RGB = (255, 40, 40)
_PANEL_TOP_RGB = (255, 230, 0)


class GroundTruthSegmenter:
    """A scene's true object masks as region proposals (no background region).

    Feeding these through the unchanged pipeline measures the model and the query scoring
    alone: every object is exactly one region, so a miss cannot be a segmentation failure.
    """

    name = "ground_truth"

    def __init__(self, scene: Scene) -> None:
        self._scene = scene

    def _check(self, image: np.ndarray) -> None:
        if image.shape[:2] != self._scene.image.shape[:2]:
            raise ValueError(
                f"image: expected the scene's shape {self._scene.image.shape[:2]}, "
                f"got {image.shape[:2]}"
            )

    def segment(self, image: np.ndarray) -> list[Region]:
        self._check(image)
        return [Region.from_mask(obj.mask) for obj in self._scene.objects]

    def segment_prompted(self, image: np.ndarray, prompt: Prompt) -> Region | None:
        self._check(image)
        mask = select_regions(self._scene.instance_ids, prompt)
        return Region.from_mask(mask) if mask.any() else None


# ---------------------------------------------------------------------------------------------
# Per-query measurements


def region_ious(instance_ids: np.ndarray, target: np.ndarray) -> dict[int, float]:
    """IoU with ``target`` of every region (0-based index) that touches it; others score 0."""
    ids = np.asarray(instance_ids)
    touching = np.unique(ids[np.asarray(target, dtype=bool)])
    return {int(k) - 1: iou(ids == k, target) for k in touching if k > 0}


def majority_objects(
    scene_ids: np.ndarray, instance_ids: np.ndarray, num_regions: int
) -> np.ndarray:
    """(N,) for each region, the scene object id (1-based, 0 = background) under most of it.

    One joint histogram of (region, object) pixel pairs instead of N x K mask comparisons.
    """
    objects = int(scene_ids.max(initial=0)) + 1
    joint = np.bincount(
        instance_ids.ravel().astype(np.int64) * objects + scene_ids.ravel().astype(np.int64),
        minlength=(num_regions + 1) * objects,
    ).reshape(num_regions + 1, objects)
    return joint[1:].argmax(axis=1)


def is_ambiguous(kind: str, obj: SceneObject, objects: Sequence[SceneObject]) -> bool:
    """A colour-only or shape-only query that names more than one object of the scene.

    Scenes are generated with distinct colours and shapes, so this guards the measure rather
    than filtering anything in practice.
    """
    if kind == "color":
        return sum(o.color == obj.color for o in objects) > 1
    if kind == "shape":
        return sum(o.shape == obj.shape for o in objects) > 1
    return sum(o.name == obj.name for o in objects) > 1


@dataclass
class QueryRecord:
    """Everything measured for one query about one object."""

    scene_seed: int
    object_index: int
    object: str
    group: str
    """'seen' or 'held_out' (the object's colour-shape combination in training)."""
    kind: str
    text: str
    hit: bool
    top_iou: float
    """IoU of the top-ranked region with the object."""
    top_relevance: float
    top_object: str
    """What lies under most of the top-ranked region: an object's name or 'background'."""
    oracle_iou: float
    """Best IoU any single region of the frame reaches with the object (the ceiling)."""
    oracle_rank: int
    """1-based rank of that best region by relevance (1 = it was ranked first); 0 if none."""
    mask_iou: float
    """IoU of the thresholded query mask with the object."""
    rsu: float
    ras: float
    rda: float
    rmi: float
    pointing: bool
    """The similarity image's peak lies on the object."""
    query_s: float
    position_error_m: float | None = None
    """With --depth, for a hit: distance (m) from the top region's 3D position to the object's
    true centroid; None for a miss, a hit without a position, or no depth."""
    relative_position_error: float | None = None
    """position_error_m over the true centroid's depth."""
    has_position: bool | None = None
    """With --depth: whether the top-ranked region got a 3D position."""


def position_error(
    frame: SemanticFrame, result: QueryResult, centroid: np.ndarray, hit: bool
) -> dict[str, float | bool | None]:
    """The 3D figures of one answered query against the object's true centroid (metres)."""
    best = top_region(result.relevance)
    position = frame.positions[best] if best >= 0 and frame.positions else None
    if position is None or not hit:
        return {"has_position": position is not None}
    error = float(np.linalg.norm(np.asarray(position.position) - centroid))
    return {
        "has_position": True,
        "position_error_m": error,
        "relative_position_error": error / float(centroid[2]),
    }


def depth_summary(records: Sequence[QueryRecord]) -> dict[str, object]:
    """How well hits are placed in 3D: the share with a position and the error statistics."""
    hits = [r for r in records if r.hit]
    errors = np.array([r.position_error_m for r in hits if r.position_error_m is not None])
    relative = np.array(
        [r.relative_position_error for r in hits if r.relative_position_error is not None]
    )
    return {
        "hits": len(hits),
        "hits_with_position": _mean([float(bool(r.has_position)) for r in hits]),
        "median_error_m": float(np.median(errors)) if errors.size else None,
        "p90_error_m": float(np.percentile(errors, 90)) if errors.size else None,
        "median_relative_error": float(np.median(relative)) if relative.size else None,
        "p90_relative_error": float(np.percentile(relative, 90)) if relative.size else None,
        "within_5_percent_of_depth": _mean([float(v <= 0.05) for v in relative]),
    }


def pointed_pixel(frame: SemanticFrame, result: QueryResult, best: int) -> tuple[int, int]:
    """(row, column) the answer points at: the similarity image's maximum, or on a mask-free
    frame the centre of its most relevant cell (``best``). The upsampled similarity is clipped
    at 1, so where cells are sure its maximum is a plateau of hundreds of tied pixels, and the
    first of them in row-major order says nothing about where the peak is."""
    if frame.grid_shape is None or best < 0:
        return np.unravel_index(int(np.argmax(result.similarity)), result.similarity.shape)
    rows, cols = np.nonzero(frame.instance_ids == best + 1)
    return (int(rows.min() + rows.max()) // 2, int(cols.min() + cols.max()) // 2)


def measure_query(
    frame: SemanticFrame,
    result: QueryResult,
    target: np.ndarray,
    ious: dict[int, float],
    region_names: Sequence[str],
) -> dict[str, float | int | bool | str]:
    """Ranking, mask and localization figures of one answered query against its object.

    ``region_names`` names what lies under most of each region (see :func:`majority_objects`).
    On a mask-free frame the top-ranked region is the best connected region of the mask (the
    first match; a miss when nothing passes the threshold), not a single feature cell.
    """
    if result.regions is None:
        hit, top_iou = hit_at_1(frame.instance_ids, result.relevance, target)
    else:
        top_iou = iou(result.regions == result.matches[0].id, target) if result.matches else 0.0
        hit = top_iou >= HIT_IOU
    best = top_region(result.relevance)
    peak = pointed_pixel(frame, result, best)
    oracle_index = max(ious, key=ious.get) if ious else -1
    oracle_rank = 0
    if oracle_index >= 0:
        oracle_rank = 1 + int(np.count_nonzero(result.relevance > result.relevance[oracle_index]))
    slm = semantic_localization(result.similarity, [target])
    return {
        "hit": bool(hit),
        "top_iou": float(top_iou),
        "top_relevance": float(result.relevance[best]) if best >= 0 else 0.0,
        "top_object": region_names[best] if best >= 0 else "",
        "pointing": bool(target[peak]),
        "oracle_iou": float(ious[oracle_index]) if oracle_index >= 0 else 0.0,
        "oracle_rank": oracle_rank,
        "mask_iou": float(iou(result.mask, target)),
        "rsu": float(slm.rsu),
        "ras": float(slm.ras),
        "rda": float(slm.rda),
        "rmi": float(slm.rmi),
    }


@dataclass
class LabelRecord:
    """How one object fared in its scene's multi-label request (every object's full name)."""

    scene_seed: int
    object_index: int
    object: str
    group: str
    """'seen' or 'held_out'."""
    pixel_accuracy: float
    """Share of the object's pixels labelled with its own name."""
    iou: float
    """IoU of the pixels labelled with its name with the object."""


@dataclass
class DescribeRecord:
    """One ``~/describe`` request: a point inside an object, every colour-shape name ranked."""

    scene_seed: int
    object: str
    group: str
    """'seen' or 'held_out'."""
    top1: str
    hit: bool
    """The best-ranked name is the object's own."""
    point_iou: float
    """IoU with the object of the mask described from that point (0: nothing selected)."""
    box_iou: float
    """IoU with the object of the mask described from the object's bounding box."""


MASK_RECALL_IOUS = (0.5, 0.75)
"""Mask recall: the share of objects some region of the frame outlines at this IoU or more."""


def describe_object(
    pipeline: SemanticPipeline, frame: SemanticFrame, prompt: Prompt, target: np.ndarray
) -> tuple[str, float]:
    """The top name and the mask IoU with ``target`` of one ``~/describe`` request; ("", 0.0)
    when the prompt selects nothing (the node answers that request with an error)."""
    try:
        result = pipeline.describe(frame, prompt, vocabulary=VOCABULARY)
    except ValueError:
        return "", 0.0
    return result.labels[0], iou(result.mask, target)


# ---------------------------------------------------------------------------------------------
# Summaries


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize(records: Sequence[QueryRecord]) -> dict[str, object]:
    """Means over a set of query records; None for a measure with no records."""
    misses = [r for r in records if not r.hit]
    return {
        "n": len(records),
        "hit_at_1": _mean([float(r.hit) for r in records]),
        "pointing": _mean([float(r.pointing) for r in records]),
        "hit_ceiling": _mean([float(r.oracle_iou >= HIT_IOU) for r in records]),
        "mean_top_iou": _mean([r.top_iou for r in records]),
        "mean_mask_iou": _mean([r.mask_iou for r in records]),
        "mean_oracle_iou": _mean([r.oracle_iou for r in records]),
        "rsu": _mean([r.rsu for r in records]),
        "ras": _mean([r.ras for r in records]),
        "rda": _mean([r.rda for r in records]),
        "rmi": _mean([r.rmi for r in records]),
        "misses_segmentation": sum(r.oracle_iou < HIT_IOU for r in misses),
        "misses_ranking": sum(r.oracle_iou >= HIT_IOU for r in misses),
        "misses_on_background": sum(r.top_object == "background" for r in misses),
    }


def breakdown(
    records: Sequence[QueryRecord], kinds: Sequence[str] = KINDS
) -> dict[str, dict[str, dict[str, object]]]:
    """summarize() per group (seen, held_out, all) x kind (``kinds`` and all)."""
    table: dict[str, dict[str, dict[str, object]]] = {}
    for group in (*GROUPS, "all"):
        in_group = [r for r in records if group in ("all", r.group)]
        table[group] = {
            kind: summarize([r for r in in_group if kind in ("all", r.kind)])
            for kind in (*kinds, "all")
        }
    return table


def summarize_labels(
    records: Sequence[LabelRecord], background_labelled: Sequence[float]
) -> dict[str, object]:
    """Label figures: per-object pixel accuracy and IoU by group, and the scenes' mean mIoU.

    A scene's mIoU is the mean IoU over its labels (one per object); ``background_labelled``
    holds each scene's share of non-object pixels that got a label.
    """
    table: dict[str, object] = {"n": len(records)}
    for key in ("pixel_accuracy", "iou"):
        table[key] = {
            group: _mean([getattr(r, key) for r in records if group in ("all", r.group)])
            for group in (*GROUPS, "all")
        }
    scenes = sorted({r.scene_seed for r in records})
    table["miou"] = _mean(
        [float(np.mean([r.iou for r in records if r.scene_seed == s])) for s in scenes]
    )
    table["background_labelled"] = _mean(background_labelled)
    return table


def consistency_report(
    features: np.ndarray, labels: np.ndarray, names: Callable[[int], str] = str
) -> dict[str, object] | None:
    """Semantic consistency and the merge/deletion diagnostic of features grouped by label."""
    if features.shape[0] == 0:
        return None
    summary = semantic_consistency(features, labels)
    diagnostic = merge_deletion_diagnostic(summary)
    return {
        "labels": len(summary.labels),
        "regions": int(summary.counts.sum()),
        "mean_spread": summary.mean_spread,
        "mean_between_cosine": summary.mean_between_cosine,
        "deleted_count": len(diagnostic.deleted),
        "merged_count": len(diagnostic.merged),
        "deleted": [names(label) for label in diagnostic.deleted],
        "merged": [[names(a), names(b)] for a, b in diagnostic.merged],
    }


# ---------------------------------------------------------------------------------------------
# Pictures


def query_panel(
    scene: Scene, obj: SceneObject, frame: SemanticFrame, result: QueryResult, record: QueryRecord
) -> np.ndarray:
    """image | similarity overlay | query mask (top-1 region outlined) | ground truth."""
    image = scene.image
    best = top_region(result.relevance)
    shown = mask_overlay(image, result.mask, _PANEL_MASK_RGB)
    if best >= 0:
        shown = mask_overlay(shown, frame.instance_ids == best + 1, _PANEL_TOP_RGB, alpha=0.0)
    verdict = "HIT" if record.hit else "miss"
    return panel(
        [
            image,
            heatmap_overlay(image, result.similarity),
            shown,
            mask_overlay(image, obj.mask, _PANEL_TRUTH_RGB, alpha=0.3),
        ],
        titles=[
            f"seed {scene.seed}: '{record.text}'",
            f"similarity (top {record.top_relevance:.2f})",
            f"mask IoU {record.mask_iou:.2f}, top-1 IoU {record.top_iou:.2f} {verdict}",
            f"truth: {obj.name} ({record.group.replace('_', '-')})",
        ],
    )


def bar_chart(table: dict[str, dict[str, dict[str, object]]], title: str) -> np.ndarray:
    """hit@1 bars per query kind, seen vs held-out, with the project's targets as lines.

    Drawn with OpenCV because no plotting library is a dependency of the project.
    """
    width, height = 760, 440
    left, right, top, bottom = 60, 20, 50, 60
    canvas = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    plot_h = height - top - bottom
    colors = {"seen": (60, 110, 200), "held_out": (240, 140, 30)}
    targets = {"seen": 0.9, "held_out": 0.7}

    def y_of(value: float) -> int:
        return round(top + plot_h * (1.0 - value))

    for tick in np.linspace(0.0, 1.0, 6):
        y = y_of(tick)
        cv2.line(canvas, (left, y), (width - right, y), (225, 225, 225), 1)
        cv2.putText(
            canvas, f"{tick:.1f}", (left - 40, y + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
    for group, value in targets.items():
        y = y_of(value)
        for x in range(left, width - right, 12):
            cv2.line(canvas, (x, y), (min(x + 6, width - right), y), colors[group], 1)
    kinds = (*KINDS, "all")
    slot = (width - left - right) / len(kinds)
    bar_w = int(slot * 0.3)
    for index, kind in enumerate(kinds):
        centre = left + slot * (index + 0.5)
        for offset, group in ((-1, "seen"), (0, "held_out")):
            value = table[group][kind]["hit_at_1"]
            x0 = round(centre + offset * bar_w)
            if value is None:
                cv2.putText(canvas, "n/a", (x0, y_of(0.0) - 5), font, 0.4, (0, 0, 0), 1)
                continue
            cv2.rectangle(canvas, (x0, y_of(value)), (x0 + bar_w - 2, y_of(0.0)), colors[group], -1)
            cv2.putText(
                canvas, f"{value:.2f}", (x0, y_of(value) - 5), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA
            )
        (text_w, _), _ = cv2.getTextSize(kind, font, 0.55, 1)
        cv2.putText(
            canvas,
            kind,
            (round(centre - text_w / 2), height - bottom + 22),
            font,
            0.55,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    cv2.line(canvas, (left, top), (left, y_of(0.0)), (0, 0, 0), 1)
    cv2.line(canvas, (left, y_of(0.0)), (width - right, y_of(0.0)), (0, 0, 0), 1)
    cv2.putText(canvas, title, (left, 30), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for index, (group, label) in enumerate(
        (("seen", "seen combos (target 0.9)"), ("held_out", "held-out combos (target 0.7)"))
    ):
        x = left + index * 300
        cv2.rectangle(canvas, (x, height - 24), (x + 14, height - 10), colors[group], -1)
        cv2.putText(canvas, label, (x + 20, height - 11), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    clip_defaults, refine_defaults = ClipConfig(), RefineConfig()
    query_defaults, superpixel_defaults = QueryConfig(), SuperpixelConfig()
    p = argparse.ArgumentParser(
        prog="semret-eval",
        description="Run the semret pipeline on generated shapes-world scenes against named "
        "queries; write report.json, PNG panels and a hit@1 bar chart.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--scenes", type=int, default=30, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="scene i uses seed SEED + i")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--easy", action="store_true", help="easy scenes instead of the hard ones")
    p.add_argument(
        "--renderer",
        choices=RENDERERS,
        default="train",
        help="train: the shapes world the model was trained on; test: the independent test "
        "renderer (hard scenes only)",
    )
    p.add_argument(
        "--min-held-out",
        type=int,
        default=2,
        help="at least this many held-out combinations per scene (more held-out samples)",
    )
    p.add_argument("--masks", choices=MASK_MODES, default="superpixel", help="region source")
    sam2_defaults = Sam2Config()
    p.add_argument(
        "--sam2-checkpoint",
        default=None,
        help="SAM2 weights with --masks sam2: shapes_default (the shipped small SAM2, the "
        "default) or a checkpoint file (with --sam2-config)",
    )
    p.add_argument("--sam2-config", default=sam2_defaults.model_cfg, help="SAM2 config name")
    p.add_argument(
        "--sam2-prompts",
        choices=SAM2_PROMPTS,
        default=sam2_defaults.prompts,
        help="automatic masks: superpixel prompts (the project's path) or sam2's stock grid",
    )
    p.add_argument(
        "--sam2-points-per-side",
        type=int,
        default=sam2_defaults.points_per_side,
        help="SAM2 point grid (cost grows with its square)",
    )
    p.add_argument(
        "--sam2-pred-iou-thresh",
        type=float,
        default=sam2_defaults.pred_iou_thresh,
        help="drop SAM2 masks with a lower predicted IoU",
    )
    p.add_argument(
        "--sam2-stability-thresh",
        type=float,
        default=sam2_defaults.stability_score_thresh,
        help="drop SAM2 masks with a lower stability score",
    )
    add_clip_arguments(p, device_help="torch device for CLIP and SAM2")
    p.add_argument(
        "--global-weight",
        type=float,
        default=clip_defaults.global_weight,
        help="weight of the whole-image feature blended into each region (region weight 1)",
    )
    p.add_argument("--visual-prompt", default=clip_defaults.visual_prompt, help="crop mode")
    p.add_argument(
        "--region-encoder",
        choices=REGION_ENCODERS,
        default=clip_defaults.region_encoder,
        help="what embeds a region: the CLIP image tower on its crop, or seed 004's "
        "object-guided encoder (needs --region-encoder-path)",
    )
    p.add_argument(
        "--region-features",
        choices=REGION_FEATURES,
        default=clip_defaults.region_features,
        help="a region's own feature: its crop, its mask pooled over the dense feature grid, "
        "or a blend of both (--dense-weight)",
    )
    p.add_argument(
        "--dense-weight",
        type=float,
        default=clip_defaults.dense_weight,
        help="weight of the dense feature with --region-features blend",
    )
    p.add_argument(
        "--dense-input-size",
        type=int,
        default=clip_defaults.dense.input_size,
        help="shorter side (px) fed to the image tower for dense features (0: its default)",
    )
    p.add_argument(
        "--no-dense-head",
        action="store_true",
        help="leave out the model folder's learned dense head (dense.head: false)",
    )
    p.add_argument(
        "--normalize",
        action="store_true",
        help="min-max normalise each phrase's relevance over the frame (seed 003)",
    )
    p.add_argument(
        "--region-encoder-path",
        default=None,
        help="folder of an object-guided encoder (semret-train --objective object-guided)",
    )
    p.add_argument(
        "--min-area",
        type=int,
        default=None,
        help=f"refine min_area (default {refine_defaults.min_area}; 0 with --masks gt)",
    )
    p.add_argument(
        "--merge-threshold",
        type=float,
        default=None,
        help=f"refine merge threshold, > 1 disables (default {refine_defaults.merge_threshold}; "
        "off with --masks gt)",
    )
    p.add_argument("--query-mode", choices=MODES, default=query_defaults.mode)
    p.add_argument(
        "--threshold",
        type=float,
        default=query_defaults.threshold,
        help="relevance threshold of the query masks and the labels (hit@1 ignores it)",
    )
    p.add_argument("--contrast-scale", type=float, default=query_defaults.contrast_scale)
    p.add_argument(
        "--negatives",
        default=",".join(query_defaults.negatives),
        help="comma-separated negative phrases of contrastive scoring",
    )
    p.add_argument("--superpixel-method", choices=SUPERPIXEL_METHODS, default="felzenszwalb")
    p.add_argument("--fz-scale", type=float, default=superpixel_defaults.scale)
    p.add_argument("--fz-sigma", type=float, default=superpixel_defaults.sigma)
    p.add_argument("--fz-min-size", type=int, default=superpixel_defaults.min_size)
    p.add_argument("--slic-segments", type=int, default=superpixel_defaults.n_segments)
    p.add_argument("--downscale", type=float, default=superpixel_defaults.downscale)
    p.add_argument(
        "--edge-passes",
        type=int,
        default=superpixel_defaults.edge_passes,
        help="passes that snap superpixel edges onto colour edges (0: off)",
    )
    p.add_argument("--panels", type=int, default=2, help="write panels for the first K scenes")
    p.add_argument(
        "--depth",
        action="store_true",
        help="give the pipeline each scene's rendered registered depth (noise, holes) and "
        "report the 3D error of hits against the objects' true centroids",
    )
    p.add_argument(
        "--paraphrases",
        nargs="?",
        const="issue",
        choices=tuple(SYNONYM_LISTS),
        help="also ask for every object in words training never used (colour and shape "
        "synonyms, sentence forms: semret_ros/shapes/paraphrases.py) and report their hit@1; "
        "the value picks the synonym list (default: issue)",
    )
    p.add_argument(
        "--no-lexicon",
        action="store_true",
        help="encode queries verbatim, without the model folder's query lexicon",
    )
    p.add_argument(
        "--retrieval",
        action="store_true",
        help="also report image-text retrieval (R@1, R@5, mean rank) of the scenes' objects "
        "against the 64 colour-shape names",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """The configuration the arguments describe; ValueError names the bad field."""
    gt = args.masks == "gt"
    segmenter: SuperpixelConfig | Sam2Config | MaskFreeConfig
    if args.masks == "dense":
        segmenter = MaskFreeConfig()
    elif args.masks == "sam2":
        segmenter = Sam2Config(
            model_cfg=args.sam2_config,
            checkpoint=args.sam2_checkpoint,
            points_per_side=args.sam2_points_per_side,
            pred_iou_thresh=args.sam2_pred_iou_thresh,
            stability_score_thresh=args.sam2_stability_thresh,
            prompts=args.sam2_prompts,
            device=args.device,
        )
    else:
        # Not used with --masks gt; the superpixel flags are still validated.
        segmenter = SuperpixelConfig(
            method=args.superpixel_method,
            scale=args.fz_scale,
            sigma=args.fz_sigma,
            min_size=args.fz_min_size,
            n_segments=args.slic_segments,
            downscale=args.downscale,
            edge_passes=args.edge_passes,
        )
    # Ground-truth masks are neither too small to embed nor over-segmented: refining them
    # could only drop or fuse true objects.
    defaults = RefineConfig(min_area=0, merge_threshold=2.0) if gt else RefineConfig()
    refine = RefineConfig(
        min_area=defaults.min_area if args.min_area is None else args.min_area,
        merge_threshold=(
            defaults.merge_threshold if args.merge_threshold is None else args.merge_threshold
        ),
    )
    negatives = tuple(n.strip() for n in args.negatives.split(",") if n.strip())
    return PipelineConfig(
        segmenter=segmenter,
        clip=ClipConfig(
            model_name=args.clip_model,
            pretrained=args.clip_pretrained,
            device=args.device,
            visual_prompt=args.visual_prompt,
            global_weight=args.global_weight,
            region_encoder=args.region_encoder,
            region_encoder_path=args.region_encoder_path,
            region_features=args.region_features,
            dense_weight=args.dense_weight,
            dense=DenseConfig(input_size=args.dense_input_size, head=not args.no_dense_head),
            query_lexicon=not args.no_lexicon,
        ),
        refine=refine,
        query=QueryConfig(
            mode=args.query_mode,
            negatives=negatives,
            threshold=args.threshold,
            contrast_scale=args.contrast_scale,
            normalize=args.normalize,
        ),
    )


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> PipelineConfig:
    if args.scenes < 1:
        parser.error(f"--scenes: expected >= 1, got {args.scenes}")
    if args.width < 16 or args.height < 16:
        parser.error(f"--width/--height: expected >= 16, got {args.width}x{args.height}")
    if args.panels < 0:
        parser.error(f"--panels: expected >= 0, got {args.panels}")
    if args.min_held_out < 0:
        parser.error(f"--min-held-out: expected >= 0, got {args.min_held_out}")
    if args.renderer == "test" and args.easy:
        parser.error("--easy: the test renderer draws hard scenes only")
    if args.masks == "sam2":
        if args.sam2_checkpoint is None:
            args.sam2_checkpoint = "shapes_default"
        weights = resolve_sam2_checkpoint(args.sam2_checkpoint, args.sam2_config).checkpoint
        if not Path(str(weights)).is_file():
            parser.error(f"--sam2-checkpoint: file not found: {weights}")
    elif args.sam2_checkpoint is not None:
        parser.error("--sam2-checkpoint is only used with --masks sam2")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: {args.out} exists and is not a folder")
    try:
        config = _pipeline_config(args)
    except ValueError as error:
        parser.error(str(error))
    return config


def _print_table(report: dict[str, object]) -> None:
    table = report["breakdown"]
    print(
        f"\nsemret-eval: {report['scenes']} scenes, masks={report['masks']}, "
        f"model={report['model']['name']}"
    )
    print(
        f"{'hit@1':<10}{'seen':>10}{'held-out':>10}{'all':>10}"
        f"{'ceiling':>10}{'mask IoU':>10}{'Rmi':>8}{'pointing':>10}"
    )

    def fmt(value: object) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for kind in (*KINDS, "all"):
        row = [table[group][kind]["hit_at_1"] for group in (*GROUPS, "all")]
        cell = table["all"][kind]
        print(
            f"{kind:<10}"
            + "".join(f"{fmt(v):>10}" for v in row)
            + f"{fmt(cell['hit_ceiling']):>10}{fmt(cell['mean_mask_iou']):>10}{fmt(cell['rmi']):>8}"
            + f"{fmt(cell['pointing']):>10}"
        )
    labels = report["labels"]
    print(f"\n{'~/label':<10}{'seen':>10}{'held-out':>10}{'all':>10}{'mIoU':>10}{'bg lab.':>10}")
    for key, name in (("pixel_accuracy", "pixel acc"), ("iou", "IoU")):
        row = [labels[key][group] for group in (*GROUPS, "all")]
        extra = (
            f"{fmt(labels['miou']):>10}{fmt(labels['background_labelled']):>10}"
            if key == "pixel_accuracy"
            else ""
        )
        print(f"{name:<10}" + "".join(f"{fmt(v):>10}" for v in row) + extra)
    describe = report["describe"]
    print(f"{'describe':<10}" + "".join(f"{fmt(describe[g]):>10}" for g in (*GROUPS, "all")))
    recall, masks = report["mask_recall"], report["describe_mask_iou"]
    print(
        "mask recall (frame regions) "
        + ", ".join(f"IoU>={t} {fmt(recall[str(t)])}" for t in MASK_RECALL_IOUS)
        + f"; ~/describe mask IoU: point {fmt(masks['point'])}, box {fmt(masks['box'])}"
    )
    timing = report["timing"]
    print(
        f"process {timing['process_ms_mean']:.1f} ms/frame, query {timing['query_ms_mean']:.2f} ms "
        f"(median {timing['query_ms_median']:.2f}), label {timing['label_ms_mean']:.2f} ms; "
        f"report: {report['out']}"
    )
    depth = report.get("depth")
    if depth is not None and depth["median_error_m"] is not None:
        print(
            f"3D: {depth['hits_with_position']:.3f} of {depth['hits']} hits placed; error median "
            f"{100 * depth['median_error_m']:.1f} cm, p90 {100 * depth['p90_error_m']:.1f} cm; "
            f"relative median {100 * depth['median_relative_error']:.2f} %, p90 "
            f"{100 * depth['p90_relative_error']:.2f} %; "
            f"{depth['within_5_percent_of_depth']:.3f} within 5 % of depth"
        )
    retrieval = report.get("retrieval")
    if retrieval is not None:
        print(
            f"retrieval over {retrieval['pairs']} objects x {retrieval['captions']} names: "
            f"i2t R@1 {retrieval['i2t_r1']:.3f} R@5 {retrieval['i2t_r5']:.3f} mean rank "
            f"{retrieval['i2t_mean_rank']:.2f}; t2i R@1 {retrieval['t2i_r1']:.3f} R@5 "
            f"{retrieval['t2i_r5']:.3f} mean rank {retrieval['t2i_mean_rank']:.2f}"
        )
    paraphrases = report.get("paraphrases")
    if paraphrases is not None:
        table = paraphrases["breakdown"]
        print(f"\n{'paraphrase':<12}{'seen':>10}{'held-out':>10}{'all':>10}{'n':>6}")
        for kind in (*PARAPHRASE_KINDS, "all"):
            row = [table[group][kind]["hit_at_1"] for group in (*GROUPS, "all")]
            n = table["all"][kind]["n"]
            print(f"{kind:<12}" + "".join(f"{fmt(v):>10}" for v in row) + f"{n:>6}")


def paraphrase_report(records: Sequence[QueryRecord]) -> dict[str, object]:
    """hit@1 of the paraphrase queries per group x paraphrase kind, and every record."""
    return {
        "breakdown": breakdown(records, PARAPHRASE_KINDS),
        "records": [dataclasses.asdict(r) for r in records],
    }


@dataclass
class SceneResult:
    """What one scene contributes to the report."""

    records: list[QueryRecord]
    labels: list[LabelRecord]
    """One per object: the scene's multi-label request judged for that object."""
    background_labelled: float
    """Share of the scene's non-object pixels the multi-label request labelled."""
    label_s: float
    skipped: int
    """Queries left out because they would name several objects."""
    process_s: float
    num_regions: int
    consistency: dict[str, object] | None
    """Consistency of this frame's region features grouped by object."""
    object_features: np.ndarray
    """(M, D) features of the regions lying mostly on an object."""
    object_combos: np.ndarray
    """(M,) index in ALL_COMBOS of the object under each of those regions."""
    panels: dict[str, np.ndarray]
    """File name -> panel image, for the scenes that get panels."""
    describes: list[DescribeRecord] = dataclasses.field(default_factory=list)
    """One ``~/describe`` record per object (a point at its interior, and its box)."""
    object_ious: list[float] = dataclasses.field(default_factory=list)
    """Per object, the best IoU any region of the frame reaches with it (mask recall)."""
    paraphrases: list[QueryRecord] = dataclasses.field(default_factory=list)
    """With --paraphrases: one query per paraphrase kind and object (kind = paraphrase kind)."""


def evaluate_scene(
    pipeline: SemanticPipeline,
    scene: Scene,
    with_panels: bool,
    depth: DepthScene | None = None,
    paraphrases: str | None = None,
) -> SceneResult:
    """Process one scene, query each of its objects every unambiguous way, label the scene.

    ``paraphrases`` (a synonym list name) also asks for each object once per paraphrase kind
    (:mod:`semret_ros.shapes.paraphrases`), recorded apart from the named queries.

    The multi-label request names every object of the scene by its full name at once.

    Panels show all query kinds about one object: the first held-out one if the scene has
    any, since generalisation is what a reader most wants to see.
    """
    start = time.perf_counter()
    frame = pipeline.process(
        scene.image,
        stamp_ns=scene.seed,
        frame_id=f"scene_{scene.seed}",
        depth=None
        if depth is None
        else DepthFrame(depth.depth_m, depth.intrinsics, scene.seed, "depth_optical_frame"),
    )
    process_s = time.perf_counter() - start

    owners = majority_objects(scene.instance_ids, frame.instance_ids, frame.num_regions)
    on_object = owners > 0
    names = ["background", *(o.name for o in scene.objects)]
    region_names = [names[owner] for owner in owners]
    combos = np.array([ALL_COMBOS.index((o.color, o.shape)) for o in scene.objects], np.int64)

    records: list[QueryRecord] = []
    panels: dict[str, np.ndarray] = {}
    skipped = 0
    shown = next((o for o in scene.objects if o.held_out), scene.objects[0])
    paraphrase_records: list[QueryRecord] = []
    object_ious: list[float] = []
    for obj_index, obj in enumerate(scene.objects):
        ious = region_ious(frame.instance_ids, obj.mask)
        object_ious.append(max(ious.values(), default=0.0))
        # (kind, phrase, what it names, where its record goes)
        asks = [(kind, query_phrase(kind, obj), kind, records) for kind in KINDS]
        if paraphrases:
            found = paraphrases_for(obj.color, obj.shape, (scene.seed, obj_index), paraphrases)
            asks += [(q.kind, q.text, q.names, paraphrase_records) for q in found]
        for kind, text, names_kind, into in asks:
            if is_ambiguous(names_kind, obj, scene.objects):
                skipped += into is records
                continue
            start = time.perf_counter()
            result = pipeline.query(frame, text)
            elapsed = time.perf_counter() - start
            measured = measure_query(frame, result, obj.mask, ious, region_names)
            if depth is not None:
                centroid = depth.centroids[obj_index]
                measured.update(position_error(frame, result, centroid, bool(measured["hit"])))
            record = QueryRecord(
                scene_seed=scene.seed,
                object_index=obj_index,
                object=obj.name,
                group="held_out" if obj.held_out else "seen",
                kind=kind,
                text=text,
                query_s=elapsed,
                **measured,
            )
            into.append(record)
            if with_panels and obj is shown and into is records:
                name = f"scene{scene.seed}_{kind}_{obj.name.replace(' ', '_')}.png"
                panels[name] = query_panel(scene, obj, frame, result, record)

    start = time.perf_counter()
    labelled = pipeline.label(frame, [obj.name for obj in scene.objects])
    label_s = time.perf_counter() - start
    scores = label_scores(labelled.label_image, [obj.mask for obj in scene.objects])
    label_records = [
        LabelRecord(
            scene_seed=scene.seed,
            object_index=obj_index,
            object=obj.name,
            group="held_out" if obj.held_out else "seen",
            pixel_accuracy=float(scores.accuracy[obj_index]),
            iou=float(scores.iou[obj_index]),
        )
        for obj_index, obj in enumerate(scene.objects)
    ]
    describes = []
    for obj in scene.objects:
        point = Prompt(
            points=np.array([interior_point(obj.mask)], np.float32), point_labels=np.array([1])
        )
        top1, point_iou = describe_object(pipeline, frame, point, obj.mask)
        _, box_iou = describe_object(pipeline, frame, Prompt(box=obj.bbox), obj.mask)
        group = "held_out" if obj.held_out else "seen"
        describes.append(
            DescribeRecord(scene.seed, obj.name, group, top1, top1 == obj.name, point_iou, box_iou)
        )
    return SceneResult(
        describes=describes,
        object_ious=object_ious,
        records=records,
        labels=label_records,
        background_labelled=scores.background_labelled,
        label_s=label_s,
        skipped=skipped,
        process_s=process_s,
        num_regions=frame.num_regions,
        consistency=consistency_report(frame.embeddings[on_object], owners[on_object]),
        object_features=frame.embeddings[on_object],
        object_combos=combos[owners[on_object] - 1],
        panels=panels,
        paraphrases=paraphrase_records,
    )


def object_features(embedder: ClipEmbedder, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Each object's embedding as the node computes it from the object's true mask (masked
    crop blended with the whole image), and the index of its name in ALL_COMBOS."""
    features, _ = embedder.embed_frame(scene.image, scene.instance_ids, len(scene.objects))
    names = np.array([ALL_COMBOS.index((o.color, o.shape)) for o in scene.objects], np.int64)
    return features, names


def retrieval_report(
    embedder: ClipEmbedder, pairs: Sequence[tuple[np.ndarray, np.ndarray]]
) -> dict[str, object]:
    """Seed 004's retrieval figures: the scenes' objects against the 64 colour-shape names."""
    captions = [f"{color} {shape}" for color, shape in ALL_COMBOS]
    scores = retrieval_metrics(
        np.concatenate([features for features, _ in pairs]),
        np.concatenate([names for _, names in pairs]),
        embedder.embed_text(captions),
    )
    return {
        **dataclasses.asdict(scores),
        "gallery": "the 64 colour-shape names, each through the embedder's prompt templates",
        "images": "the scenes' objects: true masks, embedded as the node embeds a region",
    }


def build_report(
    args: argparse.Namespace,
    config: PipelineConfig,
    embedder: ClipEmbedder,
    results: Sequence[SceneResult],
    panels: Sequence[str],
) -> dict[str, object]:
    """Every figure, the configuration and the per-query records, JSON-ready."""
    records = [record for result in results for record in result.records]
    label_records = [record for result in results for record in result.labels]
    table = breakdown(records)
    per_scene = [r.consistency for r in results if r.consistency is not None]
    pooled = consistency_report(
        np.concatenate([r.object_features for r in results]),
        np.concatenate([r.object_combos for r in results]),
        names=lambda code: " ".join(ALL_COMBOS[code]),
    )
    query_ms = np.array([r.query_s for r in records]) * 1e3
    pipeline_report = dataclasses.asdict(config)
    if args.masks == "gt":
        pipeline_report["segmenter"] = {"kind": GroundTruthSegmenter.name}
    return {
        "tool": "semret-eval",
        "out": str(args.out),
        "masks": args.masks,
        "scenes": args.scenes,
        "seeds": [args.seed + i for i in range(args.scenes)],
        "scene_size": [args.width, args.height],
        "renderer": args.renderer,
        "hard": not args.easy,
        "model": {
            "name": config.clip.model_name,
            "pretrained": config.clip.pretrained,
            "embedding_dim": embedder.embedding_dim,
        },
        "config": {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "pipeline": pipeline_report,
            "query_phrases": QUERY_PHRASES,
            "hit_iou": HIT_IOU,
        },
        "summary": table["all"]["all"],
        "breakdown": table,
        "labels": summarize_labels(label_records, [r.background_labelled for r in results]),
        "describe": {
            group: _mean(
                [float(d.hit) for r in results for d in r.describes if group in ("all", d.group)]
            )
            for group in (*GROUPS, "all")
        },
        "describe_mask_iou": {
            prompt: _mean([getattr(d, f"{prompt}_iou") for r in results for d in r.describes])
            for prompt in ("point", "box")
        },
        "mask_recall": {
            str(threshold): _mean(
                [float(value >= threshold) for r in results for value in r.object_ious]
            )
            for threshold in MASK_RECALL_IOUS
        },
        "skipped_ambiguous": sum(r.skipped for r in results),
        "consistency": {
            "per_scene_mean": {
                "mean_spread": _mean([float(s["mean_spread"]) for s in per_scene]),
                "mean_between_cosine": _mean([float(s["mean_between_cosine"]) for s in per_scene]),
                "deleted_per_scene": _mean([s["deleted_count"] for s in per_scene]),
                "merged_pairs_per_scene": _mean([s["merged_count"] for s in per_scene]),
            },
            "pooled_by_combination": pooled,
        },
        "timing": {
            "process_ms_mean": float(np.mean([r.process_s for r in results]) * 1e3),
            "query_ms_mean": float(query_ms.mean()) if query_ms.size else 0.0,
            "query_ms_median": float(np.median(query_ms)) if query_ms.size else 0.0,
            "label_ms_mean": float(np.mean([r.label_s for r in results]) * 1e3),
            "regions_per_frame": float(np.mean([r.num_regions for r in results])),
        },
        "panels": list(panels),
        "bar_chart": "hit_at_1.png",
        "records": [dataclasses.asdict(r) for r in records],
        "label_records": [dataclasses.asdict(r) for r in label_records],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = _check_args(args, parser)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    try:
        embedder = ClipEmbedder(config.clip)
        segmenter = None if args.masks in ("gt", "dense") else build_segmenter(config.segmenter)
    except (FileNotFoundError, ValueError) as error:
        print(f"semret-eval: error: cannot load the models: {error}", file=sys.stderr)
        return 2
    embedder.warmup()

    args.out.mkdir(parents=True, exist_ok=True)
    results: list[SceneResult] = []
    panels: list[str] = []
    retrieval_pairs: list[tuple[np.ndarray, np.ndarray]] = []
    seeds = range(args.seed, args.seed + args.scenes)
    for index, seed in enumerate(
        tqdm(seeds, desc="scenes", disable=args.no_progress, file=sys.stderr)
    ):
        if args.renderer == "test":
            scene = render_scene(seed, args.width, args.height, min_held_out=args.min_held_out)
        else:
            scene = generate_scene(
                seed, args.width, args.height, hard=not args.easy, min_held_out=args.min_held_out
            )
        source: Segmenter | None = GroundTruthSegmenter(scene) if args.masks == "gt" else segmenter
        pipeline = SemanticPipeline(source, embedder, refine=config.refine, query=config.query)
        depth = render_depth(scene) if args.depth else None
        result = evaluate_scene(pipeline, scene, index < args.panels, depth, args.paraphrases)
        for name, image in result.panels.items():
            save_png(args.out / "panels" / name, image)
            panels.append(f"panels/{name}")
        result.panels.clear()
        results.append(result)
        if args.retrieval:
            retrieval_pairs.append(object_features(embedder, scene))

    report = build_report(args, config, embedder, results, panels)
    if args.retrieval:
        report["retrieval"] = retrieval_report(embedder, retrieval_pairs)
    if args.depth:
        report["depth"] = depth_summary([r for result in results for r in result.records])
    if args.paraphrases:
        report["paraphrases"] = paraphrase_report([r for res in results for r in res.paraphrases])
    title = f"hit@1, {args.masks} masks, {args.scenes} scenes ({config.clip.model_name})"
    save_png(args.out / report["bar_chart"], bar_chart(report["breakdown"], title))
    (args.out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    _print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
