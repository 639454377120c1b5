"""Image conversion and validation at the core's boundary.

Every other core function assumes a C-contiguous HxWx3 uint8 RGB image; this module is the one
place that turns camera buffers into that form and rejects anything else with a message that
names the offending shape and dtype, so a bad frame fails here instead of deep inside a model.
It also scales the images that leave the core (similarity, mask, overlay) to the size a client
asked for, so an answer sent over Wi-Fi carries no more pixels than the client wants.
"""

from __future__ import annotations

import cv2
import numpy as np

COLOR_ORDERS: dict[str, int] = {"rgb": 3, "bgr": 3, "rgba": 4, "bgra": 4, "mono": 1}
"""Supported channel orders and their channel counts."""


def _describe(image: np.ndarray) -> str:
    return f"shape {tuple(image.shape)} dtype {image.dtype}"


def to_rgb(image: np.ndarray, color_order: str = "rgb") -> np.ndarray:
    """Convert a camera image to a fresh C-contiguous HxWx3 uint8 RGB array.

    The caller states the channel order because a bare array cannot tell BGR from RGB (ROS
    encodings and OpenCV both disagree with CLIP's RGB). The result always owns its memory so
    that frames kept in the store outlive the message buffer they came from.

    Args:
        image: HxWxC uint8 array; for ``mono`` HxW or HxWx1.
        color_order: one of ``rgb``, ``bgr``, ``rgba``, ``bgra``, ``mono``.

    Raises:
        ValueError: unknown order, non-uint8 data, empty image, or a shape that does not fit
            the order; the message names the shape and dtype.
    """
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"color_order must be one of {sorted(COLOR_ORDERS)}, got {color_order!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {_describe(image)}")
    if image.size == 0:
        raise ValueError(f"image is empty: {_describe(image)}")
    channels = COLOR_ORDERS[color_order]
    if color_order == "mono":
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim != 2:
            raise ValueError(f"mono image must be HxW or HxWx1, got {_describe(image)}")
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(f"{color_order} image must be HxWx{channels}, got {_describe(image)}")
    if color_order == "rgb":
        return np.array(image, order="C", copy=True)
    if color_order == "rgba":
        return np.array(image[:, :, :3], order="C", copy=True)
    # bgr and bgra: channels 2, 1, 0 are R, G, B.
    return np.array(image[:, :, 2::-1], order="C", copy=True)


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an RGB image already converted by :func:`to_rgb` and return it as an array.

    Segmenters and the pipeline call this on entry so that a caller skipping ``to_rgb`` gets a
    clear error instead of a model failing on an odd shape.

    Raises:
        ValueError: the image is not a non-empty HxWx3 uint8 array; names shape and dtype.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ValueError(f"image must be a non-empty HxWx3 uint8 RGB array, got {_describe(image)}")
    return image


def check_instance_ids(instance_ids: np.ndarray, num_regions: int) -> np.ndarray:
    """Validate an instance-id image (0 = no region, 1..N = regions) and return it as an array.

    Refinement, embedding and scoring all index per-region tables with these ids; one check
    keeps an out-of-range id from silently reading another region's row.

    Raises:
        ValueError: not an HxW integer array, or values outside 0..num_regions.
    """
    ids = np.asarray(instance_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"instance_ids: expected an HxW integer image, got shape {ids.shape} dtype {ids.dtype}"
        )
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > num_regions):
        raise ValueError(
            f"instance_ids: values {int(ids.min())}..{int(ids.max())} lie outside "
            f"0..{num_regions} ({num_regions} regions)"
        )
    return ids


RESIZE_METHODS: dict[str, int] = {"nearest": cv2.INTER_NEAREST_EXACT, "area": cv2.INTER_AREA}
"""How :func:`resize` samples: ``nearest`` keeps values exact (ids, relevance, binary masks),
``area`` averages (camera pictures)."""


def check_image_scale(scale: float) -> float:
    """A requested output scale as a factor in (0, 1]; 0 means 1 (full size).

    Upscaling adds bytes and no information, so factors above 1 are refused like NaN and
    negative ones; the message names the field, ``image_scale``.
    """
    value = float(scale)
    if value == 0.0:
        return 1.0
    if not 0.0 < value <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"image_scale must be in (0, 1] (0: full size), got {value!r}")
    return value


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of an HxW image scaled by ``scale``, rounded, at least 1x1."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: np.ndarray, scale: float, method: str = "nearest") -> np.ndarray:
    """``image`` (HxW or HxWxC; bool, uint8 or float32) scaled by ``scale`` (see RESIZE_METHODS).

    Scale 1 returns the array itself (no copy); a bool mask stays bool. Each output pixel of
    ``nearest`` is the input pixel under its centre (cv2.INTER_NEAREST_EXACT), so a mask
    resized this way equals the resized similarity thresholded.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"method must be one of {sorted(RESIZE_METHODS)}, got {method!r}")
    scale = check_image_scale(scale)
    values = np.asarray(image)
    if scale == 1.0:
        return values
    height, width = scaled_size(values.shape[0], values.shape[1], scale)
    source = values.view(np.uint8) if values.dtype == np.bool_ else values
    resized = cv2.resize(source, (width, height), interpolation=RESIZE_METHODS[method])
    return resized.astype(np.bool_) if values.dtype == np.bool_ else resized


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from its border, where a user would click "on" an
    object: safely inside, even inside a ring's band, unlike the centroid."""
    padded = np.pad(np.asarray(mask, bool), 1).astype(np.uint8)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)
