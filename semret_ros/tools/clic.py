"""CLIC (seed 002): a dense head trained on image-caption pairs, without masks.

``semret-train --objective clic --init MODEL_DIR --output MODEL_DIR`` learns a
:class:`~semret_ros.core.dense.DenseHead` on the frozen image tower's dense cells, against the
frozen text tower, and writes it into the model folder (:data:`~semret_ros.core.dense.HEAD_FILE`),
where the dense extractor picks it up. Both encoders stay frozen black boxes.

Data: whole shapes-world scenes with recipe 2's domain randomisation
(:func:`~semret_ros.shapes.world.generate_segmentation_scene`: random size, lighting,
textures, off-palette colours, camera blur, noise, JPEG), each with ``captions_per_image``
captions naming some of its objects. No mask is read: a scene contributes only the list of
what it shows, as a caption would. Captions of other scenes that name something this one
lacks are its negatives.

Loss (multiple-instance contrastive): a scene-caption score is a soft maximum over the
scene's cells of the cell-caption cosine (``pool_temperature`` x log-mean-exp), so the caption
only has to be true somewhere in the picture; symmetric InfoNCE over the batch (every scene
against every caption, every caption against every scene), with the targets spread over every
caption true of the scene (a caption naming a shape the scene has twice, or a colour-only one,
is true of more than one scene).

Region objective (``--objective clic-region``): the same head, cache and loop, supervised
through the objects' ground-truth masks instead of captions of whole scenes. Each object's
mask is downsampled to the cell grid exactly as :func:`~semret_ros.core.dense.pool_regions`
does for ``clip.region_features: dense`` (:func:`~semret_ros.core.dense.pooling_weights`), the
head's unit cells are averaged over it, and that region feature is contrasted with a recipe-2
caption of the object (full, colour-only or shape-only wordings) by the same soft symmetric
InfoNCE over every region and caption of the batch. The background is cut into up to
``--background-regions`` random pieces (cells grouped around random seed cells, like large
superpixels), each captioned with recipe 2's background / generic captions, so cells off every
object learn to say "background" rather than the nearest object's name. Pooling over the true
masks is what the crop CLIP is trained on too; the towers stay frozen. Pooled targets say
nothing about a single cell, so ``--clic-weight`` adds the clic loss on the same scenes to
keep mask-free pointing.

Region-head objective (``--objective region-head``): the head's region part
(:class:`~semret_ros.core.dense.RegionHead`, mask-aware pooling) on the frozen cell part
already in ``--init``'s head. A mean over cells keeps colour and loses the outline, and shape
is mostly outline; the region part reads a region's mean cells together with its silhouette.
Its regions are every object's true mask and segmenter-like damaged versions of it
(``--mask-variants``) and regions that are no object (``--background-regions``: ribbons along
outlines, background patches, the whole background), from the same cached scenes; each meets
one caption as in the region objective. It writes the whole head back, the cells unchanged.

Everything upstream of the head is frozen, so each training scene's cells are computed once
and cached (``--cache-dir``, chunks of :data:`CACHE_CHUNK` scenes; a resumed run reuses them),
as are the captions' text features. Sample order and captions are pure functions of (seed,
step), so a resumed run trains exactly as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from tqdm import tqdm

from semret_ros.core.dense import (
    FINE_SCALE,
    HEAD_FILE,
    DenseConfig,
    DenseFeatureExtractor,
    DenseHead,
    RegionHead,
    TowerCells,
    WindowBatch,
    assemble,
    file_digest,
    load_dense_head,
    pooling_weights,
    region_coverage,
    save_dense_head,
    silhouettes,
)
from semret_ros.core.embedder import LOCAL_DIR_PREFIX, ClipConfig, ClipEmbedder
from semret_ros.core.refine import region_stats
from semret_ros.shapes import world as sw

WILDCARD = -1
"""A caption key entry that matches any value (a colour-only caption has no shape)."""
OTHER_COLOR = len(sw.COLORS)
"""Colour index of an off-palette object: no colour caption names it."""
BACKGROUND_KEY = (OTHER_COLOR + 1, len(sw.SHAPES))
"""Key of background regions and captions: no object caption names it, and no background
caption names an object."""
CACHE_CHUNK = 100
"""Training scenes per cache file."""
CHECKPOINT_NAME = "clic_checkpoint.pt"
EVAL_SEED = 90_000
"""First seed of the periodic evaluation's hard scenes (semret-eval uses 0..N-1)."""


def soft_info_nce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of (N, M) ``logits`` with targets spread over every true pair.

    Plain InfoNCE treats every off-diagonal pair as a negative; with short captions ("something
    red") many of those are true, and pushing them apart fights the labels. Every row and
    column of ``pos`` must hold at least one true pair.
    """
    pos = pos.float()
    rows = pos / pos.sum(dim=1, keepdim=True)
    cols = pos.T / pos.T.sum(dim=1, keepdim=True)
    loss_rows = -(rows * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_cols = -(cols * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (loss_rows + loss_cols) / 2


def pooled_scores(
    cells: list[torch.Tensor], text: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(B, T) scene-caption scores: per scene, the soft maximum over its (h * w, D) unit
    cells (:func:`scene_cells`) of their cosine with the (T, D) unit caption features."""
    scores = []
    for grid in cells:
        sims = grid @ text.T
        pooled = torch.logsumexp(sims / temperature, dim=0) - math.log(grid.shape[0])
        scores.append(temperature * pooled)
    return torch.stack(scores)


def caption_positives(
    scene_keys: list[list[tuple[int, int]]], caption_keys: torch.Tensor
) -> torch.Tensor:
    """(B, T) bool: caption t (key (colour, shape), WILDCARD for either) is true of scene b,
    i.e. names something among the scene's (colour, shape) objects."""
    out = torch.zeros(len(scene_keys), caption_keys.shape[0], dtype=torch.bool)
    for b, objects in enumerate(scene_keys):
        keys = torch.tensor(objects, dtype=torch.long)[:, None, :]
        match = (caption_keys[None] == WILDCARD) | (caption_keys[None] == keys)
        out[b] = match.all(dim=-1).any(dim=0)
    return out


def scene_keys_of(scene: sw.Scene) -> list[tuple[int, int]]:
    """(colour index, shape index) of each object; off-palette colours get OTHER_COLOR."""
    colors = list(sw.COLORS)
    return [
        (colors.index(o.color) if o.color in sw.COLORS else OTHER_COLOR, sw.SHAPES.index(o.shape))
        for o in scene.objects
    ]


def draw_captions(
    rng: np.random.Generator, objects: list[tuple[int, int]], count: int
) -> list[tuple[str, tuple[int, int]]]:
    """``count`` captions naming objects of a scene (distinct objects while there are enough),
    each with its key: what it asserts, WILDCARD for the part it leaves out."""
    colors = list(sw.COLORS)
    order = rng.permutation(len(objects))
    out = []
    for n in range(count):
        c, s = objects[int(order[n % len(objects)])]
        color = None if c == OTHER_COLOR else colors[c]
        kind = "shape" if color is None else sw.random_caption_kind(rng)
        text, kind = sw.random_caption(rng, color, sw.SHAPES[s], kind, varied=True)
        out.append((text, (c if kind != "shape" else WILDCARD, s if kind != "color" else WILDCARD)))
    return out


@dataclass
class CachedScene:
    grid: torch.Tensor
    """(M, h, w, D) float16 raw tower cells of the scene's windows."""
    keys: list[tuple[int, int]]
    """Its objects' (colour, shape) keys."""
    layout: WindowBatch
    """The windows' places in the tower's grid (no pixels), to assemble the head's cells."""
    fine: torch.Tensor | None = None
    """Heads with a fine input only: (M, 2h, 2w, C) float16 the tower's fine maps."""
    regions: torch.Tensor | None = None
    """Region objective only: (1 + N, cells) float32 pooling weights over the head's output
    grid of the background (row 0) and of each object
    (:func:`~semret_ros.core.dense.pooling_weights`)."""


def scene_cells(head: DenseHead, scene: CachedScene) -> torch.Tensor:
    """(cells, D) unit cells of a cached scene through ``head``, assembled as
    :meth:`~semret_ros.core.dense.DenseFeatureExtractor.extract` assembles them."""
    fine = None if scene.fine is None else scene.fine.float()
    grid = assemble(head(scene.grid.float(), fine), scene.layout, head.scale)
    return grid.reshape(-1, grid.shape[-1])


def output_grid(layout: WindowBatch, fine: bool) -> tuple[int, int]:
    """(h, w) of the head's output grid over a scene's windows."""
    scale = FINE_SCALE if fine else 1
    return layout.grid_shape[0] * scale, layout.grid_shape[1] * scale


def region_weights(scene: sw.Scene, grid_shape: tuple[int, int]) -> torch.Tensor:
    """(1 + N, h * w) pooling weights of the background and each object of ``scene``."""
    ids = scene.instance_ids
    coverage = region_coverage(ids, len(scene.objects), grid_shape)
    return torch.from_numpy(pooling_weights(coverage)).float()


def background_pieces(
    rng: np.random.Generator, weights: torch.Tensor, grid_shape: tuple[int, int], count: int
) -> torch.Tensor:
    """(k <= count, h * w) the background's pooling ``weights`` cut into pieces: each of its
    cells joins the nearest of ``count`` random seed cells (a few large superpixels)."""
    cells = torch.nonzero(weights > 0).flatten()
    if count < 1 or cells.numel() == 0:
        return weights.new_zeros(0, weights.numel())
    seeds = cells[torch.from_numpy(rng.permutation(cells.numel())[:count])]
    cols = grid_shape[1]
    where = torch.stack([cells // cols, cells % cols], dim=1).float()
    centres = torch.stack([seeds // cols, seeds % cols], dim=1).float()
    nearest = torch.cdist(where, centres).argmin(dim=1)
    pieces = weights.new_zeros(seeds.numel(), weights.numel())
    pieces[nearest, cells] = weights[cells]
    return pieces


def region_features(cells: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
    """(R, D) unit region features: per scene, its (cells, D) unit cells (:func:`scene_cells`)
    averaged with its (r, cells) ``weights`` (what ``pool_regions`` computes at query time)."""
    out = [w @ grid for grid, w in zip(cells, weights, strict=True)]
    return F.normalize(torch.cat(out), dim=-1)


def training_scene(seed: int, index: int) -> sw.Scene:
    """Training scene ``index`` of a run: recipe 2's randomised whole scenes, never held-out
    combos; one with no object left visible is replaced by the next draw."""
    attempt = 0
    while True:
        scene = sw.generate_segmentation_scene((seed, index, attempt))
        if scene.objects:
            return scene
        attempt += 1


def encode_windows(extractor: DenseFeatureExtractor, batch: WindowBatch, fine: bool) -> TowerCells:
    """The frozen tower's cells (and fine maps, with ``fine``) of an image's windows: what
    the head transforms."""
    out = [
        extractor.encode(chunk, fine) for chunk in batch.pixels.split(extractor.config.batch_size)
    ]
    return TowerCells(
        torch.cat([o.cells.float().cpu() for o in out]),
        torch.cat([o.fine.float().cpu() for o in out]) if fine else None,
    )


def load_scenes(
    extractor: DenseFeatureExtractor,
    seed: int,
    count: int,
    cache_dir: Path | None,
    progress: bool,
    weights_file: Path,
    regions: bool = False,
    fine: bool = False,
) -> list[CachedScene]:
    """The run's ``count`` training scenes' frozen cells, from ``cache_dir`` when there;
    with ``fine``, also the tower's fine maps; with ``regions``, also their objects' and
    background's pooling weights over the head's output grid.

    Cache files are named after the tower weights' digest, the input size, the seed and
    what they hold, so a retrained model or another grid never reads stale cells."""
    tag = (" regions" if regions else "") + (" fine" if fine else "")
    key = hashlib.sha256(
        f"{file_digest(weights_file)} {extractor.input_size} {seed}{tag}".encode()
    ).hexdigest()[:16]
    scenes: list[CachedScene] = []
    bar = tqdm(total=count, disable=not progress, desc="cache", file=sys.stderr)
    for start in range(0, count, CACHE_CHUNK):
        stop = min(count, start + CACHE_CHUNK)
        path = None if cache_dir is None else cache_dir / f"scenes_{key}_{start:06d}_{stop:06d}.pt"
        if path is not None and path.is_file():
            chunk = torch.load(path, weights_only=False)
            bar.update(len(chunk))
        else:
            chunk = []
            for index in range(start, stop):
                scene = training_scene(seed, index)
                batch = extractor.windows(scene.image)
                tower = encode_windows(extractor, batch, fine)
                layout = WindowBatch(torch.empty(0), batch.origins, batch.grid_shape)
                cached = CachedScene(
                    tower.cells.half(),
                    scene_keys_of(scene),
                    layout,
                    None if tower.fine is None else tower.fine.half(),
                )
                if regions:
                    cached.regions = region_weights(scene, output_grid(layout, fine))
                chunk.append(cached)
                bar.update(1)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(chunk, path.with_suffix(".tmp"))
                path.with_suffix(".tmp").replace(path)
        scenes.extend(chunk)
    bar.close()
    return scenes


@dataclass
class RegionSamples:
    """The region-head objective's regions, as the frozen cell head sees them: every object's
    true mask and segmenter-like versions of it, and regions that are no object."""

    pooled: torch.Tensor
    """(S, D) unit mean of the head's cells over each region's mask (``pool_regions``)."""
    outline: torch.Tensor
    """(S, size, size) uint8 silhouettes (:func:`~semret_ros.core.dense.silhouettes`, x 255)."""
    keys: list[tuple[int, int]]
    """Per region, its object's (colour, shape) key, or :data:`BACKGROUND_KEY`."""


def region_samples(
    head: DenseHead,
    scenes: list[CachedScene],
    seed: int,
    variants: int,
    background: int,
    progress: bool,
) -> RegionSamples:
    """The regions of the run's cached training scenes for the head's region part.

    Per object: its true visible mask and ``variants - 1`` versions damaged as a segmenter
    damages masks (:func:`~semret_ros.shapes.world.perturb_mask`: eroded, dilated, shifted,
    fragments, bleeding); per scene, ``background`` regions that are no object
    (:func:`~semret_ros.shapes.world.no_object_mask`: ribbons along outlines, which look like
    rings, patches, the whole background). The scenes are regenerated from their seeds for
    their id images; the cells come from the cache.
    """
    size = head.region.size
    pooled, outlines, keys = [], [], []
    bar = tqdm(scenes, disable=not progress, desc="regions", file=sys.stderr)
    for index, cached in enumerate(bar):
        scene = training_scene(seed, index)
        rng = np.random.default_rng((seed, index, 0x5111))
        masks, mask_keys = [], []
        for k, key in enumerate(cached.keys):
            true = scene.instance_ids == k + 1
            masks += [true] + [sw.perturb_mask(rng, true) for _ in range(variants - 1)]
            mask_keys += [key] * variants
        for _ in range(background):
            masks.append(sw.no_object_mask(rng, scene, whole_share=1 / 3))
            mask_keys.append(BACKGROUND_KEY)
        with torch.no_grad():
            cells = scene_cells(head, cached)
        grid = output_grid(cached.layout, cached.fine is not None)
        for mask, key in zip(masks, mask_keys, strict=True):
            if not mask.any():
                continue
            ids = mask.astype(np.int32)
            weights = torch.from_numpy(pooling_weights(region_coverage(ids, 1, grid)[1:]))
            pooled.append(F.normalize(weights.float() @ cells, dim=-1)[0])
            outline = silhouettes(ids, region_stats(ids, 1)[0], size)[0]
            outlines.append(torch.from_numpy(np.round(outline * 255).astype(np.uint8)))
            keys.append(key)
    return RegionSamples(torch.stack(pooled), torch.stack(outlines), keys)


@dataclass
class EvalSet:
    """Fixed hard 640x480 scenes (never trained on) to watch pointing while training."""

    scenes: list[CachedScene]
    """Per scene, its raw tower cells and their windows (to assemble them as ``extract``)."""
    cell_objects: list[list[np.ndarray]]
    """Per scene, per object: a bool per cell, True where the cell's centre is on it."""
    full: list[torch.Tensor]
    """Per scene, the (n_objects, D) text features of the full names."""
    shape: list[torch.Tensor]
    """Per scene, the (n_objects, D) text features of the shape-only phrases."""
    regions: list[torch.Tensor]
    """Per scene, the (n_objects, cells) pooling weights of its objects' true masks."""
    keys: list[list[tuple[int, int]]]
    """Per scene, its objects' (colour, shape) keys."""
    instance_ids: list[np.ndarray]
    """Per scene, its id image (the objects' silhouettes, for a head's region part)."""


def build_eval_set(
    embedder: ClipEmbedder, extractor: DenseFeatureExtractor, count: int, fine: bool
) -> EvalSet:
    """``count`` hard 640x480 scenes of seen combos from :data:`EVAL_SEED` on, with the
    query-time text features (the embedder's prompt ensemble) of their objects' names."""
    scenes, cells, full, shape, regions, keys, ids = [], [], [], [], [], [], []
    for i in range(count):
        scene = sw.generate_scene(EVAL_SEED + i, hard=True, which="seen")
        batch = extractor.windows(scene.image)
        tower = encode_windows(extractor, batch, fine)
        layout = WindowBatch(torch.empty(0), batch.origins, batch.grid_shape)
        rows, cols = output_grid(layout, fine)
        height, width = scene.image.shape[:2]
        ys = ((np.arange(rows) + 0.5) * height / rows).astype(int)
        xs = ((np.arange(cols) + 0.5) * width / cols).astype(int)
        scenes.append(CachedScene(tower.cells, scene_keys_of(scene), layout, tower.fine))
        cells.append([o.mask[np.ix_(ys, xs)].reshape(-1) for o in scene.objects])
        regions.append(region_weights(scene, (rows, cols))[1:])
        keys.append(scene_keys_of(scene))
        ids.append(scene.instance_ids)
        full.append(
            torch.from_numpy(
                embedder.embed_text([sw.query_phrase("full", o) for o in scene.objects])
            )
        )
        shape.append(
            torch.from_numpy(
                embedder.embed_text([sw.query_phrase("shape", o) for o in scene.objects])
            )
        )
    return EvalSet(scenes, cells, full, shape, regions, keys, ids)


@torch.no_grad()
def pointing(head: DenseHead, data: EvalSet) -> dict[str, float]:
    """Share of objects whose full name / shape's best cell lies on them (``point_*``), and
    whose full name / shape's best true-mask region is one with that name / shape
    (``region_*``: hit@1 of dense-pooled regions on perfect masks), on the grid the
    extractor would give with ``head``."""
    hits = {"point_full": [], "point_shape": [], "region_full": [], "region_shape": []}
    for scene, on, full, shape, weights, keys, ids in zip(
        data.scenes,
        data.cell_objects,
        data.full,
        data.shape,
        data.regions,
        data.keys,
        data.instance_ids,
        strict=True,
    ):
        cells = scene_cells(head, scene)
        pooled = F.normalize(weights @ cells, dim=-1)
        if head.region is not None:
            pooled = head.region.read(pooled, ids, region_stats(ids, len(keys))[0])
        for kind, text, part in (("full", full, slice(0, 2)), ("shape", shape, slice(1, 2))):
            best = (cells @ text.T).argmax(dim=0)
            hits[f"point_{kind}"].extend(bool(on[k][int(best[k])]) for k in range(len(on)))
            chosen = (pooled @ text.T).argmax(dim=0)
            hits[f"region_{kind}"].extend(
                keys[int(chosen[k])][part] == keys[k][part] for k in range(len(keys))
            )
    return {k: round(float(np.mean(v)), 4) for k, v in hits.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The clic and clic-region objectives' own options of ``semret-train``."""
    g = p.add_argument_group("clic and clic-region objectives")
    g.add_argument("--scenes", type=int, default=1200, help="clic: training scenes (cached)")
    g.add_argument("--captions-per-image", type=int, default=2, help="clic: captions per scene")
    g.add_argument("--cache-dir", type=Path, default=None, help="clic: frozen cells cache")
    g.add_argument("--head-hidden", type=int, default=128, help="clic: head channels")
    g.add_argument("--head-layers", type=int, default=3, help="clic: 3x3 conv layers")
    g.add_argument(
        "--head-fine",
        action="store_true",
        help="clic: the head also reads the ResNet tower's stride-16 map and answers on that "
        "finer grid",
    )
    g.add_argument(
        "--pool-temperature", type=float, default=0.07, help="clic: soft maximum over cells"
    )
    g.add_argument(
        "--background-regions",
        type=int,
        default=2,
        help="clic-region: at most this many captioned background pieces per scene (0: none); "
        "region-head: this many regions that are no object per scene",
    )
    g.add_argument(
        "--silhouette-size",
        type=int,
        default=32,
        help="region-head: side in pixels of a region's silhouette (a multiple of 8)",
    )
    g.add_argument(
        "--mask-variants",
        type=int,
        default=4,
        help="region-head: masks per object, its true one and segmenter-like damaged ones",
    )
    g.add_argument(
        "--clic-weight",
        type=float,
        default=0.0,
        help="clic-region: weight of the clic loss on the same scenes, added to keep single "
        "cells pointing (0: regions only)",
    )
    g.add_argument("--eval-scenes", type=int, default=20, help="clic: scenes of periodic eval")
    g.add_argument(
        "--logit-scale",
        type=float,
        default=0.0,
        help="clic: initial (learned) logit scale of the pooled scores; 0: the CLIP's own",
    )


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def scene_order(seed: int, step: int, batch: int, count: int) -> list[int]:
    """Scene indices of ``step``: epochs of seeded permutations, a function of the step."""
    out = []
    for position in range(step * batch, (step + 1) * batch):
        epoch, slot = divmod(position, count)
        out.append(int(np.random.default_rng((seed, epoch, 0xC11C)).permutation(count)[slot]))
    return out


def clic_batch(
    args: argparse.Namespace,
    step: int,
    batch: list[CachedScene],
    cells: list[torch.Tensor],
    text_of: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scene-caption scores, their true pairs) of one clic step, on the batch's unit cells
    (:func:`scene_cells`)."""
    texts, keys = [], []
    for slot, scene in enumerate(batch):
        rng = np.random.default_rng((args.seed, step, slot, 0xCA9))
        for caption, key in draw_captions(rng, scene.keys, args.captions_per_image):
            texts.append(text_of[caption])
            keys.append(key)
    pos = caption_positives([s.keys for s in batch], torch.tensor(keys, dtype=torch.long))
    scores = pooled_scores(cells, torch.stack(texts), args.pool_temperature)
    return scores, pos


def background_caption(rng: np.random.Generator) -> str:
    """One of recipe 2's background / generic captions, drawn for a region that is no object."""
    return sw.GENERIC_TEMPLATES[int(rng.integers(len(sw.GENERIC_TEMPLATES)))]


def region_batch(
    args: argparse.Namespace,
    step: int,
    batch: list[CachedScene],
    cells: list[torch.Tensor],
    text_of: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(region-caption scores, their true pairs) of one clic-region step: every object's
    and background piece's pooled feature (over the batch's unit ``cells``) against one
    caption of each."""
    weights, texts, keys = [], [], []
    for slot, scene in enumerate(batch):
        rng = np.random.default_rng((args.seed, step, slot, 0x2E6))
        for key in scene.keys:
            caption, caption_key = draw_captions(rng, [key], 1)[0]
            texts.append(text_of[caption])
            keys.append((key, caption_key))
        count = int(rng.integers(1, args.background_regions + 1)) if args.background_regions else 0
        pieces = background_pieces(
            rng, scene.regions[0], output_grid(scene.layout, scene.fine is not None), count
        )
        for _ in range(pieces.shape[0]):
            texts.append(text_of[background_caption(rng)])
            keys.append((BACKGROUND_KEY, BACKGROUND_KEY))
        weights.append(torch.cat([scene.regions[1:], pieces]))
    features = region_features(cells, weights)
    pos = caption_positives(
        [[region] for region, _ in keys], torch.tensor([c for _, c in keys], dtype=torch.long)
    )
    return features @ torch.stack(texts).T, pos


def region_head_batch(
    args: argparse.Namespace,
    step: int,
    samples: RegionSamples,
    region: RegionHead,
    text_of: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(region-caption scores, their true pairs) of one region-head step: ``--batch-size``
    random regions, each against one caption drawn for it."""
    rng = np.random.default_rng((args.seed, step, 0x2E9))
    picked = rng.choice(
        len(samples.keys), size=min(args.batch_size, len(samples.keys)), replace=False
    )
    texts, caption_keys = [], []
    for i in picked.tolist():
        key = samples.keys[i]
        if key == BACKGROUND_KEY:
            texts.append(text_of[background_caption(rng)])
            caption_keys.append(BACKGROUND_KEY)
        else:
            caption, caption_key = draw_captions(rng, [key], 1)[0]
            texts.append(text_of[caption])
            caption_keys.append(caption_key)
    index = torch.from_numpy(picked)
    features = region(samples.pooled[index], samples.outline[index].float() / 255.0)
    pos = caption_positives(
        [[samples.keys[i]] for i in picked.tolist()], torch.tensor(caption_keys, dtype=torch.long)
    )
    return features @ torch.stack(texts).T, pos


def train_clic(args: argparse.Namespace, argv: list[str]) -> int:
    """``semret-train --objective clic`` and ``--objective clic-region``: see the module
    docstring."""
    if args.init is None:
        raise SystemExit(
            f"--objective {args.objective} needs --init (the model folder whose towers it uses)"
        )
    if args.scenes < args.batch_size and args.objective != "region-head":
        raise SystemExit("--scenes must be >= --batch-size")
    if args.mask_variants < 1 or args.silhouette_size < 8 or args.silhouette_size % 8:
        raise SystemExit("--mask-variants must be >= 1, --silhouette-size a multiple of 8")
    if args.captions_per_image < 1 or args.pool_temperature <= 0:
        raise SystemExit("--captions-per-image must be >= 1 and --pool-temperature > 0")
    if args.background_regions < 0 or args.clic_weight < 0:
        raise SystemExit("--background-regions and --clic-weight must be >= 0")
    region_head = args.objective == "region-head"
    regions = args.objective == "clic-region" or region_head
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    folder = Path(args.init).resolve()
    embedder = ClipEmbedder(
        ClipConfig(model_name="shapes", pretrained=f"{LOCAL_DIR_PREFIX}{folder}")
    )
    extractor = DenseFeatureExtractor.from_embedder(embedder, DenseConfig(head=False))
    model = embedder.model.eval().requires_grad_(False)
    dim = int(model.visual.output_dim)
    if region_head:
        if not (folder / HEAD_FILE).is_file():
            raise SystemExit(
                f"--objective region-head trains the region part of {folder / HEAD_FILE}: run "
                "--objective clic-region first"
            )
        head = load_dense_head(folder / HEAD_FILE, dim, embedder.weights_file)
        head.region = RegionHead(dim, args.silhouette_size)
        trained = head.region
    else:
        if args.head_fine and not extractor.fine_dim:
            raise SystemExit("--head-fine needs a ResNet image tower")
        fine_dim = extractor.fine_dim if args.head_fine else 0
        head = DenseHead(dim, args.head_hidden, args.head_layers, fine_dim)
        trained = head
    fine = head.fine_dim > 0
    start_scale = (
        math.log(args.logit_scale) if args.logit_scale > 0 else float(model.logit_scale.item())
    )
    logit_scale = torch.nn.Parameter(torch.tensor(start_scale))
    weights = [p for p in trained.parameters() if p.ndim >= 2]
    gains = [p for p in trained.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": weights, "weight_decay": args.weight_decay},
            {"params": [*gains, logit_scale], "weight_decay": 0.0},
        ],
        lr=args.lr,
    )
    start, history = 0, []
    ckpt_path = None if args.checkpoint_dir is None else args.checkpoint_dir / CHECKPOINT_NAME
    if args.resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        head.load_state_dict(ckpt["head"])
        with torch.no_grad():
            logit_scale.copy_(ckpt["logit_scale"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        start, history = int(ckpt["step"]), list(ckpt["history"])

    captions = sorted(sw.caption_space(sw.SEEN_COMBOS, varied=True))
    with torch.no_grad():
        text = torch.cat(
            [
                F.normalize(
                    model.encode_text(embedder.tokenizer(captions[i : i + 256])).float(), dim=-1
                )
                for i in range(0, len(captions), 256)
            ]
        )
    text_of = {c: text[i] for i, c in enumerate(captions)}
    scenes = load_scenes(
        extractor,
        args.seed,
        args.scenes,
        args.cache_dir,
        not args.no_progress,
        embedder.weights_file,
        regions,
        fine,
    )
    samples = (
        region_samples(
            head,
            scenes,
            args.seed,
            args.mask_variants,
            args.background_regions,
            not args.no_progress,
        )
        if region_head
        else None
    )
    eval_set = (
        build_eval_set(embedder, extractor, args.eval_scenes, fine) if args.eval_every else None
    )
    if eval_set is not None and start == 0:
        head.eval()
        record = {"step": 0, **pointing(head, eval_set)}
        history.append(record)
        tqdm.write(json.dumps(record), file=sys.stderr)

    t0 = time.monotonic()
    bar = tqdm(
        total=args.steps,
        initial=start,
        disable=args.no_progress,
        desc=args.objective,
        file=sys.stderr,
    )
    step = start
    while step < args.steps:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, args.steps, args.warmup, args.lr)
        trained.train()
        if region_head:
            scores, pos = region_head_batch(args, step, samples, head.region, text_of)
        else:
            order = scene_order(args.seed, step, args.batch_size, len(scenes))
            batch = [scenes[i] for i in order]
            cells = [scene_cells(head, scene) for scene in batch]
            objective = region_batch if regions else clic_batch
            scores, pos = objective(args, step, batch, cells, text_of)
        loss = soft_info_nce(logit_scale.exp() * scores, pos)
        if regions and not region_head and args.clic_weight > 0:
            scores, pos = clic_batch(args, step, batch, cells, text_of)
            loss = loss + args.clic_weight * soft_info_nce(logit_scale.exp() * scores, pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            logit_scale.clamp_(0, math.log(100))
        step += 1
        record = {"step": step, "loss": round(loss.item(), 4)}
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{logit_scale.exp().item():.1f}")
        if eval_set is not None and (step % args.eval_every == 0 or step == args.steps):
            head.eval()
            record.update(pointing(head, eval_set))
            tqdm.write(json.dumps(record), file=sys.stderr)
        history.append(record)
        stopping = step == args.stop_at
        if ckpt_path is not None and (
            step % args.save_every == 0 or step == args.steps or stopping
        ):
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(
                {
                    "head": head.state_dict(),
                    "logit_scale": logit_scale.detach(),
                    "optimizer": opt.state_dict(),
                    "step": step,
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                },
                tmp,
            )
            tmp.replace(ckpt_path)
        if stopping:
            break
    bar.close()
    head.eval()
    written = save_dense_head(head, args.output, embedder.weights_file)
    summary = {
        "steps": step,
        "seconds_this_run": round(time.monotonic() - t0, 1),
        "final_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
        "final_eval": next((h for h in reversed(history) if "point_full" in h), None),
        "head": str(written),
        "args": argv,
    }
    print(json.dumps(summary))
    return 0
