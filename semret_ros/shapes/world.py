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

from semret_ros.core.depth import CameraIntrinsics
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

VARIED_TEMPLATES: dict[str, tuple[str, ...]] = {
    "full": (
        "a {shape} in {color}",
        "a {color}-colored {shape}",
        "something {color} shaped like a {shape}",
        "this is a {color} {shape}",
        "a {shape} which is {color}",
        "a {shape}, {color}",
        "a {color} shape, a {shape}",
        "a {shape} painted {color}",
    ),
    "color": (
        "something colored {color}",
        "a {color} shape",
        "the {color} one",
        "{color} colored",
        "something painted {color}",
        "anything {color}",
    ),
    "shape": (
        "a figure shaped like a {shape}",
        "a {shape}-shaped figure",
        "something shaped like a {shape}",
        "the {shape} shape",
        "a {shape} of any color",
        "{shape_words}",
    ),
}
"""More wordings of each caption kind (training recipe 2): colour and shape named apart, in
either order, in other sentence forms, so neither word is learnt as half of a fixed pair.
None says "object" or "thing": those are the node's generic query negatives, and a caption
that pairs them with one object pulls them towards every object (recipe 2 pairs them with
background regions instead, :data:`GENERIC_TEMPLATES`)."""

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("a round shape", "a round figure"),
    "square": ("a shape with four equal sides", "a four-cornered box shape"),
    "triangle": ("a three-cornered shape", "a shape with three corners"),
    "star": ("a pointed star shape", "a shape with five points"),
    "ring": ("a hollow circle", "a round loop"),
    "cross": ("a cross shape", "two crossing bars"),
    "diamond": ("a diamond shape", "a narrow upright diamond"),
    "hexagon": ("a shape with six corners", "a hexagonal shape"),
}
"""Descriptions of each shape without its name (``{shape_words}`` in a template)."""

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

GENERIC_TEMPLATES: tuple[str, ...] = (*BACKGROUND_TEMPLATES, "things", "some things", "object")
"""Background captions of recipe 2: also the generic words the node's query negatives use
("object", "things", "stuff", "texture"), so they describe what is no particular object and
a named object's region beats them."""

CaptionKind = Literal["full", "color", "shape"]
ComboSet = Literal["seen", "held_out", "all"]
_BACKGROUNDS = ("noise", "stripes", "checkers", "gradient")
_VARIED_BACKGROUNDS = (*_BACKGROUNDS, "smooth", "bands", "lit")
"""Background families of randomized training scenes: the classic four plus low-frequency
ones (smooth blotches, wide soft bands, a lit wall), since real and other renderers'
backgrounds are rarely as busy as noise or checkers."""


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
    rng: np.random.Generator,
    color: str | None,
    shape: str,
    kind: CaptionKind | None = None,
    varied: bool = False,
) -> tuple[str, CaptionKind]:
    """A caption for an object of ``kind`` (drawn if None); ``color`` None (an off-palette
    object) allows only shape-only captions. ``varied`` (recipe 2) draws half of the
    captions from :data:`VARIED_TEMPLATES` instead."""
    if kind is None:
        kind = random_caption_kind(rng)
    if color is None and kind != "shape":
        raise ValueError("an off-palette object (color None) only takes shape-only captions")
    # Prompt ensembles usually end in a full stop ("a photo of a {}."); so do some captions.
    stop = "." if rng.random() < 0.3 else ""
    templates = {"color": COLOR_TEMPLATES, "shape": SHAPE_TEMPLATES, "full": FULL_TEMPLATES}[kind]
    if varied and rng.random() < 0.5:
        templates = VARIED_TEMPLATES[kind]
    template = templates[rng.integers(len(templates))]
    if "{shape_words}" in template:
        words = SHAPE_WORDS[shape]
        template = template.replace("{shape_words}", words[rng.integers(len(words))])
    text = caption(color, shape, template)
    return text + stop, kind


def caption_space(
    pairs: tuple[tuple[str, str], ...] = ALL_COMBOS, varied: bool = True
) -> frozenset[str]:
    """Every caption training can draw (:func:`random_caption` with ``varied`` and the
    background captions) for the colour-shape ``pairs``: what a text tower is taught. Words
    outside it are the ones only a pretrained text encoder can know."""
    kinds: dict[str, tuple[str, ...]] = {
        "full": FULL_TEMPLATES,
        "color": COLOR_TEMPLATES,
        "shape": SHAPE_TEMPLATES,
    }
    if varied:
        kinds = {kind: (*templates, *VARIED_TEMPLATES[kind]) for kind, templates in kinds.items()}
    filled: set[str] = set()
    for kind, templates in kinds.items():
        targets = {
            "full": pairs,
            "color": [(c, None) for c in dict.fromkeys(c for c, _ in pairs)],
            "shape": [(None, s) for s in dict.fromkeys(s for _, s in pairs)],
        }[kind]
        for template in templates:
            for color, shape in targets:
                words = SHAPE_WORDS[shape] if "{shape_words}" in template else ("",)
                for word in words:
                    text = caption(color, shape, template.replace("{shape_words}", word))
                    filled.update((text, text + "."))
    return frozenset(filled | set(BACKGROUND_TEMPLATES) | set(GENERIC_TEMPLATES))


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

FREE_CROSS_ROTATION: dict[str, float] = {s: a for s, a in _MAX_ROTATION.items() if s != "cross"}
"""Rotation limits of training recipe 4: crosses at any angle too. A cross held within 20° of
upright is a plus sign; cameras and other renderers also show it as an "x", which a model
that never saw one calls a star or a hexagon (test renderer: held-out blue crosses were 8 of
the 16 ``~/describe`` misses)."""


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


def draw_background(
    rng: np.random.Generator,
    height: int,
    width: int,
    hard: bool,
    families: tuple[str, ...] = _BACKGROUNDS,
) -> np.ndarray:
    """HxWx3 float32 background in muted colours, of one of ``families``: noise, stripes,
    checkers, gradient (the default four), smooth, bands or lit (see
    :data:`_VARIED_BACKGROUNDS`)."""
    spread = 50.0 if hard else 25.0
    a, b = _muted_color(rng, spread), _muted_color(rng, spread)
    kind = families[rng.integers(len(families))]
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
    elif kind == "smooth":
        cell = int(rng.integers(max(height, width) // 4 + 1, max(height, width) + 2))
        t = 0.5 + 0.5 * _smooth_noise(rng, height, width, cell)
    elif kind == "bands":
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(0.3, 1.2) * max(height, width)
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period
        t = 0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * np.pi))
    elif kind == "lit":
        # A wall lit by a lamp: bright around a point, falling off smoothly.
        lx, ly = rng.uniform(-0.2, 1.2) * width, rng.uniform(-0.2, 1.2) * height
        reach = rng.uniform(0.4, 1.2) * max(height, width)
        t = np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * reach**2))
    else:
        theta = rng.uniform(0, 2 * np.pi)
        proj = xx * np.cos(theta) + yy * np.sin(theta)
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    img = a + (b - a) * t[..., None]
    grain = rng.uniform(2.0, 12.0 if hard else 6.0)
    img += rng.normal(0.0, grain, (height, width, 1)).astype(np.float32)
    return img.astype(np.float32)


def _paint_object(
    rng: np.random.Generator,
    img: np.ndarray,
    mask: np.ndarray,
    rgb: np.ndarray,
    hard: bool,
    varied: bool = False,
) -> None:
    """Paint base colour ``rgb`` under ``mask``, shaded/textured and contrast-reduced if hard;
    ``varied`` adds a spot light and one fine texture (grain, stripes or dots) of random
    strength, all multiplicative so the hue, which the colour name describes, stays."""
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
    if varied:
        patch = patch * _light_and_texture(rng, h, w)[..., None]
    patch = patch + rng.normal(0.0, 3.0 if not hard else 6.0, (h, w, 1)).astype(np.float32)
    local = mask[y0:y1, x0:x1]
    img[y0:y1, x0:x1][local] = patch[local]


def _light_and_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """HxW float32 gain around 1: a soft spot light plus one fine surface texture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lx, ly = rng.uniform(0, w), rng.uniform(0, h)
    reach = rng.uniform(0.3, 1.0) * max(h, w)
    spot = np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * reach**2))
    gain = 1.0 + rng.uniform(-0.15, 0.3) * (spot - spot.mean())
    kind = int(rng.integers(4))
    strength = rng.uniform(0.03, 0.12)
    if kind == 1:
        grain = rng.normal(0.0, 1.0, (h, w)).astype(np.float32)
        grain = cv2.GaussianBlur(grain, (0, 0), rng.uniform(0.5, 1.5))
        gain = gain + strength * grain / max(float(grain.std()), 1e-6)
    elif kind == 2:
        theta, period = rng.uniform(0, np.pi), rng.uniform(3.0, 9.0)
        gain = gain + strength * np.sin(
            (xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period
        )
    elif kind == 3:
        period = rng.uniform(4.0, 10.0)
        dots = np.sin(xx * 2 * np.pi / period) * np.sin(yy * 2 * np.pi / period)
        gain = gain + strength * (dots > 0.5)
    return gain.astype(np.float32)


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


def shift_mask(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx) pixels; what leaves the image is gone, what enters is empty
    (``np.roll`` would wrap a region leaving one edge around to the opposite edge)."""
    out = np.zeros_like(mask)
    h, w = mask.shape[:2]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def perturb_mask(rng: np.random.Generator, mask: np.ndarray, wrap: bool = False) -> np.ndarray:
    """Make a ground-truth mask look like a segmenter's: eroded, dilated, shifted, fragmented
    or bleeding into the neighbourhood. Superpixels and SAM2 masks are never exact, and a model
    trained only on exact masks would key on the mask outline.

    ``wrap`` shifts with ``np.roll`` (a mask near an edge reappears at the opposite edge), as
    training recipe 1 did; it is kept only so that recipe reproduces its model bit for bit."""
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
        shifted = np.roll(out, (dy, dx), axis=(0, 1)) if wrap else shift_mask(out, dy, dx)
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
    combo: tuple[str, str] | None = None,
    randomize: bool = False,
    rotation_limits: dict[str, float] | None = None,
) -> CropSample:
    """One object crop cut out of a freshly generated scene, exactly as the embedder cuts it.

    The target is ``combo``, or drawn from ``which`` (painted in an :func:`off_palette_rgb`
    colour if ``off_palette``, the crop's ``color`` then None); its neighbours, which may
    occlude it or leak into a perturbed mask, are always seen combos (held-out pairs never
    appear in training samples). ``randomize`` (training recipe 2) varies what a camera and a
    renderer vary: see :func:`_scene_with_target` and :func:`simulate_camera`; it also shifts
    perturbed masks without wrapping them around the image. ``rotation_limits`` (degrees
    either way per shape, others free; default the scenes' own) changes angles only, so every
    other draw stays as it was.
    """
    # Imported here: the core is ROS-free and imports nothing from this module, but keeping
    # the dependency local avoids import cycles for tools that only draw scenes.
    from semret_ros.core.visual_prompt import crop_region

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if combo is None:
        targets = combos(which)
        color, shape = targets[int(rng.integers(len(targets)))]
    else:
        color, shape = combo
    hard = bool(rng.random() < hard_prob)
    scene_seed = int(rng.integers(2**62))
    n_others = int(rng.integers(1, 4))
    # The target goes in first (drawn at the bottom), so neighbours may occlude it.
    rgb = off_palette_rgb(rng) if off_palette else np.array(COLORS[color], np.float32)
    if randomize:
        scene_size = int(scene_size * rng.uniform(0.7, 1.4))
    scene = _scene_with_target(
        scene_seed, scene_size, color, shape, rgb, n_others, hard, randomize, rotation_limits
    )
    image = simulate_camera(rng, scene.image) if randomize else scene.image
    target = scene.objects[0]
    mask = perturb_mask(rng, target.mask, wrap=not randomize) if perturb else target.mask
    pad = float(rng.uniform(*padding))
    crop = crop_region(image, mask, mode="masked_crop", padding=pad)
    return CropSample(crop=crop, color=None if off_palette else color, shape=shape)


def _scene_with_target(
    seed: int,
    size: int,
    color: str,
    shape: str,
    rgb: np.ndarray,
    n_others: int,
    hard: bool,
    randomize: bool = False,
    rotation_limits: dict[str, float] | None = None,
) -> Scene:
    """A small scene whose first (bottom) object is (color, shape); the others are seen combos
    with other colours and shapes, drawn on top so they may occlude the target.

    ``randomize``: drawn 1-2x larger and shrunk by area averaging (anti-aliased edges of
    random softness), objects of a wider size range, lit and finely textured
    (:func:`_light_and_texture`), and backgrounds from :data:`_VARIED_BACKGROUNDS`.
    """
    rng = np.random.default_rng(seed)
    factor = int(rng.integers(1, 3)) if randomize else 1
    canvas = size * factor
    others = [c for c in SEEN_COMBOS if c[0] != color and c[1] != shape]
    pairs = [(color, shape)]
    for k in rng.permutation(len(others)):
        if len(pairs) > n_others:
            break
        if all(others[k][0] != p[0] and others[k][1] != p[1] for p in pairs):
            pairs.append(others[k])
    r_lo, r_hi = (0.12, 0.34) if randomize else (0.16, 0.3) if hard else (0.18, 0.32)
    placed: list[tuple[float, float, float]] = []
    kept: list[tuple[str, str]] = []
    masks: list[np.ndarray] = []
    cover = np.zeros((canvas, canvas), bool)
    for pair in pairs:
        r = float(rng.uniform(r_lo, r_hi) * canvas)
        cx, cy = (float(v) for v in rng.uniform(r, canvas - r, 2))
        if not all(np.hypot(cx - px, cy - py) > 0.6 * (r + pr) for px, py, pr in placed):
            continue
        rot = (_MAX_ROTATION if rotation_limits is None else rotation_limits).get(pair[1], 180.0)
        m = draw_shape_mask(pair[1], canvas, canvas, (cx, cy), r, rng.uniform(-rot, rot))
        # Neighbours may occlude the target, but never more than half of it.
        if masks and (masks[0] & ~(cover | m)).sum() < 0.5 * masks[0].sum():
            continue
        if masks:
            cover |= m
        placed.append((cx, cy, r))
        kept.append(pair)
        masks.append(m)
    families = _VARIED_BACKGROUNDS if randomize else _BACKGROUNDS
    # Drawn at the output size: the background has no edges worth anti-aliasing.
    img = draw_background(rng, size, size, hard, families)
    if factor > 1:
        img = cv2.resize(img, (canvas, canvas), interpolation=cv2.INTER_LINEAR)
    for k, ((c, _s), m) in enumerate(zip(kept, masks, strict=True)):
        paint = rgb if k == 0 else np.array(COLORS[c], np.float32)
        _paint_object(rng, img, m, paint, hard, varied=randomize)
    above = np.zeros((canvas, canvas), bool)
    visible: list[np.ndarray] = []
    for m in reversed(masks):
        visible.append(m & ~above)
        above |= m
    visible.reverse()
    if factor > 1:
        # Area averaging: each pixel mixes what covers it, as a real lens and sensor do.
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        visible = [
            cv2.resize(v.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0.5
            for v in visible
        ]
    image = np.ascontiguousarray(img.clip(0, 255).astype(np.uint8))
    objects = tuple(
        SceneObject(color=c, shape=s, mask=v, bbox=bbox_of_mask(v))
        for (c, s), v in zip(kept, visible, strict=True)
        if v.any()
    )
    return Scene(image=image, objects=objects, seed=seed, hard=hard)


def simulate_camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """What a camera does to a rendered ``image`` (HxWx3 uint8): exposure, gamma and a mild
    white balance, lens blur, sensor noise and JPEG compression, each of random strength.

    The changes keep every colour name true: gains stay within 12 % and shift all channels
    nearly alike, so an orange object never turns red or yellow.
    """
    img = image.astype(np.float32) / 255.0
    gamma = rng.uniform(0.8, 1.25)
    gain = rng.uniform(0.88, 1.12) * (1.0 + rng.uniform(-0.04, 0.04, 3))
    img = np.clip(img, 0.0, 1.0) ** gamma * gain.astype(np.float32)
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.6))
    if rng.random() < 0.7:
        sigma = rng.uniform(0.005, 0.035)
        shared = rng.normal(0.0, sigma, (*img.shape[:2], 1))
        img = img + (shared + rng.normal(0.0, sigma / 2, img.shape)).astype(np.float32)
    out = np.ascontiguousarray((img.clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    if rng.random() < 0.5:
        quality = int(rng.integers(25, 96))
        _ok, data = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])
    return out


def _patch_of(rng: np.random.Generator, free: np.ndarray) -> np.ndarray:
    """A random ellipse of background between the objects (``free``), or all of it when the
    ellipse misses it."""
    size = free.shape[0]
    ys, xs = np.nonzero(free)
    j = int(rng.integers(len(ys)))
    blob = np.zeros(free.shape, np.uint8)
    axes = tuple(int(a) for a in rng.uniform(0.08, 0.3, 2) * size)
    cv2.ellipse(blob, (int(xs[j]), int(ys[j])), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    mask = blob.astype(bool) & free
    return mask if mask.any() else free


def no_object_mask(rng: np.random.Generator, scene: Scene, whole_share: float = 0.0) -> np.ndarray:
    """The mask of a region of ``scene`` that is no object, as a segmenter cuts one.

    Half are ribbons along an object's outline (the thin superpixels felzenszwalb leaves at
    blurred edges, which look like outlines of shapes), half are background patches between
    the objects; of the patches, ``whole_share`` are the whole background around them (a
    smooth wall or floor is one region spanning the frame)."""
    covered = np.zeros(scene.image.shape[:2], bool)
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
        return mask
    free = ~cv2.dilate(covered.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    # Drawn only when asked for, so that earlier recipes keep their random streams.
    whole = whole_share > 0 and rng.random() < whole_share
    return free if whole else _patch_of(rng, free)


def sample_background_crop(
    seed: int | np.random.Generator | tuple[int, ...],
    scene_size: int = 160,
    hard_prob: float = 0.5,
    padding: tuple[float, float] = (0.05, 0.2),
    randomize: bool = False,
    whole_share: float = 0.0,
) -> np.ndarray:
    """A crop of a region that is no object (:func:`no_object_mask`), cut as the embedder cuts
    regions. Ribbons' masked crops look like outlines of shapes; the whole background's is a
    frame-sized rectangle with holes, which a model that never saw one calls a square of the
    wall's colour. Scenes use seen combos only. ``randomize`` as in :func:`sample_crop`.
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
        randomize,
    )
    mask = no_object_mask(rng, scene, whole_share)
    pad = float(rng.uniform(*padding))
    image = simulate_camera(rng, scene.image) if randomize else scene.image
    return crop_region(image, mask, mode="masked_crop", padding=pad)


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


# ---------------------------------------------------------------------------------------------
# Depth

SHAPES_HFOV_DEG = 60.0
"""Horizontal field of view of the shapes world's camera (square pixels), like a robot's
RGB-D camera (RealSense D435 colour 69 deg, Kinect v1 57 deg)."""

OBJECT_DEPTH_RANGE_M = (0.8, 3.0)
"""Objects stand this far from the camera; ones drawn later (on top) are nearer."""

WALL_DEPTH_RANGE_M = (3.5, 5.0)
"""The background is a wall this far away along the optical axis, tilted, never nearer than
the farthest object anywhere in the image."""


@dataclass(frozen=True)
class DepthScene:
    """A registered depth image of a :class:`Scene`, as an RGB-D camera would measure it."""

    depth_m: np.ndarray
    """HxW float32 metres with sensor noise and millimetre steps; NaN where the sensor has no
    reading (random dropouts, blobs, object edges)."""
    true_depth_m: np.ndarray
    """HxW float32 metres without noise or holes."""
    intrinsics: CameraIntrinsics
    centroids: np.ndarray
    """(num_objects, 3) float64: per object of the scene (same order), the mean of its visible
    mask's pixels back-projected at their true depth, in the optical frame (x right, y down,
    z forward)."""


def shapes_intrinsics(width: int, height: int) -> CameraIntrinsics:
    """The shapes world's pinhole camera for a ``width`` x ``height`` image (centred principal
    point, square pixels, :data:`SHAPES_HFOV_DEG` across)."""
    focal = width / (2.0 * np.tan(np.deg2rad(SHAPES_HFOV_DEG) / 2.0))
    return CameraIntrinsics(
        fx=focal, fy=focal, cx=(width - 1) / 2.0, cy=(height - 1) / 2.0, width=width, height=height
    )


def _plane_depth(
    rays_x: np.ndarray,
    rays_y: np.ndarray,
    depth: float,
    through: tuple[float, float],
    tilt: tuple[float, float],
) -> np.ndarray:
    """Depth along each pixel's ray (normalised image coordinates) of the plane with normal
    (tilt_x, tilt_y, 1) through the point at ``depth`` on the ray ``through``."""
    tx, ty = tilt
    return depth * (tx * through[0] + ty * through[1] + 1.0) / (tx * rays_x + ty * rays_y + 1.0)


def render_depth(scene: Scene, seed: int | None = None) -> DepthScene:
    """A registered depth image of ``scene``, deterministic from ``seed`` (default: the
    scene's own seed); the RGB image is left as it is.

    Every object is a slightly tilted flat cut-out at its own depth in
    :data:`OBJECT_DEPTH_RANGE_M`, objects drawn later (occluders) nearer than those they
    cover, in front of a tilted wall (:data:`WALL_DEPTH_RANGE_M`). The measured image has what
    makes real depth hard: noise growing with the square of the distance (sigma = 0.001 z^2 m,
    a structured-light/stereo sensor's), millimetre quantisation (16UC1), random dropouts, a
    few blobs without a reading, and at object edges missing pixels and "flying pixels" with
    depths between the object and what lies behind it.
    """
    rng = np.random.default_rng([scene.seed if seed is None else seed, 0xDE97])
    height, width = scene.image.shape[:2]
    intrinsics = shapes_intrinsics(width, height)
    rays_x = (np.arange(width) - intrinsics.cx) / intrinsics.fx
    rays_y = (np.arange(height) - intrinsics.cy) / intrinsics.fy

    wall = rng.uniform(*WALL_DEPTH_RANGE_M)
    # Tilted by at most 7.5 % of the depth per image axis, in any image shape: the wall's
    # nearest corner stays behind the farthest object.
    wall_tilt = (
        float(rng.uniform(-0.075, 0.075) / np.abs(rays_x).max()),
        float(rng.uniform(-0.075, 0.075) / max(np.abs(rays_y).max(), 1e-6)),
    )
    true_depth = _plane_depth(rays_x[None, :], rays_y[:, None], wall, (0.0, 0.0), wall_tilt)
    # One depth slot per object, far to near in drawing order, jittered within its slot.
    n = len(scene.objects)
    near, far = OBJECT_DEPTH_RANGE_M
    gap = (far - near) / (n + 1)
    depths = far - gap * np.arange(1, n + 1) + rng.uniform(-0.3, 0.3, n) * gap
    centroids = np.zeros((n, 3), np.float64)
    for i, (obj, depth) in enumerate(zip(scene.objects, depths, strict=True)):
        ys, xs = np.nonzero(obj.mask)
        through = (float(rays_x[xs].mean()), float(rays_y[ys].mean()))
        tilt = (float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15)))
        z = _plane_depth(rays_x[xs], rays_y[ys], float(depth), through, tilt)
        true_depth[ys, xs] = z
        centroids[i] = (np.mean(rays_x[xs] * z), np.mean(rays_y[ys] * z), np.mean(z))

    measured = true_depth + rng.normal(0.0, 1.0, true_depth.shape) * 0.001 * true_depth**2
    # Object edges: the sensor sees a mix of the object and what lies behind it, or nothing.
    ids = scene.instance_ids.astype(np.float32)
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(ids, kernel) != cv2.erode(ids, kernel)
    nearest = cv2.erode(true_depth.astype(np.float32), kernel)
    farthest = cv2.dilate(true_depth.astype(np.float32), kernel)
    u = rng.random(true_depth.shape)
    flying = edge & (u < 0.2)
    mix = rng.uniform(0.1, 0.9, true_depth.shape)
    measured[flying] = (nearest + mix * (farthest - nearest))[flying]
    holes = (edge & (u > 0.6)) | (rng.random(true_depth.shape) < rng.uniform(0.005, 0.02))
    blobs = np.zeros((height, width), np.uint8)
    side = min(width, height)
    for _ in range(int(rng.integers(2, 6))):
        center = (int(rng.integers(width)), int(rng.integers(height)))
        axes = tuple(max(1, int(a)) for a in rng.uniform(0.02, 0.06, 2) * side)
        cv2.ellipse(blobs, center, axes, rng.uniform(0, 180), 0, 360, 1, -1)
    holes |= blobs.astype(bool)
    measured = np.round(measured * 1000.0) / 1000.0
    measured[holes] = np.nan
    return DepthScene(
        depth_m=measured.astype(np.float32),
        true_depth_m=true_depth.astype(np.float32),
        intrinsics=intrinsics,
        centroids=centroids,
    )


# ---------------------------------------------------------------------------------------------
# Large scenes (semantic localization of big images)


@dataclass(frozen=True)
class LargeScene:
    """A big image of many small, non-overlapping shapes: test data for localization.

    Object masks live in one id image: a boolean mask per object would take width x height
    bytes each (16 MB at 4096 x 4096), too much for hundreds of objects.
    """

    image: np.ndarray
    """HxWx3 uint8 RGB."""
    instance_ids: np.ndarray
    """HxW int32: object i (0-based) is id i + 1, background 0."""
    objects: tuple[tuple[str, str], ...]
    """(colour, shape) of object i."""
    seed: int
    hard: bool

    def mask(self, color: str | None = None, shape: str | None = None) -> np.ndarray:
        """HxW bool: every object of this colour and/or shape (the truth of a phrase)."""
        if color is None and shape is None:
            raise ValueError("mask: name a colour, a shape or both")
        wanted = [
            i + 1
            for i, (c, s) in enumerate(self.objects)
            if color in (None, c) and shape in (None, s)
        ]
        return np.isin(self.instance_ids, wanted)


def generate_large_scene(
    seed: int,
    width: int = 4096,
    height: int = 4096,
    num_objects: int = 150,
    radius: tuple[float, float] = (40.0, 90.0),
    hard: bool = False,
    include: tuple[tuple[str, str], ...] = (),
) -> LargeScene:
    """Many small shapes scattered over one big background, deterministic from ``seed``.

    Unlike :func:`generate_scene`, combinations may repeat (a phrase can name several objects,
    as a localization target usually does) and sizes are in pixels, not relative to the
    image. The ``include`` combinations are placed first, each once (repeat one to get several
    of it); the others are drawn uniformly from :data:`ALL_COMBOS`. Objects do not overlap:
    each keeps 1.1 x the sum of the radii from the others, and one that finds no free spot in
    100 tries is left out, so a crowded request gets fewer objects (``objects`` lists those
    drawn). Memory: the background is drawn in float32 at full size (about 1 GB at 4096 x 4096).
    """
    if width < 16 or height < 16:
        raise ValueError(f"width and height must be >= 16, got {width}x{height}")
    low, high = (float(v) for v in radius)
    if not 1.0 <= low <= high or 2.2 * high >= min(width, height):
        raise ValueError(
            f"radius: expected 1 <= low <= high < {min(width, height) / 2.2:.0f} px, got {radius}"
        )
    include = tuple(tuple(pair) for pair in include)
    for color, shape in include:
        if color not in COLORS or shape not in SHAPES:
            raise ValueError(f"include: unknown combination {(color, shape)!r}")
    if num_objects < max(1, len(include)):
        raise ValueError(f"num_objects: expected >= max(1, {len(include)}), got {num_objects}")
    rng = np.random.default_rng([seed, 0x1A26E])
    drawn = rng.integers(len(ALL_COMBOS), size=num_objects - len(include))
    picked = [*include, *(ALL_COMBOS[int(k)] for k in drawn)]

    centres = np.zeros((0, 3))
    kept: list[tuple[tuple[str, str], float, float, float]] = []
    for pair in picked:
        r = float(rng.uniform(low, high))
        for _ in range(100):
            cx, cy = float(rng.uniform(r, width - r)), float(rng.uniform(r, height - r))
            gaps = np.hypot(centres[:, 0] - cx, centres[:, 1] - cy) - 1.1 * (centres[:, 2] + r)
            if np.all(gaps > 0):
                centres = np.vstack([centres, (cx, cy, r)])
                kept.append((pair, cx, cy, r))
                break

    img = draw_background(rng, height, width, hard)
    ids = np.zeros((height, width), np.int32)
    for index, ((color, shape), cx, cy, r) in enumerate(kept):
        margin = r + 2.0
        x0, y0 = max(0, int(cx - margin)), max(0, int(cy - margin))
        x1 = min(width, int(np.ceil(cx + margin)) + 1)
        y1 = min(height, int(np.ceil(cy + margin)) + 1)
        rot = _MAX_ROTATION.get(shape, 180.0)
        local = draw_shape_mask(
            shape, y1 - y0, x1 - x0, (cx - x0, cy - y0), r, rng.uniform(-rot, rot)
        )
        # A view: painting the window paints the image.
        _paint_object(rng, img[y0:y1, x0:x1], local, np.array(COLORS[color]), hard)
        ids[y0:y1, x0:x1][local] = index + 1
    image = np.ascontiguousarray(img.clip(0, 255).astype(np.uint8))
    return LargeScene(
        image=image,
        instance_ids=ids,
        objects=tuple(pair for pair, *_ in kept),
        seed=seed,
        hard=hard,
    )


# ---------------------------------------------------------------------------------------------
# Segmentation training scenes (the shipped small SAM2)

_SEGMENTATION_ASPECTS = (4 / 3, 16 / 9, 1.0, 3 / 4)
"""Width / height of segmentation training scenes: SAM2 squashes every image to a square, so
objects must be seen stretched as each camera shape stretches them."""


def generate_segmentation_scene(seed: int | tuple[int, ...]) -> Scene:
    """A domain-randomised scene for training a class-agnostic segmenter (the small SAM2).

    Recipe 2's randomisation applied to whole scenes: random size and aspect ratio, objects
    drawn up to 2x larger and area-averaged down (anti-aliased edges), freely rotated, 1-8 of
    them of a wide size range and overlapping at random (each keeps at least 30 % of its area
    visible), a quarter painted in colours no colour name describes, lit and finely textured
    (:func:`_light_and_texture`), on backgrounds from :data:`_VARIED_BACKGROUNDS`, then passed
    through :func:`simulate_camera` (exposure, blur, noise, JPEG). Held-out colour-shape pairs
    are never drawn. Objects off the palette are named ``"other <shape>"``.
    """
    rng = np.random.default_rng(seed)
    aspect = _SEGMENTATION_ASPECTS[int(rng.integers(len(_SEGMENTATION_ASPECTS)))]
    long_side = float(rng.uniform(288, 640))
    width, height = (
        (round(long_side), round(long_side / aspect))
        if aspect >= 1
        else (round(long_side * aspect), round(long_side))
    )
    factor = 2 if long_side <= 400 and rng.random() < 0.5 else 1
    cw, ch = width * factor, height * factor
    side = min(cw, ch)
    hard = bool(rng.random() < 0.6)
    n = int(rng.integers(1, 9))
    min_sep = float(rng.uniform(0.4, 1.1))
    placed: list[tuple[float, float, float]] = []
    drawn: list[tuple[str, np.ndarray, np.ndarray]] = []
    for _ in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        r = float(rng.uniform(0.05, 0.2) * side)
        for _ in range(30):
            cx, cy = float(rng.uniform(r, cw - r)), float(rng.uniform(r, ch - r))
            if all(np.hypot(cx - px, cy - py) > min_sep * (r + pr) for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        if rng.random() < 0.25:
            name, rgb = "other", off_palette_rgb(rng, min_distance=60.0)
        else:
            names = [c for c in COLORS if (c, shape) not in HELD_OUT]
            name = names[int(rng.integers(len(names)))]
            rgb = np.array(COLORS[name], np.float32)
        mask = draw_shape_mask(shape, ch, cw, (cx, cy), r, rng.uniform(0.0, 360.0))
        if mask.any():
            drawn.append((f"{name} {shape}", rgb, mask))

    above = np.zeros((ch, cw), bool)
    visible: dict[int, np.ndarray] = {}
    for i in range(len(drawn) - 1, -1, -1):
        full = drawn[i][2]
        vis = full & ~above
        if vis.sum() >= 0.3 * full.sum():
            visible[i] = vis
        above |= full

    img = draw_background(rng, height, width, hard, _VARIED_BACKGROUNDS)
    if factor > 1:
        img = cv2.resize(img, (cw, ch), interpolation=cv2.INTER_LINEAR)
    for _name, rgb, mask in drawn:
        _paint_object(rng, img, mask, rgb, hard, varied=True)
    if factor > 1:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    image = simulate_camera(rng, np.ascontiguousarray(img.clip(0, 255).astype(np.uint8)))
    objects = []
    for i in sorted(visible):
        mask = visible[i]
        if factor > 1:
            small = cv2.resize(mask.astype(np.float32), (width, height), cv2.INTER_AREA)
            mask = small > 0.5
        if mask.sum() >= 16:
            color, shape = drawn[i][0].split(" ")
            objects.append(
                SceneObject(color=color, shape=shape, mask=mask, bbox=bbox_of_mask(mask))
            )
    scene_seed = seed if isinstance(seed, int) else int(seed[-1])
    return Scene(image=image, objects=tuple(objects), seed=scene_seed, hard=hard)
