"""A procedural "shapes world": scenes of coloured shapes with exact masks and names.

No pretrained CLIP weights can be had where this project is built and tested, so the embedded
default model is trained and evaluated here. Everything is a pure function of a seed, so a
training run, a test and an evaluation report can be reproduced bit for bit.

Eight colour-shape combinations (:data:`HELD_OUT`) never appear in training; recognising them
shows that the model composes colour and shape instead of memorising pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from semret_ros.core.records import BBox, bbox_of_mask

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 70, 215),
    "yellow": (235, 215, 35),
    "purple": (135, 45, 175),
    "orange": (245, 135, 25),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
"""Base RGB of every colour name; rendering jitters, shades and textures it."""

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "diamond",
    "hexagon",
)

HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("purple", "star"),
        ("red", "ring"),
        ("green", "triangle"),
        ("blue", "cross"),
        ("yellow", "square"),
        ("orange", "hexagon"),
        ("white", "diamond"),
        ("black", "circle"),
    }
)
"""(colour, shape) pairs never shown in training."""

ALL_COMBOS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
SEEN_COMBOS: tuple[tuple[str, str], ...] = tuple(c for c in ALL_COMBOS if c not in HELD_OUT)
HELD_OUT_COMBOS: tuple[tuple[str, str], ...] = tuple(c for c in ALL_COMBOS if c in HELD_OUT)

FULL_TEMPLATES: tuple[str, ...] = (
    "a photo of a {color} {shape}",
    "a {color} {shape}",
    "the {color} {shape}",
    "{color} {shape}",
    "a {shape} colored {color}",
    "a {shape} that is {color}",
    "a picture of a {color} {shape}",
    "a picture of the {color} {shape}",
    "a {color} {shape} in the scene",
    "there is a {color} {shape}",
    "a {color} colored {shape}",
)
COLOR_TEMPLATES: tuple[str, ...] = (
    "something {color}",
    "a {color} object",
    "{color}",
    "the {color} thing",
    "a photo of something {color}",
)
SHAPE_TEMPLATES: tuple[str, ...] = (
    "a {shape}",
    "a photo of a {shape}",
    "{shape}",
    "the {shape}",
    "a {shape} shape",
    "a picture of the {shape}",
)

BACKGROUND_TEMPLATES: tuple[str, ...] = (
    "background",
    "the background",
    "texture",
    "stuff",
    "the floor",
    "a patterned surface",
    "an empty area",
    "the edge of something",
)
"""Captions of background regions. Superpixels and SAM2 also propose regions that are no
object (floor patches, thin ribbons along object edges); a model that never saw one cannot
tell a query's object from them, and contrastive negatives such as "stuff" and "texture" mean
nothing to it."""

CaptionKind = Literal["full", "color", "shape"]
ComboSet = Literal["seen", "held_out", "all"]
_BACKGROUNDS = ("noise", "stripes", "checkers", "gradient")


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene, with its mask after occlusion by objects drawn above it."""

    color: str
    shape: str
    mask: np.ndarray
    """Boolean HxW visible mask."""
    bbox: BBox

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def held_out(self) -> bool:
        return (self.color, self.shape) in HELD_OUT


@dataclass(frozen=True)
class Scene:
    image: np.ndarray
    """HxWx3 uint8 RGB."""
    objects: tuple[SceneObject, ...]
    seed: int
    hard: bool

    @property
    def instance_ids(self) -> np.ndarray:
        """int32 HxW: object i (0-based) is id i + 1, background 0."""
        ids = np.zeros(self.image.shape[:2], np.int32)
        for i, obj in enumerate(self.objects):
            ids[obj.mask] = i + 1
        return ids


@dataclass(frozen=True)
class CropSample:
    """A training/evaluation crop: what the embedder would feed the model for one region."""

    crop: np.ndarray
    """Square uint8 RGB crop from :func:`semret_ros.core.visual_prompt.crop_region`."""
    color: str | None
    """None for an off-palette object (a colour no colour name describes)."""
    shape: str


def off_palette_rgb(rng: np.random.Generator, min_distance: float = 100.0) -> np.ndarray:
    """A random RGB far from every named colour.

    Shape-only captions paired with shapes in unnamed colours make shape features colour-blind,
    so "a star" still fits a purple star although no purple star was ever shown.
    """
    named = np.array(list(COLORS.values()), np.float32)
    while True:
        rgb = rng.uniform(0, 255, 3).astype(np.float32)
        if np.linalg.norm(named - rgb, axis=1).min() >= min_distance:
            return rgb


def caption(color: str | None, shape: str | None, template: str) -> str:
    """Fill a template; a colour-only or shape-only template ignores the missing part."""
    return template.format(color=color or "", shape=shape or "")


def random_caption_kind(
    rng: np.random.Generator, p_color: float = 0.15, p_shape: float = 0.3
) -> CaptionKind:
    """Full, colour-only or shape-only; the short kinds teach the two factors apart."""
    u = rng.random()
    return "color" if u < p_color else "shape" if u < p_color + p_shape else "full"


def random_caption(
    rng: np.random.Generator, color: str | None, shape: str, kind: CaptionKind | None = None
) -> tuple[str, CaptionKind]:
    """A caption for an object of ``kind`` (drawn if None); ``color`` None (an off-palette
    object) allows only shape-only captions."""
    if kind is None:
        kind = random_caption_kind(rng)
    if color is None and kind != "shape":
        raise ValueError("an off-palette object (color None) only takes shape-only captions")
    # Prompt ensembles usually end in a full stop ("a photo of a {}."); so do some captions.
    stop = "." if rng.random() < 0.3 else ""
    templates = {"color": COLOR_TEMPLATES, "shape": SHAPE_TEMPLATES, "full": FULL_TEMPLATES}[kind]
    text = caption(color, shape, templates[rng.integers(len(templates))])
    return text + stop, kind


def combos(which: ComboSet) -> tuple[tuple[str, str], ...]:
    if which == "seen":
        return SEEN_COMBOS
    if which == "held_out":
        return HELD_OUT_COMBOS
    if which == "all":
        return ALL_COMBOS
    raise ValueError(f"combos must be 'seen', 'held_out' or 'all', got {which!r}")


# ---------------------------------------------------------------------------------------------
# Drawing


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices of a polygonal shape in a unit circle, (V, 2) float (x, y)."""
    if shape == "square":
        return np.array([[-0.72, -0.72], [0.72, -0.72], [0.72, 0.72], [-0.72, 0.72]])
    if shape == "diamond":
        return np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]])
    if shape == "triangle":
        a = np.deg2rad(np.array([-90.0, 30.0, 150.0]))
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "hexagon":
        a = np.deg2rad(np.arange(6) * 60.0)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "star":
        a = np.deg2rad(np.arange(10) * 36.0 - 90.0)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "cross":
        t, e = 0.3, 0.95
        arm = [[-t, -e], [t, -e], [t, -t], [e, -t], [e, t], [t, t]]
        return np.array([*arm, [t, e], [-t, e], [-t, t], [-e, t], [-e, -t], [-t, -t]])
    raise ValueError(f"unknown polygonal shape {shape!r}")


# Rotation range (degrees) per shape: squares and diamonds stay near upright so a square is
# never drawn as a diamond, and a diamond is also narrower than a rotated square.
_MAX_ROTATION = {"square": 15.0, "diamond": 15.0, "cross": 20.0}


def draw_shape_mask(
    shape: str, height: int, width: int, center: tuple[float, float], radius: float, angle: float
) -> np.ndarray:
    """Boolean mask of one shape, drawn with cv2's polygon fill (fast at any image size)."""
    canvas = np.zeros((height, width), np.uint8)
    cx, cy = center
    if shape == "circle":
        cv2.circle(canvas, (round(cx), round(cy)), max(1, round(0.9 * radius)), 1, -1)
    elif shape == "ring":
        thickness = max(2, round(0.38 * radius))
        r_mid = max(1, round(0.95 * radius - thickness / 2))
        cv2.circle(canvas, (round(cx), round(cy)), r_mid, 1, thickness)
    elif shape in SHAPES:
        c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
        pts = _unit_polygon(shape) @ np.array([[c, s], [-s, c]]) * radius + (cx, cy)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    return canvas.astype(bool)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], HxW float32: random grid values resized smoothly."""
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).clip(-1.0, 1.0)


def _muted_color(rng: np.random.Generator, spread: float) -> np.ndarray:
    """A greyish background colour; ``spread`` sets how far it may drift from grey."""
    return rng.uniform(70, 185) + rng.uniform(-spread, spread, 3)


def draw_background(rng: np.random.Generator, height: int, width: int, hard: bool) -> np.ndarray:
    """HxWx3 float32 background: noise, stripes, checkers or a gradient in muted colours."""
    spread = 50.0 if hard else 25.0
    a, b = _muted_color(rng, spread), _muted_color(rng, spread)
    kind = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    if kind == "noise":
        t = 0.5 + 0.5 * _smooth_noise(rng, height, width, int(rng.integers(8, 48)))
    elif kind == "stripes":
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(8, 40)
        t = 0.5 + 0.5 * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    elif kind == "checkers":
        cell = int(rng.integers(6, 40))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:
        theta = rng.uniform(0, 2 * np.pi)
        proj = xx * np.cos(theta) + yy * np.sin(theta)
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    img = a + (b - a) * t[..., None]
    grain = rng.uniform(2.0, 12.0 if hard else 6.0)
    img += rng.normal(0.0, grain, (height, width, 1)).astype(np.float32)
    return img.astype(np.float32)


def _paint_object(
    rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, rgb: np.ndarray, hard: bool
) -> None:
    """Paint base colour ``rgb`` under ``mask``, shaded/textured and contrast-reduced if hard."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    base = np.asarray(rgb, np.float32) * rng.uniform(0.88, 1.06)
    base = base + rng.uniform(-14, 14, 3).astype(np.float32)
    patch = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    if hard:
        # Shading: a linear light ramp across the object.
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        theta = rng.uniform(0, 2 * np.pi)
        ramp = (xx * np.cos(theta) + yy * np.sin(theta)) / max(h, w, 1)
        patch = patch * (1.0 + rng.uniform(0.1, 0.35) * (ramp - ramp.mean()))[..., None]
        patch = patch + rng.uniform(-10, 10) * (ramp - ramp.mean())[..., None] * 2
        # Texture: blotchy multiplicative noise.
        if rng.random() < 0.7:
            tex = _smooth_noise(rng, h, w, int(rng.integers(3, 12)))
            patch = patch * (1.0 + rng.uniform(0.08, 0.2) * tex)[..., None]
        # Lower contrast: pull the object towards what lies under it.
        under = img[y0:y1, x0:x1].mean(axis=(0, 1))
        alpha = rng.uniform(0.0, 0.3)
        patch = (1 - alpha) * patch + alpha * under
    patch = patch + rng.normal(0.0, 3.0 if not hard else 6.0, (h, w, 1)).astype(np.float32)
    local = mask[y0:y1, x0:x1]
    img[y0:y1, x0:x1][local] = patch[local]


def _pick_combos(
    rng: np.random.Generator, n: int, which: ComboSet, min_held_out: int
) -> list[tuple[str, str]]:
    """``n`` combos with pairwise distinct colours and distinct shapes.

    Distinct colours and shapes make every colour-only and shape-only query in a scene name
    exactly one object, so a scene can be scored without ambiguity.
    """
    allowed = set(combos(which))
    colors, shapes = list(COLORS), list(SHAPES)
    for _ in range(1000):
        cs = [colors[i] for i in rng.permutation(len(colors))[:n]]
        ss = [shapes[i] for i in rng.permutation(len(shapes))[:n]]
        picked = list(zip(cs, ss, strict=True))
        if all(p in allowed for p in picked) and sum(p in HELD_OUT for p in picked) >= min(
            min_held_out, n
        ):
            return picked
    raise ValueError(f"cannot draw {n} distinct combos from {which!r} with {min_held_out} held out")


def generate_scene(
    seed: int,
    width: int = 640,
    height: int = 480,
    num_objects: int | tuple[int, int] | None = None,
    hard: bool = False,
    which: ComboSet = "all",
    min_held_out: int = 0,
) -> Scene:
    """A scene of several shapes with distinct colours and shapes, deterministic from ``seed``.

    Args:
        num_objects: a count or an inclusive (min, max) range; default 3-5, or 6-8 if hard.
        hard: textured and shaded objects, lower contrast, busier backgrounds, overlaps and
            6-8 objects: scenes that test the pipeline (segmentation + embedding), not only
            the model.
        which: the combos objects are drawn from.
        min_held_out: at least this many objects from :data:`HELD_OUT` (with ``which="all"``).

    Objects whose visible part would be under half of their area are dropped, so every listed
    object is recognisable.
    """
    if width < 16 or height < 16:
        raise ValueError(f"width and height must be >= 16, got {width}x{height}")
    rng = np.random.default_rng(seed)
    if num_objects is None:
        num_objects = (6, 8) if hard else (3, 5)
    lo, hi = (num_objects, num_objects) if isinstance(num_objects, int) else num_objects
    if not 1 <= lo <= hi <= len(COLORS):
        raise ValueError(f"num_objects must be within 1..{len(COLORS)}, got {num_objects}")
    n = int(rng.integers(lo, hi + 1))
    picked = _pick_combos(rng, n, which, min_held_out)

    side = min(width, height)
    r_lo, r_hi = (0.07, 0.13) if hard else (0.08, 0.16)
    if n > 5:
        r_hi = max(r_lo, r_hi * 0.85)
    min_sep = 0.7 if hard else 1.05
    placed: list[tuple[float, float, float]] = []
    full_masks: list[np.ndarray] = []
    for _color, shape in picked:
        r = float(rng.uniform(r_lo, r_hi) * side)
        for _ in range(60):
            cx = float(rng.uniform(r, width - r))
            cy = float(rng.uniform(r, height - r))
            if all(np.hypot(cx - px, cy - py) > min_sep * (r + pr) for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        rot = _MAX_ROTATION.get(shape, 180.0)
        full_masks.append(
            draw_shape_mask(shape, height, width, (cx, cy), r, rng.uniform(-rot, rot))
        )

    # Objects are drawn in list order; walk from the top down to find what stays visible.
    above = np.zeros((height, width), bool)
    keep: list[int] = []
    visible: dict[int, np.ndarray] = {}
    for i in range(n - 1, -1, -1):
        vis = full_masks[i] & ~above
        if vis.sum() >= 0.5 * full_masks[i].sum() and vis.any():
            keep.append(i)
            visible[i] = vis
            above |= full_masks[i]
    keep.reverse()

    img = draw_background(rng, height, width, hard)
    for i in keep:
        _paint_object(rng, img, full_masks[i], np.array(COLORS[picked[i][0]]), hard)
    image = np.ascontiguousarray(img.clip(0, 255).astype(np.uint8))
    objects = tuple(
        SceneObject(
            color=picked[i][0], shape=picked[i][1], mask=visible[i], bbox=bbox_of_mask(visible[i])
        )
        for i in keep
    )
    return Scene(image=image, objects=objects, seed=seed, hard=hard)


# ---------------------------------------------------------------------------------------------
# Crops


def perturb_mask(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Make a ground-truth mask look like a segmenter's: eroded, dilated, shifted, fragmented
    or bleeding into the neighbourhood. Superpixels and SAM2 masks are never exact, and a model
    trained only on exact masks would key on the mask outline."""
    out = mask.astype(np.uint8)
    size = max(int(np.sqrt(mask.sum())), 1)
    u = rng.random()
    if u < 0.3:
        return mask
    if u < 0.45:
        k = max(1, round(size * rng.uniform(0.03, 0.1)))
        eroded = cv2.erode(out, np.ones((k, k), np.uint8))
        out = eroded if eroded.any() else out
    elif u < 0.6:
        k = max(1, round(size * rng.uniform(0.03, 0.12)))
        out = cv2.dilate(out, np.ones((k, k), np.uint8))
    elif u < 0.72:
        dx, dy = (rng.uniform(-0.1, 0.1, 2) * size).round().astype(int)
        shifted = np.roll(out, (dy, dx), axis=(0, 1))
        out = shifted if shifted.any() else out
    elif u < 0.86:
        # A fragment: the part of the mask on one side of a random line (a superpixel that
        # covers only part of a shaded or textured object).
        ys, xs = np.nonzero(mask)
        theta = rng.uniform(0, 2 * np.pi)
        proj = xs * np.cos(theta) + ys * np.sin(theta)
        cut = np.quantile(proj, rng.uniform(0.0, 0.4))
        keep = proj >= cut
        out = np.zeros_like(out)
        out[ys[keep], xs[keep]] = 1
    else:
        # Bleed: add a blob of the surroundings next to the object.
        ys, xs = np.nonzero(mask)
        j = int(rng.integers(len(ys)))
        blob = np.zeros_like(out)
        cv2.circle(
            blob, (int(xs[j]), int(ys[j])), max(1, round(size * rng.uniform(0.1, 0.3))), 1, -1
        )
        out = out | blob
    return out.astype(bool)


def sample_crop(
    seed: int | np.random.Generator | tuple[int, ...],
    which: ComboSet = "seen",
    scene_size: int = 160,
    hard_prob: float = 0.5,
    perturb: bool = True,
    padding: tuple[float, float] = (0.05, 0.2),
    off_palette: bool = False,
) -> CropSample:
    """One object crop cut out of a freshly generated scene, exactly as the embedder cuts it.

    The target is drawn from ``which`` (painted in an :func:`off_palette_rgb` colour if
    ``off_palette``, the crop's ``color`` then None); its neighbours, which may occlude it or
    leak into a perturbed mask, are always seen combos (held-out pairs never appear in
    training samples).
    """
    # Imported here: the core is ROS-free and imports nothing from this module, but keeping
    # the dependency local avoids import cycles for tools that only draw scenes.
    from semret_ros.core.visual_prompt import crop_region

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    targets = combos(which)
    color, shape = targets[int(rng.integers(len(targets)))]
    hard = bool(rng.random() < hard_prob)
    scene_seed = int(rng.integers(2**62))
    n_others = int(rng.integers(1, 4))
    # The target goes in first (drawn at the bottom), so neighbours may occlude it.
    rgb = off_palette_rgb(rng) if off_palette else np.array(COLORS[color], np.float32)
    scene = _scene_with_target(scene_seed, scene_size, color, shape, rgb, n_others, hard)
    target = scene.objects[0]
    mask = perturb_mask(rng, target.mask) if perturb else target.mask
    pad = float(rng.uniform(*padding))
    crop = crop_region(scene.image, mask, mode="masked_crop", padding=pad)
    return CropSample(crop=crop, color=None if off_palette else color, shape=shape)


def _scene_with_target(
    seed: int, size: int, color: str, shape: str, rgb: np.ndarray, n_others: int, hard: bool
) -> Scene:
    """A small scene whose first (bottom) object is (color, shape); the others are seen combos
    with other colours and shapes, drawn on top so they may occlude the target."""
    rng = np.random.default_rng(seed)
    others = [c for c in SEEN_COMBOS if c[0] != color and c[1] != shape]
    pairs = [(color, shape)]
    for k in rng.permutation(len(others)):
        if len(pairs) > n_others:
            break
        if all(others[k][0] != p[0] and others[k][1] != p[1] for p in pairs):
            pairs.append(others[k])
    r_lo, r_hi = (0.16, 0.3) if hard else (0.18, 0.32)
    placed: list[tuple[float, float, float]] = []
    kept: list[tuple[str, str]] = []
    masks: list[np.ndarray] = []
    cover = np.zeros((size, size), bool)
    for pair in pairs:
        r = float(rng.uniform(r_lo, r_hi) * size)
        cx, cy = (float(v) for v in rng.uniform(r, size - r, 2))
        if not all(np.hypot(cx - px, cy - py) > 0.6 * (r + pr) for px, py, pr in placed):
            continue
        rot = _MAX_ROTATION.get(pair[1], 180.0)
        m = draw_shape_mask(pair[1], size, size, (cx, cy), r, rng.uniform(-rot, rot))
        # Neighbours may occlude the target, but never more than half of it.
        if masks and (masks[0] & ~(cover | m)).sum() < 0.5 * masks[0].sum():
            continue
        if masks:
            cover |= m
        placed.append((cx, cy, r))
        kept.append(pair)
        masks.append(m)
    img = draw_background(rng, size, size, hard)
    for k, ((c, _s), m) in enumerate(zip(kept, masks, strict=True)):
        _paint_object(rng, img, m, rgb if k == 0 else np.array(COLORS[c], np.float32), hard)
    above = np.zeros((size, size), bool)
    visible: list[np.ndarray] = []
    for m in reversed(masks):
        visible.append(m & ~above)
        above |= m
    visible.reverse()
    image = np.ascontiguousarray(img.clip(0, 255).astype(np.uint8))
    objects = tuple(
        SceneObject(color=c, shape=s, mask=v, bbox=bbox_of_mask(v))
        for (c, s), v in zip(kept, visible, strict=True)
        if v.any()
    )
    return Scene(image=image, objects=objects, seed=seed, hard=hard)


def sample_background_crop(
    seed: int | np.random.Generator | tuple[int, ...],
    scene_size: int = 160,
    hard_prob: float = 0.5,
    padding: tuple[float, float] = (0.05, 0.2),
) -> np.ndarray:
    """A crop of a region that is no object, cut as the embedder cuts regions.

    Half are ribbons along an object's outline (the thin superpixels felzenszwalb leaves at
    blurred edges, whose masked crops look like outlines of shapes), half are background
    patches between objects. Scenes use seen combos only.
    """
    from semret_ros.core.visual_prompt import crop_region

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    color, shape = SEEN_COMBOS[int(rng.integers(len(SEEN_COMBOS)))]
    hard = bool(rng.random() < hard_prob)
    scene = _scene_with_target(
        int(rng.integers(2**62)),
        scene_size,
        color,
        shape,
        np.array(COLORS[color], np.float32),
        int(rng.integers(1, 4)),
        hard,
    )
    covered = np.zeros((scene_size, scene_size), bool)
    for obj in scene.objects:
        covered |= obj.mask
    if rng.random() < 0.5:
        target = scene.objects[int(rng.integers(len(scene.objects)))].mask.astype(np.uint8)
        k = int(rng.integers(2, 6))
        ribbon = cv2.dilate(target, np.ones((k, k), np.uint8)) > 0
        ribbon &= cv2.erode(target, np.ones((2, 2), np.uint8)) == 0
        ys, xs = np.nonzero(ribbon)
        theta = rng.uniform(0, 2 * np.pi)
        proj = xs * np.cos(theta) + ys * np.sin(theta)
        keep = proj >= np.quantile(proj, rng.uniform(0.0, 0.6))
        mask = np.zeros_like(ribbon)
        mask[ys[keep], xs[keep]] = True
    else:
        free = ~cv2.dilate(covered.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        ys, xs = np.nonzero(free)
        j = int(rng.integers(len(ys)))
        blob = np.zeros((scene_size, scene_size), np.uint8)
        axes = tuple(int(a) for a in rng.uniform(0.08, 0.3, 2) * scene_size)
        cv2.ellipse(blob, (int(xs[j]), int(ys[j])), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        mask = blob.astype(bool) & free
        if not mask.any():
            mask = free
    pad = float(rng.uniform(*padding))
    return crop_region(scene.image, mask, mode="masked_crop", padding=pad)


KINDS: tuple[str, ...] = ("full", "color", "shape")
QUERY_PHRASES: dict[str, str] = {
    "full": "{color} {shape}",
    "color": "{color} object",
    "shape": "{shape}",
}
"""One fixed phrase per query kind. The embedder wraps phrases in its own templates ("a photo
of a {}."), so these are bare names; "red object" reads as the training captions' colour-only
"a red object", while a bare "red" would become "a photo of a red."."""


def query_phrase(kind: str, obj: SceneObject) -> str:
    return QUERY_PHRASES[kind].format(color=obj.color, shape=obj.shape)
