"""3D answers as messages: Segment position fields, RViz markers and the mask point cloud,
checked on hand-made depth where every number is known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from visualization_msgs.msg import Marker

from semret_ros.core.depth import CameraIntrinsics, DepthFrame, SegmentPosition
from semret_ros.core.records import Match, SemanticFrame
from semret_ros.ros.conversions import make_header, match_to_segment, semantic_frame_to_msg
from semret_ros.ros.spatial import (
    CLOUD_FIELDS,
    MIN_BOX_SIDE_M,
    answer_markers,
    cloud_to_numpy,
    marker_namespace,
    mask_cloud,
    phrase_color,
)

WIDTH, HEIGHT = 8, 6
K = CameraIntrinsics(fx=4.0, fy=4.0, cx=3.5, cy=2.5, width=WIDTH, height=HEIGHT)
HEADER = make_header(5_000_000_123, "camera_color_optical_frame")
MUG = SegmentPosition(position=(0.1, -0.2, 1.5), size=(0.08, 0.1, 0.0), num_points=40)


def _depth(value: float = 2.0) -> DepthFrame:
    depth = np.full((HEIGHT, WIDTH), value, np.float32)
    depth[0, 0] = np.nan  # a hole
    return DepthFrame(depth, K, 5_000_000_000, "camera_depth_optical_frame")


def _match(index: int, position: SegmentPosition | None) -> Match:
    return Match(id=index, score=0.9 - index / 10, bbox=(0, 0, 2, 2), area=4, position=position)


def test_markers_box_and_label_each_positioned_match_and_delete_what_went_away():
    matches = [_match(1, MUG), _match(2, None), _match(3, MUG)]
    namespace = marker_namespace("service", "red mug")
    markers = answer_markers(HEADER, namespace, "red mug", matches, 2.5, previous_count=7)
    adds = [m for m in markers if m.action == Marker.ADD]
    deletes = [m for m in markers if m.action == Marker.DELETE]
    assert [m.type for m in adds] == [Marker.CUBE, Marker.TEXT_VIEW_FACING] * 2
    assert [m.id for m in adds] == [0, 1, 2, 3]
    assert [m.id for m in deletes] == [4, 5, 6]
    for marker in markers:
        assert marker.ns == "semret/service/red mug"
        assert marker.header.frame_id == HEADER.frame_id
        assert marker.header.stamp == HEADER.stamp
    box, label = adds[0], adds[1]
    assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == MUG.position
    assert (box.scale.x, box.scale.y, box.scale.z) == (0.08, 0.1, MIN_BOX_SIDE_M)
    assert (box.lifetime.sec, box.lifetime.nanosec) == (2, 500_000_000)
    assert label.text == "red mug 0.80" and adds[3].text == "red mug 0.60"
    assert label.pose.position.y < MUG.position[1]  # above the box: -y in an optical frame
    assert box.color.r == pytest.approx(phrase_color("red mug")[0])


def test_no_previous_markers_and_no_positions_give_nothing():
    assert answer_markers(HEADER, "ns", "door", [_match(1, None)], 1.0) == []


def test_phrase_colours_are_stable_and_differ():
    assert phrase_color("red mug") == phrase_color("red mug")
    assert phrase_color("red mug") != phrase_color("a door")


def test_mask_cloud_back_projects_the_valid_mask_pixels_with_colour_and_relevance():
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[0:2, 0:3] = True  # 6 pixels, one of them the hole at (0, 0)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[1, 2] = (10, 20, 30)
    similarity = np.full((HEIGHT, WIDTH), 0.25, np.float32)
    similarity[1, 2] = 0.75
    msg = mask_cloud(HEADER, mask, _depth(2.0), image, similarity)
    assert tuple(field.name for field in msg.fields) == CLOUD_FIELDS
    assert (msg.height, msg.width, msg.is_dense) == (1, 5, True)
    assert msg.row_step == msg.point_step * 5 == len(msg.data)
    cloud = cloud_to_numpy(msg)
    assert np.all(cloud["z"] == 2.0)
    # pixel (row 1, column 2): x = (2 - 3.5) * 2 / 4, y = (1 - 2.5) * 2 / 4
    point = cloud[(cloud["x"] == np.float32(-0.75)) & (cloud["y"] == np.float32(-0.75))]
    assert point.shape == (1,)
    packed = int(point["rgb"].view(np.uint32)[0])
    assert (packed >> 16 & 255, packed >> 8 & 255, packed & 255) == (10, 20, 30)
    assert point["relevance"][0] == pytest.approx(0.75)


def test_an_empty_mask_gives_an_empty_cloud():
    mask = np.zeros((HEIGHT, WIDTH), bool)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    msg = mask_cloud(HEADER, mask, _depth(), image, np.zeros((HEIGHT, WIDTH), np.float32))
    assert (msg.width, len(msg.data)) == (0, 0)
    assert cloud_to_numpy(msg).shape == (0,)


def test_segments_carry_positions_in_the_depth_frame():
    segment = match_to_segment(_match(1, MUG), "camera_depth_optical_frame")
    assert segment.has_position and segment.num_points == 40
    assert (segment.position.x, segment.position.y, segment.position.z) == MUG.position
    assert (segment.size.x, segment.size.y, segment.size.z) == MUG.size
    assert segment.position_frame_id == "camera_depth_optical_frame"
    absent = match_to_segment(_match(2, None), "camera_depth_optical_frame")
    assert not absent.has_position and absent.position.z == 0.0 and absent.num_points == 0
    with pytest.raises(ValueError, match="non-finite 3D position"):
        match_to_segment(_match(1, dataclasses.replace(MUG, position=(0.0, np.nan, 1.0))))


def test_semantic_frame_segments_carry_positions_only_with_depth():
    ids = np.zeros((HEIGHT, WIDTH), np.int32)
    ids[:3], ids[3:] = 1, 2
    frame = SemanticFrame(
        stamp_ns=HEADER.stamp.sec * 1_000_000_000 + HEADER.stamp.nanosec,
        frame_id=HEADER.frame_id,
        image=np.zeros((HEIGHT, WIDTH, 3), np.uint8),
        instance_ids=ids,
        embeddings=np.eye(2, 4, dtype=np.float32),
        global_embedding=np.array([0, 0, 1, 0], np.float32),
        scores=np.ones(2, np.float32),
        bboxes=np.array([[0, 0, 8, 3], [0, 3, 8, 3]], np.int32),
        areas=np.array([24, 24], np.int64),
        model="hand-made",
    )
    flat = semantic_frame_to_msg(frame)
    assert [s.has_position for s in flat.segments] == [False, False]
    with_depth = dataclasses.replace(frame, depth=_depth(), positions=(MUG, None))
    segments = semantic_frame_to_msg(with_depth).segments
    assert [s.has_position for s in segments] == [True, False]
    assert segments[0].position_frame_id == "camera_depth_optical_frame"
