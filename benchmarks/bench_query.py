"""Answering a phrase seen before vs embedding the frame it is answered on.

Target (issue 2): for a 640x480 frame with 100 regions, scoring + similarity image + mask for
a cached phrase takes under 1/100 of the time that embedding the frame took, because a query
is a table lookup over the stored instance-id image and makes no model call.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_query.py    # the embedded default model
    PYTHONPATH=. .venv/bin/python benchmarks/bench_query.py \
        --clip-model ViT-B-32 --clip-pretrained FILE
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from semret_ros.core.embedder import ClipConfig, ClipEmbedder
from semret_ros.core.pipeline import SemanticPipeline
from semret_ros.core.records import SemanticFrame
from semret_ros.core.refine import RefineConfig, region_stats
from semret_ros.core.segmenters import SuperpixelConfig, build_segmenter
from semret_ros.shapes.world import generate_scene


def grid_ids(height: int, width: int, rows: int, cols: int) -> np.ndarray:
    """An id image of rows x cols equal cells, ids 1..rows*cols."""
    r = np.minimum(np.arange(height) * rows // height, rows - 1)
    c = np.minimum(np.arange(width) * cols // width, cols - 1)
    return (r[:, None] * cols + c[None, :] + 1).astype(np.int32)


def median_seconds(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip-model", default=ClipConfig.model_name)
    parser.add_argument("--clip-pretrained", default=ClipConfig.pretrained)
    parser.add_argument("--regions", type=int, default=100, help="a square-ish grid of regions")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = ClipConfig(model_name=args.clip_model, pretrained=args.clip_pretrained)
    embedder = ClipEmbedder(config)
    embedder.warmup()
    pipeline = SemanticPipeline(
        build_segmenter(SuperpixelConfig()), embedder, refine=RefineConfig(min_area=1)
    )
    image = generate_scene(seed=7, width=640, height=480, hard=True).image
    rows = int(np.sqrt(args.regions))
    ids = grid_ids(480, 640, rows, int(np.ceil(args.regions / rows)))
    n = int(ids.max())

    embed_s = median_seconds(lambda: embedder.embed_frame(image, ids, n), args.repeats)
    embeddings, global_embedding = embedder.embed_frame(image, ids, n)
    bboxes, areas = region_stats(ids, n)
    frame = SemanticFrame(
        stamp_ns=0,
        frame_id="bench",
        image=image,
        instance_ids=ids,
        embeddings=embeddings,
        global_embedding=global_embedding,
        scores=np.ones(n, np.float32),
        bboxes=bboxes,
        areas=areas,
        model=embedder.model_name,
    )
    phrase = "a red circle"
    pipeline.query(frame, phrase)
    calls_before = embedder.text_encoder_calls + embedder.image_encoder_calls
    query_s = median_seconds(lambda: pipeline.query(frame, phrase), max(args.repeats, 50))
    model_calls = embedder.text_encoder_calls + embedder.image_encoder_calls - calls_before
    process_s = median_seconds(lambda: pipeline.process(image), max(1, args.repeats // 2))

    print(f"model {embedder.model_name} ({config.pretrained}), 640x480, {n} regions")
    print(f"{'operation':<44}{'median ms':>12}")
    print(f"{'embed frame (global + regions, batched)':<44}{embed_s * 1e3:>12.1f}")
    print(f"{'whole process() (segment + refine + embed)':<44}{process_s * 1e3:>12.1f}")
    print(f"{'query, cached phrase (score + image + mask)':<44}{query_s * 1e3:>12.2f}")
    print(f"model calls during the timed queries: {model_calls}")
    ratio = embed_s / query_s
    verdict = "meets" if ratio >= 100 else "MISSES"
    print(f"query is 1/{ratio:.0f} of the embedding time ({verdict} the 1/100 target)")


if __name__ == "__main__":
    main()
