"""The whole core pipeline on real components: superpixels + a saved tiny CLIP model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from semret_ros.core.depth import CameraIntrinsics, DepthFrame
from semret_ros.core.embedder import ClipEmbedder
from semret_ros.core.pipeline import (
    PipelineConfig,
    SemanticPipeline,
    best_frame,
    build_pipeline,
)
from semret_ros.core.records import Prompt, Region, SemanticFrame
from semret_ros.core.refine import (
    RefineConfig,
    assign_pixels_with_sources,
    merge_similar_regions,
    region_stats,
)
from semret_ros.core.scoring import QueryConfig
from semret_ros.core.segmenters import SuperpixelConfig, build_segmenter


def _scene() -> np.ndarray:
    """Three flat-coloured blocks on a grey floor: superpixels recover each block."""
    image = np.full((96, 128, 3), 120, np.uint8)
    image[10:40, 10:50] = (220, 30, 30)
    image[50:90, 20:60] = (30, 200, 40)
    image[20:80, 80:120] = (30, 40, 210)
    return image


@pytest.fixture()
def pipeline(tiny_clip_config) -> SemanticPipeline:
    return SemanticPipeline(
        build_segmenter(SuperpixelConfig()),
        ClipEmbedder(tiny_clip_config),
        refine=RefineConfig(min_area=50, merge_threshold=2.0),
        query=QueryConfig(threshold=0.0),
        vocabulary=("red block", "green block", "blue block"),
    )


def test_process_gives_consistent_frame(pipeline):
    frame = pipeline.process(_scene(), stamp_ns=123, frame_id="cam")
    n = frame.num_regions
    assert n >= 4, "each block and the floor should be a region"
    assert frame.stamp_ns == 123 and frame.frame_id == "cam"
    assert frame.instance_ids.dtype == np.int32 and frame.instance_ids.shape == (96, 128)
    assert set(np.unique(frame.instance_ids)) <= set(range(n + 1))
    assert set(range(1, n + 1)) <= set(np.unique(frame.instance_ids))
    assert frame.embeddings.shape == (n, pipeline.embedder.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(frame.embeddings, axis=1), 1.0, atol=1e-5)
    assert frame.scores.shape == (n,) and frame.areas.shape == (n,) and frame.bboxes.shape == (n, 4)
    assert frame.areas.sum() == np.count_nonzero(frame.instance_ids)
    # The red block's interior carries one id whose box is the block's box, give or take
    # the blurred edge pixels that felzenszwalb hands to a neighbour.
    red_id = frame.instance_ids[25, 30]
    assert (frame.instance_ids[13:37, 13:47] == red_id).all()
    x, y, w, h = frame.bboxes[red_id - 1]
    assert 10 <= x <= 13 and 10 <= y <= 13 and 47 <= x + w <= 50 and 37 <= y + h <= 40


def test_query_is_a_lookup_and_costs_no_encoder_call_when_repeated(pipeline):
    frame = pipeline.process(_scene())
    first = pipeline.query(frame, "red block")
    calls = (pipeline.embedder.text_encoder_calls, pipeline.embedder.image_encoder_calls)
    again = pipeline.query(frame, "red block")
    assert (pipeline.embedder.text_encoder_calls, pipeline.embedder.image_encoder_calls) == calls
    np.testing.assert_array_equal(first.similarity, again.similarity)
    assert first.similarity.dtype == np.float32 and first.similarity.shape == (96, 128)
    assert first.similarity.min() >= 0.0 and first.similarity.max() <= 1.0
    # The similarity image is the per-region relevance painted through the id image.
    red_id = frame.instance_ids[25, 30]
    assert first.similarity[25, 30] == pytest.approx(first.relevance[red_id - 1])
    scores = [m.score for m in first.matches]
    assert scores == sorted(scores, reverse=True)
    assert len(first.matches) <= pipeline.query_config.max_results


def test_query_threshold_and_bad_requests(pipeline):
    frame = pipeline.process(_scene())
    everything = pipeline.query(frame, "block", threshold=0.0)
    assert everything.mask[frame.instance_ids > 0].all()
    nothing = pipeline.query(frame, "block", threshold=1.0)
    assert not nothing.mask.any() and nothing.matches == []
    with pytest.raises(ValueError, match="text"):
        pipeline.query(frame, "  ")
    with pytest.raises(ValueError, match="threshold"):
        pipeline.query(frame, "block", threshold=float("nan"))
    with pytest.raises(ValueError, match="labels"):
        pipeline.label(frame, [])


def test_best_frame_takes_the_strongest_match_and_the_newer_on_ties():
    newest, middle, oldest = [0.2, 0.6], [0.9, 0.1], [0.9]
    assert best_frame([newest, middle, oldest], 0.5) == 1  # 0.9 beats 0.6; tie: newer
    assert best_frame([newest, np.zeros(0), oldest], 0.5) == 2  # a frame without regions
    assert best_frame([[0.2], [0.7]], 0.8) == 0  # nothing passes: the newest, no matches
    assert best_frame([[0.0], [0.0]], 0.0) == 0
    with pytest.raises(ValueError, match="relevances"):
        best_frame([], 0.5)
    with pytest.raises(ValueError, match="threshold"):
        best_frame([[0.5]], float("nan"))


def _seen_in(pipeline: SemanticPipeline, text: str, shift: int) -> SemanticFrame:
    """A processed frame whose red block carries exactly the phrase's feature (cosine 1)."""
    frame = pipeline.process(np.roll(_scene(), shift, axis=1), stamp_ns=shift)
    embeddings = frame.embeddings.copy()
    embeddings[frame.instance_ids[25, 30 + shift] - 1] = pipeline.embedder.embed_text([text])[0]
    return dataclasses.replace(frame, embeddings=embeddings)


def test_query_recent_answers_from_the_frame_with_the_best_match(pipeline):
    newest, oldest = pipeline.process(_scene(), stamp_ns=3), pipeline.process(_scene(), stamp_ns=1)
    seen = _seen_in(pipeline, "a mug", shift=4)
    index, answer = pipeline.query_recent([newest, seen, oldest], "a mug", max_results=3)
    assert index == 1
    alone = pipeline.query(seen, "a mug", max_results=3)
    assert answer.matches == alone.matches
    np.testing.assert_array_equal(answer.similarity, alone.similarity)
    assert answer.matches[0].id == seen.instance_ids[25, 34]
    # One frame is a plain query; when no frame has a match the newest answers, with none.
    assert pipeline.query_recent([seen], "a mug")[0] == 0
    index, nothing = pipeline.query_recent([newest, seen], "a mug", threshold=1.0)
    assert index == 0 and nothing.matches == []
    with pytest.raises(ValueError, match="frames"):
        pipeline.query_recent([], "a mug")
    with pytest.raises(ValueError, match="text"):
        pipeline.query_recent([newest, seen], " ")


def test_label_and_describe(pipeline):
    frame = pipeline.process(_scene())
    labels = ["red block", "green block", "blue block"]
    result = pipeline.label(frame, labels, threshold=0.0)
    assert result.label_image.shape == (96, 128) and result.label_image.dtype == np.uint16
    assert result.label_image.max() <= len(labels)
    assert result.scores.shape == (3,)
    described = pipeline.describe(
        frame, Prompt(points=np.array([[30.0, 25.0]]), point_labels=np.array([1]))
    )
    # The superpixel path selects exactly the refined region under the point.
    red_id = frame.instance_ids[25, 30]
    np.testing.assert_array_equal(described.mask, frame.instance_ids == red_id)
    assert sorted(described.labels) == sorted(labels)
    assert list(described.scores) == sorted(described.scores, reverse=True)
    with pytest.raises(ValueError, match="outside"):
        pipeline.describe(
            frame, Prompt(points=np.array([[500.0, 5.0]]), point_labels=np.array([1]))
        )


def test_standing_query_labels_and_label_follow_one_rule(pipeline):
    """~/segments' labels from standing query answers equal ~/label's on the same phrases."""
    frame = pipeline.process(_scene())
    phrases = ["red block", "green block", "blue block"]
    best = pipeline.label(frame, phrases, threshold=0.0).relevance.max(axis=1)
    threshold = float(np.median(best))  # some regions pass it and some do not
    labelled = pipeline.label(frame, phrases, threshold=threshold)
    answers = [pipeline.query(frame, phrase, threshold=threshold) for phrase in phrases]
    names = pipeline.region_labels(frame, answers)
    ids = frame.instance_ids
    per_region = [int(labelled.label_image[ids == i + 1][0]) for i in range(frame.num_regions)]
    assert names == [phrases[k - 1] if k else "" for k in per_region]
    assert "" in names and set(names) != {""}


def test_frame_without_regions_is_empty_but_valid(tiny_clip_config):
    pipeline = SemanticPipeline(
        build_segmenter(SuperpixelConfig()),
        ClipEmbedder(tiny_clip_config),
        refine=RefineConfig(min_area=10**6),
    )
    frame = pipeline.process(_scene())
    assert frame.num_regions == 0 and not frame.instance_ids.any()
    result = pipeline.query(frame, "anything")
    assert result.matches == [] and not result.mask.any()
    assert result.similarity.shape == (96, 128)
    assert pipeline.label(frame, ["a", "b"]).label_image.max() == 0


def test_merging_touching_identical_regions(tiny_clip_config):
    """A near-zero merge threshold merges touching regions the embedder sees alike."""
    pipeline = SemanticPipeline(
        build_segmenter(SuperpixelConfig()),
        ClipEmbedder(tiny_clip_config),
        refine=RefineConfig(min_area=50, merge_threshold=1e-6),
    )
    unmerged = dataclasses.replace(pipeline.refine, merge_threshold=2.0)
    frame = pipeline.process(_scene())
    pipeline.refine = unmerged
    before = pipeline.process(_scene())
    assert frame.num_regions < before.num_regions
    assert frame.scores.shape == (frame.num_regions,)


def _mask_path_frame(pipeline: SemanticPipeline, image: np.ndarray) -> dict[str, np.ndarray]:
    """What process() computed before the id-image path: one full-size mask per region."""
    labels = pipeline.segmenter.labels(image)
    regions = [Region.from_mask(labels == k) for k in range(1, labels.max() + 1)]
    ids, sources = assign_pixels_with_sources(regions, pipeline.refine.min_area, shape=labels.shape)
    masks = [ids == k for k in range(1, sources.size + 1)]
    global_feature = pipeline.embedder.embed_frame(image, np.zeros_like(ids), 0)[1]
    embeddings = pipeline.embedder.embed_masks(image, masks, global_feature)
    ids, embeddings, _ = merge_similar_regions(ids, embeddings, pipeline.refine.merge_threshold)
    bboxes, areas = region_stats(ids, embeddings.shape[0])
    return {"instance_ids": ids, "embeddings": embeddings, "bboxes": bboxes, "areas": areas}


@pytest.mark.parametrize("merge_threshold", [0.9999, 2.0])
def test_process_equals_the_full_mask_path(tiny_clip_config, merge_threshold):
    """A textured scene of many superpixels: ids, boxes, areas and features are unchanged."""
    rng = np.random.default_rng(3)
    image = np.repeat(np.repeat(rng.integers(0, 256, (12, 16, 3), np.uint8), 8, 0), 8, 1)
    image[20:70, 30:90] = (200, 40, 40)
    pipeline = SemanticPipeline(
        build_segmenter(SuperpixelConfig(scale=50, min_size=20)),
        ClipEmbedder(tiny_clip_config),
        refine=RefineConfig(min_area=40, merge_threshold=merge_threshold),
    )
    frame = pipeline.process(image)
    assert frame.num_regions > 10  # ~220 superpixels; 0.9999 still merges most of them
    expected = _mask_path_frame(pipeline, image)
    np.testing.assert_array_equal(frame.instance_ids, expected["instance_ids"])
    np.testing.assert_array_equal(frame.bboxes, expected["bboxes"])
    np.testing.assert_array_equal(frame.areas, expected["areas"])
    np.testing.assert_allclose(frame.embeddings, expected["embeddings"], rtol=0, atol=1e-6)


def test_build_pipeline_from_config(tiny_clip_config):
    config = PipelineConfig(clip=tiny_clip_config, vocabulary=["mug"])
    pipeline = build_pipeline(config)
    frame = pipeline.process(_scene(), frame_id="x")
    assert frame.model == tiny_clip_config.model_name
    with pytest.raises(ValueError, match="vocabulary"):
        PipelineConfig(clip=tiny_clip_config, vocabulary=["ok", ""])


def test_process_with_depth_positions_every_final_region(pipeline):
    """Depth at half the colour size: resampled, then each merged region gets its position."""
    depth = np.full((48, 64), 3.0, np.float32)  # floor
    depth[5:20, 5:25] = 1.0  # red block, rows 10:40 cols 10:50 at full size
    depth[25:45, 10:30] = np.nan  # the green block is a hole: no position
    intrinsics = CameraIntrinsics(fx=50.0, fy=50.0, cx=31.5, cy=23.5, width=64, height=48)
    frame = pipeline.process(_scene(), 7, "cam", DepthFrame(depth, intrinsics, 7, "depth_optical"))
    assert len(frame.positions) == frame.num_regions
    assert frame.depth.depth_m.shape == (96, 128) and frame.depth.frame_id == "depth_optical"
    red = frame.instance_ids[25, 30] - 1
    green = frame.instance_ids[70, 40] - 1
    assert frame.positions[red].position[2] == pytest.approx(1.0)
    assert frame.positions[green] is None
    match = next(m for m in pipeline.query(frame, "red block").matches if m.id == red + 1)
    assert match.position == frame.positions[red]
    flat = pipeline.process(_scene())
    assert flat.depth is None and flat.positions == ()
    assert all(m.position is None for m in pipeline.query(flat, "red block").matches)
