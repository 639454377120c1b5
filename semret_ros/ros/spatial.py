"""3D answers as the messages RViz shows: boxes and labels per match, a query's point cloud.

Positions come from the core (``core.depth``) in metres in the depth image's optical frame;
here they only change form. Every message carries the camera frame's stamp and the depth
image's frame id, so tf (on a full ROS install) can place them in the robot's map.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Vector3
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker

from semret_ros.core.depth import DepthFrame, mask_points
from semret_ros.core.records import Match
from semret_ros.ros.conversions import copy_header

MIN_BOX_SIDE_M = 0.01
"""A flat or single-point segment still gets a visible box in RViz."""
TEXT_HEIGHT_M = 0.06
BOX_ALPHA = 0.35

CLOUD_FIELDS = ("x", "y", "z", "rgb", "relevance")
"""~/points fields, float32 each; rgb is the packed 0x00RRGGBB integer, as RViz reads it."""
_CLOUD_DTYPE = np.dtype([(name, "<f4") for name in CLOUD_FIELDS])


def phrase_color(text: str) -> tuple[float, float, float]:
    """A stable, saturated RGB colour per phrase, so every robot draws "red mug" alike."""
    hue = (zlib.crc32(text.encode("utf-8")) % 360) / 360.0
    return colorsys.hsv_to_rgb(hue, 0.85, 1.0)


def marker_namespace(source: str, text: str) -> str:
    """``semret/<source>/<phrase>``: RViz lists each phrase of each source on its own."""
    return f"semret/{source}/{text}"


def answer_markers(
    header: Header,
    namespace: str,
    text: str,
    matches: Sequence[Match],
    lifetime_s: float,
    previous_count: int = 0,
) -> list[Marker]:
    """A box and a "phrase score" label for each match with a position, in ``namespace``.

    ``previous_count``: markers this namespace published last time; the ones this answer does
    not overwrite are deleted, so a match that disappeared does not linger until its lifetime
    runs out. Returns the markers (ADD and DELETE); ``len([m for m in ... if ADD])`` is the
    next ``previous_count``.
    """
    seconds = int(lifetime_s)
    lifetime = Duration(sec=seconds, nanosec=round((lifetime_s - seconds) * 1e9))
    red, green, blue = phrase_color(text)
    markers: list[Marker] = []
    for match in (m for m in matches if m.position is not None):
        (x, y, z), size = match.position.position, match.position.size
        box = Marker(header=copy_header(header), ns=namespace, id=len(markers))
        box.type, box.action, box.lifetime = Marker.CUBE, Marker.ADD, lifetime
        box.pose.position = Point(x=x, y=y, z=z)
        box.pose.orientation.w = 1.0
        sides = [max(float(side), MIN_BOX_SIDE_M) for side in size]
        box.scale = Vector3(x=sides[0], y=sides[1], z=sides[2])
        box.color = ColorRGBA(r=red, g=green, b=blue, a=BOX_ALPHA)
        label = Marker(header=copy_header(header), ns=namespace, id=len(markers) + 1)
        label.type, label.action, label.lifetime = Marker.TEXT_VIEW_FACING, Marker.ADD, lifetime
        # Optical frame: y points down, so "above the box" is towards -y.
        label.pose.position = Point(x=x, y=y - size[1] / 2 - TEXT_HEIGHT_M, z=z)
        label.pose.orientation.w = 1.0
        label.scale.z = TEXT_HEIGHT_M
        label.color = ColorRGBA(r=red, g=green, b=blue, a=1.0)
        label.text = f"{text} {match.score:.2f}"
        markers += [box, label]
    for stale in range(len(markers), previous_count):
        markers.append(
            Marker(header=copy_header(header), ns=namespace, id=stale, action=Marker.DELETE)
        )
    return markers


def mask_cloud(
    header: Header,
    mask: np.ndarray,
    depth: DepthFrame,
    image: np.ndarray,
    similarity: np.ndarray,
) -> PointCloud2:
    """The 3D points of a query mask: x, y, z (metres), packed rgb and relevance per point.

    ``header``'s frame_id should be the depth image's optical frame (the points' frame).
    Pixels without valid depth are left out, so the cloud is dense (no NaN points).
    """
    points, pixels = mask_points(mask, depth)
    rgb = image.reshape(-1, 3)[pixels].astype(np.uint32)
    cloud = np.empty(points.shape[0], _CLOUD_DTYPE)
    cloud["x"], cloud["y"], cloud["z"] = points[:, 0], points[:, 1], points[:, 2]
    cloud["rgb"] = ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)
    cloud["relevance"] = np.asarray(similarity, np.float32).reshape(-1)[pixels]
    return PointCloud2(
        header=copy_header(header),
        height=1,
        width=int(points.shape[0]),
        fields=[
            PointField(name=name, offset=4 * index, datatype=PointField.FLOAT32, count=1)
            for index, name in enumerate(CLOUD_FIELDS)
        ],
        is_bigendian=False,
        point_step=_CLOUD_DTYPE.itemsize,
        row_step=_CLOUD_DTYPE.itemsize * int(points.shape[0]),
        data=cloud.tobytes(),
        is_dense=True,
    )


def cloud_to_numpy(msg: PointCloud2) -> np.ndarray:
    """The structured array of a :func:`mask_cloud` message (fields :data:`CLOUD_FIELDS`)."""
    names = tuple(field.name for field in msg.fields)
    if names != CLOUD_FIELDS or msg.point_step != _CLOUD_DTYPE.itemsize:
        raise ValueError(f"not a semret mask cloud: fields {names}, point_step {msg.point_step}")
    return np.frombuffer(bytes(msg.data), _CLOUD_DTYPE, count=msg.width * msg.height)
