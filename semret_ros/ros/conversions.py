"""Conversions between ROS 2 messages and the core's numpy arrays and records.

Every message that enters or leaves the node goes through here, so the rules live in one place:
decoding respects ``step`` row padding and ``is_bigendian`` and is a zero-copy view of the
message buffer where the layout allows it (a copied 640x480 frame costs more than the rest of
the conversion); encoding writes native-order, unpadded rows. Bad input raises ValueError with
the reason, so the node can log it and skip the frame. No torch here.
"""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Vector3
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from semret_ros.core.depth import CameraIntrinsics, SegmentPosition
from semret_ros.core.records import Match
from semret_ros.core.records import SemanticFrame as FrameRecord
from semret_ros.msg import Segment
from semret_ros.msg import SemanticFrame as SemanticFrameMsg

_NS_PER_S = 1_000_000_000

# encoding -> (numpy dtype, channels)
_LAYOUTS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32SC1": (np.dtype(np.int32), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

COLOR_ENCODINGS: dict[str, str] = {
    "rgb8": "rgb",
    "bgr8": "bgr",
    "rgba8": "rgba",
    "bgra8": "bgra",
    "mono8": "mono",
}
"""Camera encodings the node accepts, and the colour order core.image.to_rgb needs for each."""


def header_to_stamp(header: Header) -> tuple[int, str]:
    """(stamp in nanoseconds, frame_id): the header as the core's records keep it.

    Raises:
        ValueError: a negative time or nanoseconds >= 1e9, which no output header could carry.
    """
    sec, nanosec = header.stamp.sec, header.stamp.nanosec
    if sec < 0 or not 0 <= nanosec < _NS_PER_S:
        raise ValueError(f"invalid header stamp sec={sec} nanosec={nanosec}")
    return sec * _NS_PER_S + nanosec, header.frame_id


def make_header(stamp_ns: int, frame_id: str) -> Header:
    """A header from a record's stamp and frame, so outputs carry the camera frame's header."""
    if stamp_ns < 0:
        raise ValueError(f"stamp_ns must be >= 0, got {stamp_ns}")
    sec, nanosec = divmod(int(stamp_ns), _NS_PER_S)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def copy_header(header: Header) -> Header:
    """An independent copy, so an output's header never aliases the input message's."""
    return make_header(*header_to_stamp(header))


def image_to_numpy(msg: Image) -> np.ndarray:
    """Decode an Image to HxW (one channel) or HxWxC, a view of ``msg.data`` when possible.

    Supports the camera encodings and the node's output encodings (16UC1, 32SC1, 32FC1).
    Multi-byte big-endian data is converted to native order (a copy); everything else is a
    zero-copy view that lives as long as the message does.
    """
    layout = _LAYOUTS.get(msg.encoding)
    if layout is None:
        raise ValueError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(_LAYOUTS)}"
        )
    dtype, channels = layout
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ValueError(f"image is empty ({width}x{height}, encoding {msg.encoding})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(
            f"step {step} is smaller than width * bytes per pixel = {row_bytes} "
            f"({width}x{height} {msg.encoding})"
        )
    data = msg.data
    if len(data) < step * height:
        raise ValueError(
            f"data has {len(data)} bytes, step * height needs {step * height} "
            f"({width}x{height} {msg.encoding}, step {step})"
        )
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    array_view = np.ndarray(
        shape=(height, width, channels),
        dtype=dtype,
        buffer=data,
        strides=(step, channels * dtype.itemsize, dtype.itemsize),
    )
    if not dtype.isnative:
        array_view = array_view.astype(dtype.newbyteorder("="))
    return array_view[:, :, 0] if channels == 1 else array_view


def camera_image_to_array(msg: Image) -> tuple[np.ndarray, str]:
    """(pixels, colour order) of a camera Image, ready for core.image.to_rgb."""
    color_order = COLOR_ENCODINGS.get(msg.encoding)
    if color_order is None:
        raise ValueError(
            f"unsupported encoding {msg.encoding!r} on the colour image topic; "
            f"expected one of {', '.join(COLOR_ENCODINGS)}"
        )
    return image_to_numpy(msg), color_order


def compressed_image_to_array(msg: CompressedImage) -> tuple[np.ndarray, str]:
    """(HxWx3 BGR pixels, "bgr") of a CompressedImage (JPEG, PNG, ... anything OpenCV reads)."""
    buffer = np.frombuffer(msg.data, np.uint8)
    if buffer.size == 0:
        raise ValueError(f"compressed image (format {msg.format!r}) has no data")
    try:
        pixels = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as error:
        pixels = None
        reason = str(error).strip().splitlines()[-1]
    else:
        reason = "not a format OpenCV can decode"
    if pixels is None or pixels.size == 0:
        raise ValueError(
            f"undecodable compressed image (format {msg.format!r}, {buffer.size} bytes): {reason}"
        )
    return pixels, "bgr"


def _checked_array(array_in: np.ndarray, encoding: str) -> np.ndarray:
    """The array in the dtype and shape ``encoding`` needs, C-contiguous and native-order."""
    dtype, channels = _LAYOUTS[encoding]
    values = np.asarray(array_in)
    shape_ok = (
        values.ndim == 2 if channels == 1 else values.ndim == 3 and values.shape[2] == channels
    )
    if not shape_ok or values.size == 0:
        wanted = "HxW" if channels == 1 else f"HxWx{channels}"
        raise ValueError(f"{encoding} needs a non-empty {wanted} array, got shape {values.shape}")
    if np.issubdtype(dtype, np.floating):
        with np.errstate(over="ignore"):  # out-of-range values become inf, refused below
            converted = np.ascontiguousarray(values, dtype=dtype)
        if not np.all(np.isfinite(converted)):
            raise ValueError(f"{encoding} image contains NaN or infinite values")
        return converted
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{encoding} needs {dtype.name} values, got {values.dtype}")
    info = np.iinfo(dtype)
    if values.dtype != dtype and (values.min() < info.min or values.max() > info.max):
        raise ValueError(
            f"{encoding} values must lie in [{info.min}, {info.max}], "
            f"got [{values.min()}, {values.max()}]"
        )
    return np.ascontiguousarray(values, dtype=dtype)


def numpy_to_image(array_in: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image (rgb8, mono8, 32FC1, 16UC1 or 32SC1) with a copy of ``header``.

    Integer arrays of another integer dtype are accepted when every value fits; floats are
    refused for integer encodings (no silent rounding), NaN/inf for 32FC1.
    """
    if encoding not in ("rgb8", "mono8", "32FC1", "16UC1", "32SC1"):
        raise ValueError(f"cannot encode {encoding!r}; supported: rgb8, mono8, 32FC1, 16UC1, 32SC1")
    values = _checked_array(array_in, encoding)
    height, width = values.shape[:2]
    return Image(
        header=copy_header(header),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=sys.byteorder == "big",
        step=values.strides[0],
        data=values.tobytes(),
    )


def _mask_pixels(mask: np.ndarray) -> np.ndarray:
    """mono8 pixels of a boolean mask: 255 inside, 0 outside (what RViz shows as white)."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be a boolean array, got {mask.dtype}")
    return mask.astype(np.uint8) * np.uint8(255)


def mask_to_image(mask: np.ndarray, header: Header) -> Image:
    """A mono8 Image of a boolean mask: 255 inside, 0 outside (what RViz shows as white)."""
    return numpy_to_image(_mask_pixels(mask), "mono8", header)


PNG_FORMAT = "png"
"""CompressedImage.format of the node's PNG images (any PNG reader decodes them)."""


def numpy_to_png(array_in: np.ndarray, header: Header) -> CompressedImage:
    """A CompressedImage (format "png") of an HxW mono8 or HxWx3 RGB uint8 array, lossless."""
    values = np.asarray(array_in)
    encoding = "mono8" if values.ndim == 2 else "rgb8"
    values = _checked_array(values, encoding)
    ok, buffer = cv2.imencode(".png", values if values.ndim == 2 else values[..., ::-1])
    if not ok:
        raise ValueError(f"PNG encoding failed for a {values.shape} array")
    return CompressedImage(header=copy_header(header), format=PNG_FORMAT, data=buffer.tobytes())


def png_to_numpy(msg: CompressedImage) -> np.ndarray:
    """The pixels of a PNG CompressedImage: HxW for mono8, HxWx3 RGB for colour."""
    if msg.format != PNG_FORMAT:
        raise ValueError(f"expected a CompressedImage of format {PNG_FORMAT!r}, got {msg.format!r}")
    buffer = np.frombuffer(msg.data, np.uint8)
    pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if pixels is None:
        raise ValueError(f"undecodable PNG ({buffer.size} bytes)")
    return pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels[..., 2::-1])


def mask_to_png(mask: np.ndarray, header: Header) -> CompressedImage:
    """A PNG (mono8, 255 inside, 0 outside) of a boolean mask."""
    return numpy_to_png(_mask_pixels(mask), header)


def similarity_to_png(similarity: np.ndarray, header: Header) -> CompressedImage:
    """A mono8 PNG of a relevance image in [0, 1]: each pixel is round(255 * relevance).

    Decode with :func:`similarity_from_png`; the quantisation error is at most 1/510.
    """
    values = np.asarray(similarity, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError("similarity contains NaN or infinite values")
    return numpy_to_png(np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8), header)


def similarity_from_png(msg: CompressedImage) -> np.ndarray:
    """HxW float32 relevance in [0, 1] of a :func:`similarity_to_png` image (value / 255)."""
    pixels = png_to_numpy(msg)
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"a similarity PNG is mono8, got shape {pixels.shape} {pixels.dtype}")
    return pixels.astype(np.float32) / np.float32(255.0)


def _float32_array(values: np.ndarray, name: str) -> array.array:
    """A float32[] field value; array('f', bytes) is a memcpy, unlike per-element conversion."""
    values = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array.array("f", np.ascontiguousarray(values).tobytes())


def _roi(bbox: Sequence[int]) -> RegionOfInterest:
    x, y, width, height = (int(v) for v in bbox)
    if min(x, y, width, height) < 0:
        raise ValueError(f"bbox must be non-negative (x, y, width, height), got {tuple(bbox)}")
    return RegionOfInterest(x_offset=x, y_offset=y, width=width, height=height)


def set_position_fields(segment: Segment, position: SegmentPosition | None, frame_id: str) -> None:
    """Fill a Segment's 3D fields; without a position they stay zero and has_position false."""
    if position is None:
        return
    values = (*position.position, *position.size)
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"segment {segment.id} has a non-finite 3D position or size {values}")
    segment.has_position = True
    segment.position = Point(x=values[0], y=values[1], z=values[2])
    segment.size = Vector3(x=values[3], y=values[4], z=values[5])
    segment.num_points = int(position.num_points)
    segment.position_frame_id = frame_id


def match_to_segment(match: Match, position_frame_id: str = "") -> Segment:
    """A Segment message of a ranked match (score = relevance).

    ``position_frame_id``: the depth image's frame, which the match's 3D position is in.
    """
    if not np.isfinite(match.score):
        raise ValueError(f"match {match.id} has a non-finite score {match.score}")
    segment = Segment(
        id=int(match.id),
        score=float(match.score),
        label=match.label,
        bbox=_roi(match.bbox),
        area=int(match.area),
    )
    set_position_fields(segment, match.position, position_frame_id)
    return segment


def matches_to_segments(matches: Sequence[Match], position_frame_id: str = "") -> list[Segment]:
    """Segment messages of a query's matches, order kept (best first)."""
    return [match_to_segment(match, position_frame_id) for match in matches]


def position_frame_id(frame: FrameRecord) -> str:
    """The frame a processed frame's 3D positions are in: its depth image's; "" without."""
    return frame.depth.frame_id if frame.depth is not None else ""


def semantic_frame_to_msg(
    frame: FrameRecord, labels: Sequence[str] | None = None
) -> SemanticFrameMsg:
    """The SemanticFrame message of a processed frame; segment i has id i + 1.

    ``labels`` (one per region, optional) fills Segment.label, e.g. from standing queries.
    """
    num_regions = frame.num_regions
    if labels is not None and len(labels) != num_regions:
        raise ValueError(f"labels has {len(labels)} entries for {num_regions} regions")
    header = make_header(frame.stamp_ns, frame.frame_id)
    segments = [
        Segment(
            id=index + 1,
            score=float(frame.scores[index]),
            label="" if labels is None else labels[index],
            bbox=_roi(frame.bboxes[index]),
            area=int(frame.areas[index]),
        )
        for index in range(num_regions)
    ]
    if frame.positions:
        for segment, position in zip(segments, frame.positions, strict=True):
            set_position_fields(segment, position, position_frame_id(frame))
    embedding_dim = int(frame.global_embedding.shape[0])
    if frame.embeddings.shape != (num_regions, embedding_dim):
        raise ValueError(
            f"embeddings shape {frame.embeddings.shape} does not match "
            f"{num_regions} regions x {embedding_dim} (global_embedding)"
        )
    if (
        frame.instance_ids.size
        and not 0 <= frame.instance_ids.min() <= frame.instance_ids.max() <= num_regions
    ):
        raise ValueError(
            f"instance_ids hold values in [{frame.instance_ids.min()}, {frame.instance_ids.max()}]"
            f", expected 0..{num_regions}"
        )
    return SemanticFrameMsg(
        header=header,
        instance_ids=numpy_to_image(frame.instance_ids, "32SC1", header),
        segments=segments,
        embedding_dim=embedding_dim,
        embeddings=_float32_array(frame.embeddings.reshape(-1), "embeddings"),
        global_embedding=_float32_array(frame.global_embedding, "global_embedding"),
        model=frame.model,
    )


PLAYER_ENCODINGS = ("rgb8", "bgr8", "mono8")
"""Encodings a camera stand-in (semret-play, the demo) can publish an RGB frame in."""


def rgb_to_image(rgb: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image in ``encoding`` (rgb8, bgr8 or mono8) of an RGB frame."""
    if encoding == "rgb8":
        return numpy_to_image(rgb, "rgb8", header)
    if encoding == "mono8":
        return numpy_to_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), "mono8", header)
    if encoding == "bgr8":
        # Same layout as rgb8 with the channels swapped; conversions encodes the rgb8 layout.
        message = numpy_to_image(np.ascontiguousarray(rgb[..., ::-1]), "rgb8", header)
        message.encoding = "bgr8"
        return message
    raise ValueError(f"encoding must be one of {', '.join(PLAYER_ENCODINGS)}, got {encoding!r}")


def intrinsics_to_camera_info(intrinsics: CameraIntrinsics, header: Header) -> CameraInfo:
    """The CameraInfo of a rectified pinhole camera (what a depth camera's registered stream
    announces): K from the intrinsics, plumb_bob with zero distortion, R identity, P = [K | 0],
    the image size, and a copy of ``header``."""
    fx, fy, cx, cy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
    return CameraInfo(
        header=copy_header(header),
        height=intrinsics.height,
        width=intrinsics.width,
        distortion_model="plumb_bob",
        d=[0.0] * 5,
        k=list(intrinsics.k),
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    )
