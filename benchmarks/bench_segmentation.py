"""How long do superpixel proposals and per-frame refinement take at 640x480?

Times the configured superpixel segmenters against plain felzenszwalb at full resolution (the
baseline: ~0.5 s per frame on 2 cores), then the refinement steps on the proposals against the
naive per-mask equivalent, on scikit-image's bundled photos resized to 640x480.

    .venv/bin/python benchmarks/bench_segmentation.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
import skimage.data

from semret_ros.core.records import Region, bbox_of_mask
from semret_ros.core.refine import assign_pixels, merge_similar_regions, region_stats
from semret_ros.core.segmenters import SuperpixelConfig, SuperpixelSegmenter

PHOTOS = ("astronaut", "coffee", "chelsea")
SEGMENTERS = {
    "felzenszwalb full-res (baseline)": SuperpixelConfig(method="felzenszwalb", downscale=1.0),
    "felzenszwalb downscale 2 (default)": SuperpixelConfig(method="felzenszwalb"),
    "  sigma 0.8, no edge snapping (before)": SuperpixelConfig(sigma=0.8, edge_passes=0),
    "slic downscale 2": SuperpixelConfig(method="slic"),
}


def _best_ms(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    images = {name: cv2.resize(getattr(skimage.data, name)(), (640, 480)) for name in PHOTOS}

    print(f"{'segmenter':36s} " + " ".join(f"{name:>18s}" for name in PHOTOS))
    for label, config in SEGMENTERS.items():
        segmenter = SuperpixelSegmenter(config)
        cells = []
        for image in images.values():
            ms = _best_ms(
                lambda image=image, segmenter=segmenter: segmenter.labels(image), args.repeats
            )
            cells.append(f"{ms:7.1f} ms {int(segmenter.labels(image).max()):4d} reg")
        print(f"{label:36s} " + " ".join(f"{cell:>18s}" for cell in cells))

    labels = SuperpixelSegmenter(SuperpixelConfig(downscale=1.0, scale=100, min_size=50)).labels(
        images["astronaut"]
    )
    # assign_pixels is timed on masks, the form SAM2's proposals come in.
    regions = [Region.from_mask(labels == k) for k in range(1, min(int(labels.max()), 100) + 1)]
    ids = assign_pixels(regions, 0)
    count = int(ids.max())
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(count, 512)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)

    def per_mask_stats() -> None:
        for index in range(count):
            mask = ids == index + 1
            bbox_of_mask(mask)
            np.count_nonzero(mask)

    print(f"\nrefinement, {count} regions at 640x480 (best of {args.repeats})")
    rows = {
        "assign_pixels": _best_ms(lambda: assign_pixels(regions, 256), args.repeats),
        "region_stats": _best_ms(lambda: region_stats(ids, count), args.repeats),
        "  per-mask bbox+area (baseline)": _best_ms(per_mask_stats, args.repeats),
        "merge_similar_regions": _best_ms(
            lambda: merge_similar_regions(ids, embeddings, 0.95), args.repeats
        ),
    }
    for label, ms in rows.items():
        print(f"{label:36s} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
