"""Batched region embedding vs the seed's one-crop-at-a-time loop.

Both paths embed the same frame the same way: the whole image plus one masked crop per
region, through the same model, preprocess and visual prompt, in the same process. The
batched path is ``ClipEmbedder.embed_frame`` (one stacked tensor, encoder calls of
``--batch-size``); the baseline calls the image encoder once per crop, as seed 000 does.
Both timings include cropping and preprocessing.

The default model is ViT-B-32 with random weights: the architecture most robot CLIP
deployments use and the size the weights-free timing table in
shared/reference/models-offline.md measures (random weights cost the same as real ones).
Pass ``--model``/``--pretrained`` to time any other model, e.g. real CLIP on a robot:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_embedding.py \\
        --model ViT-B-32 --pretrained /path/to/open_clip_model.safetensors
    PYTHONPATH=. .venv/bin/python benchmarks/bench_embedding.py \\
        --model shapes --pretrained local-dir:semret_ros/models/shapes_default
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from semret_ros.core.embedder import ClipConfig, ClipEmbedder
from semret_ros.core.visual_prompt import crop_region


def synthetic_frame(
    num_regions: int, width: int, height: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame and an instance-id image of ``num_regions`` ellipses on a grid."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ids = np.zeros((height, width), np.int32)
    cols = int(np.ceil(np.sqrt(num_regions * width / height)))
    rows = int(np.ceil(num_regions / cols))
    cell_w, cell_h = width // cols, height // rows
    yy, xx = np.mgrid[:height, :width]
    for k in range(num_regions):
        cy = (k // cols) * cell_h + cell_h / 2
        cx = (k % cols) * cell_w + cell_w / 2
        ry, rx = rng.uniform(0.25, 0.5) * cell_h, rng.uniform(0.25, 0.5) * cell_w
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        ids[inside] = k + 1
        image[inside] = rng.integers(0, 256, 3, dtype=np.uint8)
    return image, ids


def seed_loop(embedder: ClipEmbedder, image: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Seed 000's way: one encoder call per picture (whole image first, then each region)."""
    config = embedder.config
    pictures = [crop_region(image, np.ones(ids.shape, bool), "bbox_crop", padding=0.0)]
    pictures += [
        crop_region(image, ids == k, config.visual_prompt, config.crop_padding)
        for k in range(1, n + 1)
    ]
    features = []
    with torch.inference_mode():
        for picture in pictures:
            x = embedder.preprocess_batch([picture]).to(embedder.device, embedder.input_dtype)
            features.append(F.normalize(embedder.model.encode_image(x).float(), dim=-1))
        return torch.cat(features).cpu().numpy()


def best_of(repeats: int, run: Callable[[], object]) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip name or local-dir:DIR")
    parser.add_argument("--pretrained", default="random", help="file, local-dir:DIR, tag, random")
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--visual-prompt", default="masked_crop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    embedder = ClipEmbedder(
        ClipConfig(
            model_name=args.model,
            pretrained=args.pretrained,
            device=args.device,
            precision=args.precision,
            visual_prompt=args.visual_prompt,
            batch_size=args.batch_size,
            global_weight=0.0,  # raw features, so both paths must agree exactly
        )
    )
    image, ids = synthetic_frame(args.regions, args.width, args.height)
    embedder.warmup()

    batched = embedder.embed_frame(image, ids, args.regions)
    looped = seed_loop(embedder, image, ids, args.regions)
    difference = float(np.abs(np.vstack([batched[1], batched[0]]) - looped).max())

    t_batched, all_batched = best_of(
        args.repeats, lambda: embedder.embed_frame(image, ids, args.regions)
    )
    t_loop, all_loop = best_of(args.repeats, lambda: seed_loop(embedder, image, ids, args.regions))

    print(
        f"model {args.model} ({args.pretrained}), {args.device} {args.precision}, "
        f"torch threads {torch.get_num_threads()}, {args.width}x{args.height} image, "
        f"{args.regions} regions + whole image, visual prompt {args.visual_prompt}, "
        f"best of {args.repeats}"
    )
    print(f"{'path':<32}{'frame (s)':>12}{'per picture (ms)':>18}  all runs (s)")
    pictures = args.regions + 1
    for name, best, runs in (
        (f"batched (batch_size {args.batch_size})", t_batched, all_batched),
        ("seed loop (one at a time)", t_loop, all_loop),
    ):
        listed = ", ".join(f"{t:.3f}" for t in runs)
        print(f"{name:<32}{best:>12.3f}{1000 * best / pictures:>18.1f}  {listed}")
    print(f"speed-up {t_loop / t_batched:.2f}x (target >= 3x); max |feature diff| {difference:.2e}")


if __name__ == "__main__":
    main()
