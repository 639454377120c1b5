"""semret-play: publish images, a video, a rosbag2 or generated shapes-world scenes as a camera.

Users try the node with it before pointing the node at a real camera, so it behaves like one:
``sensor_msgs/Image`` (rgb8 unless asked otherwise) on ``/camera/image_raw``, BEST_EFFORT by
default, stamped with the time each frame is published. A bag's Image messages are published as
the recorded CDR bytes (no decode, header kept) unless ``--restamp`` or ``--frame-id`` asks for
a new header. Examples::

    semret-play ~/pictures --rate 2 --loop
    semret-play drive.mp4 --topic /camera/color/image_raw
    semret-play recording/ --topic-in /camera/color/image_raw --loop
    semret-play --shapes 5 --hard --seed 3 --rate 1 --count 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.serialization import deserialize_message
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from semret_ros.ros.conversions import (
    PLAYER_ENCODINGS,
    compressed_image_to_array,
    make_header,
    rgb_to_image,
)
from semret_ros.ros.dds import PROFILE_ENV, apply_default_dds_profile, default_profile_path
from semret_ros.ros.qos import camera_qos

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
DEFAULT_RATE_HZ = 10.0
_MAX_BAG_GAP_S = 5.0
"""A longer pause between two recorded frames is shortened to this (a paused recording)."""


class SourceError(ValueError):
    """A source that cannot be played; the message names the path and the reason."""


@dataclass(frozen=True)
class Frame:
    """One frame to publish: decoded RGB pixels, or the CDR bytes of a recorded Image."""

    rgb: np.ndarray | None = None
    raw: bytes | None = None
    recorded_ns: int | None = None
    """When the bag recorded it: paces a bag at its recorded rate."""
    header: Header | None = None
    """The recorded header of a decoded bag frame, kept unless asked to restamp."""


class ImageFolder:
    """The PNG and JPEG files of a folder, in sorted file-name order."""

    def __init__(self, folder: Path) -> None:
        self.files = sorted(
            path
            for path in folder.iterdir()
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.files:
            raise SourceError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
        self.description = f"{len(self.files)} images from {folder}"
        self.default_rate: float | None = DEFAULT_RATE_HZ

    def frames(self) -> Iterator[Frame]:
        for path in self.files:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SourceError(f"{path}: not an image OpenCV can read")
            yield Frame(rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


class VideoFile:
    """Any video OpenCV's FFmpeg backend opens; played at its own frame rate by default."""

    def __init__(self, path: Path) -> None:
        self.path = path
        capture = self._open()
        fps = capture.get(cv2.CAP_PROP_FPS)
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        self.default_rate = float(fps) if np.isfinite(fps) and fps > 0 else DEFAULT_RATE_HZ
        self.description = f"video {path} ({frames} frames, {self.default_rate:g} fps)"

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.path}: not a video OpenCV can open")
        return capture

    def frames(self) -> Iterator[Frame]:
        capture = self._open()
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield Frame(rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()


class BagFile:
    """One image topic of a rosbag2 (a bag folder, or a single .mcap or .db3 file)."""

    def __init__(self, path: Path, topic: str | None) -> None:
        from rosbags.rosbag2 import Reader

        self.path = path
        try:
            with Reader(path) as reader:
                connections = list(reader.connections)  # the reader empties its list on close
        except Exception as error:  # rosbags raises several unrelated types for a bad bag
            raise SourceError(f"{path}: not a readable rosbag2 ({error})") from error
        images = [c for c in connections if c.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE)]
        if topic is not None:
            chosen = [c for c in connections if c.topic == topic]
            if not chosen:
                raise SourceError(
                    f"{path}: no topic {topic!r}; image topics in it: "
                    f"{', '.join(sorted({c.topic for c in images})) or 'none'}"
                )
            if chosen[0].msgtype not in (IMAGE_TYPE, COMPRESSED_TYPE):
                raise SourceError(
                    f"{path}: topic {topic!r} is {chosen[0].msgtype}, "
                    f"not {IMAGE_TYPE} or {COMPRESSED_TYPE}"
                )
        else:
            # Prefer raw images (published without decoding), then compressed ones.
            chosen = [c for c in images if c.msgtype == IMAGE_TYPE] or images
            if not chosen:
                raise SourceError(f"{path}: no {IMAGE_TYPE} or {COMPRESSED_TYPE} topic in this bag")
            chosen = [c for c in chosen if c.topic == chosen[0].topic]
        self.topic = chosen[0].topic
        self.msgtype = chosen[0].msgtype
        self._connection_ids = {c.id for c in chosen}
        count = sum(c.msgcount for c in chosen)
        self.description = f"bag {path}, topic {self.topic} ({self.msgtype}, {count} messages)"
        self.default_rate: float | None = None

    def frames(self) -> Iterator[Frame]:
        from rosbags.rosbag2 import Reader

        with Reader(self.path) as reader:
            chosen = [c for c in reader.connections if c.id in self._connection_ids]
            for _connection, recorded_ns, raw in reader.messages(connections=chosen):
                if self.msgtype == IMAGE_TYPE:
                    yield Frame(raw=bytes(raw), recorded_ns=recorded_ns)
                else:
                    message = deserialize_message(bytes(raw), CompressedImage)
                    pixels, _order = compressed_image_to_array(message)
                    rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
                    yield Frame(rgb=rgb, recorded_ns=recorded_ns, header=message.header)


class ShapesScenes:
    """Generated shapes-world scenes with seeds seed, seed + 1, ..., rendered once up front."""

    def __init__(self, count: int, seed: int, hard: bool, width: int, height: int) -> None:
        from semret_ros.shapes.world import generate_scene

        if count < 1:
            raise SourceError(f"--shapes must be >= 1, got {count}")
        self.scenes = [
            generate_scene(seed + index, width=width, height=height, hard=hard)
            for index in range(count)
        ]
        kind = "hard " if hard else ""
        self.description = (
            f"{count} {kind}shapes-world scenes {width}x{height}, seeds {seed}..{seed + count - 1}"
        )
        self.default_rate: float | None = DEFAULT_RATE_HZ

    def frames(self) -> Iterator[Frame]:
        for scene in self.scenes:
            yield Frame(rgb=scene.image)


Source = ImageFolder | VideoFile | BagFile | ShapesScenes


def open_source(args: argparse.Namespace) -> Source:
    """The source the arguments name; SourceError naming the path when it cannot be played."""
    if args.shapes is not None:
        return ShapesScenes(args.shapes, args.seed, args.hard, args.width, args.height)
    path = Path(args.source).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return BagFile(path, args.topic_in)
        return ImageFolder(path)
    if path.suffix in (".mcap", ".db3"):
        return BagFile(path, args.topic_in)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{path}: a single image; pass the folder that holds it")
    return VideoFile(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semret-play",
        description="Publish a folder of images, a video, a rosbag2 or generated shapes-world "
        "scenes as a sensor_msgs/Image camera topic. ROS arguments go after --ros-args.",
    )
    parser.add_argument(
        "source",
        nargs="?",
        help="a folder of .png/.jpg images (sorted by name), a video file, or a rosbag2 "
        "(bag folder, .mcap or .db3)",
    )
    parser.add_argument("--topic", default="/camera/image_raw", help="output topic")
    parser.add_argument(
        "--frame-id",
        default=None,
        help="header frame id (default: 'camera'; a bag keeps its recorded one unless this is set)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help=f"frames per second (default: {DEFAULT_RATE_HZ:g}; a video's own fps; "
        "a bag's recorded timing)",
    )
    parser.add_argument("--loop", action="store_true", help="start again at the end")
    parser.add_argument("--count", type=int, default=0, help="stop after N frames (0: no limit)")
    parser.add_argument(
        "--reliability",
        choices=("best_effort", "reliable"),
        default="best_effort",
        help="publisher reliability; best_effort like camera drivers (default)",
    )
    parser.add_argument("--depth", type=int, default=5, help="publisher queue depth (KEEP_LAST)")
    parser.add_argument(
        "--encoding", choices=PLAYER_ENCODINGS, default="rgb8", help="image encoding"
    )
    parser.add_argument(
        "--wait-subscribers",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for a subscriber before the first frame (0: do not wait)",
    )
    parser.add_argument("--log-every", type=int, default=100, help="log progress every N frames")
    bag = parser.add_argument_group("rosbag2")
    bag.add_argument(
        "--topic-in",
        default=None,
        help="image topic to read from the bag (default: the first sensor_msgs/Image topic)",
    )
    bag.add_argument(
        "--restamp",
        action="store_true",
        help="stamp each frame with the publish time instead of keeping the recorded header",
    )
    shapes = parser.add_argument_group("generated shapes-world scenes")
    shapes.add_argument(
        "--shapes", type=int, default=None, metavar="N", help="publish N generated scenes"
    )
    shapes.add_argument("--seed", type=int, default=0, help="seed of the first scene")
    shapes.add_argument("--hard", action="store_true", help="hard scenes (textures, 6-8 objects)")
    shapes.add_argument("--width", type=int, default=640)
    shapes.add_argument("--height", type=int, default=480)
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.source is None) == (args.shapes is None):
        parser.error("give either a source path or --shapes N")
    if args.rate is not None and not (np.isfinite(args.rate) and args.rate > 0):
        parser.error(f"--rate must be a positive number of frames per second, got {args.rate}")
    for name in ("count", "log_every", "depth"):
        minimum = 0 if name == "count" else 1
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}")
    if args.wait_subscribers < 0:
        parser.error("--wait-subscribers must be >= 0")


def _describe_dds_profile() -> str:
    profile = os.environ.get(PROFILE_ENV)
    if not profile:
        return "no Fast DDS profile (the RMW's default transport)"
    shipped = default_profile_path()
    # By content: the source checkout's copy and the installed one are the same profile.
    try:
        is_shipped = shipped is not None and Path(profile).read_bytes() == shipped.read_bytes()
    except OSError:
        is_shipped = False
    if is_shipped:
        return f"semret_ros's shipped Fast DDS profile {profile} (large shared memory)"
    return f"Fast DDS profile {profile} (the user's, from {PROFILE_ENV})"


class Player:
    """Publishes a source's frames on schedule; sleeps through the executor so that a shutdown
    (Ctrl-C, SIGTERM) ends a wait at once instead of after the frame period."""

    def __init__(self, node: Node, source: Source, args: argparse.Namespace) -> None:
        self.node = node
        self.source = source
        self.args = args
        self.publisher: Publisher = node.create_publisher(
            Image, args.topic, camera_qos(args.reliability, args.depth)
        )
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self.published = 0
        rate = args.rate if args.rate is not None else source.default_rate
        self.period_s = None if rate is None else 1.0 / rate

    def sleep_until(self, deadline: float) -> None:
        while (remaining := deadline - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=remaining)

    def wait_for_subscriber(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            self.sleep_until(min(deadline, time.monotonic() + 0.05))
        if self.publisher.get_subscription_count() == 0:
            self.node.get_logger().warning(
                f"no subscriber on {self.publisher.topic_name} after {timeout_s:g} s; publishing"
            )

    def header(self, recorded: Header | None = None) -> Header:
        """Now and the frame id, or the recorded header where a bag's is kept."""
        now_ns = self.node.get_clock().now().nanoseconds
        if recorded is None:
            return make_header(now_ns, self.args.frame_id or "camera")
        if self.args.restamp:
            recorded.stamp = make_header(now_ns, "").stamp
        if self.args.frame_id is not None:
            recorded.frame_id = self.args.frame_id
        return recorded

    def publish(self, frame: Frame) -> None:
        if frame.raw is None:
            assert frame.rgb is not None
            header = self.header(frame.header)
            self.publisher.publish(rgb_to_image(frame.rgb, self.args.encoding, header))
        elif self.args.restamp or self.args.frame_id is not None:
            message = deserialize_message(frame.raw, Image)
            message.header = self.header(message.header)
            self.publisher.publish(message)
        else:
            self.publisher.publish(frame.raw)

    def run(self) -> None:
        """Publish until the source ends (or ``--count`` frames, or forever with ``--loop``)."""
        logger = self.node.get_logger()
        next_time = time.monotonic()
        while True:
            previous_ns: int | None = None
            published_before = self.published
            for frame in self.source.frames():
                if self.args.count and self.published >= self.args.count:
                    return
                if self.period_s is not None:
                    gap = self.period_s if self.published else 0.0
                elif previous_ns is not None and frame.recorded_ns is not None:
                    gap = min(max(frame.recorded_ns - previous_ns, 0) / 1e9, _MAX_BAG_GAP_S)
                else:
                    gap = 0.0
                previous_ns = frame.recorded_ns
                # Scheduled, not slept: decode time does not slow the rate down.
                next_time = max(next_time + gap, time.monotonic() - 1.0)
                self.sleep_until(next_time)
                self.publish(frame)
                self.published += 1
                if self.published % self.args.log_every == 0:
                    logger.info(f"published {self.published} frames on {self.publisher.topic_name}")
            if not self.args.loop or self.published == published_before:
                return


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``semret-play``; returns the process exit status."""
    all_args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(remove_ros_args(["semret-play", *all_args])[1:])
    _check_args(parser, args)
    try:
        source = open_source(args)
    except SourceError as error:
        print(f"semret-play: error: {error}", file=sys.stderr)
        return 2

    # Console commands apply it before importing rclpy; `python -m` comes here first. Either way
    # it is in place before rclpy.init creates the DDS participant.
    apply_default_dds_profile()
    rclpy.init(args=["semret-play", *all_args])
    node: Node | None = None
    player: Player | None = None
    try:
        node = rclpy.create_node("semret_play")
        logger = node.get_logger()
        logger.info(f"DDS: {_describe_dds_profile()}")
        player = Player(node, source, args)
        rate = "recorded timing" if player.period_s is None else f"{1 / player.period_s:g} Hz"
        logger.info(
            f"publishing {source.description} on {player.publisher.topic_name} "
            f"({args.encoding if not isinstance(source, BagFile) else 'as recorded'}, "
            f"{args.reliability}, depth {args.depth}, {rate}"
            f"{', loop' if args.loop else ''}{f', {args.count} frames' if args.count else ''})"
        )
        if args.wait_subscribers > 0:
            player.wait_for_subscriber(args.wait_subscribers)
        player.run()
        logger.info(f"done: published {player.published} frames")
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        if node is not None and player is not None:
            node.get_logger().info(f"interrupted: published {player.published} frames")
        return 0
    except SourceError as error:
        print(f"semret-play: error: {error}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
