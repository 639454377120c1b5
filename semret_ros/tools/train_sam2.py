"""semret-train-sam2: train the small SAM2 on the shapes world (the shipped ``shapes_default``).

Scenes come from :func:`semret_ros.shapes.world.generate_segmentation_scene` (recipe 2's
domain randomisation on whole scenes); the periodic evaluation draws held-out scenes from the
independent :mod:`semret_ros.shapes.test_renderer`, which is never trained on, and from the
training renderer's hard scenes (seeds far from any training seed). Every step's data is a
pure function of ``(seed, step)``: with ``--threads 1`` a run, and a run stopped and resumed,
give the same weights.

    semret-train-sam2 --output build/sam2_train --steps 3000 \\
        --export semret_ros/models/sam2_shapes_default/sam2_shapes.pt

``--init`` starts a fine-tuning run from an earlier export instead of random weights (the
shipped model is one run from scratch and two such runs: ``make sam2-model``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from semret_ros.core.sam2_model import (
    SHIPPED_CONFIG_FILE,
    SHIPPED_SAM2,
    build_sam2_model,
    resolve_sam2_checkpoint,
    save_sam2_checkpoint,
)
from semret_ros.core.sam2_training import (
    EMBED_RMS_WEIGHT,
    FOCAL_WEIGHT,
    IOU_WEIGHT,
    evaluate_prompted,
    localisation_step,
    train_batch,
    training_step,
)
from semret_ros.shapes import test_renderer
from semret_ros.shapes.world import generate_scene, generate_segmentation_scene

DEFAULT_CONFIG = str(SHIPPED_SAM2["shapes_default"] / SHIPPED_CONFIG_FILE)
STATE_FILE = "last.pt"
EVAL_LOG = "eval.jsonl"
TEST_SEED_BASE = 900_000
"""Evaluation seeds: test-renderer scenes ``TEST_SEED_BASE + i``, training-renderer hard
scenes the same (training draws ``(seed, step, i)`` tuples, never a plain integer)."""


def draw_training_scene(seed: tuple[int, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A training image and its instance masks (the :data:`SceneDrawer` of this world)."""
    scene = generate_segmentation_scene(seed)
    return scene.image, [obj.mask for obj in scene.objects]


def evaluation_scenes(renderer: str, count: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """``count`` held-out 640x480 hard scenes of ``renderer`` (``test`` or ``train``)."""
    scenes = []
    for i in range(count):
        seed = TEST_SEED_BASE + i
        scene = (
            test_renderer.render_scene(seed)
            if renderer == "test"
            else generate_scene(seed, hard=True)
        )
        scenes.append((scene.image, [obj.mask for obj in scene.objects]))
    return scenes


class StepBatches(torch.utils.data.Dataset):
    """Step ``i``'s batch (:func:`train_batch`), so a loader worker can draw scenes while the
    main process trains."""

    def __init__(self, image_size: int, seed: int, images: int, prompts: int) -> None:
        self.image_size, self.seed, self.images, self.prompts = image_size, seed, images, prompts

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, step: int) -> tuple:
        return train_batch(
            self.image_size, draw_training_scene, self.seed, step, self.images, self.prompts
        )


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up, then cosine decay to a tenth of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semret-train-sam2", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-cfg", default=DEFAULT_CONFIG, help="architecture YAML or sam2 name")
    p.add_argument("--output", type=Path, help="folder for state and eval log (training)")
    p.add_argument(
        "--evaluate",
        metavar="CHECKPOINT",
        help="only measure this checkpoint (a file or shapes_default) on --eval-scenes scenes "
        "of each renderer and print the figures as JSON",
    )
    p.add_argument("--export", type=Path, help="write the final fp16 checkpoint here")
    p.add_argument(
        "--steps", type=int, default=3000, help="total optimiser steps (warm-up included)"
    )
    p.add_argument(
        "--localisation-steps",
        type=int,
        default=500,
        help="first steps: the decoder learns where prompts are, on a blank image "
        "(sam2_training.localisation_step)",
    )
    p.add_argument("--images", type=int, default=8, help="images per step")
    p.add_argument("--prompts", type=int, default=4, help="prompts per image")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument(
        "--encoder-lr-scale",
        type=float,
        default=0.3,
        help="the image encoder's learning rate as a share of --lr",
    )
    p.add_argument(
        "--embed-rms-weight",
        type=float,
        default=EMBED_RMS_WEIGHT,
        help="penalty on an image embedding RMS above 1 (keeps the prompts' positions legible)",
    )
    p.add_argument(
        "--focal-weight", type=float, default=FOCAL_WEIGHT, help="focal loss weight (dice: 1)"
    )
    p.add_argument(
        "--iou-weight",
        type=float,
        default=IOU_WEIGHT,
        help="weight of the IoU head's loss (it picks the best of three masks)",
    )
    p.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from these weights (a file or shapes_default) instead of random ones: a "
        "second training phase; needs --localisation-steps 0",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device to train on (cuda: the data is still drawn on the CPU workers)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: deterministic)")
    p.add_argument(
        "--workers", type=int, default=1, help="processes drawing scenes (0: the main one)"
    )
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-scenes", type=int, default=10, help="scenes per renderer")
    p.add_argument("--resume", action="store_true", help="continue from --output's state")
    p.add_argument(
        "--stop-at", type=int, default=0, help="end this session after this step (then --resume)"
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def _evaluate(model: torch.nn.Module, scenes: dict, step: int) -> dict:
    record: dict = {"step": step} if step >= 0 else {}
    for renderer, items in scenes.items():
        scores = evaluate_prompted(model, items)
        record[f"{renderer}_point_miou"] = round(scores.point_miou, 4)
        record[f"{renderer}_box_miou"] = round(scores.box_miou, 4)
    return record


def _save_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    args: argparse.Namespace,
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "args": {k: str(v) for k, v in vars(args).items()},
        },
        tmp,
    )
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate:
        source = resolve_sam2_checkpoint(args.evaluate, args.model_cfg)
        model = build_sam2_model(source.model_cfg, source.checkpoint, device=args.device)
        scenes = {r: evaluation_scenes(r, args.eval_scenes) for r in ("test", "train")}
        print(json.dumps({"checkpoint": args.evaluate, **_evaluate(model, scenes, -1)}))
        return 0
    if args.output is None:
        raise SystemExit("--output is required for training")
    if args.steps < 1 or args.images < 1 or args.prompts < 1:
        raise SystemExit("--steps, --images and --prompts must be >= 1")
    if not 0 <= args.localisation_steps < args.steps:
        raise SystemExit("--localisation-steps must be >= 0 and below --steps")
    if args.init and args.localisation_steps:
        raise SystemExit("--init starts from trained weights: pass --localisation-steps 0")
    torch.manual_seed(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    state_path = args.output / STATE_FILE
    source = resolve_sam2_checkpoint(args.init, args.model_cfg)  # no --init: random weights
    model = build_sam2_model(
        source.model_cfg, source.checkpoint, device=args.device, eval_mode=False
    )
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        decays = param.ndim > 1 and "pos_embed" not in name
        groups.setdefault((decays, name.startswith("image_encoder.")), []).append(param)
    optimizer = torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": args.weight_decay if decays else 0.0,
                "lr_scale": args.encoder_lr_scale if encoder else 1.0,
            }
            for (decays, encoder), params in sorted(groups.items())
        ],
        lr=args.lr,
    )
    start = 0
    if args.resume:
        if not state_path.is_file():
            raise SystemExit(f"--resume: no training state at {state_path}")
        state = torch.load(state_path, map_location=args.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    elif state_path.exists():
        raise SystemExit(f"{state_path} exists: pass --resume to continue it, or another --output")

    eval_scenes = {
        "test": evaluation_scenes("test", args.eval_scenes),
        "train": evaluation_scenes("train", args.eval_scenes),
    }
    end = min(args.steps, args.stop_at) if args.stop_at else args.steps
    bar = tqdm(
        total=args.steps, initial=start, disable=args.no_progress, desc="sam2", file=sys.stderr
    )
    log = (args.output / EVAL_LOG).open("a")
    started = time.monotonic()
    warm = args.localisation_steps
    for step in range(start, min(warm, end)):
        for group in optimizer.param_groups:
            group["lr"] = args.lr
        iou = localisation_step(model, optimizer, args.seed * 1_000_003 + step)
        bar.update(1)
        bar.set_postfix(localisation_iou=f"{iou:.3f}")
        if (step + 1) % args.save_every == 0 or step + 1 == end:
            _save_state(state_path, model, optimizer, step + 1, args)
    batches = torch.utils.data.DataLoader(
        StepBatches(int(model.image_size), args.seed, args.images, args.prompts),
        batch_size=None,
        sampler=range(max(start, warm), end),
        num_workers=args.workers,
        worker_init_fn=_one_thread,
        collate_fn=lambda batch: batch,
    )
    for step, batch in zip(range(max(start, warm), end), batches, strict=True):
        for group in optimizer.param_groups:
            rate = lr_at(step - warm, args.steps - warm, args.warmup, args.lr)
            group["lr"] = rate * group["lr_scale"]
        loss = training_step(
            model,
            optimizer,
            batch,
            focal_weight=args.focal_weight,
            embed_rms_weight=args.embed_rms_weight,
            iou_weight=args.iou_weight,
        )
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.total):.3f}", iou=f"{loss.mean_iou:.3f}")
        done = step + 1
        if done % args.save_every == 0 or done == end:
            _save_state(state_path, model, optimizer, done, args)
        if done % args.eval_every == 0 or done == args.steps:
            record = _evaluate(model, eval_scenes, done)
            record["train_loss"] = round(float(loss.total), 4)
            record["s_per_step"] = round(
                (time.monotonic() - started) / (done - max(start, warm)), 3
            )
            log.write(json.dumps(record) + "\n")
            log.flush()
            tqdm.write(json.dumps(record), file=sys.stderr)
            save_sam2_checkpoint(model, args.output / f"step{done:06d}.pt", fp16=True)
    bar.close()
    log.close()
    if end == args.steps and args.export is not None:
        save_sam2_checkpoint(model, args.export, fp16=True)
        print(f"exported {args.export}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
