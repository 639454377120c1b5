"""Overlays for debug images, reports and RViz: every function returns HxWx3 uint8 RGB.

OpenCV draws in whatever channel order it is given but its colormaps and file writer are
BGR; the conversions happen here and only here, so the rest of the project stays RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from semret_ros.core.image import check_image

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PALETTE_SIZE = 256
_BOUNDARY_COLOR = (255, 255, 255)


def _golden_palette(count: int) -> np.ndarray:
    """Hues stepped by the golden ratio, so consecutive ids get clearly different colours."""
    hues = (np.arange(count) * 0.618033988749895 % 1.0 * 180).astype(np.uint8)
    saturation = np.where(np.arange(count) % 2 == 0, 230, 170).astype(np.uint8)
    value = np.where(np.arange(count) % 3 == 2, 180, 245).astype(np.uint8)
    hsv = np.stack([hues, saturation, value], axis=-1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


_PALETTE = _golden_palette(_PALETTE_SIZE)
_PALETTE.setflags(write=False)


def palette(count: int) -> np.ndarray:
    """(count, 3) uint8 RGB colours; colour i is the same in every call and every run.

    Colours repeat after 256 entries.
    """
    if count < 0:
        raise ValueError(f"count: expected >= 0, got {count}")
    return _PALETTE[np.arange(count) % _PALETTE_SIZE].copy()


def _check_plane(name: str, plane: np.ndarray, image: np.ndarray) -> np.ndarray:
    values = np.asarray(plane)
    if values.shape != image.shape[:2]:
        raise ValueError(f"{name}: expected shape {image.shape[:2]}, got {values.shape}")
    return values


def _check_alpha(alpha: float) -> float:
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    return float(alpha)


def _blend(image: np.ndarray, colors: np.ndarray, alpha: float, where: np.ndarray) -> np.ndarray:
    """Mix ``colors`` into ``image`` with weight ``alpha`` on the pixels in ``where``."""
    if where.all():
        # Whole-image blends (heatmaps): the same numbers without gathering every pixel into
        # a copy and scattering it back, about 5x faster on large images.
        mixed = (1.0 - alpha) * image + alpha * colors
        return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    out = image.copy()
    mixed = (1.0 - alpha) * image[where] + alpha * colors[where]
    out[where] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of a different value (both sides of every edge)."""
    edges = np.zeros(labels.shape, bool)
    horizontal = labels[:, :-1] != labels[:, 1:]
    vertical = labels[:-1, :] != labels[1:, :]
    edges[:, :-1] |= horizontal
    edges[:, 1:] |= horizontal
    edges[:-1, :] |= vertical
    edges[1:, :] |= vertical
    return edges


def colorize(values: np.ndarray, normalize: bool = False) -> np.ndarray:
    """Jet-colour an HxW map: blue = 0, red = 1 (NaN/inf shown as 0).

    ``normalize`` stretches the map's own min..max to the full range (the seed's display);
    otherwise values are clipped to [0, 1] so one colour means one relevance on every frame.
    """
    heat = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if normalize:
        low, high = float(heat.min()), float(heat.max())
        heat = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    gray = np.rint(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def heatmap_overlay(
    image: np.ndarray, similarity: np.ndarray, alpha: float = 0.5, normalize: bool = False
) -> np.ndarray:
    """Jet heatmap of a similarity image blended over the camera image (seed: 50/50).

    The default keeps absolute [0, 1] colours, so a threshold of 0.5 is always the same
    colour and a frame without any match stays blue; ``normalize=True`` reproduces the
    seed's min-max display, which makes the best region red even when nothing matches.
    """
    rgb = check_image(image)
    heat = colorize(_check_plane("similarity", similarity, rgb), normalize)
    return _blend(rgb, heat, _check_alpha(alpha), np.ones(rgb.shape[:2], bool))


def mask_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = (255, 0, 0),
    alpha: float = 0.5,
) -> np.ndarray:
    """Tint the masked pixels with ``color`` (RGB) and outline the mask in the same colour."""
    rgb = check_image(image)
    inside = _check_plane("mask", mask, rgb).astype(bool)
    tint = np.empty_like(rgb)
    tint[:] = color
    out = _blend(rgb, tint, _check_alpha(alpha), inside)
    out[_boundaries(inside) & inside] = color
    return out


def instance_overlay(image: np.ndarray, instance_ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """One palette colour per region id (id i -> palette colour i - 1), boundaries in white.

    Pixels with id 0 (no region) keep the camera image.
    """
    rgb = check_image(image)
    ids = _check_plane("instance_ids", instance_ids, rgb).astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError("instance_ids: expected ids >= 0")
    colors = _PALETTE[(ids - 1) % _PALETTE_SIZE]
    out = _blend(rgb, colors, _check_alpha(alpha), ids > 0)
    out[_boundaries(ids)] = _BOUNDARY_COLOR
    return out


def _draw_legend(canvas: np.ndarray, labels: Sequence[str], colors: np.ndarray) -> None:
    """Swatch + name per label on a dark box in the top-left corner, drawn in place."""
    scale, thickness, margin = 0.4, 1, 4
    sizes = [cv2.getTextSize(label, _FONT, scale, thickness) for label in labels]
    line = max(height + baseline for (_, height), baseline in sizes) + margin
    swatch = line - margin
    width = margin * 3 + swatch + max(w for (w, _), _ in sizes)
    height = margin + line * len(labels)
    box = canvas[:height, :width]
    box[:] = (box.astype(np.float32) * 0.3).astype(np.uint8)
    for index, (label, color) in enumerate(zip(labels, colors, strict=True)):
        top = margin + index * line
        fill = tuple(int(c) for c in color)
        cv2.rectangle(canvas, (margin, top), (margin + swatch - 1, top + swatch - 1), fill, -1)
        baseline_y = top + swatch - sizes[index][1]
        cv2.putText(
            canvas,
            label,
            (2 * margin + swatch, baseline_y),
            _FONT,
            scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )


def label_overlay(
    image: np.ndarray, label_image: np.ndarray, labels: Sequence[str], alpha: float = 0.5
) -> np.ndarray:
    """Colour per label (labels[i] -> palette colour i) with a legend drawn into the image.

    ``label_image`` follows ``LabelResult``: i + 1 for labels[i], 0 for unlabelled pixels,
    which keep the camera image.
    """
    rgb = check_image(image)
    values = _check_plane("label_image", label_image, rgb).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > len(labels)):
        raise ValueError(
            f"label_image: expected values in [0, {len(labels)}] for {len(labels)} labels"
        )
    colors = palette(len(labels))
    table = np.vstack([np.zeros((1, 3), np.uint8), colors])
    out = _blend(rgb, table[values], _check_alpha(alpha), values > 0)
    out[_boundaries(values)] = _BOUNDARY_COLOR
    if labels:
        _draw_legend(out, labels, colors)
    return out


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept RGB, grayscale or boolean images for panels (masks become black/white)."""
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(check_image(array))


def panel(
    images: Sequence[np.ndarray], titles: Sequence[str] | None = None, gap: int = 4
) -> np.ndarray:
    """Tile images side by side (resized to the first image's height) with a title strip.

    Accepts RGB, grayscale and boolean images, so a report can show a frame, its heatmap
    and its mask in one picture.
    """
    if len(images) == 0:
        raise ValueError("images: expected at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles: expected {len(images)} titles, got {len(titles)}")
    tiles = [_as_rgb(image) for image in images]
    height = tiles[0].shape[0]
    tiles = [
        tile
        if tile.shape[0] == height
        else cv2.resize(
            tile,
            (max(1, round(tile.shape[1] * height / tile.shape[0])), height),
            interpolation=cv2.INTER_AREA,
        )
        for tile in tiles
    ]
    scale, thickness = 0.5, 1
    strip = 0
    if titles is not None:
        strip = max(cv2.getTextSize(t or " ", _FONT, scale, thickness)[0][1] for t in titles) + 10
    width = sum(tile.shape[1] for tile in tiles) + gap * (len(tiles) - 1)
    canvas = np.zeros((strip + height, width, 3), np.uint8)
    left = 0
    for index, tile in enumerate(tiles):
        canvas[strip:, left : left + tile.shape[1]] = tile
        if titles is not None:
            cv2.putText(
                canvas,
                titles[index],
                (left + 2, strip - 5),
                _FONT,
                scale,
                (255, 255, 255),
                thickness,
                cv2.LINE_AA,
            )
        left += tile.shape[1] + gap
    return canvas


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB (or grayscale/boolean) image as PNG, creating the parent folder.

    The one place images are written, so the RGB->BGR swap for ``cv2.imwrite`` cannot be
    forgotten elsewhere.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"path: expected a .png file name, got {str(path)!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(_as_rgb(rgb), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(target), bgr):
        raise OSError(f"could not write {target}")
    return target
