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
from sensor_msgs.msg import Image

from semret_ros.ros.conversions import image_to_numpy, make_header, numpy_to_image
from semret_ros.ros.dds import PROFILE_ENV
from semret_ros.shapes.world import generate_scene

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
