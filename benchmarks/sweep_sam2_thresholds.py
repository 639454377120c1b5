"""SAM2 automatic-mask thresholds: mask recall and masks per frame for each pair of
``pred_iou_thresh`` and ``stability_score_thresh``, with the project's superpixel-prompted path.

The thresholds trade masks kept against masks lost: every kept mask is embedded and can take a
query's hit, every lost object cannot be found at all. The defaults in ``Sam2Config`` (and the
node's ``segmenter.sam2.*`` parameters) were set from this table with the shipped small SAM2;
sam2's own are 0.8 / 0.95 for its released models. Frames are hard 640x480 scenes of the
training renderer and of the independent test renderer, seeds away from any training seed.

    PYTHONPATH=. .venv/bin/python benchmarks/sweep_sam2_thresholds.py [--scenes 6]
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np
import torch

from semret_ros.core.metrics import best_mask_ious
from semret_ros.core.sam2_model import SHIPPED_CONFIG_FILE, SHIPPED_SAM2
from semret_ros.core.segmenters import Sam2Config, Sam2Segmenter
from semret_ros.shapes.test_renderer import render_scene
from semret_ros.shapes.world import generate_scene

PRED_IOU = (0.0, 0.3, 0.5, 0.7, 0.8)
STABILITY = (0.0, 0.7, 0.85, 0.95)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=6, help="frames per renderer")
    parser.add_argument("--seed", type=int, default=9100, help="first scene seed")
    parser.add_argument("--checkpoint", default="shapes_default", help="or a checkpoint file")
    parser.add_argument(
        "--model-cfg",
        default=str(SHIPPED_SAM2["shapes_default"] / SHIPPED_CONFIG_FILE),
        help="architecture of a checkpoint file (shapes_default brings its own)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = range(args.seed, args.seed + args.scenes)
    scenes = [generate_scene(s, 640, 480, hard=True) for s in seeds]
    scenes += [render_scene(s, 640, 480) for s in seeds]
    print(
        f"SAM2 automatic masks (superpixel prompts), checkpoint {args.checkpoint}, "
        f"{args.scenes} hard frames per renderer (train + test)"
    )
    print(f"{'pred_iou':>8s} {'stability':>9s} {'masks':>6s} {'recall@0.5':>10s} {'@0.75':>6s}")
    for pred_iou, stability in itertools.product(PRED_IOU, STABILITY):
        segmenter = Sam2Segmenter(
            Sam2Config(
                model_cfg=args.model_cfg,
                checkpoint=args.checkpoint,
                pred_iou_thresh=pred_iou,
                stability_score_thresh=stability,
            )
        )
        counts, ious = [], []
        for scene in scenes:
            regions = segmenter.segment(scene.image)
            counts.append(len(regions))
            ious.append(best_mask_ious([r.mask for r in regions], [o.mask for o in scene.objects]))
        best = np.concatenate(ious)
        print(
            f"{pred_iou:8.2f} {stability:9.2f} {np.mean(counts):6.1f} "
            f"{np.mean(best >= 0.5):10.3f} {np.mean(best >= 0.75):6.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
