"""An independent renderer of shapes-world scenes, used only to test, never to train.

A model trained on :mod:`semret_ros.shapes.world`'s images may have learnt that generator's
quirks (cv2's polygon edges, its shading ramps, its four background families) instead of
colour and shape. This module draws the same kinds of scenes with its own code: shapes are
unions of half-planes and discs sampled on a 4x4 sub-pixel grid (anti-aliased coverage),
its own palette, linear light gradients and fine textures (weave, grain, speckle) on objects,
smooth low-frequency backgrounds (Fourier blobs, soft bands, lighting gradients, vignettes),
and a camera model (defocus blur, shot and read noise, JPEG through Pillow).

It shares with ``world`` only names and records: the colour and shape names, the held-out
list and the :class:`~semret_ros.shapes.world.Scene` / ``SceneObject`` types, so an
evaluation can use either renderer. Nothing here may be tuned to the training renderer;
``test/test_test_renderer.py`` checks that no drawing code is imported from it.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from semret_ros.core.records import bbox_of_mask
from semret_ros.shapes.world import COLORS, HELD_OUT, SHAPES, Scene, SceneObject

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 28, 40),
    "green": (34, 150, 70),
    "blue": (40, 80, 200),
    "yellow": (240, 205, 45),
    "purple": (128, 52, 160),
    "orange": (238, 122, 32),
    "white": (236, 236, 230),
    "black": (26, 24, 28),
}
"""This renderer's own reference colour of every colour name (not the training renderer's)."""

if set(PALETTE) != set(COLORS):
    raise RuntimeError("test renderer palette must name exactly the shapes world's colours")

SUPERSAMPLE = 4
"""Sub-pixel grid per axis: coverage is the share of 4 x 4 samples inside a shape."""

_UPRIGHT_DEG = {"square": 15.0, "diamond": 15.0}
"""Squares and diamonds stay within +-15 degrees of upright (a square turned 45 degrees is a
diamond); every other shape turns freely."""


# ---------------------------------------------------------------------------------------------
# Geometry: signed-free inside tests on arbitrary sample points


def _convex_inside(px: np.ndarray, py: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Points inside a convex polygon given counter-clockwise or clockwise vertices."""
    signs = []
    count = len(vertices)
    for k in range(count):
        x0, y0 = vertices[k]
        x1, y1 = vertices[(k + 1) % count]
        signs.append((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0))
    stacked = np.stack(signs)
    return np.all(stacked >= 0, axis=0) | np.all(stacked <= 0, axis=0)


def _regular(count: int, radius: float, phase_deg: float) -> np.ndarray:
    angles = np.deg2rad(phase_deg + 360.0 * np.arange(count) / count)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _pieces(shape: str) -> list[np.ndarray]:
    """A polygonal shape as a union of convex polygons in unit coordinates (radius ~1)."""
    if shape == "square":
        s = 0.74
        return [np.array([[-s, -s], [s, -s], [s, s], [-s, s]])]
    if shape == "diamond":
        return [np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])]
    if shape == "triangle":
        return [_regular(3, 1.0, -90.0)]
    if shape == "hexagon":
        return [_regular(6, 0.98, 0.0)]
    if shape == "cross":
        arm, reach = 0.33, 0.97
        return [
            np.array([[-arm, -reach], [arm, -reach], [arm, reach], [-arm, reach]]),
            np.array([[-reach, -arm], [reach, -arm], [reach, arm], [-reach, arm]]),
        ]
    if shape == "star":
        outer = _regular(5, 1.0, -90.0)
        inner = _regular(5, 0.45, -54.0)
        spikes = [np.array([inner[k - 1], outer[k], inner[k]]) for k in range(5)]
        return [inner, *spikes]
    raise ValueError(f"unknown polygonal shape {shape!r}")


def shape_coverage(
    shape: str, height: int, width: int, center: tuple[float, float], radius: float, angle: float
) -> np.ndarray:
    """HxW float32 in [0, 1]: the share of each pixel the shape covers (4x4 sub-samples)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    cx, cy = center
    out = np.zeros((height, width), np.float32)
    x0, x1 = max(0, int(cx - radius) - 2), min(width, int(cx + radius) + 3)
    y0, y1 = max(0, int(cy - radius) - 2), min(height, int(cy + radius) + 3)
    if x0 >= x1 or y0 >= y1:
        return out
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).ravel()
    ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).ravel()
    gx, gy = np.meshgrid((xs - cx) / radius, (ys - cy) / radius)
    if shape in ("circle", "ring"):
        dist = np.hypot(gx, gy)
        inside = dist <= 0.92 if shape == "circle" else (dist <= 0.95) & (dist >= 0.55)
    else:
        c, s = np.cos(np.deg2rad(-angle)), np.sin(np.deg2rad(-angle))
        ux, uy = c * gx - s * gy, s * gx + c * gy
        inside = np.zeros(gx.shape, bool)
        for piece in _pieces(shape):
            inside |= _convex_inside(ux, uy, piece)
    h, w = y1 - y0, x1 - x0
    cover = inside.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3))
    out[y0:y1, x0:x1] = cover
    return out


# ---------------------------------------------------------------------------------------------
# Appearance


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """HxWx3 float32 in [0, 1]: a smooth, low-frequency, muted background."""
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :] * (width / height)
    family = ("fourier", "bands", "lighting", "vignette")[int(rng.integers(4))]
    if family == "fourier":
        field = np.zeros((height, width), np.float32)
        for _ in range(int(rng.integers(3, 6))):
            fx, fy = rng.uniform(-2.5, 2.5, 2)
            field += rng.uniform(0.3, 1.0) * np.cos(
                2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi)
            )
        t = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    elif family == "bands":
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        period = rng.uniform(0.25, 0.7)
        phase = np.mod(u / period + rng.uniform(0, 1), 1.0)
        # Soft-edged bands: a smoothstep up and down per period.
        t = np.clip((np.abs(phase - 0.5) - 0.15) / 0.2, 0.0, 1.0)
        t = t * t * (3 - 2 * t)
    elif family == "lighting":
        angle = rng.uniform(0, 2 * np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    else:
        cx, cy = rng.uniform(0.2, 0.8) * (width / height), rng.uniform(0.2, 0.8)
        t = np.clip(np.hypot(xx - cx, yy - cy) / rng.uniform(0.6, 1.2), 0.0, 1.0)
    lum_a, lum_b = rng.uniform(0.3, 0.75, 2)
    tint_a, tint_b = rng.uniform(-0.09, 0.09, 3), rng.uniform(-0.09, 0.09, 3)
    a = np.clip(lum_a + tint_a, 0, 1).astype(np.float32)
    b = np.clip(lum_b + tint_b, 0, 1).astype(np.float32)
    return a + (b - a) * t[..., None]


def _surface(
    rng: np.random.Generator, rgb: np.ndarray, height: int, width: int, center: tuple[float, float]
) -> np.ndarray:
    """HxWx3 float32 in [0, 1]: an object's colour lit by a linear gradient with fine texture."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    span = max(height, width) * 0.15
    along = ((xx - center[0]) * np.cos(angle) + (yy - center[1]) * np.sin(angle)) / (span * 5)
    light = 1.0 + rng.uniform(0.1, 0.3) * np.clip(along, -1.0, 1.0)
    texture = int(rng.integers(4))
    amount = rng.uniform(0.04, 0.1)
    if texture == 0:  # weave
        period = rng.uniform(3.0, 6.0)
        light = light + amount * np.cos(2 * np.pi * xx / period) * np.cos(2 * np.pi * yy / period)
    elif texture == 1:  # grain, box-filtered white noise
        grain = cv2.blur(rng.uniform(-1.0, 1.0, (height, width)).astype(np.float32), (2, 2))
        light = light + 1.6 * amount * grain
    elif texture == 2:  # speckle: sparse dark flecks
        light = light - 2.5 * amount * (rng.random((height, width)) < 0.08)
    colour = np.clip(rgb * rng.uniform(0.9, 1.08) + rng.uniform(-0.04, 0.04, 3), 0.0, 1.0)
    return (colour[None, None, :] * light[..., None]).astype(np.float32)


def _camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Defocus blur, shot and read noise, then JPEG: float [0, 1] in, uint8 RGB out."""
    if rng.random() < 0.7:
        r = rng.uniform(0.6, 2.0)
        size = 2 * int(np.ceil(r)) + 1
        yy, xx = np.mgrid[0:size, 0:size] - size // 2
        disk = (np.hypot(xx, yy) <= r).astype(np.float32)
        image = cv2.filter2D(image, -1, disk / disk.sum(), borderType=cv2.BORDER_REPLICATE)
    shot = rng.uniform(0.0, 0.02)
    read = rng.uniform(0.003, 0.015)
    sigma = np.sqrt(shot * shot * np.clip(image, 0, 1) + read * read)
    image = image + sigma * rng.standard_normal(image.shape).astype(np.float32)
    out = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if rng.random() < 0.8:
        buffer = io.BytesIO()
        quality = int(rng.integers(35, 91))
        Image.fromarray(out).save(buffer, format="JPEG", quality=quality, subsampling=2)
        out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------------------------
# Scenes


def _pick(rng: np.random.Generator, count: int, min_held_out: int) -> list[tuple[str, str]]:
    """``count`` (colour, shape) pairs with distinct colours and shapes, the first
    ``min_held_out`` of them held-out combinations."""
    names = list(PALETTE)
    held = sorted(HELD_OUT)
    for _ in range(1000):
        chosen: list[tuple[str, str]] = []
        for k in rng.permutation(len(held))[:min_held_out]:
            pair = held[int(k)]
            if all(pair[0] != c and pair[1] != s for c, s in chosen):
                chosen.append(pair)
        colours = [c for c in names if all(c != p[0] for p in chosen)]
        shapes = [s for s in SHAPES if all(s != p[1] for p in chosen)]
        rest = count - len(chosen)
        picked_c = [colours[int(i)] for i in rng.permutation(len(colours))[:rest]]
        picked_s = [shapes[int(i)] for i in rng.permutation(len(shapes))[:rest]]
        chosen += list(zip(picked_c, picked_s, strict=True))
        if sum(p in HELD_OUT for p in chosen) >= min_held_out:
            order = rng.permutation(len(chosen))
            return [chosen[int(i)] for i in order]
    raise ValueError(f"cannot draw {count} objects with {min_held_out} held out")


def render_scene(
    seed: int,
    width: int = 640,
    height: int = 480,
    num_objects: int | tuple[int, int] = (6, 8),
    min_held_out: int = 1,
) -> Scene:
    """A hard scene drawn by this renderer, deterministic from ``seed``.

    Objects have pairwise distinct colours and shapes (every colour-only and shape-only query
    names one object), may overlap (each keeps at least half of its area visible), and at
    least ``min_held_out`` of them are held-out combinations. Object masks are the pixels an
    object covers more than half of after compositing.
    """
    if width < 32 or height < 32:
        raise ValueError(f"width and height must be >= 32, got {width}x{height}")
    lo, hi = (num_objects, num_objects) if isinstance(num_objects, int) else num_objects
    if not 1 <= lo <= hi <= len(PALETTE):
        raise ValueError(f"num_objects must be within 1..{len(PALETTE)}, got {num_objects}")
    if not 0 <= min_held_out <= lo:
        raise ValueError(f"min_held_out must be within 0..{lo}, got {min_held_out}")
    rng = np.random.default_rng((seed, 0x7E57))
    count = int(rng.integers(lo, hi + 1))
    pairs = _pick(rng, count, min_held_out)
    side = min(width, height)

    image = _background(rng, height, width)
    ids = np.zeros((height, width), np.int32)
    placed: list[tuple[float, float, float]] = []
    areas: list[int] = []
    kept: list[tuple[str, str]] = []
    for color, shape in pairs:
        radius = float(rng.uniform(0.075, 0.14) * side)
        limit = _UPRIGHT_DEG.get(shape, 180.0)
        angle = float(rng.uniform(-limit, limit))
        for _ in range(60):
            cx = float(rng.uniform(radius, width - radius))
            cy = float(rng.uniform(radius, height - radius))
            if not all(np.hypot(cx - x, cy - y) > 0.75 * (radius + r) for x, y, r in placed):
                continue
            cover = shape_coverage(shape, height, width, (cx, cy), radius, angle)
            solid = cover > 0.5
            # Every object already drawn keeps at least half of its pixels visible.
            if all(((ids == k + 1) & ~solid).sum() >= 0.5 * a for k, a in enumerate(areas)):
                break
        else:
            continue
        rgb = np.asarray(PALETTE[color], np.float32) / 255.0
        x, y, w, h = bbox_of_mask(cover > 0)
        window = (slice(y, y + h), slice(x, x + w))
        alpha = cover[window][..., None]
        surface = _surface(rng, rgb, h, w, (cx - x, cy - y))
        image[window] = image[window] * (1 - alpha) + surface * alpha
        ids[solid] = len(kept) + 1
        placed.append((cx, cy, radius))
        areas.append(int(solid.sum()))
        kept.append((color, shape))

    pixels = _camera(rng, image)
    objects = []
    for k, (color, shape) in enumerate(kept):
        mask = ids == k + 1
        if mask.any():
            objects.append(
                SceneObject(color=color, shape=shape, mask=mask, bbox=bbox_of_mask(mask))
            )
    return Scene(image=pixels, objects=tuple(objects), seed=seed, hard=True)
