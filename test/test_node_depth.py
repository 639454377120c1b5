"""3D through the running node: colour + registered depth + CameraInfo in, segment positions,
query matches with positions, ~/markers and ~/points out; bad depth keeps the 2D answers.

The scene is hand-made with known depths (red box 1.0 m, blue disc 1.5 m, green bar 2.0 m,
floor 3.0 m) and known intrinsics, so every position can be checked against its true value.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from ros_fixtures import ros_env  # noqa: F401 - the fixture, used by name
from ros_graph import Graph, NodeProcess, wait_until
from semret_ros.msg import SemanticFrame
from semret_ros.srv import Query
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from test_node import HEIGHT, RELIABLE, WIDTH, Stamps, image_msg, node_args, scene, stamp_of
from visualization_msgs.msg import Marker, MarkerArray

from semret_ros.ros.conversions import image_to_numpy
from semret_ros.ros.spatial import cloud_to_numpy

pytestmark = pytest.mark.ros

NS = "/rgbd"
NODE = f"{NS}/semret"
DEPTH_FRAME = "camera_depth_optical_frame"
FX = FY = 100.0
DISC = (110, 70)  # (x, y) centre of the blue disc in scene()
DEPTHS = {"box": 1.0, "disc": 1.5, "bar": 2.0, "floor": 3.0}
WAIT_S = 30.0


def depth_m(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Metres per pixel of scene(width, height): each object at its own depth."""
    pixels = scene(width, height)
    depth = np.full((height, width), DEPTHS["floor"], np.float32)
    depth[(pixels == (220, 30, 30)).all(axis=2)] = DEPTHS["box"]
    depth[(pixels == (30, 60, 220)).all(axis=2)] = DEPTHS["disc"]
    depth[(pixels == (40, 200, 40)).all(axis=2)] = DEPTHS["bar"]
    return depth


def camera_info(stamp: int, width: int = WIDTH, height: int = HEIGHT, fx: float = FX) -> CameraInfo:
    sx = width / WIDTH
    cx, cy, f = (WIDTH / 2 - 0.5) * sx, (HEIGHT / 2 - 0.5) * sx, fx * sx
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.header.stamp.sec, info.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    info.header.frame_id = DEPTH_FRAME
    return info


def millimetres(depth: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.round(depth * 1000), nan=0).astype(np.uint16)


@pytest.fixture(scope="module")
def rgbd(ros_env, tiny_clip_dir, tmp_path_factory):  # noqa: F811
    graph = Graph(ros_env)
    log = tmp_path_factory.mktemp("semret_rgbd") / "node.log"
    args = node_args(tiny_clip_dir, "-p", "depth.enabled:=true", "-r", f"__ns:={NS}")
    process = NodeProcess(args, ros_env, log)
    try:
        process.wait_for_log(rf"ready: subscribed to {NS}/image", timeout=120)
        publishers = {
            name: graph.node.create_publisher(msg_type, f"{NS}/{name}", qos_profile_sensor_data)
            for name, msg_type in (
                ("image", Image),
                ("depth/image", Image),
                ("depth/camera_info", CameraInfo),
            )
        }
        for publisher in publishers.values():
            graph.wait_for_subscriber(publisher)
        yield graph, process, publishers, graph.collect(SemanticFrame, f"{NODE}/segments", RELIABLE)
    finally:
        code = process.stop()
        graph.close()
    assert code == 0, process.log()


@pytest.fixture(scope="module")
def stamps():
    return Stamps()


def send_rgbd(rgbd, stamp: int, depth: Image | None, info: CameraInfo | None) -> SemanticFrame:
    """Depth and camera info first (as drivers often deliver them), then the colour frame."""
    _, _, publishers, frames = rgbd
    if info is not None:
        publishers["depth/camera_info"].publish(info)
    if depth is not None:
        publishers["depth/image"].publish(depth)
    publishers["image"].publish(image_msg(scene(), "rgb8", stamp))
    return wait_until(
        lambda: next((f for f in reversed(frames) if stamp_of(f) == stamp), None),
        WAIT_S,
        f"the SemanticFrame stamped {stamp}",
    )


def segment_at(frame: SemanticFrame, x: int, y: int):
    ids = image_to_numpy(frame.instance_ids)
    return frame.segments[int(ids[y, x]) - 1]


def send_good(rgbd, stamps, depth_image: Image | None = None, info_size=(WIDTH, HEIGHT)):
    """A well-formed RGB-D frame; resent (new stamp) if a best-effort message was lost: the
    colour image (no frame comes back) or the depth image (a frame without positions)."""
    for _ in range(4):
        stamp = stamps()
        depth = depth_image or image_msg(millimetres(depth_m()), "16UC1", stamp, frame_id="")
        depth.header.stamp.sec, depth.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        depth.header.frame_id = DEPTH_FRAME
        try:
            frame = send_rgbd(rgbd, stamp, depth, camera_info(stamp, *info_size))
        except AssertionError:
            continue
        if any(segment.has_position for segment in frame.segments):
            return frame
    raise AssertionError(f"no positioned frame came back; log:\n{rgbd[1].log()[-3000:]}")


def test_segments_get_positions_in_the_depth_frame(rgbd, stamps):
    frame = send_good(rgbd, stamps)
    disc = segment_at(frame, *DISC)
    assert disc.has_position and disc.position_frame_id == DEPTH_FRAME
    x, y = DISC
    expected = ((x - (WIDTH / 2 - 0.5)) * 1.5 / FX, (y - (HEIGHT / 2 - 0.5)) * 1.5 / FY, 1.5)
    got = (disc.position.x, disc.position.y, disc.position.z)
    np.testing.assert_allclose(got, expected, atol=0.02)
    assert disc.num_points >= 20
    # 25 px radius at 1.5 m and f = 100: about 0.75 m across.
    assert 0.6 < disc.size.x < 0.8 and disc.size.z < 0.01


def test_a_smaller_registered_depth_image_is_resampled(rgbd, stamps):
    half = image_msg(millimetres(depth_m(WIDTH // 2, HEIGHT // 2)), "16UC1", 0)
    frame = send_good(rgbd, stamps, half, info_size=(WIDTH // 2, HEIGHT // 2))
    assert segment_at(frame, *DISC).position.z == pytest.approx(1.5, abs=0.01)


def test_metres_in_32fc1_read_the_same(rgbd, stamps):
    frame = send_good(rgbd, stamps, image_msg(depth_m(), "32FC1", 0))
    assert segment_at(frame, *DISC).position.z == pytest.approx(1.5, abs=0.01)


def test_query_matches_markers_and_points_carry_the_3d_answer(rgbd, stamps):
    graph = rgbd[0]
    markers = graph.collect(MarkerArray, f"{NODE}/markers", RELIABLE)
    clouds = graph.collect(PointCloud2, f"{NODE}/points", RELIABLE)
    frame = send_good(rgbd, stamps)
    disc_id = segment_at(frame, *DISC).id
    response = graph.call(Query, f"{NODE}/query", Query.Request(text="a blue disc", threshold=1e-6))
    assert response.success, response.message
    by_id = {match.id: match for match in response.matches}
    assert by_id[disc_id].has_position
    assert by_id[disc_id].position.z == pytest.approx(1.5, abs=0.01)
    assert by_id[disc_id].position_frame_id == DEPTH_FRAME

    def service_markers():
        for array in reversed(markers):
            boxes = [
                m
                for m in array.markers
                if m.ns == "semret/service/a blue disc" and m.type == Marker.CUBE
            ]
            if boxes:
                return boxes
        return None

    boxes = wait_until(service_markers, WAIT_S, "the query's boxes on ~/markers")
    assert all(m.header.frame_id == DEPTH_FRAME for m in boxes)
    assert stamp_of(boxes[0]) == stamp_of(response)
    assert any(m.pose.position.z == pytest.approx(1.5, abs=0.01) for m in boxes)

    cloud = wait_until(
        lambda: next((c for c in reversed(clouds) if stamp_of(c) == stamp_of(response)), None),
        WAIT_S,
        "the query mask's points on ~/points",
    )
    assert cloud.header.frame_id == DEPTH_FRAME
    points = cloud_to_numpy(cloud)
    assert points.shape[0] > 0
    # Threshold ~0 keeps every region in the mask: the points lie at the scene's depths.
    assert set(np.round(points["z"], 3).tolist()) <= set(DEPTHS.values())


BAD_INPUTS = {
    "unsupported encoding": (
        lambda s: image_msg(scene(), "rgb8", s, frame_id=DEPTH_FRAME),
        lambda s: camera_info(s),
        r"unsupported depth encoding 'rgb8'",
    ),
    "all-zero depth": (
        lambda s: image_msg(np.zeros((HEIGHT, WIDTH), np.uint16), "16UC1", s, frame_id=DEPTH_FRAME),
        lambda s: camera_info(s),
        r"has no valid reading",
    ),
    "zero focal length": (
        lambda s: image_msg(millimetres(depth_m()), "16UC1", s, frame_id=DEPTH_FRAME),
        lambda s: camera_info(s, fx=0.0),
        r"unusable depth .*f[xy]",
    ),
    "size its camera info does not describe": (
        lambda s: image_msg(millimetres(depth_m(100, 100)), "16UC1", s, frame_id=DEPTH_FRAME),
        lambda s: camera_info(s),
        r"depth image is 100x100 but its camera info describes 160x120",
    ),
    "stamps that never pair": (
        lambda s: image_msg(millimetres(depth_m()), "16UC1", s + 500_000_000, frame_id=DEPTH_FRAME),
        lambda s: camera_info(s),
        r"no depth image on /rgbd/depth/image within depth.max_skew",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_depth_keeps_the_2d_answers_and_says_why(rgbd, stamps, case):
    graph, process = rgbd[0], rgbd[1]
    make_depth, make_info, pattern = BAD_INPUTS[case]
    stamp = stamps()
    frame = send_rgbd(rgbd, stamp, make_depth(stamp), make_info(stamp))
    assert frame.segments and not any(segment.has_position for segment in frame.segments)
    response = graph.call(Query, f"{NODE}/query", Query.Request(text="a blue disc"))
    assert response.success and stamp_of(response) == stamp, response.message
    process.wait_for_log(pattern, timeout=WAIT_S)
    assert re.search(r"processing a frame in 2D only", process.log())
