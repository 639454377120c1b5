"""Depth images and where a frame's regions are in 3D (no ROS here).

A registered depth image (one depth per colour pixel, the colour camera's calibration) turns
every region of a processed frame into a point in the camera's optical frame (REP 103: x right,
y down, z forward, metres). Depth sensors return holes (0, NaN) and "flying pixels" with depths
between a foreground edge and the background behind it, so a region's position is a robust
statistic of its pixels, not their mean. Everything is vectorised over all regions of a frame:
the 3D step runs on every processed frame next to segmentation and embedding and must stay a
small part of it (``benchmarks/bench_depth.py``).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from semret_ros.core.image import check_instance_ids

DEPTH_ENCODINGS: tuple[str, ...] = ("16UC1", "32FC1")
"""sensor_msgs/Image encodings of depth images (REP 118): integer units (16UC1, millimetres by
default) or float32 metres (32FC1)."""

DEFAULT_UNITS_PER_METER = 1000.0
"""16UC1 depth is in millimetres unless a driver says otherwise (REP 118)."""

MAD_K = 3.0
"""A pixel whose depth lies more than ``MAD_K`` robust standard deviations from its region's
median depth is an outlier (a flying pixel, the background seen through a gap, a wrong
reading) and takes no part in the region's position and size."""

MAD_TO_SIGMA = 1.4826
"""Scale from the median absolute deviation to the standard deviation of a normal
distribution."""

MIN_SIGMA_REL = 0.005
"""The robust standard deviation is never taken below this fraction of the median depth. A
flat region facing the camera quantised to millimetres has a MAD of 0, which would reject every
pixel that is 1 mm off; 0.5 % of the distance (1 cm at 2 m, 3 cm tolerance with ``MAD_K``) is
about a structured-light or stereo sensor's noise and far below a depth edge's jump."""

REGISTERED_ASPECT_TOLERANCE = 0.01
"""A registered depth image may be of another size than the colour image, but of the same
aspect ratio within this (relative) tolerance, which covers sizes rounded to whole pixels."""


@dataclass(frozen=True)
class CameraIntrinsics:
    """A pinhole camera (sensor_msgs/CameraInfo's K) and the image size it belongs to."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("fx", "fy"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                hint = " (a zero K: the camera is not calibrated)" if value == 0 else ""
                raise ValueError(
                    f"camera intrinsics: {name} must be a finite positive focal length in "
                    f"pixels, got {value}{hint}"
                )
        for name in ("cx", "cy"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(
                    f"camera intrinsics: {name} must be finite, got {getattr(self, name)}"
                )
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise ValueError(
                    f"camera intrinsics: {name} must be a positive integer, got {value}"
                )
            object.__setattr__(self, name, int(value))
        for name in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def from_k(cls, k: Sequence[float], width: int, height: int) -> CameraIntrinsics:
        """From a row-major 3x3 K (sensor_msgs/CameraInfo ``k``) and the image size.

        Raises:
            ValueError: K is not 9 numbers, or a focal length is zero, negative or not finite,
                or the size is not positive.
        """
        values = np.asarray(k, dtype=np.float64).ravel()
        if values.size != 9:
            raise ValueError(
                f"camera intrinsics: K must have 9 values (row-major 3x3), got {values.size}"
            )
        return cls(
            fx=float(values[0]),
            fy=float(values[4]),
            cx=float(values[2]),
            cy=float(values[5]),
            width=width,
            height=height,
        )

    @property
    def k(self) -> tuple[float, ...]:
        """Row-major 3x3 K, as sensor_msgs/CameraInfo carries it."""
        return (self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0)

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera for the image resampled to ``width`` x ``height``.

        Pixel centres map onto pixel centres: a pixel's centre u + 0.5 scales with the image,
        so cx' = (cx + 0.5) * sx - 0.5 (not cx * sx, which shifts the image by half a pixel).
        """
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width=width,
            height=height,
        )


def depth_to_meters(
    array: np.ndarray, encoding: str, units_per_meter: float = DEFAULT_UNITS_PER_METER
) -> np.ndarray:
    """An HxW float32 depth image in metres, NaN where the sensor has no reading.

    16UC1 (uint16) is divided by ``units_per_meter`` (1000: millimetres); 32FC1 (float32) is
    metres already. 0, NaN, infinite and negative depths all mean "no reading" and become NaN,
    so later steps test one thing (``np.isfinite``).

    Raises:
        ValueError: an encoding other than 16UC1/32FC1 (named in the message), an array whose
            dtype does not fit the encoding, or a non-positive ``units_per_meter``.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise ValueError(
            f"unsupported depth encoding {encoding!r}; expected one of {', '.join(DEPTH_ENCODINGS)}"
        )
    values = np.asarray(array)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(
            f"{encoding} depth must be a non-empty HxW array, got shape {values.shape}"
        )
    if encoding == "16UC1":
        if values.dtype != np.uint16:
            raise ValueError(f"16UC1 depth must be uint16, got {values.dtype}")
        if not (math.isfinite(units_per_meter) and units_per_meter > 0):
            raise ValueError(f"units_per_meter must be a positive number, got {units_per_meter}")
        meters = values.astype(np.float32) / np.float32(units_per_meter)
        meters[values == 0] = np.nan
        return meters
    if values.dtype != np.float32:
        raise ValueError(f"32FC1 depth must be float32, got {values.dtype}")
    meters = values.astype(np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        meters[~(np.isfinite(meters) & (meters > 0))] = np.nan
    return meters


def depth_to_16uc1(
    depth_m: np.ndarray, units_per_meter: float = DEFAULT_UNITS_PER_METER
) -> np.ndarray:
    """The uint16 image a 16UC1 depth camera sends: depth * units_per_meter, rounded; holes
    (NaN, infinite, zero or negative depths) become 0, the encoding's "no reading".

    Raises:
        ValueError: a depth beyond what 16 bits hold at this scale (65.535 m in millimetres).
    """
    if not (math.isfinite(units_per_meter) and units_per_meter > 0):
        raise ValueError(f"units_per_meter must be a positive number, got {units_per_meter}")
    depth = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    units = np.zeros(depth.shape, np.float64)
    units[valid] = np.round(depth[valid] * units_per_meter)
    limit = np.iinfo(np.uint16).max
    if units.size and units.max() > limit:
        raise ValueError(
            f"depth {depth[valid].max():.3f} m does not fit 16UC1 at {units_per_meter:g} units "
            f"per metre (at most {limit / units_per_meter:.3f} m)"
        )
    # A positive depth below half a unit rounds to 0, which would read as a hole: keep it at 1.
    units[valid] = np.maximum(units[valid], 1)
    return units.astype(np.uint16)


@dataclass(frozen=True)
class DepthFrame:
    """A depth image in metres (NaN: no reading) with its camera, stamp and frame."""

    depth_m: np.ndarray
    """HxW float32 metres, NaN where the sensor has no reading (see :func:`depth_to_meters`)."""
    intrinsics: CameraIntrinsics
    stamp_ns: int
    frame_id: str

    def __post_init__(self) -> None:
        depth = np.asarray(self.depth_m)
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            raise ValueError(
                f"depth_m must be an HxW float array in metres, got shape {depth.shape} "
                f"dtype {depth.dtype}"
            )
        object.__setattr__(self, "depth_m", depth)

    def check_size(self) -> None:
        """Raise ValueError unless the depth image has the size its intrinsics describe."""
        height, width = self.depth_m.shape
        if (width, height) != (self.intrinsics.width, self.intrinsics.height):
            raise ValueError(
                f"depth image is {width}x{height} but its camera info describes "
                f"{self.intrinsics.width}x{self.intrinsics.height}"
            )


def check_registered_size(depth_width: int, depth_height: int, width: int, height: int) -> None:
    """Raise ValueError unless a depth image of this size can be registered to a colour image
    of ``width`` x ``height``: the same field of view, so the same aspect ratio (within
    :data:`REGISTERED_ASPECT_TOLERANCE`)."""
    if min(depth_width, depth_height, width, height) <= 0:
        raise ValueError(
            f"image sizes must be positive, got depth {depth_width}x{depth_height} and colour "
            f"{width}x{height}"
        )
    ratio = (width / height) / (depth_width / depth_height)
    if abs(ratio - 1.0) > REGISTERED_ASPECT_TOLERANCE:
        raise ValueError(
            f"depth image {depth_width}x{depth_height} and colour image {width}x{height} have "
            "different aspect ratios: a registered depth image shares the colour image's field "
            "of view (register the depth camera to the colour camera first)"
        )


def align_depth(depth: DepthFrame, width: int, height: int) -> DepthFrame:
    """The registered depth image resampled to the colour image's ``width`` x ``height``.

    Registered depth (a RealSense's ``aligned_depth_to_color``, a stereo camera at half
    resolution) shares the colour camera's field of view but not always its size. Nearest
    neighbour by pixel centre: interpolating would invent depths between an object and what
    lies behind it, and mix holes into valid pixels. The intrinsics are scaled to match.

    Raises:
        ValueError: the depth image and its intrinsics disagree on the size, or the aspect
            ratios differ by more than 1 % (then it is not the same field of view).
    """
    depth.check_size()
    src_height, src_width = depth.depth_m.shape
    check_registered_size(src_width, src_height, width, height)
    if (src_width, src_height) == (width, height):
        return depth
    cols = np.minimum(
        ((np.arange(width) + 0.5) * (src_width / width)).astype(np.intp), src_width - 1
    )
    rows = np.minimum(
        ((np.arange(height) + 0.5) * (src_height / height)).astype(np.intp), src_height - 1
    )
    return DepthFrame(
        depth_m=np.ascontiguousarray(depth.depth_m[rows[:, None], cols[None, :]]),
        intrinsics=depth.intrinsics.scaled(width, height),
        stamp_ns=depth.stamp_ns,
        frame_id=depth.frame_id,
    )


@dataclass(frozen=True)
class SegmentPosition:
    """Where a region is, in metres in the depth image's optical frame (x right, y down,
    z forward)."""

    position: tuple[float, float, float]
    """Per-axis median of the region's inlier points."""
    size: tuple[float, float, float]
    """Extent (max - min) of the inlier points along x, y and z: the axis-aligned box that
    holds every inlier (points are pixel centres, so a flat square of n x n pixels measures
    n - 1 pixels' worth across)."""
    num_points: int
    """Inlier points (valid depth, not rejected by the MAD rule)."""


def _valid_pixels(depth: DepthFrame, select: np.ndarray) -> np.ndarray:
    """Flat indices of the pixels where ``select`` holds and the depth is a reading."""
    with np.errstate(invalid="ignore"):
        valid = select & np.isfinite(depth.depth_m) & (depth.depth_m > 0)
    return np.flatnonzero(valid)


def _back_project(
    index: np.ndarray, z: np.ndarray, intrinsics: CameraIntrinsics
) -> tuple[np.ndarray, np.ndarray]:
    """x and y (float32 metres) of the pixels at flat ``index`` with depths ``z``."""
    v, u = np.divmod(index, intrinsics.width)
    x = (u.astype(np.float32) - np.float32(intrinsics.cx)) * (z / np.float32(intrinsics.fx))
    y = (v.astype(np.float32) - np.float32(intrinsics.cy)) * (z / np.float32(intrinsics.fy))
    return x, y


def _check_frame(image: np.ndarray, depth: DepthFrame, what: str) -> None:
    depth.check_size()
    if image.shape != depth.depth_m.shape:
        raise ValueError(
            f"{what} is {image.shape[1]}x{image.shape[0]} but the depth image is "
            f"{depth.depth_m.shape[1]}x{depth.depth_m.shape[0]} (resample it with align_depth)"
        )


_ROW_STEP_BITS = 2
"""A row of n values is padded to a multiple of 2 ** (floor(log2 n) - this): four row lengths
per power of two, so padding adds at most a quarter to the values sorted, for a few more (cheap)
sort calls than one length per power of two."""


class _GroupRows:
    """Sorts values group by group, all groups at once.

    Each group (region) gets a row of a padded table; rows of equal length form a block, and
    every block is sorted along its rows. Sorting many short rows costs a fraction of one sort
    of all values with the group in the key, and gives each group's order statistics (medians,
    extremes) by index. Padding is +inf, which sorts last, so a value left out as +inf is
    simply not among a row's first ``count`` values.
    """

    def __init__(self, group: np.ndarray, counts: np.ndarray) -> None:
        lengths = np.zeros(counts.shape, np.int64)
        present = counts > 0
        step = 2 ** np.maximum(
            np.floor(np.log2(counts[present])).astype(np.int64) - _ROW_STEP_BITS, 0
        )
        lengths[present] = -(-counts[present] // step) * step
        # Groups ordered by row length; a block is a run of equal lengths.
        order = np.argsort(lengths, kind="stable")
        sorted_lengths = lengths[order]
        row_start = np.zeros(counts.shape, np.int64)
        row_start[order] = np.cumsum(sorted_lengths) - sorted_lengths
        self.size = int(lengths.sum())
        self.row_start = row_start
        self.counts = counts
        values, first, sizes = np.unique(sorted_lengths, return_index=True, return_counts=True)
        self.blocks = [
            (int(row_start[order[f]]), int(n), int(length))
            for length, f, n in zip(values, first, sizes, strict=True)
            if length > 0
        ]
        # Rank of each value within its group, in scan order: a stable sort by group (a radix
        # sort when ids fit 16 bits).
        key = group.astype(np.uint16) if counts.size <= 1 << 16 else group
        by_group = np.argsort(key, kind="stable")
        group_start = np.cumsum(counts) - counts
        rank = np.empty(group.size, np.int64)
        rank[by_group] = np.arange(group.size) - np.repeat(group_start[present], counts[present])
        self.slot = row_start[group] + rank

    def sort(self, values: np.ndarray) -> np.ndarray:
        """Values (float32) in the table, each row sorted; +inf marks a left-out value."""
        table = np.full(self.size, np.inf, np.float32)
        table[self.slot] = values
        for start, rows, length in self.blocks:
            table[start : start + rows * length].reshape(rows, length).sort(axis=1)
        return table

    def at(self, table: np.ndarray, groups: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """The value of 0-based ``rank`` in each of ``groups``' sorted rows."""
        return table[self.row_start[groups] + rank]

    def median(
        self, table: np.ndarray, groups: np.ndarray, count: np.ndarray, first: np.ndarray | int = 0
    ) -> np.ndarray:
        """Median of the ``count`` (>= 1) sorted values from rank ``first`` on in each of
        ``groups``' rows."""
        low = self.at(table, groups, first + (count - 1) // 2)
        return 0.5 * (low + self.at(table, groups, first + count // 2))

    def median_deviation(
        self, table: np.ndarray, groups: np.ndarray, median: np.ndarray
    ) -> np.ndarray:
        """Median of |value - median| of each of ``groups``' full rows, from the sorted rows
        without sorting the deviations.

        Below the median a row's deviations grow leftwards, above it rightwards: two sorted
        sequences, whose k-th smallest element a binary search over how many come from the
        left one finds (all rows at once).
        """
        count = self.counts[groups]
        start = self.row_start[groups]
        half = count // 2
        median = median.astype(np.float32)

        def left(i: np.ndarray) -> np.ndarray:  # i-th smallest deviation below; +inf past it
            inside = i < half
            return np.where(
                inside, median - table[start + np.where(inside, half - 1 - i, 0)], np.inf
            )

        def right(j: np.ndarray) -> np.ndarray:  # j-th smallest deviation above; -inf before it
            inside = j >= 0
            return np.where(inside, table[start + half + np.where(inside, j, 0)] - median, -np.inf)

        def kth(k: np.ndarray) -> np.ndarray:
            taken = k + 1
            low = np.maximum(0, taken - (count - half))
            high = np.minimum(taken, half)
            # Smallest i (taken from the left) whose next left deviation is >= the last one
            # taken from the right.
            for _ in range(int(count.max()).bit_length() + 1):
                active = low < high
                i = (low + high) // 2
                more = left(i) < right(taken - i - 1)
                low = np.where(active & more, i + 1, low)
                high = np.where(active & ~more, i, high)
            last_left = np.where(
                low > 0, median - table[start + np.maximum(half - low, 0)], -np.inf
            )
            return np.maximum(last_left, right(taken - low - 1))

        return 0.5 * (kth((count - 1) // 2) + kth(count // 2))


def segment_positions(
    instance_ids: np.ndarray, num_regions: int, depth: DepthFrame, min_points: int = 1
) -> list[SegmentPosition | None]:
    """The 3D position and size of every region 1..num_regions, from its pixels' depths.

    Per region, over its pixels with a depth reading: pixels whose depth differs from the
    region's median depth by more than ``MAD_K`` robust standard deviations (1.4826 x the
    median absolute deviation, at least ``MIN_SIGMA_REL`` x the median depth) are dropped;
    the position is the per-axis median of the remaining back-projected points and the size
    the full extent of their box (see :class:`SegmentPosition`).

    Returns:
        One entry per region id 1..N (list index id - 1); None where fewer than
        ``min_points`` points remain (no depth there, or too little to trust).

    Raises:
        ValueError: instance ids outside 0..num_regions, images of different sizes (see
            :func:`align_depth`), or ``min_points`` < 1.
    """
    if min_points < 1:
        raise ValueError(f"min_points must be >= 1, got {min_points}")
    ids = check_instance_ids(instance_ids, num_regions)
    _check_frame(ids, depth, "the instance-id image")
    results: list[SegmentPosition | None] = [None] * num_regions
    index = _valid_pixels(depth, ids > 0)
    if index.size == 0:
        return results
    group = ids.ravel()[index].astype(np.intp) - 1
    z = depth.depth_m.ravel()[index].astype(np.float32, copy=False)
    counts = np.bincount(group, minlength=num_regions)
    present = np.flatnonzero(counts)
    rows = _GroupRows(group, counts)

    # Each region's median depth and robust spread, then its inliers: in a region's sorted
    # depths they are one run, after the outliers nearer than the median.
    z_table = rows.sort(z)
    z_median = np.zeros(num_regions, np.float32)
    z_median[present] = rows.median(z_table, present, counts[present])
    mad = np.zeros(num_regions, np.float32)
    mad[present] = rows.median_deviation(z_table, present, z_median[present])
    sigma = np.maximum(np.float32(MAD_TO_SIGMA) * mad, np.float32(MIN_SIGMA_REL) * z_median)
    region_z_median = z_median[group]
    inlier = np.abs(z - region_z_median) <= np.float32(MAD_K) * sigma[group]
    kept = np.bincount(group[inlier], minlength=num_regions)
    nearer = np.bincount(group[~inlier & (z < region_z_median)], minlength=num_regions)
    regions = np.flatnonzero(kept >= min_points)
    if regions.size == 0:
        return results

    count, first = kept[regions], nearer[regions]
    z_position = rows.median(z_table, regions, count, first)
    z_size = rows.at(z_table, regions, first + count - 1) - rows.at(z_table, regions, first)
    # x and y: outliers become +inf, which sorts last, so each row starts with the inliers.
    x_table, y_table = (
        rows.sort(np.where(inlier, values, np.float32(np.inf)))
        for values in _back_project(index, z, depth.intrinsics)
    )
    medians = [rows.median(table, regions, count) for table in (x_table, y_table)]
    extents = [
        rows.at(table, regions, count - 1) - rows.at(table, regions, 0)
        for table in (x_table, y_table)
    ]
    medians.append(z_position)
    extents.append(z_size)
    position = np.stack(medians, axis=1).tolist()
    size = np.stack(extents, axis=1).tolist()
    for i, region in enumerate(regions.tolist()):
        results[region] = SegmentPosition(
            position=tuple(position[i]), size=tuple(size[i]), num_points=int(count[i])
        )
    return results


def mask_points(mask: np.ndarray, depth: DepthFrame) -> tuple[np.ndarray, np.ndarray]:
    """The 3D points of a mask's pixels that have a depth reading (e.g. a query's answer, for
    a sensor_msgs/PointCloud2), in the depth image's optical frame.

    Returns:
        (M, 3) float32 points (x, y, z metres) and the (M,) int64 flat pixel indices
        (row * width + column) they come from, in row-major order, to colour them.

    Raises:
        ValueError: a mask that is not HxW boolean, or sizes that disagree.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError(
            f"mask must be an HxW boolean array, got shape {mask.shape} dtype {mask.dtype}"
        )
    _check_frame(mask, depth, "the mask")
    index = _valid_pixels(depth, mask).astype(np.int64)
    z = depth.depth_m.ravel()[index].astype(np.float32, copy=False)
    x, y = _back_project(index, z, depth.intrinsics)
    return np.stack([x, y, z], axis=1), index


T = TypeVar("T")


@dataclass(frozen=True)
class PairerStats:
    """What a :class:`StampPairer` has done, for diagnostics."""

    pairs: int
    """``match`` calls that found an item within the allowed skew."""
    misses: int
    """``match`` calls that found none (nothing buffered, or every stamp too far)."""
    dropped: int
    """Items pushed out by newer ones when the buffer was full."""
    buffered: int
    """Items held now."""
    last_skew_s: float | None
    """Stamp difference of the latest pair, seconds (None before the first)."""


class StampPairer(Generic[T]):
    """The latest few items of a stream (depth images), found again by their stamp.

    A colour frame and the depth image taken with it come on different topics, arrive in
    either order and carry stamps that may differ by a few milliseconds (message_filters'
    ApproximateTime does this in C++ ROS; it is not on PyPI). The node keeps each depth message
    here and, when it processes a colour frame, takes the one whose stamp is nearest. The
    buffer is bounded: a stream nobody matches (colour stopped) costs ``capacity`` items, never
    more. Thread-safe: subscription callbacks add while the worker matches.
    """

    def __init__(self, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[tuple[int, T]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._pairs = 0
        self._misses = 0
        self._dropped = 0
        self._last_skew_s: float | None = None

    def add(self, stamp_ns: int, item: T) -> None:
        """Keep ``item``; the oldest one goes when the buffer is full."""
        with self._lock:
            if len(self._items) == self.capacity:
                self._dropped += 1
            self._items.append((int(stamp_ns), item))

    def match(self, stamp_ns: int, max_skew_s: float) -> T | None:
        """The item whose stamp is nearest to ``stamp_ns``, if at most ``max_skew_s`` away
        (on a tie, the earlier one); None otherwise. The item stays buffered, so a faster
        colour stream may pair two frames with one depth image.

        Raises:
            ValueError: ``max_skew_s`` negative or not finite.
        """
        if not (math.isfinite(max_skew_s) and max_skew_s >= 0):
            raise ValueError(f"max_skew_s must be a finite number >= 0, got {max_skew_s}")
        with self._lock:
            best: tuple[int, T] | None = None
            best_skew = 0
            for stamp, item in self._items:
                skew = abs(stamp - stamp_ns)
                if best is None or skew < best_skew or (skew == best_skew and stamp < best[0]):
                    best, best_skew = (stamp, item), skew
            if best is None or best_skew > max_skew_s * 1e9:
                self._misses += 1
                return None
            self._pairs += 1
            self._last_skew_s = best_skew / 1e9
            return best[1]

    def clear(self) -> None:
        """Forget every item (e.g. when the node is deactivated); the counters stay."""
        with self._lock:
            self._items.clear()

    def stats(self) -> PairerStats:
        with self._lock:
            return PairerStats(
                pairs=self._pairs,
                misses=self._misses,
                dropped=self._dropped,
                buffered=len(self._items),
                last_skew_s=self._last_skew_s,
            )
