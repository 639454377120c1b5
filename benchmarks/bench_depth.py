"""What the 3D step adds to a frame: ``segment_positions`` next to ``SemanticPipeline.process``.

The target: positions for every region must add under 10 % to a frame's processing time at
640x480. Both run on the same hard 640x480 shapes scene with its rendered depth (noise, holes,
flying pixels; ``shapes.world.render_depth``), the shipped model and default settings, timed
alternately in one run so that a busy machine slows both alike. Besides ``segment_positions``
on its own, the whole depth step the node runs per frame is timed: 16UC1 millimetres to metres
(``depth_to_meters``), resampling a 320x240 depth image to 640x480 (``align_depth``; a
640x480 one is used as it is) and the positions; and ``process`` given the depth image, which
runs the same step after merging regions.

    .venv/bin/python benchmarks/bench_depth.py [--seed 3] [--repeats 9] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

from semret_ros.core.depth import (
    DepthFrame,
    align_depth,
    depth_to_16uc1,
    depth_to_meters,
    segment_positions,
)
from semret_ros.core.pipeline import PipelineConfig, build_pipeline
from semret_ros.shapes.world import generate_scene, render_depth

MIN_POINTS = 20


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return 1000 * (time.perf_counter() - start), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=3, help="hard scene seed")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    scene = generate_scene(args.seed, width=640, height=480, hard=True)
    rendered = render_depth(scene)
    millimetres = depth_to_16uc1(rendered.depth_m)
    half = cv2.resize(millimetres, (320, 240), interpolation=cv2.INTER_NEAREST)
    half_camera = rendered.intrinsics.scaled(320, 240)

    pipeline = build_pipeline(PipelineConfig())
    pipeline.embedder.warmup()
    frame = pipeline.process(scene.image)

    def depth_step(pixels: np.ndarray, camera: object) -> list:
        meters = depth_to_meters(pixels, "16UC1")
        depth = align_depth(DepthFrame(meters, camera, 0, "camera"), 640, 480)
        return segment_positions(frame.instance_ids, frame.num_regions, depth, MIN_POINTS)

    full_depth = DepthFrame(depth_to_meters(millimetres, "16UC1"), rendered.intrinsics, 0, "cam")
    rows: dict[str, list[float]] = {
        "process()": [],
        "process(depth=...)": [],
        "segment_positions": [],
        "depth step, 640x480 16UC1": [],
        "depth step, 320x240 16UC1": [],
    }
    positions: list = []
    for _ in range(args.repeats):
        rows["process()"].append(timed(lambda: pipeline.process(scene.image))[0])
        rows["process(depth=...)"].append(
            timed(lambda: pipeline.process(scene.image, depth=full_depth))[0]
        )
        elapsed, positions = timed(
            lambda: segment_positions(frame.instance_ids, frame.num_regions, full_depth, MIN_POINTS)
        )
        rows["segment_positions"].append(elapsed)
        rows["depth step, 640x480 16UC1"].append(
            timed(lambda: depth_step(millimetres, rendered.intrinsics))[0]
        )
        rows["depth step, 320x240 16UC1"].append(timed(lambda: depth_step(half, half_camera))[0])

    medians = {name: statistics.median(values) for name, values in rows.items()}
    base = medians["process()"]
    located = sum(p is not None for p in positions)
    print(
        f"hard shapes scene {args.seed}, 640x480, {frame.num_regions} regions "
        f"({located} with a 3D position, min_points {MIN_POINTS}), shapes_default model, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats} runs"
    )
    print(f"{'step':<28}{'ms':>10}{'of process()':>16}")
    for name, value in medians.items():
        if name == "process()":
            share = ""
        elif name.startswith("process("):
            share = f"{100 * (value - base) / base:+15.1f}%"
        else:
            share = f"{100 * value / base:15.1f}%"
        print(f"{name:<28}{value:>10.1f}{share:>16}")
    worst = max(v for k, v in medians.items() if not k.startswith("process("))
    verdict = "meets" if worst < 0.1 * base else "MISSES"
    print(f"{verdict} the target: the 3D step adds under 10 % to process()")


if __name__ == "__main__":
    main()
