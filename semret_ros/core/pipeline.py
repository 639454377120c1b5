"""The whole per-frame job in one place: segment, refine, embed, and answer language queries.

The ROS node, the evaluation tool and the demo all call :class:`SemanticPipeline`, so a frame
is processed and a query answered the same way everywhere. Processing a frame is the slow
part (segmenter + image encoder); answering a query from a processed frame costs one cached
text lookup and a few array operations, which is why frames are kept and queries are cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from semret_ros.core.dense import MaskFreeConfig, cell_ids
from semret_ros.core.depth import DepthFrame, SegmentPosition, align_depth, segment_positions
from semret_ros.core.embedder import ClipConfig, ClipEmbedder, model_vocabulary
from semret_ros.core.image import check_image
from semret_ros.core.records import (
    DescribeResult,
    LabelResult,
    Prompt,
    QueryResult,
    SemanticFrame,
)
from semret_ros.core.refine import (
    RefineConfig,
    assign_proposals,
    merge_similar_regions,
    region_stats,
)
from semret_ros.core.scoring import (
    QueryConfig,
    check_phrases,
    check_threshold,
    choose_labels,
    label_frame,
    query_frame,
    rank_vocabulary,
    region_relevance,
)
from semret_ros.core.segmenters import (
    Sam2Config,
    Segmenter,
    SuperpixelConfig,
    SuperpixelSegmenter,
    build_segmenter,
    select_regions,
)

_log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """Everything that decides what a processed frame and an answer look like."""

    segmenter: SuperpixelConfig | Sam2Config | MaskFreeConfig = field(
        default_factory=SuperpixelConfig
    )
    clip: ClipConfig = field(default_factory=ClipConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    vocabulary: tuple[str, ...] = ()
    """Default candidate names for :meth:`SemanticPipeline.describe`."""

    def __post_init__(self) -> None:
        self.vocabulary = tuple(self.vocabulary)
        if self.vocabulary:
            check_phrases("vocabulary", self.vocabulary)


DEFAULT_MIN_DEPTH_POINTS = 20
"""Valid depth pixels a region needs for a 3D position: fewer is noise on an edge or a hole."""


class SemanticPipeline:
    """Turns RGB frames into :class:`SemanticFrame` records and answers phrases against them.

    ``segmenter`` None is mask-free mode (``segmenter.type: dense``): a frame's regions are
    the cells of its dense feature grid (``SemanticFrame.grid_shape``), and the same
    ``query``/``label``/``describe`` answer from them (see ``scoring.query_frame``).

    Thread safety: ``process`` may run on one thread while ``query``/``label``/``describe``
    run on others; they share only the embedder, whose text cache is locked, and frames,
    which are never mutated after ``process`` returns them.
    """

    def __init__(
        self,
        segmenter: Segmenter | None,
        embedder: ClipEmbedder,
        refine: RefineConfig | None = None,
        query: QueryConfig | None = None,
        vocabulary: Sequence[str] = (),
    ) -> None:
        self.segmenter = segmenter
        self.embedder = embedder
        self.refine = refine or RefineConfig()
        self.query_config = query or QueryConfig()
        self.vocabulary = tuple(vocabulary)

    def process(
        self,
        image: np.ndarray,
        stamp_ns: int = 0,
        frame_id: str = "",
        depth: DepthFrame | None = None,
        min_depth_points: int = DEFAULT_MIN_DEPTH_POINTS,
    ) -> SemanticFrame:
        """Segment, refine and embed one RGB frame (HxWx3 uint8, see ``image.to_rgb``).

        ``depth``: a registered depth image of the same scene (any size with the same aspect
        ratio); each final region then gets a 3D position from its pixels' depths (None where
        fewer than ``min_depth_points`` are valid). Positions are computed after merging, on
        the ids the frame keeps, so they describe exactly the regions a query returns.

        The frame record keeps ``image`` itself, not a copy: hand over an array nobody
        modifies afterwards (``to_rgb`` always returns a fresh one).

        Proposals become one non-overlapping id image first (see ``assign_proposals``), so
        each pixel belongs to exactly one embedded region; touching regions whose embeddings
        are near-identical are then merged, which undoes over-segmentation without another
        encoder call. Every stage after the segmenter works on that id image and its boxes
        (crops read it only inside each box), so a frame of a few hundred superpixels builds
        no per-region full-size mask.
        """
        image = check_image(image)
        if self.segmenter is None:
            return self._process_mask_free(image, stamp_ns, frame_id, depth)
        instance_ids, scores = assign_proposals(
            self.segmenter.segment(image), self.refine.min_area, image.shape[:2]
        )
        bboxes, areas = region_stats(instance_ids, scores.size)
        embeddings, global_embedding = self.embedder.embed_regions(image, instance_ids, bboxes)
        if scores.size > 1 and self.refine.merge_threshold <= 1.0:
            instance_ids, embeddings, parent = merge_similar_regions(
                instance_ids, embeddings, self.refine.merge_threshold
            )
            merged_scores = np.zeros(embeddings.shape[0], dtype=np.float32)
            np.maximum.at(merged_scores, parent - 1, scores)
            scores = merged_scores
            bboxes, areas = region_stats(instance_ids, embeddings.shape[0])
        positions: tuple[SegmentPosition | None, ...] = ()
        if depth is not None:
            depth = align_depth(depth, image.shape[1], image.shape[0])
            positions = tuple(
                segment_positions(instance_ids, embeddings.shape[0], depth, min_depth_points)
            )
        return SemanticFrame(
            stamp_ns=int(stamp_ns),
            frame_id=frame_id,
            image=image,
            instance_ids=instance_ids,
            embeddings=np.ascontiguousarray(embeddings, dtype=np.float32),
            global_embedding=np.asarray(global_embedding, dtype=np.float32),
            scores=scores,
            bboxes=bboxes,
            areas=areas,
            model=self.embedder.model_name,
            depth=depth,
            positions=positions,
        )

    def _process_mask_free(
        self, image: np.ndarray, stamp_ns: int, frame_id: str, depth: DepthFrame | None
    ) -> SemanticFrame:
        """A frame whose regions are the dense grid's cells (no segmenter, no merging).

        Cells keep their own features (no global blend): mixing the scene into every cell
        would flatten exactly the contrast a mask-free answer is drawn from. Cells get no 3D
        positions; the depth image is kept for the answers' point clouds.
        """
        grid, global_embedding = self.embedder.embed_dense(image)
        rows, cols, dim = grid.shape
        instance_ids = cell_ids(image.shape[0], image.shape[1], (rows, cols))
        bboxes, areas = region_stats(instance_ids, rows * cols)
        return SemanticFrame(
            stamp_ns=int(stamp_ns),
            frame_id=frame_id,
            image=image,
            instance_ids=instance_ids,
            embeddings=grid.reshape(rows * cols, dim),
            global_embedding=np.asarray(global_embedding, dtype=np.float32),
            scores=np.ones(rows * cols, np.float32),
            bboxes=bboxes,
            areas=areas,
            model=self.embedder.model_name,
            depth=None if depth is None else align_depth(depth, image.shape[1], image.shape[0]),
            grid_shape=(rows, cols),
        )

    def _negative_embeddings(
        self, negatives: Sequence[str] | None, config: QueryConfig
    ) -> np.ndarray | None:
        if negatives is None:  # the configured ones, validated by QueryConfig
            phrases = config.negatives
        else:
            phrases = tuple(negatives)
            if phrases:
                check_phrases("negatives", phrases)
        return self.embedder.embed_text(phrases) if phrases else None

    def query(
        self,
        frame: SemanticFrame,
        text: str,
        negatives: Sequence[str] | None = None,
        threshold: float | None = None,
        max_results: int | None = None,
        config: QueryConfig | None = None,
    ) -> QueryResult:
        """Relevance of every region of ``frame`` to ``text``; None arguments use the defaults.

        The phrase's text feature is cached by the embedder, so a phrase seen before costs no
        model call: the answer is a table lookup over the frame's instance-id image.

        ``config`` (default: ``query_config``) is read once, so a caller that swaps settings
        while requests run (the node's set-parameters callback) can never mix a mode from
        one configuration with the negatives of another.
        """
        check_phrases("text", [text])
        config = config or self.query_config
        return query_frame(
            frame,
            text,
            self.embedder.embed_text([text])[0],
            self._negative_embeddings(negatives, config),
            threshold=config.threshold if threshold is None else threshold,
            max_results=config.max_results if max_results is None else max_results,
            mode=config.mode,
            scale=config.contrast_scale,
            normalize=config.normalize,
        )

    def query_recent(
        self,
        frames: Sequence[SemanticFrame],
        text: str,
        negatives: Sequence[str] | None = None,
        threshold: float | None = None,
        max_results: int | None = None,
        config: QueryConfig | None = None,
    ) -> tuple[int, QueryResult]:
        """The best answer to ``text`` over ``frames`` (newest first): (its index, the answer).

        "Where did you last see X" while the camera has moved on: every frame's regions are
        scored (a table lookup each, the phrase's feature is embedded once) and
        :func:`best_frame` picks the frame; only that one gets the similarity image and mask.
        With one frame this is :meth:`query`. Arguments as for :meth:`query`.
        """
        if not frames:
            raise ValueError("frames: expected at least one frame to search")
        check_phrases("text", [text])
        config = config or self.query_config
        threshold = check_threshold(config.threshold if threshold is None else threshold)
        index = 0
        if len(frames) > 1:
            phrase = self.embedder.embed_text([text])[0]
            negative = self._negative_embeddings(negatives, config)
            index = best_frame(
                [
                    region_relevance(
                        frame.embeddings, phrase, negative, config.mode, config.contrast_scale
                    )
                    for frame in frames
                ],
                threshold,
            )
        answer = self.query(frames[index], text, negatives, threshold, max_results, config)
        return index, answer

    def label(
        self,
        frame: SemanticFrame,
        labels: Sequence[str],
        threshold: float | None = None,
        config: QueryConfig | None = None,
    ) -> LabelResult:
        """Which of ``labels`` each region is, as a label image (0 where none passes).

        Each label is scored as a query for it would be (same mode, negatives and scale), and
        the region takes its most relevant label (``scoring.choose_labels``).
        """
        check_phrases("labels", labels)
        config = config or self.query_config
        return label_frame(
            frame,
            labels,
            self.embedder.embed_text(labels),
            self._negative_embeddings(None, config),
            threshold=config.threshold if threshold is None else threshold,
            mode=config.mode,
            scale=config.contrast_scale,
            normalize=config.normalize,
        )

    def region_labels(self, frame: SemanticFrame, results: Sequence[QueryResult]) -> list[str]:
        """Per region, the phrase of the most relevant of ``results`` passing its threshold, or "".

        ``results`` answer phrases on this frame with one configuration (the node's standing
        queries); ~/segments labels its regions with them by the same rule ~/label uses
        (``scoring.choose_labels``), so the two never disagree on the same phrases.
        """
        if not results or not frame.num_regions:
            return [""] * frame.num_regions
        choice = choose_labels(
            np.stack([result.relevance for result in results], axis=1),
            np.stack([result.margin for result in results], axis=1),
            [result.threshold for result in results],
        )
        return [results[c - 1].text if c else "" for c in choice]

    def describe(
        self,
        frame: SemanticFrame,
        prompt: Prompt,
        vocabulary: Sequence[str] | None = None,
        config: QueryConfig | None = None,
    ) -> DescribeResult:
        """Segment the object a point/box prompt selects and rank a vocabulary against it.

        With SAM2 the prompt goes to its image predictor (a new, precise mask). With the
        superpixel segmenter the prompt selects regions of the frame's own refined id image,
        the same regions the user sees in the overlay, at no segmentation cost. In mask-free
        mode it selects grid cells, described by the mean of their dense features.
        """
        words = self.vocabulary if vocabulary is None or len(vocabulary) == 0 else vocabulary
        if not words:
            raise ValueError("vocabulary is empty: pass candidate names or configure a default")
        check_phrases("vocabulary", words)
        if frame.grid_shape is not None or isinstance(self.segmenter, SuperpixelSegmenter):
            mask = select_regions(frame.instance_ids, prompt)
        else:
            region = self.segmenter.segment_prompted(frame.image, prompt)
            mask = np.zeros(frame.instance_ids.shape, bool) if region is None else region.mask
        if not mask.any():
            raise ValueError("the prompt selects no region: points/box fall on unsegmented pixels")
        if frame.grid_shape is not None:
            # Mask-free: the prompted cells, described by their own dense features.
            embedding = frame.embeddings[np.unique(frame.instance_ids[mask]) - 1].mean(axis=0)
        else:
            embedding = self.embedder.embed_masks(frame.image, [mask], frame.global_embedding)[0]
        config = config or self.query_config
        labels, scores = rank_vocabulary(
            embedding,
            list(words),
            self.embedder.embed_text(words),
            self._negative_embeddings(None, config),
            scale=config.contrast_scale,
        )
        return DescribeResult(mask=mask, labels=labels, scores=scores)


def best_frame(relevances: Sequence[np.ndarray], threshold: float) -> int:
    """Index of the frame (newest first) whose best region matches a phrase best.

    ``relevances[i]`` is frame i's (N_i,) relevance per region to the phrase. The frame whose
    most relevant region passes ``threshold`` with the highest relevance wins; ties go to the
    newer frame, so a robot that sees the object equally well in several frames answers
    from the latest view. When no region of any frame passes, the newest frame (index 0)
    answers, with no matches, exactly as a query on it alone would.
    """
    if len(relevances) == 0:
        raise ValueError("relevances: expected at least one frame")
    threshold = check_threshold(threshold)
    best_index, best_score = 0, -np.inf
    for index, relevance in enumerate(relevances):
        values = np.asarray(relevance, dtype=np.float64).reshape(-1)
        top = float(values.max()) if values.size else -np.inf
        if top >= threshold and top > best_score:
            best_index, best_score = index, top
    return best_index


def release_device_memory() -> None:
    """Hand cached GPU memory back to the driver once the models are dropped.

    torch keeps freed CUDA blocks in its caching allocator, so a managed node that cleans up
    would otherwise still hold the memory another process on the robot needs.
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def build_pipeline(config: PipelineConfig) -> SemanticPipeline:
    """Load the models a configuration names (slow: reads checkpoints) and wire them up."""
    _log.info(
        "building pipeline: segmenter %s, CLIP %s (%s)",
        type(config.segmenter).__name__,
        config.clip.model_name,
        config.clip.pretrained,
    )
    mask_free = isinstance(config.segmenter, MaskFreeConfig)
    return SemanticPipeline(
        None if mask_free else build_segmenter(config.segmenter),
        ClipEmbedder(config.clip),
        refine=config.refine,
        query=config.query,
        vocabulary=config.vocabulary
        or model_vocabulary(config.clip.model_name, config.clip.pretrained),
    )
