"""semret-eval end to end on small generated scenes with the tiny random-init CLIP model.

The tiny model's features are noise, so these tests check the plumbing, the report's shape and
value ranges, and the measures that do not depend on semantics (ground-truth masks make the
segmentation ceiling exactly 1); the hit@1 rule itself is checked on a hand-made frame.
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from semret_ros.core.depth import SegmentPosition
from semret_ros.core.image import interior_point
from semret_ros.core.metrics import hit_at_1
from semret_ros.core.records import QueryResult, SemanticFrame
from semret_ros.shapes.test_renderer import render_scene
from semret_ros.shapes.world import KINDS, generate_scene
from semret_ros.tools.evaluate import (
    GROUPS,
    GroundTruthSegmenter,
    LabelRecord,
    is_ambiguous,
    main,
    majority_objects,
    pointed_pixel,
    position_error,
    region_ious,
    summarize_labels,
)

UNIT_KEYS = ("hit_at_1", "hit_ceiling", "mean_top_iou", "mean_mask_iou", "mean_oracle_iou")
SLM_KEYS = ("rsu", "ras", "rda", "rmi")


def _run(tmp_path, tiny_clip_dir, masks, *extra):
    out = tmp_path / masks
    argv = [
        "--out", str(out), "--scenes", "2", "--seed", "3", "--width", "160", "--height", "120",
        "--masks", masks, "--clip-model", "tiny",
        "--clip-pretrained", f"local-dir:{tiny_clip_dir}", "--panels", "1", "--no-progress",
        *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def _check_cell(cell):
    assert cell["n"] >= 0
    if cell["n"] == 0:
        assert cell["hit_at_1"] is None
        return
    for key in (*UNIT_KEYS, *SLM_KEYS):
        assert 0.0 <= cell[key] <= 1.0, key
    misses = round(cell["n"] * (1 - cell["hit_at_1"]))
    assert cell["misses_segmentation"] + cell["misses_ranking"] == misses
    assert 0 <= cell["misses_on_background"] <= misses


# At 160x120 the objects are ~100-400 px, and a random model's features all look alike, so
# the default min_area and merging would leave no region on any object.
@pytest.mark.parametrize(
    ("masks", "extra"),
    [("gt", ()), ("superpixel", ("--min-area", "20", "--merge-threshold", "2"))],
)
def test_report_structure_ranges_and_pictures(tmp_path, tiny_clip_dir, masks, extra, capsys):
    out, report = _run(tmp_path, tiny_clip_dir, masks, *extra)
    scenes = [generate_scene(s, 160, 120, hard=True, min_held_out=2) for s in (3, 4)]
    objects = sum(len(scene.objects) for scene in scenes)
    names = {obj.name for scene in scenes for obj in scene.objects}

    assert report["masks"] == masks and report["seeds"] == [3, 4]
    assert report["model"]["embedding_dim"] == 64
    records = report["records"]
    assert len(records) + report["skipped_ambiguous"] == 3 * objects
    assert {r["kind"] for r in records} == set(KINDS)
    assert {r["group"] for r in records} <= set(GROUPS)
    assert any(r["group"] == "held_out" for r in records)
    for record in records:
        assert record["hit"] == (record["top_iou"] >= 0.5)
        assert record["top_iou"] <= record["oracle_iou"] + 1e-9
        assert record["oracle_rank"] >= 1
        assert record["top_object"] in {"background", *names}
    assert set(report["breakdown"]) == {*GROUPS, "all"}
    for group in report["breakdown"].values():
        assert set(group) == {*KINDS, "all"}
        for cell in group.values():
            _check_cell(cell)
    assert report["summary"]["n"] == len(records)
    assert report["summary"]["hit_at_1"] == pytest.approx(np.mean([r["hit"] for r in records]))

    label_records = report["label_records"]
    assert [(r["scene_seed"], r["object"]) for r in label_records] == [
        (scene.seed, obj.name) for scene in scenes for obj in scene.objects
    ]
    for record in label_records:
        assert 0.0 <= record["iou"] <= 1.0 and 0.0 <= record["pixel_accuracy"] <= 1.0
    labels = report["labels"]
    assert labels["n"] == objects
    assert labels["pixel_accuracy"]["all"] == pytest.approx(
        np.mean([r["pixel_accuracy"] for r in label_records])
    )
    assert 0.0 <= labels["miou"] <= 1.0 and 0.0 <= labels["background_labelled"] <= 1.0

    pooled = report["consistency"]["pooled_by_combination"]
    assert pooled["labels"] <= objects and pooled["mean_spread"] >= 0.0
    assert -1.0 <= pooled["mean_between_cosine"] <= 1.0
    timing = report["timing"]
    assert timing["process_ms_mean"] > 0 and timing["query_ms_mean"] > 0
    assert timing["label_ms_mean"] > 0
    recall, described = report["mask_recall"], report["describe_mask_iou"]
    assert 0.0 <= recall["0.75"] <= recall["0.5"] <= 1.0
    assert 0.0 <= described["point"] <= 1.0 and 0.0 <= described["box"] <= 1.0
    if masks == "gt":  # every object is a region, and a point inside it selects exactly it
        assert recall["0.75"] == 1.0 and described["point"] == 1.0

    # Panels: one per query kind about one object of the first scene, four tiles wide.
    assert len(report["panels"]) == 3
    for name in (*report["panels"], report["bar_chart"]):
        image = cv2.imread(str(out / name))
        assert image is not None and image.ndim == 3 and image.shape[0] > 100
    assert cv2.imread(str(out / report["panels"][0])).shape[1] > 4 * 160
    printed = capsys.readouterr().out
    assert "hit@1" in printed and "pixel acc" in printed


def test_ground_truth_masks_reach_the_oracle_ceiling(tmp_path, tiny_clip_dir):
    _, report = _run(tmp_path, tiny_clip_dir, "gt")
    assert report["config"]["pipeline"]["segmenter"] == {"kind": "ground_truth"}
    for record in report["records"]:
        assert record["oracle_iou"] == 1.0
        # Every region is a whole object, so the top region is either the object or another.
        assert record["top_iou"] in (0.0, 1.0)
    assert report["summary"]["hit_ceiling"] == 1.0
    assert report["summary"]["misses_segmentation"] == 0
    assert report["summary"]["misses_on_background"] == 0


def test_hit_at_1_on_a_hand_made_frame():
    ids = np.zeros((10, 10), np.int32)
    ids[:, :5] = 1
    ids[:, 5:] = 2
    target = np.zeros((10, 10), bool)
    target[:, 4:] = True  # region 2 covers 50 of its 60 pixels: IoU 50 / 60
    assert hit_at_1(ids, np.array([0.2, 0.9]), target) == (True, pytest.approx(50 / 60))
    # The best-ranked region wins, thresholds play no part: region 1 has IoU 10 / 100.
    assert hit_at_1(ids, np.array([0.3, 0.1]), target) == (False, pytest.approx(0.1))
    assert hit_at_1(ids, np.array([0.3, 0.1]), ids == 1) == (True, 1.0)
    assert hit_at_1(np.zeros((10, 10), np.int32), np.zeros(0), target) == (False, 0.0)
    assert region_ious(ids, target) == {0: pytest.approx(0.1), 1: pytest.approx(50 / 60)}


def test_label_summary_on_hand_made_records():
    records = [
        LabelRecord(1, 0, "red circle", "seen", pixel_accuracy=1.0, iou=0.8),
        LabelRecord(1, 1, "blue cross", "held_out", pixel_accuracy=0.0, iou=0.0),
        LabelRecord(2, 0, "green star", "seen", pixel_accuracy=0.5, iou=0.6),
    ]
    summary = summarize_labels(records, [0.1, 0.3])
    assert summary["n"] == 3
    assert summary["pixel_accuracy"] == pytest.approx({"seen": 0.75, "held_out": 0.0, "all": 0.5})
    assert summary["iou"] == pytest.approx({"seen": 0.7, "held_out": 0.0, "all": 1.4 / 3})
    # mIoU is per scene first (0.4 and 0.6), then averaged over the scenes.
    assert summary["miou"] == pytest.approx(0.5)
    assert summary["background_labelled"] == pytest.approx(0.2)
    empty = summarize_labels([], [])
    assert empty["miou"] is None and empty["pixel_accuracy"]["all"] is None


def test_regions_grouped_by_the_object_under_most_of_them():
    scene_ids = np.zeros((4, 6), np.int32)
    scene_ids[:, 3:] = 1
    regions = np.array([[1, 1, 2, 2, 2, 2]] * 4, np.int32)
    # Region 1 lies on background only; region 2 is 8 px background, 12 px object 1.
    np.testing.assert_array_equal(majority_objects(scene_ids, regions, 2), [0, 1])


def test_ground_truth_segmenter_and_unambiguous_queries():
    scene = generate_scene(5, 160, 120, hard=True)
    segmenter = GroundTruthSegmenter(scene)
    regions = segmenter.segment(scene.image)
    assert len(regions) == len(scene.objects)
    for region, obj in zip(regions, scene.objects, strict=True):
        np.testing.assert_array_equal(region.mask, obj.mask)
    assert not any(is_ambiguous(k, o, scene.objects) for o in scene.objects for k in KINDS)
    twin = scene.objects[0]
    assert is_ambiguous("color", twin, [*scene.objects, twin])
    with pytest.raises(ValueError, match="image"):
        segmenter.segment(np.zeros((10, 10, 3), np.uint8))


def test_bad_arguments_exit_with_a_message(tmp_path, tiny_clip_dir, capsys):
    base = ["--out", str(tmp_path / "o"), "--clip-pretrained", f"local-dir:{tiny_clip_dir}"]
    missing = tmp_path / "nope.pt"
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--masks", "sam2", "--sam2-checkpoint", str(missing)])
    assert exit_info.value.code != 0
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--masks", "sam2", "--sam2-prompts", "blind"])
    assert "--sam2-prompts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--scenes", "0"])
    assert "--scenes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--threshold", "1.5"])
    assert "threshold" in capsys.readouterr().err
    absent = tmp_path / "no_model"
    assert main([*base[:2], "--clip-pretrained", f"local-dir:{absent}"]) == 2
    assert str(absent) in capsys.readouterr().err


def test_retrieval_section_ranks_the_scene_objects_against_every_name(tmp_path, tiny_clip_dir):
    _, report = _run(tmp_path, tiny_clip_dir, "gt", "--retrieval")
    retrieval = report["retrieval"]
    objects = sum(1 for record in report["records"] if record["kind"] == "full")
    assert retrieval["pairs"] == objects and retrieval["captions"] == 64
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"):
        assert 0.0 <= retrieval[key] <= 1.0
    assert retrieval["i2t_r1"] <= retrieval["i2t_r5"] and retrieval["t2i_r1"] <= retrieval["t2i_r5"]
    assert 1.0 <= retrieval["i2t_mean_rank"] <= 64.0
    assert 1.0 <= retrieval["t2i_mean_rank"] <= objects
    _, plain = _run(tmp_path / "plain", tiny_clip_dir, "gt")
    assert "retrieval" not in plain


def test_test_renderer_scenes_are_evaluated_and_described(tmp_path, tiny_clip_dir):
    _, report = _run(tmp_path, tiny_clip_dir, "gt", "--renderer", "test")
    scenes = [render_scene(s, 160, 120, min_held_out=2) for s in (3, 4)]
    assert report["renderer"] == "test"
    assert [(r["scene_seed"], r["object"]) for r in report["label_records"]] == [
        (scene.seed, obj.name) for scene in scenes for obj in scene.objects
    ]
    assert any(r["group"] == "held_out" for r in report["records"])
    for group in (*GROUPS, "all"):
        assert 0.0 <= report["describe"][group] <= 1.0


def test_interior_point_lies_deep_inside_the_mask():
    mask = np.zeros((40, 60), bool)
    mask[10:30, 5:45] = True
    x, y = interior_point(mask)
    # At least 9 px from every edge of the 20 px tall rectangle: as deep as a pixel can be.
    assert mask[int(y), int(x)] and 14 <= x <= 35 and 19 <= y <= 20


def test_test_renderer_draws_hard_scenes_only(tmp_path, tiny_clip_dir, capsys):
    with pytest.raises(SystemExit):
        _run(tmp_path, tiny_clip_dir, "gt", "--renderer", "test", "--easy")
    assert "--easy" in capsys.readouterr().err


def test_depth_places_the_hits_of_ground_truth_regions_near_their_true_centroids(
    tmp_path, tiny_clip_dir
):
    """With true masks every object is a region: its median point must land on the centroid
    the renderer reports, whatever a random model ranks."""
    _, report = _run(tmp_path, tiny_clip_dir, "gt", "--depth")
    depth = report["depth"]
    hits = [r for r in report["records"] if r["hit"]]
    assert depth["hits"] == len(hits)
    if hits:
        assert depth["hits_with_position"] == 1.0
        assert depth["median_error_m"] < 0.05 and depth["within_5_percent_of_depth"] >= 0.9
    assert all(r["has_position"] is not None for r in report["records"])
    _, plain = _run(tmp_path / "plain", tiny_clip_dir, "gt")
    assert "depth" not in plain and all(r["has_position"] is None for r in plain["records"])


def test_position_error_is_measured_for_hits_only():
    placed = SegmentPosition(position=(0.0, 0.0, 2.03), size=(0.1, 0.1, 0.0), num_points=50)
    ids = np.array([[1, 2]], np.int32)
    frame = SemanticFrame(
        stamp_ns=0,
        frame_id="cam",
        image=np.zeros((1, 2, 3), np.uint8),
        instance_ids=ids,
        embeddings=np.eye(2, dtype=np.float32),
        global_embedding=np.array([1.0, 0.0], np.float32),
        scores=np.ones(2, np.float32),
        bboxes=np.array([[0, 0, 1, 1], [1, 0, 1, 1]], np.int32),
        areas=np.ones(2, np.int64),
        model="hand-made",
        positions=(placed, None),
    )

    def answer(relevance):
        values = np.array(relevance, np.float32)
        return QueryResult(
            text="x",
            threshold=0.5,
            relevance=values,
            margin=values.astype(np.float64),
            similarity=values[ids - 1],
            mask=values[ids - 1] >= 0.5,
            matches=[],
        )

    figures = position_error(frame, answer([0.9, 0.1]), np.array([0.0, 0.0, 2.0]), hit=True)
    assert figures["has_position"] and figures["position_error_m"] == pytest.approx(0.03)
    assert figures["relative_position_error"] == pytest.approx(0.015)
    assert position_error(frame, answer([0.9, 0.1]), np.zeros(3), hit=False) == {
        "has_position": True
    }
    assert position_error(frame, answer([0.1, 0.9]), np.zeros(3), hit=True) == {
        "has_position": False
    }


@pytest.mark.slow
def test_sam2_masks_are_measured_with_a_checkpoint_file(tmp_path, tiny_clip_dir, capsys):
    """--masks sam2 with a saved (random) small SAM2: recall, describe mask IoUs and the
    project's prompt path in the report (random masks: ranges only)."""
    import torch

    from semret_ros.core.sam2_model import (
        SHIPPED_CONFIG_FILE,
        SHIPPED_SAM2,
        build_sam2_model,
        save_sam2_checkpoint,
    )

    config = str(SHIPPED_SAM2["shapes_default"] / SHIPPED_CONFIG_FILE)
    torch.manual_seed(0)
    checkpoint = tmp_path / "sam2.pt"
    save_sam2_checkpoint(build_sam2_model(config), checkpoint)
    _, report = _run(
        tmp_path, tiny_clip_dir, "sam2",
        "--sam2-checkpoint", str(checkpoint), "--sam2-config", config,
        "--sam2-points-per-side", "4", "--sam2-pred-iou-thresh", "0",
        "--sam2-stability-thresh", "0", "--min-area", "20", "--merge-threshold", "2",
    )  # fmt: skip
    segmenter = report["config"]["pipeline"]["segmenter"]
    assert (segmenter["prompts"], segmenter["checkpoint"]) == ("superpixel", str(checkpoint))
    recall, described = report["mask_recall"], report["describe_mask_iou"]
    assert 0.0 <= recall["0.75"] <= recall["0.5"] <= 1.0
    assert 0.0 <= described["point"] <= 1.0 and 0.0 <= described["box"] <= 1.0
    assert "mask recall" in capsys.readouterr().out


def test_mask_free_mode_and_dense_region_features_are_evaluated(tmp_path, tiny_clip_dir):
    """--masks dense: hit@1 is judged on the best connected region of each answer's mask, and
    every record says whether the similarity peak lies on the object."""
    _, report = _run(tmp_path, tiny_clip_dir, "dense", "--threshold", "0.1")
    assert report["config"]["pipeline"]["segmenter"] == {}
    for record in report["records"]:
        assert record["hit"] == (record["top_iou"] >= 0.5)
        assert isinstance(record["pointing"], bool)
    summary = report["summary"]
    assert 0.0 <= summary["pointing"] <= 1.0
    assert summary["pointing"] == pytest.approx(np.mean([r["pointing"] for r in report["records"]]))
    assert 0.0 <= report["labels"]["miou"] <= 1.0
    for features in ("dense", "blend"):
        _, pooled = _run(tmp_path / features, tiny_clip_dir, "gt", "--region-features", features)
        assert pooled["config"]["pipeline"]["clip"]["region_features"] == features
        assert 0.0 <= pooled["summary"]["hit_at_1"] <= 1.0


def test_mask_free_pointing_takes_the_most_relevant_cell_not_the_first_of_tied_pixels():
    """The upsampled similarity is clipped at 1: where cells are sure, its maximum is a
    plateau of ties. The pointed pixel is the centre of the most relevant cell."""
    height, width, rows, cols = 40, 60, 2, 3
    cells = (np.arange(height) * rows // height)[:, None] * cols + (
        np.arange(width) * cols // width
    )[None, :]
    count = rows * cols
    frame = SemanticFrame(
        stamp_ns=0,
        frame_id="cam",
        image=np.zeros((height, width, 3), np.uint8),
        instance_ids=(cells + 1).astype(np.int32),
        embeddings=np.zeros((count, 4), np.float32),
        global_embedding=np.zeros(4, np.float32),
        scores=np.ones(count, np.float32),
        bboxes=np.zeros((count, 4), np.int32),
        areas=np.zeros(count, np.int64),
        model="m",
        grid_shape=(rows, cols),
    )
    relevance = np.array([0.99, 0.2, 0.1, 0.3, 0.2, 1.0], np.float32)  # best: cell 5
    similarity = np.ones((height, width), np.float32)  # a plateau: every pixel ties at 1
    result = QueryResult(
        text="x",
        threshold=0.5,
        relevance=relevance,
        margin=relevance,
        similarity=similarity,
        mask=similarity > 0.5,
        matches=[],
        regions=np.zeros((height, width), np.int32),
    )
    assert pointed_pixel(frame, result, 5) == (29, 49)  # rows 20..39, columns 40..59
    with_regions = dataclasses.replace(frame, grid_shape=None)
    assert pointed_pixel(with_regions, result, 5) == (0, 0)  # regions: the image's maximum
