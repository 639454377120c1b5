"""Region embedding from dense features vs one crop per region, and mask-free frames per second.

Side by side in one run, on the same synthetic 640x480 frames (``bench_embedding``'s ellipses):

* region-embedding time of ``ClipEmbedder.embed_frame`` for 10 / 50 / 200 regions with
  ``region_features: crop`` (whole image + one encoder pass per crop, batched) and ``dense``
  (one dense grid + the whole image, pooled inside each mask), for ViT-B-16 with random
  weights (the same cost as real ones) and the embedded default model;
* frames per second of mask-free mode (``segmenter.type: dense``, ``SemanticPipeline.process``)
  with the embedded model on generated scenes, and the latency of a query on its frame.

Every figure is given twice: wall-clock seconds, and CPU seconds of this process (all its
threads). On a machine shared with other jobs the wall clock measures the other jobs as much
as this code; CPU time is what the work itself costs, and CPU time / threads is the wall time
it would take with the cores to itself (when it parallelises perfectly; otherwise more).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dense.py --threads 2

Targets (issue 8): dense >= 10x cheaper than crops at 50 regions with ViT-B-16 and about flat
from 10 to 200 regions; mask-free >= 5 frames/s at 640x480 on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import torch
from bench_embedding import synthetic_frame

from semret_ros.core.embedder import ClipConfig, ClipEmbedder
from semret_ros.core.pipeline import SemanticPipeline
from semret_ros.shapes.world import generate_scene

REGION_COUNTS = (10, 50, 200)


def timed(repeats: int, run: Callable[[], object]) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds of this process) of ``repeats`` calls of ``run``."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def region_timings(
    config: ClipConfig, width: int, height: int, repeats: int
) -> dict[tuple[str, int], tuple[float, float]]:
    """Best-of-``repeats`` (wall, CPU) seconds of embed_frame per (region_features, regions)."""
    crop = ClipEmbedder(config)
    crop.warmup()
    dense = ClipEmbedder(dataclasses.replace(config, region_features="dense"))
    dense.embed_frame(*synthetic_frame(10, width, height), 10)
    timings: dict[tuple[str, int], tuple[float, float]] = {}
    for count in REGION_COUNTS:
        image, ids = synthetic_frame(count, width, height)
        for name, embedder in (("crop", crop), ("dense", dense)):
            # 200 ViT crops take most of a minute on 2 cores; once is enough to see it.
            runs = 1 if name == "crop" and count >= 50 else repeats
            timings[name, count] = timed(
                runs, lambda e=embedder, i=image, d=ids, n=count: e.embed_frame(i, d, n)
            )
    return timings


def mask_free_rate(
    frames: int, width: int, height: int
) -> tuple[float, float, float, tuple[int, int]]:
    """Mask-free mode with the embedded model: frames/s of process (wall, and per CPU second),
    ms per query, grid shape."""
    pipeline = SemanticPipeline(None, ClipEmbedder(ClipConfig()))
    pipeline.embedder.warmup()
    scenes = [generate_scene(seed, width, height, hard=True) for seed in range(frames)]
    frame = pipeline.process(scenes[0].image)
    start, cpu = time.perf_counter(), time.process_time()
    for scene in scenes:
        frame = pipeline.process(scene.image)
    rate = frames / (time.perf_counter() - start)
    cpu_rate = frames / (time.process_time() - cpu)
    names = [obj.name for obj in scenes[-1].objects]
    pipeline.query(frame, names[0])
    start = time.perf_counter()
    for name in names:
        pipeline.query(frame, name)
    query_ms = 1e3 * (time.perf_counter() - start) / len(names)
    return rate, cpu_rate, query_ms, frame.grid_shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=20, help="mask-free frames to time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: default)")
    parser.add_argument("--skip-vit", action="store_true", help="embedded model only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    models = [("embedded default (RN 64 px)", ClipConfig())]
    if not args.skip_vit:
        models.insert(0, ("ViT-B-16 (random weights)", ClipConfig("ViT-B-16", "random")))
    print(
        f"torch threads {torch.get_num_threads()}, {args.width}x{args.height} frames; "
        "the CPU is shared with other jobs, so absolute times vary between runs"
    )
    header = "".join(f"{f'{n} crop':>11}{f'{n} dense':>11}" for n in REGION_COUNTS)
    print(
        "\nregion embedding per frame (whole image included), seconds: wall / CPU"
        f"\n{'model':<30}{'':<6}{header}"
    )
    for label, config in models:
        timings = region_timings(config, args.width, args.height, args.repeats)
        for column, name in ((0, "wall"), (1, "CPU")):
            row = "".join(
                f"{timings['crop', n][column]:>11.3f}{timings['dense', n][column]:>11.3f}"
                for n in REGION_COUNTS
            )
            print(f"{label if column == 0 else '':<30}{name:<6}{row}")
            ratio = timings["crop", 50][column] / timings["dense", 50][column]
            flat = timings["dense", 200][column] / timings["dense", 10][column]
            print(
                f"{'':<36}{name}: crop / dense at 50 regions {ratio:.1f}x (target >= 10x with "
                f"ViT-B-16); dense 200 / 10 regions {flat:.2f}x (target about 1)"
            )
    rate, cpu_rate, query_ms, grid = mask_free_rate(args.frames, args.width, args.height)
    print(
        f"\nmask-free mode (embedded model, grid {grid[0]}x{grid[1]}): {rate:.1f} frames/s wall, "
        f"{cpu_rate:.1f} frames per CPU second: on {torch.get_num_threads()} free cores between "
        f"{cpu_rate:.1f} and {cpu_rate * torch.get_num_threads():.1f} frames/s (target >= 5); "
        f"query {query_ms:.1f} ms (similarity, mask, connected regions)"
    )


if __name__ == "__main__":
    main()
