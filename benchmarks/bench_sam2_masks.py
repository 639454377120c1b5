"""SAM2 automatic masks: sam2's stock grid generator vs the project's superpixel-prompted path.

Both paths run in one process on the same frames with the same weights: hard 640x480 shapes
scenes from the training renderer (``shapes.world.generate_scene``) and from the independent
test renderer (``shapes.test_renderer.render_scene``), each frame once per path, image encoder
included (every path encodes a frame once). For each it prints the time per frame, the masks
per frame and the mask recall (share of ground-truth objects with a mask at IoU >= 0.5 and
>= 0.75), then the speed-up and the recall difference.

    PYTHONPATH=. nice -n 19 .venv/bin/python benchmarks/bench_sam2_masks.py [--scenes 4]

``--checkpoint`` defaults to the shipped ``shapes_default`` when its weights are present; with
``--checkpoint random`` both paths use the same random initialisation and every threshold at 0
(plumbing and speed only: random masks find no objects).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch

from semret_ros.core.metrics import best_mask_ious
from semret_ros.core.sam2_model import SHIPPED_CONFIG_FILE, SHIPPED_SAM2, SHIPPED_WEIGHTS_FILE
from semret_ros.core.segmenters import Sam2Config, Sam2Segmenter
from semret_ros.shapes.test_renderer import render_scene
from semret_ros.shapes.world import Scene, generate_scene

PATHS = {"grid": "stock SAM2AutomaticMaskGenerator", "superpixel": "superpixel prompts"}
RENDERERS = ("train", "test")
THRESHOLDS = (0.5, 0.75)


def _scenes(renderer: str, count: int, first_seed: int) -> list[Scene]:
    seeds = range(first_seed, first_seed + count)
    if renderer == "train":
        return [generate_scene(seed, 640, 480, hard=True) for seed in seeds]
    return [render_scene(seed, 640, 480) for seed in seeds]


def _config(args: argparse.Namespace) -> Sam2Config:
    shipped = args.checkpoint in SHIPPED_SAM2
    if args.checkpoint == "random":
        return Sam2Config(
            model_cfg=args.model_cfg,
            checkpoint=None,
            points_per_side=args.points_per_side,
            points_per_batch=args.points_per_batch,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            device=args.device,
        )
    return Sam2Config(
        model_cfg=args.model_cfg,
        checkpoint=args.checkpoint if shipped else str(args.checkpoint),
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_thresh,
        device=args.device,
    )


def _build(config: Sam2Config, prompts: str) -> Sam2Segmenter:
    torch.manual_seed(0)  # the same weights for both paths when randomly initialised
    return Sam2Segmenter(dataclasses.replace(config, prompts=prompts))


def main() -> int:
    folder = SHIPPED_SAM2["shapes_default"]
    shipped = folder / SHIPPED_WEIGHTS_FILE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=4, help="frames per renderer")
    parser.add_argument("--seed", type=int, default=9000, help="first scene seed")
    parser.add_argument(
        "--checkpoint",
        default="shapes_default" if shipped.is_file() else "random",
        help="shapes_default, a checkpoint file, or random (default: shapes_default if shipped)",
    )
    parser.add_argument(
        "--model-cfg",
        default=str(folder / SHIPPED_CONFIG_FILE),
        help="architecture of a checkpoint file or of random weights (default: the shipped "
        "small SAM2's; shapes_default brings its own)",
    )
    parser.add_argument("--points-per-side", type=int, default=Sam2Config().points_per_side)
    parser.add_argument("--points-per-batch", type=int, default=Sam2Config().points_per_batch)
    parser.add_argument("--pred-iou-thresh", type=float, default=Sam2Config().pred_iou_thresh)
    parser.add_argument(
        "--stability-thresh", type=float, default=Sam2Config().stability_score_thresh
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = _config(args)
    segmenters = {path: _build(config, path) for path in PATHS}
    frames = {renderer: _scenes(renderer, args.scenes, args.seed) for renderer in RENDERERS}
    warm = generate_scene(args.seed - 1, 640, 480, hard=True).image
    for segmenter in segmenters.values():
        segmenter.segment(warm)

    seconds: dict[tuple[str, str], list[float]] = {}
    masks: dict[tuple[str, str], list[int]] = {}
    best: dict[tuple[str, str], list[np.ndarray]] = {}
    for renderer, scenes in frames.items():
        for index, scene in enumerate(scenes):
            for path, segmenter in segmenters.items():
                start = time.perf_counter()
                regions = segmenter.segment(scene.image)
                elapsed = time.perf_counter() - start
                key = (renderer, path)
                seconds.setdefault(key, []).append(elapsed)
                masks.setdefault(key, []).append(len(regions))
                best.setdefault(key, []).append(
                    best_mask_ious([r.mask for r in regions], [o.mask for o in scene.objects])
                )
                print(
                    f"  {renderer} {index + 1}/{len(scenes)} {path}: {elapsed:.2f} s, "
                    f"{len(regions)} masks",
                    file=sys.stderr,
                    flush=True,
                )

    print(
        f"\nSAM2 automatic masks, checkpoint {args.checkpoint}, "
        f"points_per_side {args.points_per_side}, points_per_batch {args.points_per_batch}, "
        f"pred_iou_thresh {config.pred_iou_thresh}, "
        f"stability_score_thresh {config.stability_score_thresh}, "
        f"{args.device}, {args.threads} torch thread(s), {args.scenes} hard 640x480 frames per "
        "renderer"
    )
    if args.checkpoint == "random":
        print("random weights, thresholds 0: recall is meaningless, timing is plumbing only")
    header = f"{'renderer':8s} {'path':34s} {'s/frame':>8s} {'masks':>6s} " + " ".join(
        f"{'recall@' + str(t):>11s}" for t in THRESHOLDS
    )
    print(header)
    for renderer in (*RENDERERS, "all"):
        row: dict[str, tuple[float, list[float]]] = {}
        for path, label in PATHS.items():
            keys = [(r, path) for r in RENDERERS] if renderer == "all" else [(renderer, path)]
            time_per_frame = float(np.mean([t for k in keys for t in seconds[k]]))
            ious = np.concatenate([b for k in keys for b in best[k]])
            recalls = [float(np.mean(ious >= t)) for t in THRESHOLDS]
            count = float(np.mean([m for k in keys for m in masks[k]]))
            row[path] = (time_per_frame, recalls)
            print(
                f"{renderer:8s} {label:34s} {time_per_frame:8.2f} {count:6.1f} "
                + " ".join(f"{r:11.3f}" for r in recalls)
            )
        stock, ours = row["grid"], row["superpixel"]
        print(
            f"{renderer:8s} {'speed-up / recall change':34s} {stock[0] / ours[0]:7.2f}x {'':6s} "
            + " ".join(f"{b - a:+11.3f}" for a, b in zip(stock[1], ours[1], strict=True))
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
