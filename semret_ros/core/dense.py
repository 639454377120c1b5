"""Dense CLIP features: one feature per image cell, in the joint image-text space.

A CLIP image tower is trained to say what a whole picture shows, through one pooled vector.
Its spatial tokens are not in the text space as they come: the last ViT block mixes every
patch with every other (so a patch token mostly describes the scene), and a ResNet's
spatial map only reaches the text space through the attention pool. Training-free fixes make
the tokens local again, and give every cell of the image a feature a phrase can be compared
with, from one encoder pass over the image instead of one pass per region crop:

* **ViT** (open_clip ``VisionTransformer``): the blocks before the last run unchanged; the
  last block's attention is replaced (``attention``):

  - ``"clearclip"`` (ClearCLIP): query-query attention, no residual, no feed-forward;
  - ``"sclip"`` (SCLIP): correlative self-attention, softmax(q q^T) + softmax(k k^T), with
    the residual, no feed-forward;
  - ``"naclip"`` (NACLIP): key-key attention plus a Gaussian neighbourhood prior over patch
    positions (sigma 5 patches), no residual, no feed-forward.

  Every patch token then goes through ``ln_post`` and the projection ``proj``, exactly what
  the pooled token goes through (open_clip 3.3.0's ``forward`` projects the pooled token only
  and returns ``output_tokens`` unprojected, so the tokens are taken here, not from it).
* **ModifiedResNet** (open_clip's CLIP ResNets and the embedded default): MaskCLIP. The
  attention pool's output at one location is ``c_proj(v_proj(x))`` when the location attends
  only to itself, so those two projections are applied at every location of the last stage.
  The pool's positional embedding is left out: the embedded model's is a 2x2 grid (64 px
  input), which says nothing about where a cell lies in a 640x480 image. Measured on 12 hard
  scenes (full-name queries, similarity peak on the object): 0.868 without it, 0.868 with it
  interpolated bicubically to the grid, 0.879 with its mean added everywhere; no gain worth a
  choice. Running the real attention pool on every 2x2 window of cells (what the model
  computes for a 64 px crop there) did no better either (0.846, 1.7x slower).

The image is first resized so its shorter side is ``input_size`` pixels (rounded to whole
cells), then cut into square windows of ``window`` pixels overlapping by ``overlap``; the
windows are encoded in batches and each cell's feature is the mean over the windows that
cover it, L2-normalised. Cells tile the whole image uniformly, so cell (i, j) of an (h, w)
grid covers rows ``i * H / h`` to ``(i + 1) * H / h`` of an HxW image (see
:func:`cell_ids`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from semret_ros.core.image import check_image, check_instance_ids
from semret_ros.core.visual_prompt import square_window

ATTENTIONS = ("naclip", "sclip", "clearclip")
"""Training-free fixes of a ViT's last attention block (see the module docstring)."""
NACLIP_SIGMA = 5.0
"""NACLIP's Gaussian neighbourhood width in patches (the paper's value)."""
RESNET_INPUT_SCALE = 7.5
"""Default ``input_size`` of a ResNet tower in multiples of its training input side.

The embedded model saw single objects filling 64 px crops; in a 640x480 scene its objects are
40-85 px across, so the image fed at its native size (shorter side 480 = 7.5 x 64) shows
objects at the scale the tower was trained on. Measured on 12 hard 640x480 scenes (similarity
peak on the object named in full; label pixel accuracy by argmax): shorter side 240: 0.59 /
0.37, 360: 0.88 / 0.41, 480: 0.87 / 0.43, 640: 0.86 / 0.47 at 1.7x the cost of 480. A
convolutional tower needs no sliding window, so the whole image goes through in one pass."""
HEAD_FILE = "dense_head.safetensors"
"""In a ``local-dir:`` model folder: the learned dense head (:class:`DenseHead`), applied to
the tower's cells whenever the folder has it (``DenseConfig.head``)."""
HEAD_FORMAT = "semret-dense-head/1"
FINE_SCALE = 2
"""Cells of a ResNet tower's fine map (its last stage's input) per cell of its output, along
each side: the last stage halves the resolution."""
SILHOUETTE_PADDING = 0.1
"""Margin around a region's box in its silhouette, a share of the box's longer side (the crop
path's default ``crop_padding``)."""


@dataclass
class DenseConfig:
    """How a dense feature grid is computed; 0 means "the tower's own default"."""

    attention: str = "naclip"
    """ViT only: which fix of the last attention block (one of :data:`ATTENTIONS`)."""
    input_size: int = 0
    """Shorter side in pixels the image is resized to before encoding. 0: a ViT's input side
    (224 for ViT-B-16: cheap on a CPU); a ResNet's input side x :data:`RESNET_INPUT_SCALE`."""
    window: int = 0
    """Side in pixels of the square sliding window (of the resized image). 0: a ViT's input
    side (its positional embedding's own size); for a ResNet the whole resized image in one
    pass (convolutions need no window). Other sizes interpolate a ViT's positional
    embedding."""
    overlap: float = 0.5
    """Fraction of a window shared with its neighbour, in [0, 0.9]."""
    batch_size: int = 16
    """Windows per encoder pass."""
    head: bool = True
    """Apply the model folder's learned dense head (:data:`HEAD_FILE`, trained by
    ``semret-train --objective clic-region`` or ``clic``) when it has one; False: the
    training-free cells."""

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        for name in ("input_size", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: default), got {value!r}")
        if not (math.isfinite(self.overlap) and 0.0 <= self.overlap <= 0.9):
            raise ValueError(f"overlap must be in [0, 0.9], got {self.overlap!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class MaskFreeConfig:
    """``segmenter.type: dense``: no mask proposals at all (seed 003).

    A frame's regions are the cells of its dense feature grid (``ClipConfig.dense`` says how
    it is computed); queries upsample the cells' relevance to the image and match the
    connected regions of the thresholded similarity. Nothing to configure here: the grid's
    settings are the embedder's, so region pooling and mask-free mode share them.
    """


class DenseHead(nn.Module):
    """A light learned transform of a frozen tower's cells (seed 002: the encoders stay black
    boxes, a small transform on their output is trained; here on the image side).

    The tower's cells know colour but hardly any shape: a 32 px cell sees a fraction of an
    outline. A few 3x3 convolutions over the grid let each cell read its neighbourhood (three
    layers: 7x7 cells) and return a feature in the same joint space, as a residual on the unit
    cell feature; the last layer starts at zero, so an untrained head is the identity (up to
    the normalisation every cell gets anyway). Input and output: (B, h, w, D), any scale in.

    With ``fine_dim`` (a ResNet tower only) the head also reads the tower's feature map one
    stage earlier (stride 16, ``fine_dim`` channels; :attr:`TowerCells.fine`), where an
    object's outline spans twice as many cells, and answers on that finer grid: the cells are
    upsampled bilinearly to it, and its convolutions alternate dilations 1 and 2 so that a few
    layers still see a whole object. Output: (B, 2h, 2w, D) (:attr:`scale` 2).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        layers: int = 3,
        fine_dim: int = 0,
        silhouette: int = 0,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or layers < 1 or fine_dim < 0:
            raise ValueError(
                "dim, hidden and layers must be >= 1 and fine_dim >= 0, got "
                f"{dim}, {hidden}, {layers}, {fine_dim}"
            )
        self.dim, self.hidden, self.layers, self.fine_dim = dim, hidden, layers, fine_dim
        self.region = RegionHead(dim, silhouette) if silhouette else None
        """The region part: what :meth:`DenseFeatureExtractor.pool` applies to the cells
        pooled over a region's mask, knowing the mask's outline (None: plain mean)."""
        self.scale = FINE_SCALE if fine_dim else 1
        """Output cells per input cell along each side."""
        self.reduce = nn.Conv2d(fine_dim, hidden, kernel_size=1) if fine_dim else None
        sizes = [dim + (hidden if fine_dim else 0)] + [hidden] * (layers - 1) + [dim]
        dilations = [1 + (i % 2 if fine_dim else 0) for i in range(layers - 1)] + [1]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=3, padding=d, dilation=d)
            for (a, b), d in zip(itertools.pairwise(sizes), dilations, strict=True)
        )
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, features: torch.Tensor, fine: torch.Tensor | None = None) -> torch.Tensor:
        unit = F.normalize(features.float(), dim=-1).permute(0, 3, 1, 2)
        x = unit * math.sqrt(self.dim)  # unit-variance entries for the convolutions
        if self.reduce is not None:
            if fine is None:
                raise ValueError("this dense head reads the tower's fine map: pass `fine`")
            fine = fine.float().permute(0, 3, 1, 2)
            fine = fine / fine.square().mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
            unit = F.interpolate(unit, size=fine.shape[2:], mode="bilinear", align_corners=False)
            unit = F.normalize(unit, dim=1)
            x = torch.cat([unit * math.sqrt(self.dim), F.gelu(self.reduce(fine))], dim=1)
        for conv in self.convs[:-1]:
            x = F.gelu(conv(x))
        return (unit + self.convs[-1](x)).permute(0, 2, 3, 1)


class RegionHead(nn.Module):
    """Mask-aware region pooling: the mean of a region's cells, corrected by its outline.

    A mean over cells keeps what the cells agree on (colour) and loses where the region ends:
    the outline, which is most of what a shape is. The crop path sees it (a masked crop is a
    silhouette in colour); this head gives it back to the dense path without a second encoder
    pass: the region's mask, cut square around its box (:func:`silhouettes`, as the crop path
    cuts it) and shrunk to ``size`` x ``size``, goes through three strided 3x3 convolutions,
    and a two-layer MLP reads that with the unit mean cell feature and adds a correction to it
    (its last layer starts at zero: an untrained region head gives the plain mean). In the
    spirit of mask adapters for frozen CLIPs (Mask-Adapter, CVPR 2025). Cost: a few small
    convolutions per region, no encoder pass.
    """

    def __init__(self, dim: int, size: int, hidden: int = 256) -> None:
        super().__init__()
        if size < 8 or size % 8:
            raise ValueError(f"silhouette size must be a multiple of 8, >= 8, got {size}")
        self.size = size
        self.outline = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(64 * (size // 8) ** 2, hidden),
        )
        self.mix = nn.Sequential(nn.Linear(dim + hidden, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mix[-1].weight)
        nn.init.zeros_(self.mix[-1].bias)

    def forward(self, pooled: torch.Tensor, silhouette: torch.Tensor) -> torch.Tensor:
        """(N, D) unit features of regions from their (N, D) mean cells and (N, size, size)
        silhouettes in [0, 1]."""
        unit = F.normalize(pooled.float(), dim=-1)
        outline = F.gelu(self.outline(silhouette.float()[:, None] * 2.0 - 1.0))
        delta = self.mix(torch.cat([unit * math.sqrt(unit.shape[1]), outline], dim=1))
        return F.normalize(unit + delta, dim=-1)

    def read(
        self, pooled: torch.Tensor, instance_ids: np.ndarray, bboxes: np.ndarray
    ) -> torch.Tensor:
        """:meth:`forward` for regions 1..N of an id image with their (N, 4) boxes: cuts their
        silhouettes (:func:`silhouettes`) on the head's device."""
        outline = torch.from_numpy(silhouettes(instance_ids, bboxes, self.size))
        return self(pooled, outline.to(pooled.device))


def silhouettes(
    instance_ids: np.ndarray, bboxes: np.ndarray, size: int, padding: float = SILHOUETTE_PADDING
) -> np.ndarray:
    """(N, size, size) float32 masks of regions 1..N of an id image, each cut as a square
    around its (x, y, w, h) box with ``padding`` (the crop path's square,
    :func:`~semret_ros.core.visual_prompt.square_window`) and shrunk by area averaging."""
    height, width = instance_ids.shape
    out = np.zeros((len(bboxes), size, size), np.float32)
    for index, box in enumerate(np.asarray(bboxes).reshape(-1, 4).tolist()):
        square = square_window(tuple(box), padding, height, width)
        canvas = np.zeros((square.side, square.side), np.float32)
        canvas[square.inner] = instance_ids[square.rows, square.cols] == index + 1
        out[index] = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return out


@dataclass(frozen=True)
class TowerCells:
    """What the frozen tower gives a batch of windows, before any learned head."""

    cells: torch.Tensor
    """(B, h, w, D) projected, not normalised cells in the joint space."""
    fine: torch.Tensor | None = None
    """ResNet only, when asked for: (B, 2h, 2w, C) the last stage's input (stride 16), what
    a :class:`DenseHead` with ``fine_dim`` C reads."""


def file_digest(path: Path) -> str:
    """sha256 of a file: ties a dense head to the exact tower weights it was trained on."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_dense_head(head: DenseHead, folder: Path, weights_file: Path) -> Path:
    """Write ``head`` into a model folder as :data:`HEAD_FILE` (fp32, a few MB at most),
    recording its shape and the digest of the CLIP weights file it was trained on."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()
    }
    metadata = {
        "format": HEAD_FORMAT,
        "dim": str(head.dim),
        "hidden": str(head.hidden),
        "layers": str(head.layers),
        "fine_dim": str(head.fine_dim),
        "silhouette": str(0 if head.region is None else head.region.size),
        "clip_weights_sha256": file_digest(weights_file),
    }
    path = folder / HEAD_FILE
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # safetensors writes owner-only files; a shipped model file is readable
    tmp.replace(path)
    return path


def load_dense_head(path: Path, dim: int, weights_file: Path | None) -> DenseHead:
    """The :class:`DenseHead` in ``path`` (:data:`HEAD_FILE`), checked against the tower.

    Raises:
        ValueError: the file is not a dense head, was made for another feature size, or was
            trained on other CLIP weights than ``weights_file`` (the message says how to
            retrain it or switch it off).
    """
    fix = (
        "retrain it (semret-train --objective clic-region --init <model folder>), delete it, or "
        "switch it off (dense.head: false)"
    )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"dense head {path} cannot be read ({err}): {fix}") from err
    if meta.get("format") != HEAD_FORMAT:
        raise ValueError(f"{path} is not a dense head (format {meta.get('format')!r}): {fix}")
    if int(meta["dim"]) != dim:
        raise ValueError(
            f"dense head {path} transforms {meta['dim']}-dim cells, but this CLIP's image "
            f"tower gives {dim}-dim ones: {fix}"
        )
    trained_on = meta.get("clip_weights_sha256")
    if weights_file is not None and trained_on != file_digest(weights_file):
        raise ValueError(
            f"dense head {path} was trained on other CLIP weights than {weights_file}: {fix}"
        )
    head = DenseHead(
        dim,
        int(meta["hidden"]),
        int(meta["layers"]),
        int(meta.get("fine_dim", 0)),
        int(meta.get("silhouette", 0)),
    )
    try:
        head.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"dense head {path} does not match its own shape ({err}): {fix}") from err
    return head.eval().requires_grad_(False)


@dataclass(frozen=True)
class WindowBatch:
    """An image resized and cut into windows, ready for :meth:`DenseFeatureExtractor.encode`."""

    pixels: torch.Tensor
    """(M, 3, S_h, S_w) float32 normalised windows, on the CPU."""
    origins: tuple[tuple[int, int], ...]
    """Per window, its top-left cell (row, column) in the grid."""
    grid_shape: tuple[int, int]
    """(h, w) cells of the whole image."""


class DenseFeatureExtractor:
    """(h, w, D) grids of L2-normalised CLIP features of an image, one per cell.

    Built on a loaded open_clip model (usually the embedder's, so no second copy is loaded):
    ``DenseFeatureExtractor.from_embedder(embedder, DenseConfig())``. ``extract`` is the
    whole job for one image; ``windows`` + ``encode`` + ``transform`` are its parts, for
    callers that batch images themselves or train on the features (``encode`` runs without
    gradients through the frozen tower, so a transform learned on its output can be trained;
    ``transform`` applies the model folder's learned :class:`DenseHead`, if any).
    """

    def __init__(
        self,
        visual: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        config: DenseConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        head: DenseHead | None = None,
    ) -> None:
        self.visual = visual
        self.head = None if head is None else head.to(device).eval()
        """The learned transform :meth:`extract` applies to the tower's cells (or None)."""
        self.config = config or DenseConfig()
        self.device = torch.device(device)
        self.dtype = dtype
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, np.float32).reshape(1, 1, 3)
        size = visual.image_size
        self.input_side = int(size) if isinstance(size, int) else int(max(size))
        self.fine_dim = 0
        """Channels of the tower's fine map (:attr:`TowerCells.fine`); 0: it has none."""
        if hasattr(visual, "attnpool") and hasattr(visual, "layer4"):
            self.kind = "resnet"
            spatial = round(math.sqrt(visual.attnpool.positional_embedding.shape[0] - 1))
            self.stride = self.input_side // spatial
            self.fine_dim = int(visual.layer4[0].conv1.in_channels)
        elif hasattr(visual, "transformer") and hasattr(visual, "conv1"):
            if getattr(visual, "attn_pool", None) is not None:
                raise ValueError("ViTs with an attentional pooler (CoCa) have no dense path")
            self.kind = "vit"
            patch = visual.patch_size
            self.stride = int(patch) if isinstance(patch, int) else int(patch[0])
        else:
            raise ValueError(
                f"no dense path for image tower {type(visual).__name__}: "
                "expected an open_clip VisionTransformer or ModifiedResNet"
            )
        if self.head is not None and self.head.fine_dim not in (0, self.fine_dim):
            raise ValueError(
                f"the dense head reads a {self.head.fine_dim}-channel fine map, but this "
                f"{self.kind} tower's has {self.fine_dim or 'none'}: retrain the head for this "
                "tower or switch it off (dense.head: false)"
            )

    @classmethod
    def from_embedder(
        cls, embedder: object, config: DenseConfig | None = None
    ) -> DenseFeatureExtractor:
        """The extractor on a ``ClipEmbedder``'s model, device and input dtype, with the
        dense head of the embedder's model folder (``model_dir``) when it has one and
        ``config.head`` is on."""
        config = config or DenseConfig()
        visual = embedder.model.visual
        folder = getattr(embedder, "model_dir", None)
        head = None
        if config.head and folder is not None and (Path(folder) / HEAD_FILE).is_file():
            head = load_dense_head(
                Path(folder) / HEAD_FILE,
                int(visual.output_dim),
                getattr(embedder, "weights_file", None),
            )
        normalize = embedder.preprocess.transforms[-1]
        return cls(
            visual,
            normalize.mean,
            normalize.std,
            config,
            device=embedder.device,
            dtype=embedder.input_dtype,
            head=head,
        )

    # ---------------------------------------------------------------------------- geometry
    @property
    def input_size(self) -> int:
        """Shorter side in pixels the image is resized to (the config's, or the default)."""
        if self.config.input_size:
            return self.config.input_size
        if self.kind == "vit":
            return self.input_side
        return round(self.input_side * RESNET_INPUT_SCALE)

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) cells the grid of an HxW image has."""
        scale = self.input_size / min(height, width)
        return (
            max(1, round(height * scale / self.stride)),
            max(1, round(width * scale / self.stride)),
        )

    @property
    def output_scale(self) -> int:
        """Grid cells per tower cell along each side: 2 with a head that reads the fine map."""
        return 1 if self.head is None else self.head.scale

    def _window_cells(self, cells: int) -> int:
        window = self.config.window or (self.input_side if self.kind == "vit" else 0)
        if window == 0:
            return cells
        return max(1, min(cells, round(window / self.stride)))

    def windows(self, image: np.ndarray) -> WindowBatch:
        """Resize and normalise ``image`` (HxWx3 uint8 RGB) and cut it into windows."""
        image = check_image(image)
        rows, cols = self.grid_shape(*image.shape[:2])
        size = (cols * self.stride, rows * self.stride)
        shrink = size[0] < image.shape[1]
        resized = cv2.resize(
            image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        )
        normalised = (resized.astype(np.float32) / 255.0 - self.mean) / self.std
        whole = torch.from_numpy(normalised).permute(2, 0, 1)
        win_rows, win_cols = self._window_cells(rows), self._window_cells(cols)
        starts_r = _window_starts(rows, win_rows, self.config.overlap)
        starts_c = _window_starts(cols, win_cols, self.config.overlap)
        origins = tuple((r, c) for r in starts_r for c in starts_c)
        step = self.stride
        side_r, side_c = win_rows * step, win_cols * step
        pixels = torch.stack(
            [
                whole[:, r * step : r * step + side_r, c * step : c * step + side_c]
                for r, c in origins
            ]
        )
        return WindowBatch(pixels=pixels, origins=origins, grid_shape=(rows, cols))

    # ----------------------------------------------------------------------------- encode
    def extract(self, image: np.ndarray) -> np.ndarray:
        """(h, w, D) float32 L2-normalised features of ``image`` (HxWx3 uint8 RGB); the grid
        is :attr:`output_scale` times :meth:`grid_shape` along each side."""
        batch = self.windows(image)
        features = torch.cat(
            [
                self.transform(self.encode(chunk))
                for chunk in batch.pixels.split(self.config.batch_size)
            ]
        )
        grid = assemble(features, batch, self.output_scale).numpy()
        if not np.all(np.isfinite(grid)):
            raise FloatingPointError(
                "the dense image features are not finite (broken weights or an fp16 overflow)"
            )
        return np.ascontiguousarray(grid, dtype=np.float32)

    def transform(self, tower: TowerCells) -> torch.Tensor:
        """:meth:`encode`'s cells through the learned head (the bare cells without one)."""
        if self.head is None:
            return tower.cells
        with torch.no_grad():
            return self.head(tower.cells, tower.fine)

    def pool(self, grid: np.ndarray, instance_ids: np.ndarray, bboxes: np.ndarray) -> np.ndarray:
        """(N, D) unit features of regions 1..N of an id image (boxes from ``region_stats``)
        from :meth:`extract`'s grid: the mean of each region's cells (:func:`pool_regions`),
        through the head's region part (:class:`RegionHead`) when it has one."""
        pooled = pool_regions(grid, instance_ids, len(bboxes))
        region = None if self.head is None else self.head.region
        if region is None:
            return pooled
        with torch.no_grad():
            features = region.read(torch.from_numpy(pooled).to(self.device), instance_ids, bboxes)
        return features.cpu().numpy()

    def encode(self, pixels: torch.Tensor, fine: bool | None = None) -> TowerCells:
        """The frozen tower's cells of normalised windows (B, 3, H, W), and its fine map when
        ``fine`` (None: when the head reads it; a ResNet only).

        H and W must be multiples of the tower's stride (``windows`` makes them so). Runs
        without gradients: the tower stays a frozen black box.
        """
        if fine is None:
            fine = self.head is not None and self.head.fine_dim > 0
        if fine and not self.fine_dim:
            raise ValueError(f"a {self.kind} tower has no fine map (a ResNet's has)")
        with torch.no_grad():
            pixels = pixels.to(self.device, self.dtype)
            if self.kind == "vit":
                return TowerCells(self._encode_vit(pixels))
            return self._encode_resnet(pixels, fine)

    def _encode_resnet(self, pixels: torch.Tensor, fine: bool) -> TowerCells:
        visual = self.visual
        stage3 = visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels))))
        pool = visual.attnpool
        cells = pool.c_proj(pool.v_proj(visual.layer4(stage3).permute(0, 2, 3, 1)))
        return TowerCells(cells, stage3.permute(0, 2, 3, 1) if fine else None)

    def _encode_vit(self, pixels: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        rows, cols = pixels.shape[2] // self.stride, pixels.shape[3] // self.stride
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + _vit_positions(visual, rows, cols).to(x.dtype)
        x = visual.ln_pre(x)
        transformer = visual.transformer
        blocks = transformer.resblocks
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        for block in blocks[:-1]:
            x = block(x)
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        x = self._last_block(blocks[-1], x, rows, cols)
        tokens = visual.ln_post(x[:, 1:])
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return tokens.reshape(x.shape[0], rows, cols, -1)

    def _last_block(self, block: nn.Module, x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """The last block with its attention replaced (``config.attention``), (B, 1 + hw, C)."""
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention):
            raise ValueError(
                f"no dense path for ViT block {type(block).__name__}: expected "
                "nn.MultiheadAttention in its last block"
            )
        batch, length, width = x.shape
        heads = attn.num_heads
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(batch, length, heads, -1).transpose(1, 2) for t in (q, k, v))
        scale = q.shape[-1] ** -0.5
        kind = self.config.attention
        if kind == "clearclip":
            weights = (q @ q.transpose(-1, -2) * scale).softmax(-1)
        elif kind == "sclip":
            weights = (q @ q.transpose(-1, -2) * scale).softmax(-1) + (
                k @ k.transpose(-1, -2) * scale
            ).softmax(-1)
        else:
            logits = k @ k.transpose(-1, -2) * scale
            logits = logits + _neighbourhood(rows, cols, NACLIP_SIGMA).to(logits)
            weights = logits.softmax(-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, length, width)
        out = block.ls_1(attn.out_proj(out))
        return x + out if kind == "sclip" else out


def assemble(features: torch.Tensor, batch: WindowBatch, scale: int = 1) -> torch.Tensor:
    """(h, w, D) unit grid of a batch's (M, h', w', D) window features: each cell the mean of
    the unit features of the windows covering it, normalised (differentiable). With ``scale``
    (a fine head's output), features and grid have ``scale`` cells per tower cell."""
    features = F.normalize(features.float(), dim=-1).cpu()
    rows, cols = (n * scale for n in batch.grid_shape)
    win_rows, win_cols = features.shape[1:3]
    total = features.new_zeros(rows, cols, features.shape[-1])
    count = features.new_zeros(rows, cols, 1)
    origins = ((r * scale, c * scale) for r, c in batch.origins)
    for (r, c), window in zip(origins, features, strict=True):
        total[r : r + win_rows, c : c + win_cols] += window
        count[r : r + win_rows, c : c + win_cols] += 1
    return F.normalize(total / count, dim=-1)


def _window_starts(cells: int, window: int, overlap: float) -> list[int]:
    """First cells of windows of ``window`` cells covering ``cells``, the last one flush."""
    if window >= cells:
        return [0]
    step = max(1, round(window * (1.0 - overlap)))
    starts = list(range(0, cells - window, step))
    return [*starts, cells - window]


def _vit_positions(visual: nn.Module, rows: int, cols: int) -> torch.Tensor:
    """(1, 1 + rows * cols, C) positional embedding, the patch part resized bicubically."""
    table = visual.positional_embedding
    grid_r, grid_c = visual.grid_size
    if (rows, cols) == (grid_r, grid_c):
        return table.unsqueeze(0)
    patches = table[1:].reshape(1, grid_r, grid_c, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(rows, cols), mode="bicubic", align_corners=False)
    patches = patches.to(table.dtype).permute(0, 2, 3, 1).reshape(rows * cols, -1)
    return torch.cat([table[:1], patches]).unsqueeze(0)


def _neighbourhood(rows: int, cols: int, sigma: float) -> torch.Tensor:
    """(1 + hw, 1 + hw) log-Gaussian prior on patch distance (NACLIP); none for the class token."""
    yy, xx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    points = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1).float()
    prior = torch.zeros(rows * cols + 1, rows * cols + 1)
    prior[1:, 1:] = -torch.cdist(points, points).square() / (2 * sigma**2)
    return prior


def cell_ids(height: int, width: int, grid_shape: tuple[int, int]) -> np.ndarray:
    """HxW int32 image of cell ids 1..h*w (row-major) of an (h, w) grid over an HxW image."""
    rows, cols = grid_shape
    row_of = (np.arange(height) * rows // height).astype(np.int32)
    col_of = (np.arange(width) * cols // width).astype(np.int32)
    return row_of[:, None] * cols + col_of[None, :] + 1


def region_coverage(
    instance_ids: np.ndarray, num_regions: int, grid_shape: tuple[int, int]
) -> np.ndarray:
    """(N + 1, h * w) share of each cell of an (h, w) grid covered by each region of an id
    image: row 0 for id 0 (what no region covers), row k for region k. One bincount."""
    rows, cols = grid_shape
    ids = check_instance_ids(instance_ids, num_regions)
    cells = cell_ids(*ids.shape, (rows, cols)) - 1
    counts = np.bincount(
        (ids.astype(np.int64) * (rows * cols) + cells).reshape(-1),
        minlength=(num_regions + 1) * rows * cols,
    ).reshape(num_regions + 1, rows * cols)
    cell_area = np.bincount(cells.reshape(-1), minlength=rows * cols)
    return counts / np.maximum(cell_area, 1)


def pooling_weights(coverage: np.ndarray) -> np.ndarray:
    """(N, cells) weights of each region's cells from its (N, cells) :func:`region_coverage`.

    A cell counts when the region covers at least half of it (semantic_inference's rule). A
    region that covers no cell by half (smaller than a cell, or a thin strip) takes the cells
    it touches, weighted by how much of each it covers, so every region gets a feature. The
    dense head's region objective trains on exactly these weights.
    """
    weights = (coverage >= 0.5).astype(np.float64)
    small = ~weights.any(axis=1)
    weights[small] = coverage[small]
    return weights


def pool_regions(grid: np.ndarray, instance_ids: np.ndarray, num_regions: int) -> np.ndarray:
    """(N, D) L2-normalised mean dense feature of each region 1..N of an id image, over its
    cells as :func:`pooling_weights` weighs them. Cost: one pass over the pixels (a
    bincount) and one (N, cells) x (cells, D) product, so about flat in the number of regions.
    """
    rows, cols, dim = grid.shape
    weights = pooling_weights(region_coverage(instance_ids, num_regions, (rows, cols))[1:])
    pooled = weights @ grid.reshape(rows * cols, dim).astype(np.float64)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    empty = norms[:, 0] == 0
    if np.any(empty):
        raise ValueError(f"instance id {int(np.flatnonzero(empty)[0]) + 1} has no pixels")
    return (pooled / norms).astype(np.float32)
