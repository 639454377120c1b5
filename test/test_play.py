"""semret-play end to end: the installed console command publishes, a subscriber here receives.

A real rclpy graph on loopback in a ROS domain of its own (ros_fixtures); semret-play is started
as users start it (the console command ``make build`` installs next to the venv's python).
Frames are small so that a run takes a second or two.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import ros_fixtures
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from ros_graph import VENV_BIN, Graph
from sensor_msgs.msg import CameraInfo, Image

from semret_ros.core.depth import CameraIntrinsics, depth_to_16uc1
from semret_ros.ros.conversions import (
    image_to_numpy,
    intrinsics_to_camera_info,
    make_header,
    numpy_to_image,
)
from semret_ros.ros.dds import PROFILE_ENV
from semret_ros.shapes.world import generate_scene, render_depth

ros_env = ros_fixtures.ros_env  # a ROS domain of this session's own, loopback discovery
PLAY = VENV_BIN / "semret-play"
TOPIC = "/test_camera/image_raw"
CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.BEST_EFFORT
)

pytestmark = pytest.mark.skipif(
    not PLAY.exists(), reason=f"{PLAY} is not installed: run `make build`"
)


@pytest.fixture
def graph(ros_env):
    graph = Graph(ros_env)
    yield graph
    graph.close()


def play(env: dict[str, str], *args: str) -> str:
    """Run semret-play to the end; its output (ROS logs go to stderr)."""
    result = subprocess.run(
        [str(PLAY), *args, "--topic", TOPIC, "--wait-subscribers", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"semret-play failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def play_and_collect(graph: Graph, env: dict[str, str], *args: str) -> tuple[list[Image], str]:
    """Subscribe like a camera consumer (BEST_EFFORT), play, and return what arrived."""
    received = graph.collect(Image, TOPIC, CAMERA_QOS, matched_timeout=None)
    log = play(env, *args)
    # The last frames may still be in flight when the player exits: wait for every frame it
    # says it published, up to a deadline (BEST_EFFORT may lose some; the callers judge that).
    match = re.search(r"done: published (\d+) frames", log)
    published = int(match.group(1)) if match else 0
    deadline = time.monotonic() + 5.0
    while len(received) < published and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(received), log


def _index_of(pixels: np.ndarray, references: list[np.ndarray]) -> int:
    """Which reference the received pixels equal exactly; fails on any other content."""
    for index, reference in enumerate(references):
        if pixels.shape == reference.shape and np.array_equal(pixels, reference):
            return index
    raise AssertionError("received a frame that matches none of the published images")


def _stamp_ns(message: Image) -> int:
    return message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec


def _random_images(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24 + i, 32, 3), dtype=np.uint8) for i in range(count)]


def test_folder_of_pngs_arrives_pixel_exact(tmp_path, ros_env, graph):
    images = _random_images(3, seed=1)
    for index, rgb in enumerate(images):
        cv2.imwrite(str(tmp_path / f"frame_{index:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    started_ns = time.time_ns()

    # Without a profile variable, as users start it: the command must apply the shipped one.
    env = {key: value for key, value in ros_env.items() if key != PROFILE_ENV}

    received, log = play_and_collect(
        graph, env, str(tmp_path), "--rate", "50", "--loop", "--count", "12"
    )

    assert "shipped Fast DDS profile" in log
    assert 3 <= len(received) <= 12
    indices = [_index_of(image_to_numpy(m), images) for m in received]
    assert set(indices) == {0, 1, 2}
    # Sorted file order, looping: each frame follows its predecessor (mod 3) unless one was lost.
    assert sum((b - a) % 3 == 1 for a, b in itertools.pairwise(indices)) >= len(indices) // 2
    for message in received:
        assert message.encoding == "rgb8"
        assert message.header.frame_id == "camera"
        assert started_ns <= _stamp_ns(message) <= time.time_ns()
    stamps = [_stamp_ns(m) for m in received]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_shapes_scenes_with_frame_id_and_bgr8(ros_env, graph):
    scenes = [generate_scene(seed, width=80, height=64, hard=True) for seed in (7, 8)]
    expected = [np.ascontiguousarray(scene.image[..., ::-1]) for scene in scenes]

    received, _log = play_and_collect(
        graph,
        ros_env,
        *("--shapes", "2", "--hard", "--seed", "7", "--width", "80", "--height", "64"),
        *("--frame-id", "sim_camera", "--encoding", "bgr8", "--rate", "50", "--count", "10"),
        "--loop",
    )

    assert received
    assert {_index_of(image_to_numpy(m), expected) for m in received} == {0, 1}
    assert {(m.encoding, m.header.frame_id) for m in received} == {("bgr8", "sim_camera")}


def test_video_file_frames_arrive_at_the_video_size(tmp_path, ros_env, graph):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (40, 30))
    for level in (30, 220):
        writer.write(np.full((30, 40, 3), level, np.uint8))
    writer.release()

    received, log = play_and_collect(graph, ros_env, str(path), "--loop", "--count", "8")

    assert "25 fps" in log
    levels = {round(float(image_to_numpy(m).mean()) / 10) * 10 for m in received}
    assert levels == {30, 220}
    assert {(m.width, m.height, m.encoding) for m in received} == {(40, 30, "rgb8")}


def _write_bag(path: Path, storage: str, images: list[np.ndarray]) -> list[Image]:
    """A bag with the images on /cam/image, 20 ms apart, plus an unrelated string topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    messages = [
        numpy_to_image(rgb, "rgb8", make_header(1_000_000_000 * (100 + i) + 5, "recorded_cam"))
        for i, rgb in enumerate(images)
    ]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        other = writer.add_connection("/status", "std_msgs/msg/String", typestore=typestore)
        camera = writer.add_connection("/cam/image", "sensor_msgs/msg/Image", typestore=typestore)
        for i, message in enumerate(messages):
            writer.write(
                other,
                10**9 + i * 20_000_000,
                typestore.serialize_cdr(
                    typestore.types["std_msgs/msg/String"](data=f"s{i}"), "std_msgs/msg/String"
                ),
            )
            writer.write(camera, 10**9 + i * 20_000_000 + 1, serialize_message(message))
    return messages


def test_mcap_bag_is_published_with_its_recorded_headers(tmp_path, ros_env, graph):
    images = _random_images(3, seed=2)
    recorded = _write_bag(tmp_path / "bag", "mcap", images)

    received, log = play_and_collect(
        graph, ros_env, str(tmp_path / "bag"), "--loop", "--count", "12"
    )

    assert "/cam/image" in log
    assert received
    for message in received:
        index = _index_of(image_to_numpy(message), images)
        assert message.header == recorded[index].header
        assert message.encoding == "rgb8"


def test_sqlite3_bag_restamped_with_new_frame_id(tmp_path, ros_env, graph):
    images = _random_images(2, seed=3)
    _write_bag(tmp_path / "bag", "sqlite3", images)
    started_ns = time.time_ns()

    received, _log = play_and_collect(
        graph,
        ros_env,
        *(str(tmp_path / "bag"), "--topic-in", "/cam/image", "--restamp", "--frame-id", "cam2"),
        *("--rate", "50", "--loop", "--count", "8"),
    )

    assert received
    assert {_index_of(image_to_numpy(m), images) for m in received} == {0, 1}
    for message in received:
        assert message.header.frame_id == "cam2"
        assert _stamp_ns(message) >= started_ns


@pytest.mark.parametrize(
    ("make_source", "expected"),
    [
        (lambda tmp: tmp / "missing_folder", "no such file or folder"),
        (lambda tmp: tmp, "no .png/.jpg/.jpeg images"),
        (lambda tmp: (tmp / "clip.mp4", (tmp / "clip.mp4").write_bytes(b"junk"))[0], "video"),
    ],
    ids=["missing", "empty-folder", "not-a-video"],
)
def test_bad_source_exits_non_zero_naming_the_path(tmp_path, make_source, expected):
    source = make_source(tmp_path)
    result = subprocess.run(
        [str(PLAY), str(source)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert str(source) in result.stderr and expected in result.stderr


def test_bag_topic_that_is_not_an_image_is_refused(tmp_path):
    _write_bag(tmp_path / "bag", "mcap", _random_images(1, seed=4))
    result = subprocess.run(
        [str(PLAY), str(tmp_path / "bag"), "--topic-in", "/status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "/status" in result.stderr and "std_msgs/msg/String" in result.stderr


DEPTH_TOPIC = "/test_camera/depth/image"
INFO_TOPIC = "/test_camera/depth/camera_info"
DEPTH_ARGS = ("--with-depth", "--depth-topic", DEPTH_TOPIC, "--camera-info-topic", INFO_TOPIC)


def play_rgbd(
    graph: Graph, env: dict[str, str], *args: str
) -> tuple[list[Image], list[Image], list[CameraInfo]]:
    """Subscribe to colour, depth and camera info like the node does, play, and return them."""
    color = graph.collect(Image, TOPIC, CAMERA_QOS, matched_timeout=None)
    depth = graph.collect(Image, DEPTH_TOPIC, CAMERA_QOS, matched_timeout=None)
    info = graph.collect(CameraInfo, INFO_TOPIC, CAMERA_QOS, matched_timeout=None)
    log = play(env, *DEPTH_ARGS, *args)
    match = re.search(r"done: published (\d+) frames", log)
    published = int(match.group(1)) if match else 0
    deadline = time.monotonic() + 5.0
    while min(len(color), len(depth), len(info)) < published and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(color), list(depth), list(info)


def _triples(
    color: list[Image], depth: list[Image], info: list[CameraInfo]
) -> list[tuple[Image, Image, CameraInfo]]:
    """(colour, depth, camera info) that share a header stamp (BEST_EFFORT may lose some, and a
    bag's last pass may end between a frame's camera info and its colour image)."""
    color_stamps = {_stamp_ns(m): m for m in color}
    depth_by_stamp = {_stamp_ns(m): m for m in depth}
    info_by_stamp = {_stamp_ns(m): m for m in info}
    return [
        (message, depth_by_stamp[stamp], info_by_stamp[stamp])
        for stamp, message in color_stamps.items()
        if stamp in depth_by_stamp and stamp in info_by_stamp
    ]


def _assert_camera_info(info: CameraInfo, camera: CameraIntrinsics) -> None:
    assert (info.width, info.height) == (camera.width, camera.height)
    np.testing.assert_allclose(info.k, camera.k)
    np.testing.assert_allclose(
        info.p, [camera.fx, 0, camera.cx, 0, 0, camera.fy, camera.cy, 0, 0, 0, 1, 0]
    )
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5


def test_shapes_with_depth_publish_colour_depth_and_camera_info_with_one_header(ros_env, graph):
    scenes = [generate_scene(seed, width=80, height=64, hard=True) for seed in (7, 8)]
    rendered = [render_depth(scene) for scene in scenes]
    expected_depth = [depth_to_16uc1(r.depth_m) for r in rendered]

    color, depth, info = play_rgbd(
        graph,
        ros_env,
        *("--shapes", "2", "--hard", "--seed", "7", "--width", "80", "--height", "64"),
        *("--rate", "20", "--loop", "--count", "8"),
    )

    triples = _triples(color, depth, info)
    assert len(triples) >= 4
    seen = set()
    for color_msg, depth_msg, info_msg in triples:
        index = _index_of(image_to_numpy(color_msg), [s.image for s in scenes])
        seen.add(index)
        frame_ids = {color_msg.header.frame_id, depth_msg.header.frame_id}
        assert frame_ids | {info_msg.header.frame_id} == {"camera_color_optical_frame"}
        assert (depth_msg.encoding, depth_msg.width, depth_msg.height) == ("16UC1", 80, 64)
        np.testing.assert_array_equal(image_to_numpy(depth_msg), expected_depth[index])
        _assert_camera_info(info_msg, rendered[index].intrinsics)
    assert seen == {0, 1}


def _write_pairs(folder: Path, colour_size: tuple[int, int], depth_size: tuple[int, int]) -> list:
    rng = np.random.default_rng(5)
    pairs = []
    for name in ("a", "b"):
        rgb = rng.integers(0, 256, (colour_size[1], colour_size[0], 3), dtype=np.uint8)
        depth = rng.integers(0, 5000, (depth_size[1], depth_size[0]), dtype=np.uint16)
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / f"{name}_depth.png"), depth)
        pairs.append((rgb, depth))
    return pairs


CALIBRATION_YAML = """\
image_width: 64
image_height: 48
camera_name: rgbd
camera_matrix: {rows: 3, cols: 3, data: [60, 0, 31.5, 0, 62, 23.5, 0, 0, 1]}
distortion_model: plumb_bob
distortion_coefficients: {rows: 1, cols: 5, data: [0, 0, 0, 0, 0]}
"""


@pytest.mark.parametrize("calibration", ["--intrinsics", "--camera-info"])
def test_folder_of_colour_and_half_size_depth_pngs(tmp_path, ros_env, graph, calibration):
    folder = tmp_path / "pairs"
    folder.mkdir()
    pairs = _write_pairs(folder, (64, 48), (32, 24))
    (tmp_path / "ost.yaml").write_text(CALIBRATION_YAML)
    camera_args = (
        ("--intrinsics", "60", "62", "31.5", "23.5")
        if calibration == "--intrinsics"
        else ("--camera-info", str(tmp_path / "ost.yaml"))
    )

    color, depth, info = play_rgbd(
        graph,
        ros_env,
        *(str(folder), *camera_args, "--frame-id", "rgbd_optical"),
        *("--rate", "20", "--loop", "--count", "6"),
    )

    triples = _triples(color, depth, info)
    assert len(triples) >= 3
    # Both calibrate the colour image; the camera info describes the depth image.
    half = CameraIntrinsics(60, 62, 31.5, 23.5, 64, 48).scaled(32, 24)
    for color_msg, depth_msg, info_msg in triples:
        index = _index_of(image_to_numpy(color_msg), [rgb for rgb, _ in pairs])
        assert depth_msg.encoding == "16UC1"
        np.testing.assert_array_equal(image_to_numpy(depth_msg), pairs[index][1])
        _assert_camera_info(info_msg, half)
        assert {m.header.frame_id for m in (color_msg, depth_msg, info_msg)} == {"rgbd_optical"}


def _write_rgbd_bag(path: Path, images: list[np.ndarray], depths: list[np.ndarray]) -> list:
    """Colour, depth and camera info as a RealSense records them: one header per triple,
    camera info recorded before and depth after the colour frame."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    height, width = depths[0].shape
    camera = CameraIntrinsics(40, 40, (width - 1) / 2, (height - 1) / 2, width, height)
    headers = []
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        topics = {
            "color": ("/cam/color/image_raw", "sensor_msgs/msg/Image"),
            "info": ("/cam/aligned_depth_to_color/camera_info", "sensor_msgs/msg/CameraInfo"),
            "depth": ("/cam/aligned_depth_to_color/image_raw", "sensor_msgs/msg/Image"),
        }
        connections = {
            key: writer.add_connection(topic, msgtype, typestore=typestore)
            for key, (topic, msgtype) in topics.items()
        }
        for i, (rgb, depth) in enumerate(zip(images, depths, strict=True)):
            header = make_header(1_000_000_000 * (200 + i) + 7, "recorded_optical")
            headers.append(header)
            recorded = 10**9 + i * 50_000_000
            messages = {
                "info": intrinsics_to_camera_info(camera, header),
                "color": numpy_to_image(rgb, "rgb8", header),
                "depth": numpy_to_image(depth, "16UC1", header),
            }
            for offset, (key, message) in enumerate(messages.items()):
                writer.write(connections[key], recorded + offset, serialize_message(message))
    return headers


@pytest.mark.parametrize("restamp", [False, True], ids=["recorded", "restamped"])
def test_bag_depth_and_camera_info_topics_are_played_with_their_stamps(
    tmp_path, ros_env, graph, restamp
):
    images = [np.full((24, 32, 3), 40 * i, np.uint8) for i in range(3)]
    depths = [np.full((24, 32), 1000 + 100 * i, np.uint16) for i in range(3)]
    headers = _write_rgbd_bag(tmp_path / "bag", images, depths)
    started_ns = time.time_ns()

    color, depth, info = play_rgbd(
        graph,
        ros_env,
        # Five passes: recorded stamps repeat, so each of the three must arrive once on every
        # topic although BEST_EFFORT may lose some early messages while discovery settles.
        *(str(tmp_path / "bag"), "--loop", "--count", "15"),
        *(("--restamp",) if restamp else ()),
    )

    triples = _triples(color, depth, info)
    assert len(triples) >= 3
    for color_msg, depth_msg, info_msg in triples:
        index = _index_of(image_to_numpy(color_msg), images)
        np.testing.assert_array_equal(image_to_numpy(depth_msg), depths[index])
        assert info_msg.width == 32 and info_msg.k[0] == 40
        if restamp:
            assert _stamp_ns(color_msg) >= started_ns
            assert color_msg.header.frame_id == "recorded_optical"
        else:
            assert color_msg.header == depth_msg.header == info_msg.header == headers[index]


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (lambda tmp: [str(tmp), "--with-depth"], "needs its camera: --intrinsics"),
        (
            lambda tmp: [str(tmp), "--with-depth", "--intrinsics", "50", "50", "16", "12"],
            "no depth image for a.png",
        ),
        (lambda tmp: [str(tmp), "--intrinsics", "50", "50", "16", "12"], "--with-depth"),
        (
            lambda tmp: [str(tmp), "--with-depth", "--intrinsics", "0", "50", "16", "12"],
            "fx must be a finite positive",
        ),
    ],
    ids=["no-intrinsics", "missing-depth-png", "intrinsics-without-depth", "bad-focal-length"],
)
def test_bad_depth_arguments_exit_non_zero_saying_what_to_fix(tmp_path, make_args, expected):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((24, 32, 3), np.uint8))
    result = subprocess.run(
        [str(PLAY), *make_args(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert expected in result.stderr
