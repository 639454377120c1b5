"""Semantic localization of large images: streamed windows + reduced grid vs the naive way.

Both paths cut the same windows (the seed's 512 and 768 px grid), shrink them the same way and
embed them with the same model (the shipped shapes model by default), scoring one phrase:

* streamed (``semret_ros.core.localize.localize``, what ``semret-localize`` runs): windows cut
  and embedded one batch at a time, scores accumulated on 8 px cells;
* naive (the seed's way): every window copied out first (the seed writes them all to disk),
  embedded in one call, scores accumulated per pixel (two float64 image-sized arrays) and
  median-smoothed at full resolution.

Each run is a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its own; the
table also gives the peak above the process's memory once the model is loaded, which is what
the run itself adds (the 8-bit RGB image alone is 48 MB at 4096 and 192 MB at 8192). The naive
path is only run at 4096 by default (``--naive-sizes``): at 8192 it needs about 2 GB. The
images are a generated 4096 x 4096 shapes-world scene with many small objects and that scene
tiled 2 x 2; the last column is how far the naive map is from the streamed one (mean absolute
difference of the 0..1 probability maps on the 8 px grid).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_localize.py
    PYTHONPATH=. .venv/bin/python benchmarks/bench_localize.py --sizes 4096 8192 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

PHRASE = "red circle"


def _rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(method: str, image_path: Path, grid_path: Path, threads: int) -> None:
    """One measured run; prints one JSON line and saves its map on the 8 px grid."""
    import torch

    from semret_ros.core.embedder import ClipConfig, ClipEmbedder
    from semret_ros.core.localize import (
        HeatmapAccumulator,
        LocalizeConfig,
        localize,
        probability_map,
        read_image,
        smooth_kernel,
        window_grid,
    )

    torch.set_num_threads(threads)
    config = LocalizeConfig()
    embedder = ClipEmbedder(ClipConfig(batch_size=config.batch_size))
    embedder.warmup()
    text = embedder.embed_text([PHRASE])
    loaded_mb = _rss_mb()

    start = time.perf_counter()
    image = read_image(image_path)
    height, width = image.shape[:2]
    if method == "streamed":
        result = localize(image, [PHRASE], embedder, config)
        windows, windows_s = len(result.windows), result.timings["windows"]
        grid = result.probability[:, :, 0]
    else:
        windows_list = window_grid(height, width, config)
        loop = time.perf_counter()
        crops = [image[w.y : w.y1, w.x : w.x1].copy() for w in windows_list]
        side = embedder.input_side
        shrunk = [cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA) for c in crops]
        scores = embedder.embed_images(shrunk) @ text.T
        accumulator = HeatmapAccumulator(height, width, 1, cell=1)
        accumulator.add(windows_list, scores)
        windows, windows_s = len(windows_list), time.perf_counter() - loop
        kernel = smooth_kernel(height, width, config.smooth_fraction)
        full = probability_map(accumulator.mean()[:, :, 0], kernel)
        rows, cols = -(-height // config.cell), -(-width // config.cell)
        grid = cv2.resize(full, (cols, rows), interpolation=cv2.INTER_AREA)
    total_s = time.perf_counter() - start
    np.save(grid_path, grid)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "windows": windows,
                "windows_s": windows_s,
                "total_s": total_s,
                "peak_mb": peak_mb,
                "added_mb": peak_mb - loaded_mb,
            }
        )
    )


def _scene(folder: Path, sizes: list[int]) -> dict[int, Path]:
    """The generated 4096 scene and its 2 x 2 tilings, written as fast (low-compression) PNGs."""
    from semret_ros.shapes.world import generate_large_scene

    scene = generate_large_scene(1, 4096, 4096, include=(("red", "circle"),) * 6)
    paths = {}
    for size in sizes:
        reps = -(-size // 4096)
        image = np.tile(scene.image, (reps, reps, 1))[:size, :size]
        paths[size] = folder / f"scene_{size}.png"
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(paths[size]), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--naive-sizes", type=int, nargs="*", default=[4096])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady figures on shared CPUs)"
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("METHOD", "IMAGE", "GRID"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]), args.threads)
        return

    runs = [(size, "streamed") for size in args.sizes]
    runs += [(size, "naive") for size in args.naive_sizes]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = _scene(folder, sorted({size for size, _ in runs}))
        results = {}
        for size, method in runs:
            grid = folder / f"{method}_{size}.npy"
            command = [sys.executable, __file__, "--threads", str(args.threads)]
            command += ["--child", method, str(paths[size]), str(grid)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[size, method] = json.loads(output.strip().splitlines()[-1])
            results[size, method]["grid"] = np.load(grid).astype(np.float64) / 255.0

    print(
        f"phrase {PHRASE!r}, windows 512 + 768 px (the seed's grid), shipped shapes model, "
        f"cpu, torch threads {args.threads}"
    )
    header = (
        f"{'image':>10} {'path':<9}{'windows':>8}{'win/s':>8}{'total s':>9}"
        f"{'peak MB':>9}{'added MB':>10}{'|map diff|':>11}"
    )
    print(header)
    for (size, method), row in sorted(results.items()):
        streamed = results[size, "streamed"]["grid"] if (size, "streamed") in results else None
        diff = (
            f"{np.abs(row['grid'] - streamed).mean():.4f}"
            if method == "naive" and streamed is not None
            else ""
        )
        print(
            f"{size:>5}x{size:<4} {method:<9}{row['windows']:>8}"
            f"{row['windows'] / row['windows_s']:>8.1f}{row['total_s']:>9.2f}"
            f"{row['peak_mb']:>9.0f}{row['added_mb']:>10.0f}{diff:>11}"
        )


if __name__ == "__main__":
    main()
