"""Visual prompts: how one region is cut out of a frame before CLIP sees it.

CLIP classifies whole pictures, so a region has to be turned into a picture of that region.
The same function is used at training time and at query time so that a trained model sees
the crops it will be asked about.

Every crop is square: open_clip's preprocess resizes the shorter side and centre-crops, which
would cut the ends off an elongated object; a square crop survives it whole. The part of the
square that lies outside the image (or, for "masked_crop", outside the mask) is filled with the
CLIP mean colour, which the preprocess normalizes to zero, so the fill carries no signal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from semret_ros.core.records import BBox, bbox_of_mask

VISUAL_PROMPTS = ("masked_crop", "blur", "bbox_crop")
"""Modes accepted by :func:`crop_region`."""

CLIP_MEAN_RGB = (123, 117, 104)
"""OpenAI CLIP's normalization mean (0.481, 0.458, 0.408) in uint8; normalizes to ~0."""

_BLUR_WORK_SIGMA = 4.0
"""Largest sigma (pixels) applied at working resolution; stronger blurs downsample first."""


def crop_region(
    image: np.ndarray,
    mask: np.ndarray,
    mode: str = "masked_crop",
    padding: float = 0.1,
    fill: tuple[int, int, int] = CLIP_MEAN_RGB,
    blur_sigma: float = 0.1,
) -> np.ndarray:
    """Square uint8 RGB crop around the region ``mask`` of ``image``.

    Args:
        image: HxWx3 uint8 RGB.
        mask: HxW, non-zero inside the region.
        mode: "masked_crop" (outside the mask -> ``fill``; the region alone, no context),
            "blur" (outside the mask heavily blurred, as in FGVP: keeps where the context is
            without letting it dominate; the best prompt in their study), or "bbox_crop"
            (the padded box as it is; most context, least focus).
        padding: margin added on every side, relative to the longer bbox side; a little
            context helps CLIP recognise the object's outline.
        fill: colour of the square's out-of-image part and, in "masked_crop", of the
            outside of the mask.
        blur_sigma: Gaussian sigma of "blur", relative to the crop side; relative so the
            context is equally unrecognisable for small and large regions.

    Raises:
        ValueError: bad shapes, an unknown mode, negative padding or an empty mask.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got shape {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    if mode not in VISUAL_PROMPTS:
        raise ValueError(f"mode must be one of {VISUAL_PROMPTS}, got {mode!r}")
    if not padding >= 0.0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    bbox = bbox_of_mask(mask)
    if bbox[2] == 0:
        raise ValueError("mask is empty: no region to crop")
    return square_crop(
        image,
        bbox,
        lambda rows, cols: mask[rows, cols].astype(bool, copy=False),
        mode,
        padding,
        fill,
        blur_sigma,
    )


@dataclass(frozen=True)
class SquareWindow:
    """A square around a box, and the part of it that lies inside the image."""

    side: int
    """Side of the square in pixels."""
    rows: slice
    cols: slice
    """The image's rows and columns the square covers (clipped to the image)."""
    inner: tuple[slice, slice]
    """Where those pixels lie in a (side, side) canvas of the square."""


def square_window(bbox: BBox, padding: float, height: int, width: int) -> SquareWindow:
    """The square centred on ``bbox`` (x, y, w, h), its longer side plus ``padding`` of it on
    each side, in an image of ``height`` x ``width``; it may extend past the image's edges."""
    x, y, w, h = bbox
    side = max(w, h) + 2 * round(padding * max(w, h))
    x0 = x + (w - side) // 2
    y0 = y + (h - side) // 2
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + side, width), min(y0 + side, height)
    return SquareWindow(
        side,
        slice(iy0, iy1),
        slice(ix0, ix1),
        (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0)),
    )


def square_crop(
    image: np.ndarray,
    bbox: BBox,
    inside: Callable[[slice, slice], np.ndarray] | None,
    mode: str = "masked_crop",
    padding: float = 0.1,
    fill: tuple[int, int, int] = CLIP_MEAN_RGB,
    blur_sigma: float = 0.1,
) -> np.ndarray:
    """:func:`crop_region` for a region known by its tight box, without a full-size mask.

    ``inside(rows, cols)`` returns the region's boolean mask over that window of the image
    only (e.g. ``ids[rows, cols] == k`` for an instance-id image), so a frame of a few
    hundred regions costs a few hundred small windows instead of as many HxW masks. It may
    be None for "bbox_crop", which never looks at the mask. The arguments are trusted
    (:func:`crop_region` and the embedder's config validate them): ``bbox`` is non-empty.
    """
    square = square_window(bbox, padding, image.shape[0], image.shape[1])
    window = image[square.rows, square.cols]
    crop = np.empty((square.side, square.side, 3), np.uint8)
    crop[...] = np.asarray(fill, np.uint8)
    target = crop[square.inner]
    if mode == "bbox_crop":
        target[...] = window
        return crop
    if inside is None:
        raise ValueError(f"mode {mode!r} needs the region's mask")
    region = inside(square.rows, square.cols)[..., None]
    if mode == "blur":
        target[...] = _heavy_blur(window, blur_sigma * square.side)
    # Written in place: no window-sized temporaries per region.
    np.copyto(target, window, where=region)
    return crop


def _heavy_blur(patch: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur whose cost does not grow with sigma.

    A direct blur costs O(sigma) per pixel; downsampling by sigma / _BLUR_WORK_SIGMA first
    keeps the kernel small and the result is visually the same blob of colour.
    """
    if sigma <= 0.0:
        return patch
    factor = max(1.0, sigma / _BLUR_WORK_SIGMA)
    h, w = patch.shape[:2]
    small_size = (max(1, round(w / factor)), max(1, round(h / factor)))
    small = cv2.resize(patch, small_size, interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
