"""semret-play: publish images, a video, a rosbag2 or generated shapes-world scenes as a camera.

Users try the node with it before pointing the node at a real camera, so it behaves like one:
``sensor_msgs/Image`` (rgb8 unless asked otherwise) on ``/camera/image_raw``, BEST_EFFORT by
default, stamped with the time each frame is published. A bag's Image messages are published as
the recorded CDR bytes (no decode, header kept) unless ``--restamp`` or ``--frame-id`` asks for
a new header.

``--with-depth`` makes it an RGB-D camera: with every colour frame it publishes the registered
depth image (16UC1 millimetres) and its sensor_msgs/CameraInfo, all three with one header, from
generated scenes, from folders of colour/depth PNG pairs, or from a bag's depth and camera info
topics (as recorded). Examples::

    semret-play ~/pictures --rate 2 --loop
    semret-play drive.mp4 --topic /camera/color/image_raw
    semret-play recording/ --topic-in /camera/color/image_raw --loop
    semret-play --shapes 5 --hard --seed 3 --rate 1 --count 20
    semret-play --shapes 5 --hard --with-depth
    semret-play ~/rgbd_pairs --with-depth --intrinsics 525 525 319.5 239.5
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
import yaml
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.serialization import deserialize_message, serialize_message
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from semret_ros.core.depth import CameraIntrinsics, check_registered_size
from semret_ros.ros.conversions import (
    PLAYER_ENCODINGS,
    compressed_image_to_array,
    intrinsics_to_camera_info,
    make_header,
    numpy_to_image,
    rgb_to_image,
)
from semret_ros.ros.dds import PROFILE_ENV, apply_default_dds_profile, default_profile_path
from semret_ros.ros.qos import camera_qos

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
DEPTH_SUFFIX = "_depth.png"
"""A folder's depth image for colour image NAME.png (or .jpg) is NAME_depth.png."""
DEPTH_FRAME_ID = "camera_color_optical_frame"
"""Default frame id with --with-depth: an optical frame (REP 103: x right, y down, z forward),
where registered depth and the 3D answers computed from it live."""
DEFAULT_RATE_HZ = 10.0
_MAX_BAG_GAP_S = 5.0
"""A longer pause between two recorded frames is shortened to this (a paused recording)."""


class SourceError(ValueError):
    """A source that cannot be played; the message names the path and the reason."""


@dataclass(frozen=True)
class Calibration:
    """Pinhole intrinsics given on the command line for a source that has none of its own."""

    fx: float
    fy: float
    cx: float
    cy: float
    size: tuple[int, int] | None
    """(width, height) the values belong to; None: the colour image's size."""
    origin: str
    """Where they come from, for error messages."""

    def intrinsics(
        self, color_size: tuple[int, int], depth_size: tuple[int, int]
    ) -> CameraIntrinsics:
        """The depth image's intrinsics: these values, scaled to the depth image's size.

        Raises:
            SourceError: a bad focal length, or a depth image whose aspect ratio is not the
                calibrated image's.
        """
        width, height = self.size or color_size
        try:
            camera = CameraIntrinsics(self.fx, self.fy, self.cx, self.cy, width, height)
            check_registered_size(*depth_size, width, height)
        except ValueError as error:
            raise SourceError(f"{self.origin}: {error}") from error
        return camera if (width, height) == depth_size else camera.scaled(*depth_size)


def load_camera_info_yaml(path: Path) -> Calibration:
    """The intrinsics of a camera calibration YAML file: camera_calibration's format
    (``image_width``, ``image_height``, ``camera_matrix: {data: [...]}``) or a CameraInfo
    message as ``ros2 topic echo`` prints it (``width``, ``height``, ``k``)."""
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SourceError(f"{path}: cannot read camera info ({error})") from error
    if not isinstance(content, dict):
        raise SourceError(f"{path}: not a camera info YAML mapping")
    matrix = content.get("camera_matrix")
    k = matrix.get("data") if isinstance(matrix, dict) else content.get("k")
    width = content.get("image_width", content.get("width"))
    height = content.get("image_height", content.get("height"))
    try:
        values = [float(v) for v in k]
        size = (int(width), int(height))
    except (TypeError, ValueError) as error:
        raise SourceError(
            f"{path}: needs image_width, image_height and camera_matrix.data (9 numbers), "
            "or width, height and k"
        ) from error
    if len(values) != 9:
        raise SourceError(f"{path}: the camera matrix has {len(values)} values, not 9")
    return Calibration(values[0], values[4], values[2], values[5], size, str(path))


@dataclass(frozen=True)
class Frame:
    """One message to publish: decoded RGB pixels (with the registered depth image and its
    camera when playing depth), or the CDR bytes of a recorded message."""

    rgb: np.ndarray | None = None
    raw: bytes | None = None
    recorded_ns: int | None = None
    """When the bag recorded it: paces a bag at its recorded rate."""
    header: Header | None = None
    """The recorded header of a decoded bag frame, kept unless asked to restamp."""
    depth_mm: np.ndarray | None = None
    """HxW uint16 registered depth in millimetres (0: no reading), published as 16UC1."""
    intrinsics: CameraIntrinsics | None = None
    """The depth image's camera, published as CameraInfo."""
    kind: str = "color"
    """What a recorded message is: color, depth or camera_info."""


class ImageFolder:
    """The PNG and JPEG files of a folder, in sorted file-name order.

    With depth (``calibration`` given), colour image NAME.png (or .jpg) goes with the 16-bit
    single-channel PNG NAME_depth.png in millimetres (0: no reading), registered to it.
    """

    def __init__(self, folder: Path, calibration: Calibration | None = None) -> None:
        self.calibration = calibration
        self.files = sorted(
            path
            for path in folder.iterdir()
            if path.is_file()
            and path.suffix.lower() in IMAGE_SUFFIXES
            and not (calibration is not None and path.name.endswith(DEPTH_SUFFIX))
        )
        if not self.files:
            raise SourceError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
        self.description = f"{len(self.files)} images from {folder}"
        if calibration is not None:
            missing = [path.name for path in self.files if not self.depth_path(path).is_file()]
            if missing:
                raise SourceError(
                    f"{folder}: no depth image for {', '.join(missing[:3])}"
                    f"{' ...' if len(missing) > 3 else ''} (colour NAME.png goes with "
                    f"NAME{DEPTH_SUFFIX}, 16-bit millimetres)"
                )
            self.description += f" with their {DEPTH_SUFFIX} depth images"
        self.default_rate: float | None = DEFAULT_RATE_HZ

    @staticmethod
    def depth_path(path: Path) -> Path:
        return path.with_name(path.stem + DEPTH_SUFFIX)

    def frames(self) -> Iterator[Frame]:
        for path in self.files:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SourceError(f"{path}: not an image OpenCV can read")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if self.calibration is None:
                yield Frame(rgb=rgb)
                continue
            depth_path = self.depth_path(path)
            depth = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED)
            if depth is None or depth.dtype != np.uint16 or depth.ndim != 2:
                found = "unreadable" if depth is None else f"{depth.dtype} {depth.shape}"
                raise SourceError(
                    f"{depth_path}: a depth image must be a 16-bit single-channel PNG in "
                    f"millimetres, got {found}"
                )
            color_size = (rgb.shape[1], rgb.shape[0])
            depth_size = (depth.shape[1], depth.shape[0])
            intrinsics = self.calibration.intrinsics(color_size, depth_size)
            yield Frame(rgb=rgb, depth_mm=depth, intrinsics=intrinsics)


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
    """One image topic of a rosbag2 (a bag folder, or a single .mcap or .db3 file); with depth,
    also its depth image topic and that topic's camera info, in recorded order."""

    def __init__(
        self,
        path: Path,
        topic: str | None,
        depth: bool = False,
        depth_topic: str | None = None,
        info_topic: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
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
            # Prefer raw images (published without decoding), then compressed ones; with depth,
            # an image topic that is not the depth topic.
            candidates = [
                c
                for c in images
                if not depth or ("depth" not in c.topic and c.topic != depth_topic)
            ]
            chosen = [c for c in candidates if c.msgtype == IMAGE_TYPE] or candidates
            if not chosen:
                raise SourceError(f"{path}: no {IMAGE_TYPE} or {COMPRESSED_TYPE} topic in this bag")
            chosen = [c for c in chosen if c.topic == chosen[0].topic]
        self.topic = chosen[0].topic
        self.msgtype = chosen[0].msgtype
        self._kinds = {c.id: "color" for c in chosen}
        count = sum(c.msgcount for c in chosen)
        self.description = f"bag {path}, topic {self.topic} ({self.msgtype}, {count} messages)"
        self.calibration = calibration
        self.depth_topic: str | None = None
        self.info_topic: str | None = None
        if depth:
            self.depth_topic = self._pick_depth_topic(connections, depth_topic)
            self.info_topic = self._pick_info_topic(connections, info_topic)
            for c in connections:
                if c.topic == self.depth_topic:
                    self._kinds[c.id] = "depth"
                elif c.topic == self.info_topic:
                    self._kinds[c.id] = "camera_info"
            self.description += f", depth {self.depth_topic}, camera info " + (
                self.info_topic or f"from {calibration.origin if calibration else '?'}"
            )
        self._color_size: tuple[int, int] | None = None
        self.default_rate: float | None = None

    def _pick_depth_topic(self, connections: list, requested: str | None) -> str:
        """The depth Image topic: the requested one, else the one image topic named *depth*."""
        by_topic = {c.topic: c.msgtype for c in connections}
        if requested is not None:
            if requested not in by_topic:
                raise SourceError(f"{self.path}: no depth topic {requested!r}")
            if by_topic[requested] != IMAGE_TYPE:
                raise SourceError(
                    f"{self.path}: depth topic {requested!r} is {by_topic[requested]}, not "
                    f"{IMAGE_TYPE} (compressed depth is not supported)"
                )
            return requested
        candidates = sorted(
            t
            for t, kind in by_topic.items()
            if kind == IMAGE_TYPE and "depth" in t and t != self.topic
        )
        if len(candidates) != 1:
            raise SourceError(
                f"{self.path}: {len(candidates)} {IMAGE_TYPE} topics with 'depth' in their name "
                f"({', '.join(candidates) or 'none'}); name one with --depth-topic-in"
            )
        return candidates[0]

    def _pick_info_topic(self, connections: list, requested: str | None) -> str | None:
        """The depth topic's CameraInfo topic: the requested one, else the depth topic's
        sibling ``camera_info``, else the bag's only CameraInfo topic; None when the camera
        comes from the command line (--intrinsics, --camera-info) instead."""
        infos = sorted({c.topic for c in connections if c.msgtype == CAMERA_INFO_TYPE})
        if requested is not None:
            if requested not in infos:
                raise SourceError(
                    f"{self.path}: no {CAMERA_INFO_TYPE} topic {requested!r}; camera info "
                    f"topics in it: {', '.join(infos) or 'none'}"
                )
            return requested
        if self.calibration is not None:
            return None
        assert self.depth_topic is not None
        sibling = self.depth_topic.rsplit("/", 1)[0] + "/camera_info"
        if sibling in infos:
            return sibling
        if len(infos) == 1:
            return infos[0]
        raise SourceError(
            f"{self.path}: no camera info for {self.depth_topic} (looked for {sibling}; "
            f"{CAMERA_INFO_TYPE} topics: {', '.join(infos) or 'none'}); name one with "
            "--camera-info-topic-in, or give --intrinsics or --camera-info"
        )

    def _camera_info(self, depth_raw: bytes) -> Frame:
        """A CameraInfo for a recorded depth image from the command line's calibration."""
        assert self.calibration is not None
        depth = deserialize_message(depth_raw, Image)
        depth_size = (int(depth.width), int(depth.height))
        if self.calibration.size is None and self._color_size is None:
            raise SourceError(
                f"{self.path}: --intrinsics are for the colour image's size, and no colour "
                f"frame came before the first depth image; give --camera-info FILE (with the "
                "calibrated size) instead"
            )
        intrinsics = self.calibration.intrinsics(self._color_size or depth_size, depth_size)
        info = intrinsics_to_camera_info(intrinsics, depth.header)
        return Frame(raw=serialize_message(info), kind="camera_info")

    def frames(self) -> Iterator[Frame]:
        from rosbags.rosbag2 import Reader

        with Reader(self.path) as reader:
            chosen = [c for c in reader.connections if c.id in self._kinds]
            for connection, recorded_ns, raw in reader.messages(connections=chosen):
                kind = self._kinds[connection.id]
                if kind == "color" and self.msgtype == COMPRESSED_TYPE:
                    message = deserialize_message(bytes(raw), CompressedImage)
                    pixels, _order = compressed_image_to_array(message)
                    rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
                    self._color_size = (rgb.shape[1], rgb.shape[0])
                    yield Frame(rgb=rgb, recorded_ns=recorded_ns, header=message.header)
                    continue
                if kind == "color" and self.calibration is not None and self._color_size is None:
                    color = deserialize_message(bytes(raw), Image)
                    self._color_size = (int(color.width), int(color.height))
                yield Frame(raw=bytes(raw), recorded_ns=recorded_ns, kind=kind)
                if kind == "depth" and self.depth_topic is not None and self.info_topic is None:
                    yield self._camera_info(bytes(raw))


class ShapesScenes:
    """Generated shapes-world scenes with seeds seed, seed + 1, ..., rendered once up front;
    with depth, also each scene's registered depth image (``render_depth``) and camera."""

    def __init__(
        self, count: int, seed: int, hard: bool, width: int, height: int, depth: bool = False
    ) -> None:
        from semret_ros.core.depth import depth_to_16uc1
        from semret_ros.shapes.world import generate_scene, render_depth

        if count < 1:
            raise SourceError(f"--shapes must be >= 1, got {count}")
        scenes = [
            generate_scene(seed + index, width=width, height=height, hard=hard)
            for index in range(count)
        ]
        self.frames_list = []
        for scene in scenes:
            if depth:
                rendered = render_depth(scene)
                frame = Frame(
                    rgb=scene.image,
                    depth_mm=depth_to_16uc1(rendered.depth_m),
                    intrinsics=rendered.intrinsics,
                )
            else:
                frame = Frame(rgb=scene.image)
            self.frames_list.append(frame)
        kind = "hard " if hard else ""
        self.description = (
            f"{count} {kind}shapes-world scenes {width}x{height}, seeds {seed}..{seed + count - 1}"
            + (" with depth" if depth else "")
        )
        self.default_rate: float | None = DEFAULT_RATE_HZ

    def frames(self) -> Iterator[Frame]:
        yield from self.frames_list


Source = ImageFolder | VideoFile | BagFile | ShapesScenes


def user_calibration(args: argparse.Namespace) -> Calibration | None:
    """The camera --intrinsics or --camera-info give, if any."""
    if args.intrinsics is not None:
        return Calibration(*args.intrinsics, size=None, origin="--intrinsics")
    if args.camera_info is not None:
        return load_camera_info_yaml(Path(args.camera_info).expanduser())
    return None


def open_source(args: argparse.Namespace) -> Source:
    """The source the arguments name; SourceError naming the path when it cannot be played."""
    depth = args.with_depth
    if args.shapes is not None:
        return ShapesScenes(args.shapes, args.seed, args.hard, args.width, args.height, depth)
    path = Path(args.source).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    calibration = user_calibration(args) if depth else None
    is_bag = (path.is_dir() and (path / "metadata.yaml").is_file()) or path.suffix in (
        ".mcap",
        ".db3",
    )
    if is_bag:
        return BagFile(
            path, args.topic_in, depth, args.depth_topic_in, args.camera_info_topic_in, calibration
        )
    if path.is_dir():
        if depth and calibration is None:
            raise SourceError(
                f"{path}: a folder played --with-depth needs its camera: --intrinsics FX FY CX CY "
                "or --camera-info FILE"
            )
        return ImageFolder(path, calibration)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{path}: a single image; pass the folder that holds it")
    if depth:
        raise SourceError(
            f"{path}: a video has no depth; --with-depth plays generated scenes, folders of "
            "colour/depth PNG pairs and bags with a depth topic"
        )
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
    depth = parser.add_argument_group("depth (an RGB-D camera)")
    depth.add_argument(
        "--with-depth",
        action="store_true",
        help="also publish the registered depth image (16UC1 millimetres; a bag's as recorded) "
        "and its sensor_msgs/CameraInfo with each colour frame, all with the colour frame's "
        f"header (frame id default: {DEPTH_FRAME_ID})",
    )
    depth.add_argument(
        "--depth-topic",
        default="depth/image",
        help="depth image output topic (default: depth/image)",
    )
    depth.add_argument(
        "--camera-info-topic",
        default="depth/camera_info",
        help="camera info output topic (default: depth/camera_info)",
    )
    depth.add_argument(
        "--intrinsics",
        type=float,
        nargs=4,
        metavar=("FX", "FY", "CX", "CY"),
        default=None,
        help="pinhole intrinsics of the colour image (pixels; scaled to the depth image's size "
        "when it differs): needed for a folder, optional for a bag without camera info",
    )
    depth.add_argument(
        "--camera-info",
        default=None,
        metavar="FILE",
        help="the camera from a calibration YAML (camera_calibration's ost.yaml, or a CameraInfo "
        "as ros2 topic echo prints it) instead of --intrinsics",
    )
    bag = parser.add_argument_group("rosbag2")
    bag.add_argument(
        "--topic-in",
        default=None,
        help="image topic to read from the bag (default: the first sensor_msgs/Image topic)",
    )
    bag.add_argument(
        "--restamp",
        action="store_true",
        help="stamp each frame with the publish time instead of keeping the recorded header "
        "(with --with-depth every message's stamp moves by one offset, so pairs stay paired)",
    )
    bag.add_argument(
        "--depth-topic-in",
        default=None,
        help="depth image topic to read (default: the one Image topic named *depth*)",
    )
    bag.add_argument(
        "--camera-info-topic-in",
        default=None,
        help="camera info topic to read (default: --intrinsics/--camera-info when given, else the "
        "depth topic's sibling camera_info, else the bag's only CameraInfo topic)",
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
    depth_options = ("intrinsics", "camera_info", "depth_topic_in", "camera_info_topic_in")
    given = [f"--{name.replace('_', '-')}" for name in depth_options if getattr(args, name)]
    if given and not args.with_depth:
        parser.error(f"{', '.join(given)} only apply with --with-depth")
    if args.intrinsics is not None and args.camera_info is not None:
        parser.error("give either --intrinsics or --camera-info, not both")
    if args.camera_info_topic_in and (args.intrinsics or args.camera_info):
        parser.error(
            "--camera-info-topic-in reads the bag's camera; --intrinsics and "
            "--camera-info replace it: give one of them"
        )
    if args.intrinsics is not None:
        try:
            CameraIntrinsics(*args.intrinsics, width=1, height=1)
        except ValueError as error:
            parser.error(f"--intrinsics: {error}")


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
        qos = camera_qos(args.reliability, args.depth)
        self.publisher: Publisher = node.create_publisher(Image, args.topic, qos)
        self.publishers: dict[str, Publisher] = {"color": self.publisher}
        if args.with_depth:
            self.publishers["depth"] = node.create_publisher(Image, args.depth_topic, qos)
            self.publishers["camera_info"] = node.create_publisher(
                CameraInfo, args.camera_info_topic, qos
            )
        self.frame_id = args.frame_id or (DEPTH_FRAME_ID if args.with_depth else "camera")
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self.published = 0
        """Colour frames published (depth and camera info go with them)."""
        self._shift_ns: int | None = None
        rate = args.rate if args.rate is not None else source.default_rate
        self.period_s = None if rate is None else 1.0 / rate

    def sleep_until(self, deadline: float) -> None:
        while (remaining := deadline - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=remaining)

    def wait_for_subscriber(self, timeout_s: float) -> None:
        """Wait until every topic (colour, and depth and camera info) has a subscriber."""
        deadline = time.monotonic() + timeout_s
        publishers = list(self.publishers.values())
        while time.monotonic() < deadline and any(
            p.get_subscription_count() == 0 for p in publishers
        ):
            self.sleep_until(min(deadline, time.monotonic() + 0.05))
        for publisher in publishers:
            if publisher.get_subscription_count() == 0:
                self.node.get_logger().warning(
                    f"no subscriber on {publisher.topic_name} after {timeout_s:g} s; publishing"
                )

    def header(self, recorded: Header | None = None) -> Header:
        """Now and the frame id, or the recorded header where a bag's is kept.

        Restamped with depth, every recorded stamp moves by the same offset (set by the first
        message of each pass), so a depth image keeps the stamp of the colour frame it was
        recorded with.
        """
        now_ns = self.node.get_clock().now().nanoseconds
        if recorded is None:
            return make_header(now_ns, self.frame_id)
        if self.args.restamp and self.args.with_depth:
            stamp_ns = recorded.stamp.sec * 1_000_000_000 + recorded.stamp.nanosec
            if self._shift_ns is None:
                self._shift_ns = now_ns - stamp_ns
            recorded.stamp = make_header(max(stamp_ns + self._shift_ns, 0), "").stamp
        elif self.args.restamp:
            recorded.stamp = make_header(now_ns, "").stamp
        if self.args.frame_id is not None:
            recorded.frame_id = self.args.frame_id
        return recorded

    def publish(self, frame: Frame) -> None:
        publisher = self.publishers[frame.kind]
        if frame.raw is None:
            assert frame.rgb is not None
            header = self.header(frame.header)
            self.publisher.publish(rgb_to_image(frame.rgb, self.args.encoding, header))
            if frame.depth_mm is not None and frame.intrinsics is not None:
                self.publishers["depth"].publish(numpy_to_image(frame.depth_mm, "16UC1", header))
                self.publishers["camera_info"].publish(
                    intrinsics_to_camera_info(frame.intrinsics, header)
                )
        elif self.args.restamp or self.args.frame_id is not None:
            message = deserialize_message(
                frame.raw, CameraInfo if frame.kind == "camera_info" else Image
            )
            message.header = self.header(message.header)
            publisher.publish(message)
        else:
            publisher.publish(frame.raw)

    def run(self) -> None:
        """Publish until the source ends (or ``--count`` frames, or forever with ``--loop``)."""
        logger = self.node.get_logger()
        next_time = time.monotonic()
        while True:
            previous_ns: int | None = None
            published_before = self.published
            self._shift_ns = None
            for frame in self.source.frames():
                is_color = frame.kind == "color"
                if is_color and self.args.count and self.published >= self.args.count:
                    return
                if self.period_s is not None:
                    gap = self.period_s if self.published and is_color else 0.0
                elif previous_ns is not None and frame.recorded_ns is not None:
                    gap = min(max(frame.recorded_ns - previous_ns, 0) / 1e9, _MAX_BAG_GAP_S)
                else:
                    gap = 0.0
                previous_ns = frame.recorded_ns if frame.recorded_ns is not None else previous_ns
                # Scheduled, not slept: decode time does not slow the rate down.
                next_time = max(next_time + gap, time.monotonic() - 1.0)
                self.sleep_until(next_time)
                self.publish(frame)
                if not is_color:
                    continue
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
        if args.with_depth:
            recorded = isinstance(source, BagFile)
            frame_id = args.frame_id or ("as recorded" if recorded else player.frame_id)
            logger.info(
                f"with depth on {player.publishers['depth'].topic_name} "
                f"({'as recorded' if recorded else '16UC1 millimetres'}) and camera info on "
                f"{player.publishers['camera_info'].topic_name}, frame id {frame_id}"
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
