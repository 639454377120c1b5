"""semret-eval end to end on small generated scenes with the tiny random-init CLIP model.

The tiny model's features are noise, so these tests check the plumbing, the report's shape and
value ranges, and the measures that do not depend on semantics (ground-truth masks make the
segmentation ceiling exactly 1); the hit@1 rule itself is checked on a hand-made frame.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from semret_ros.core.metrics import hit_at_1
from semret_ros.shapes.world import KINDS, generate_scene
from semret_ros.tools.evaluate import (
    GROUPS,
    GroundTruthSegmenter,
    is_ambiguous,
    main,
    majority_objects,
    region_ious,
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

    pooled = report["consistency"]["pooled_by_combination"]
    assert pooled["labels"] <= objects and pooled["mean_spread"] >= 0.0
    assert -1.0 <= pooled["mean_between_cosine"] <= 1.0
    timing = report["timing"]
    assert timing["process_ms_mean"] > 0 and timing["query_ms_mean"] > 0

    # Panels: one per query kind about one object of the first scene, four tiles wide.
    assert len(report["panels"]) == 3
    for name in (*report["panels"], report["bar_chart"]):
        image = cv2.imread(str(out / name))
        assert image is not None and image.ndim == 3 and image.shape[0] > 100
    assert cv2.imread(str(out / report["panels"][0])).shape[1] > 4 * 160
    assert "hit@1" in capsys.readouterr().out


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
        main([*base, "--masks", "sam2"])
    assert "--sam2-checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--scenes", "0"])
    assert "--scenes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--threshold", "1.5"])
    assert "threshold" in capsys.readouterr().err
    absent = tmp_path / "no_model"
    assert main([*base[:2], "--clip-pretrained", f"local-dir:{absent}"]) == 2
    assert str(absent) in capsys.readouterr().err
