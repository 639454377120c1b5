"""Semantic localization of large images (seed 001): where in a big picture does a phrase fit?

Square windows of several sizes slide over the image; CLIP embeds each window whole and scores
it against each phrase; every pixel gets the mean score of the windows covering it (sum of
scores / number of windows); the map is min-max normalised and median-smoothed. That is the
seed's ``generate_slm.py``, whose defaults this module keeps:

* windows of 512 and 768 px, each size on a lattice whose step is the size, plus the same
  lattice shifted by half a step right and down; a window running past the right or bottom
  edge is moved back to end on it, and duplicates are dropped;
* the score is the cosine between window and phrase features (unclipped: the map is min-max
  normalised afterwards, so negative cosines still order the windows);
* the map is normalised to 0..255 and median-blurred with a 251 px kernel on 6105 px tiles,
  i.e. 4.1 % of the longer side.

Two changes keep memory bounded on images of tens of megapixels:

* windows are streamed: their coordinates are listed (a few bytes each) but their pixels are
  cut, embedded and dropped one batch at a time (the seed writes every window to disk first);
* scores are accumulated on cells of ``cell`` x ``cell`` pixels (8: 1/64 of the pixels), and
  the map is upsampled only when it is written. A cell holds sum(score x overlap) /
  sum(overlap) over its pixels, which equals the per-pixel mean exactly wherever the same
  windows cover the whole cell and blends the two sides of a window edge by pixel count
  elsewhere; ``cell=1`` is the seed's per-pixel map.

Nothing here reads files or draws; :func:`read_image` and :func:`truth_regions` are the
boundary with the files a user brings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from semret_ros.core.image import check_image
from semret_ros.core.scoring import QueryConfig, check_phrases, region_relevance

if TYPE_CHECKING:  # the window grid, accumulation and file helpers need no torch
    from semret_ros.core.embedder import ClipEmbedder

SEED_WINDOW_SIZES: tuple[int, ...] = (512, 768)
SEED_SMOOTH_FRACTION = 251 / 6105
"""The seed's median kernel (251 px) over its tiles' side (6105 px)."""
DEFAULT_CELL = 8
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Window:
    """A square window: columns x .. x + size - 1, rows y .. y + size - 1."""

    x: int
    y: int
    size: int

    @property
    def x1(self) -> int:
        return self.x + self.size

    @property
    def y1(self) -> int:
        return self.y + self.size


@dataclass
class LocalizeConfig:
    """How windows are cut, scored, accumulated and smoothed (defaults: the seed's).

    ``window_steps`` holds one step per size (None: each size, the seed's); a step may not
    exceed its size, or pixels between windows would have no score. ``shifted`` adds each
    lattice again moved by half its step in both directions (the seed's second pass).
    ``query.mode`` is ``"cosine"`` (the seed's raw cosine) or ``"contrastive"``
    (:func:`~semret_ros.core.scoring.region_relevance` against ``query.negatives``).
    """

    window_sizes: tuple[int, ...] = SEED_WINDOW_SIZES
    window_steps: tuple[int, ...] | None = None
    shifted: bool = True
    cell: int = DEFAULT_CELL
    smooth_fraction: float = SEED_SMOOTH_FRACTION
    """Median kernel / longer image side (0: no smoothing)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    query: QueryConfig = field(default_factory=lambda: QueryConfig(mode="cosine"))

    def __post_init__(self) -> None:
        self.window_sizes = tuple(int(s) for s in self.window_sizes)
        if not self.window_sizes or min(self.window_sizes) < 1:
            raise ValueError(f"window_sizes: expected sizes >= 1 px, got {self.window_sizes}")
        if len(set(self.window_sizes)) != len(self.window_sizes):
            raise ValueError(f"window_sizes: duplicate size in {self.window_sizes}")
        if self.window_steps is None:
            self.window_steps = self.window_sizes
        self.window_steps = tuple(int(s) for s in self.window_steps)
        if len(self.window_steps) != len(self.window_sizes):
            raise ValueError(
                f"window_steps: expected one step per window size ({len(self.window_sizes)}), "
                f"got {len(self.window_steps)}"
            )
        for size, step in zip(self.window_sizes, self.window_steps, strict=True):
            if not 1 <= step <= size:
                raise ValueError(
                    f"window_steps: the step of the {size} px windows must be in [1, {size}] "
                    f"(a larger step leaves pixels no window covers), got {step}"
                )
        if self.cell < 1:
            raise ValueError(f"cell: expected >= 1 px, got {self.cell}")
        if not (math.isfinite(self.smooth_fraction) and 0.0 <= self.smooth_fraction <= 1.0):
            raise ValueError(
                f"smooth_fraction: expected a number in [0, 1], got {self.smooth_fraction}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        self.query.validate()


# ------------------------------------------------------------------------------------ windows


def axis_starts(length: int, size: int, step: int, offset: int = 0) -> list[int]:
    """Start positions of ``size`` windows along one axis: offset, offset + step, ...

    A window that would run past ``length`` is moved back to end on it (the seed's rule), so
    with offset 0 and step <= size every position of the axis is covered. Ascending, unique.
    """
    if not 1 <= size <= length:
        raise ValueError(f"size: expected 1..{length}, got {size}")
    return sorted({min(start, length - size) for start in range(offset, length, step)})


def window_grid(height: int, width: int, config: LocalizeConfig) -> list[Window]:
    """Every window of every size, unique, in the order they are embedded (size by size).

    Raises ValueError when a window size exceeds the image's shorter side: a square window
    cannot be cut there, and shrinking it silently would change what the map means.
    """
    shorter = min(height, width)
    too_big = [size for size in config.window_sizes if size > shorter]
    if too_big:
        raise ValueError(
            f"window_sizes: {too_big[0]} px windows do not fit the {width}x{height} image "
            f"(its shorter side is {shorter} px); use window sizes <= {shorter}"
        )
    windows: dict[Window, None] = {}
    for size, step in zip(config.window_sizes, config.window_steps, strict=True):
        for offset in (0, step // 2) if config.shifted else (0,):
            rows = axis_starts(height, size, step, offset)
            cols = axis_starts(width, size, step, offset)
            windows.update((Window(x, y, size), None) for y in rows for x in cols)
    return list(windows)


def window_batches(
    image: np.ndarray, windows: Sequence[Window], batch_size: int, side: int | None = None
) -> Iterator[tuple[Sequence[Window], list[np.ndarray]]]:
    """(windows, pictures) one batch at a time, so only one batch ever exists as pictures.

    Without ``side`` the pictures are views into ``image`` (no copy). With it, windows larger
    than ``side`` come shrunk to ``side`` x ``side`` by area averaging (the anti-aliased
    reduction): the encoder sees that size anyway, and OpenCV shrinks a 768 px window in well
    under a millisecond where the model's PIL resize takes about 10 ms.
    """
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        views = [image[w.y : w.y1, w.x : w.x1] for w in batch]
        if side is not None:
            views = [
                cv2.resize(view, (side, side), interpolation=cv2.INTER_AREA)
                if view.shape[0] > side
                else view
                for view in views
            ]
        yield batch, views


# ------------------------------------------------------------------------------- accumulation


class HeatmapAccumulator:
    """Overlap-weighted mean of window scores on a grid of ``cell`` x ``cell`` pixel cells.

    ``sums[r, c, p]`` is the sum over windows of score_p x (pixels of cell (r, c) the window
    covers), ``counts[r, c]`` the sum of those pixel counts; their ratio is the mean score of
    the windows over the cell's pixels. Cells on the right and bottom edges may be partial.
    """

    def __init__(self, height: int, width: int, channels: int, cell: int = DEFAULT_CELL) -> None:
        if height < 1 or width < 1 or channels < 1 or cell < 1:
            raise ValueError(
                f"expected height, width, channels and cell >= 1, got "
                f"{height}, {width}, {channels}, {cell}"
            )
        self.height, self.width, self.cell = height, width, cell
        self.rows, self.cols = -(-height // cell), -(-width // cell)
        self.sums = np.zeros((self.rows, self.cols, channels), np.float64)
        self.counts = np.zeros((self.rows, self.cols), np.float64)

    def _overlap(self, start: int, stop: int, length: int) -> tuple[int, np.ndarray]:
        """First cell of [start, stop) along an axis and its pixel overlap with each cell."""
        if not 0 <= start < stop <= length:
            raise ValueError(f"window span {start}..{stop} lies outside 0..{length}")
        first, last = start // self.cell, (stop - 1) // self.cell
        edges = np.minimum(np.arange(first, last + 2) * self.cell, length)
        return first, (np.minimum(edges[1:], stop) - np.maximum(edges[:-1], start)).astype(
            np.float64
        )

    def add(self, windows: Sequence[Window], scores: np.ndarray) -> None:
        """Add each window's (channels,) scores (``scores`` is (N, channels))."""
        values = np.asarray(scores, np.float64)
        if values.shape != (len(windows), self.sums.shape[2]):
            raise ValueError(
                f"scores: expected shape ({len(windows)}, {self.sums.shape[2]}), got {values.shape}"
            )
        for window, row in zip(windows, values, strict=True):
            r0, along_rows = self._overlap(window.y, window.y1, self.height)
            c0, along_cols = self._overlap(window.x, window.x1, self.width)
            weight = np.outer(along_rows, along_cols)
            cells = (slice(r0, r0 + weight.shape[0]), slice(c0, c0 + weight.shape[1]))
            self.sums[cells] += weight[:, :, None] * row
            self.counts[cells] += weight

    def mean(self) -> np.ndarray:
        """(rows, cols, channels) float64 mean score per cell; NaN where no window reached."""
        out = np.full(self.sums.shape, np.nan)
        covered = np.broadcast_to((self.counts > 0)[:, :, None], out.shape)
        np.divide(self.sums, self.counts[:, :, None], out=out, where=covered)
        return out


# ---------------------------------------------------------------------------------- smoothing


def smooth_kernel(rows: int, cols: int, fraction: float) -> int:
    """Odd median kernel (in cells) of ``fraction`` x the longer side; 1 means no smoothing."""
    size = round(fraction * max(rows, cols))
    if size < 3:
        return 1
    return size if size % 2 else size + 1


def probability_map(heat: np.ndarray, kernel: int) -> np.ndarray:
    """The seed's probability map of one HxW score map: min-max to 0..255, median-blurred.

    uint8 because the seed's 251 px median runs on 8-bit data (OpenCV's large-kernel median
    is 8-bit only). NaN (never covered) counts as the minimum; a flat map is all 0, since no
    place is more relevant than another.
    """
    values = np.asarray(heat, np.float64)
    finite = np.isfinite(values)
    if values.ndim != 2 or not finite.any():
        raise ValueError(f"heat: expected an HxW map with finite values, got shape {values.shape}")
    low, high = float(values[finite].min()), float(values[finite].max())
    if high > low:
        scaled = np.where(finite, (values - low) / (high - low), 0.0)
    else:
        scaled = np.zeros(values.shape)
    gray = np.rint(scaled * 255.0).astype(np.uint8)
    return cv2.medianBlur(gray, kernel) if kernel > 1 else gray


def upsample(cells: np.ndarray, height: int, width: int, cell: int) -> np.ndarray:
    """A cell map (uint8 or float32) at full image resolution, bilinear between cell centres.

    The grid is resized to whole cells and then cropped, so partial edge cells keep their
    scale instead of stretching the whole map.
    """
    rows, cols = cells.shape[:2]
    if rows != -(-height // cell) or cols != -(-width // cell):
        raise ValueError(
            f"cells: shape {cells.shape[:2]} is not the {cell} px grid of {width}x{height}"
        )
    if cell == 1:
        return cells
    full = cv2.resize(cells, (cols * cell, rows * cell), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(full[:height, :width])


# ----------------------------------------------------------------------------------- the run


@dataclass
class Localization:
    """Everything one run over an image found, at cell resolution."""

    phrases: list[str]
    windows: list[Window]
    scores: np.ndarray
    """(N, P) float32 score of window n for phrase p."""
    heat: np.ndarray
    """(rows, cols, P) float64 overlap-weighted mean score per cell."""
    probability: np.ndarray
    """(rows, cols, P) uint8 smoothed, min-max normalised map (the seed's probmap)."""
    cell: int
    image_size: tuple[int, int]
    """(height, width) of the image."""
    smooth_kernel: int
    """Median kernel in cells (1: none)."""
    timings: dict[str, float]
    """Seconds: ``windows`` (cut + embed + score + accumulate), ``smooth``."""


def window_scores(
    features: np.ndarray,
    phrases: np.ndarray,
    negatives: np.ndarray | None,
    query: QueryConfig,
) -> np.ndarray:
    """(N, P) float32 scores of N window features against P phrase features.

    ``cosine``: the raw cosine (the seed's); ``contrastive``: the query relevance.
    """
    if query.mode == "cosine":
        return np.asarray(features, np.float32) @ np.asarray(phrases, np.float32).T
    return np.stack(
        [
            region_relevance(features, phrase, negatives, query.mode, query.contrast_scale)
            for phrase in phrases
        ],
        axis=1,
    )


def localize(
    image: np.ndarray,
    phrases: Sequence[str],
    embedder: ClipEmbedder,
    config: LocalizeConfig,
    progress: Callable[[int], None] | None = None,
) -> Localization:
    """Localize each phrase in ``image`` (HxWx3 uint8 RGB); ``progress`` gets each batch's size.

    Raises ValueError for phrases the scoring rejects (empty, duplicate) and windows that do
    not fit the image.
    """
    image = check_image(image)
    check_phrases("phrases", phrases)
    height, width = image.shape[:2]
    windows = window_grid(height, width, config)
    text = embedder.embed_text(list(phrases))
    negatives = (
        embedder.embed_text(list(config.query.negatives))
        if config.query.mode == "contrastive"
        else None
    )
    accumulator = HeatmapAccumulator(height, width, len(phrases), config.cell)
    scores = np.zeros((len(windows), len(phrases)), np.float32)
    start = time.perf_counter()
    done = 0
    for batch, pixels in window_batches(image, windows, config.batch_size, embedder.input_side):
        batch_scores = window_scores(embedder.embed_images(pixels), text, negatives, config.query)
        accumulator.add(batch, batch_scores)
        scores[done : done + len(batch)] = batch_scores
        done += len(batch)
        if progress is not None:
            progress(len(batch))
    windows_s = time.perf_counter() - start

    start = time.perf_counter()
    heat = accumulator.mean()
    kernel = smooth_kernel(accumulator.rows, accumulator.cols, config.smooth_fraction)
    probability = np.stack(
        [probability_map(heat[:, :, p], kernel) for p in range(len(phrases))], axis=2
    )
    return Localization(
        phrases=list(phrases),
        windows=windows,
        scores=scores,
        heat=heat,
        probability=probability,
        cell=config.cell,
        image_size=(height, width),
        smooth_kernel=kernel,
        timings={"windows": windows_s, "smooth": time.perf_counter() - start},
    )


# ------------------------------------------------------------------------------------- files


def read_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB from a PNG, JPEG or TIFF file of any size OpenCV allows.

    16-bit images are reduced to 8 bits and grey or alpha images to 3 channels (OpenCV's
    IMREAD_COLOR). OpenCV refuses images over ``OPENCV_IO_MAX_IMAGE_PIXELS`` pixels (default
    2^30, e.g. 32768 x 32768) as a guard against decompression bombs; the limit is left as it
    is, and the error says how to raise it. The BGR->RGB swap is done in place, so the
    image is held once.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such image file")
    try:
        bgr = cv2.imread(str(source), cv2.IMREAD_COLOR)
    except cv2.error as error:
        raise ValueError(
            f"{source}: OpenCV refused the image ({str(error).strip().splitlines()[-1]}); if it "
            "is larger than OPENCV_IO_MAX_IMAGE_PIXELS (default 2^30 pixels), set that "
            "environment variable higher"
        ) from error
    if bgr is None:
        raise ValueError(f"{source}: not an image OpenCV can read (PNG, JPEG, TIFF, ...)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)


def reduce_mask(mask: np.ndarray, cell: int) -> np.ndarray:
    """(rows, cols) bool: the cells at least half inside ``mask`` (HxW, nonzero = inside)."""
    inside = np.asarray(mask) != 0
    if inside.ndim != 2:
        raise ValueError(f"mask: expected an HxW image, got shape {inside.shape}")
    if cell == 1:
        return inside
    height, width = inside.shape
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell), np.uint8)
    padded[:height, :width] = inside
    covered = padded.reshape(rows, cell, cols, cell).sum(axis=(1, 3), dtype=np.int64)
    row_pixels = np.minimum(cell, height - np.arange(rows) * cell)
    col_pixels = np.minimum(cell, width - np.arange(cols) * cell)
    return 2 * covered >= np.outer(row_pixels, col_pixels)


def truth_regions(mask: np.ndarray, cell: int) -> list[np.ndarray]:
    """The regions of a ground-truth mask on the cell grid: its 8-connected components.

    The metrics compare every region's centre with the heatmap's peaks, so separate objects
    must be separate regions. Components thinner than half a cell vanish on the grid (and
    ones closer than a cell may merge); at the default 8 px cell that is below 4 px.
    """
    reduced = reduce_mask(mask, cell).astype(np.uint8)
    count, labels = cv2.connectedComponents(reduced, connectivity=8)
    return [labels == label for label in range(1, count)]
