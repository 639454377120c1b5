"""`semret-localize`: where in a large image (a remote-sensing tile, a map, a panorama) does a
phrase fit?

A thin command line over :mod:`semret_ros.core.localize` (the seed 001 method, memory-bounded):
read the image, load the CLIP model, stream the sliding windows through it with a progress bar,
then write per phrase the heatmap, the addmap (heatmap over the image) and the probability
map as PNGs, and ``report.json`` with the windows, the timings and, given ``--truth`` masks,
the semantic localization metrics Rsu, Ras, Rda and Rmi.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from semret_ros.core.embedder import ClipConfig, ClipEmbedder
from semret_ros.core.localize import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CELL,
    SEED_SMOOTH_FRACTION,
    SEED_WINDOW_SIZES,
    Localization,
    LocalizeConfig,
    localize,
    read_image,
    truth_regions,
    upsample,
    window_grid,
)
from semret_ros.core.metrics import semantic_localization
from semret_ros.core.scoring import MODES, QueryConfig, check_phrases
from semret_ros.core.viz import colorize, heatmap_overlay, save_png
from semret_ros.tools.cli import add_clip_arguments

PROG = "semret-localize"
ADDMAP_ALPHA = 0.3
"""Weight of the heatmap in the addmap (the seed's cv2.addWeighted(image, 0.7, heat, 0.3))."""
STRIP_PIXELS = 1 << 20
"""Pixels coloured and blended at a time, so writing an 8k image needs no float copies of it."""
METRIC_KEYS = ("Rsu", "Ras", "Rda", "Rmi")


def build_parser() -> argparse.ArgumentParser:
    query_defaults = QueryConfig()
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Semantic localization of a large image: score multi-scale sliding windows "
        "against phrases with CLIP, write a heatmap and an addmap per phrase and report.json "
        "(with --truth: the SLM metrics Rsu, Ras, Rda, Rmi).",
    )
    p.add_argument("image", type=Path, help="PNG, JPEG or TIFF image (any size OpenCV reads)")
    p.add_argument(
        "--text", action="append", required=True, metavar="PHRASE", help="phrase (repeatable)"
    )
    p.add_argument(
        "--truth",
        action="append",
        default=[],
        type=Path,
        metavar="MASK.png",
        help="ground-truth mask per phrase, in --text order (nonzero = inside; each connected "
        "component is one region)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--window-sizes",
        type=int,
        nargs="+",
        default=list(SEED_WINDOW_SIZES),
        metavar="PX",
        help="square window sizes (default: the seed's 512 768)",
    )
    p.add_argument(
        "--window-steps",
        type=int,
        nargs="+",
        default=None,
        metavar="PX",
        help="one step per window size, at most the size (default: each size, the seed's)",
    )
    p.add_argument(
        "--no-shift",
        action="store_true",
        help="drop the second lattice shifted by half a step (the seed cuts both)",
    )
    p.add_argument(
        "--cell",
        type=int,
        default=DEFAULT_CELL,
        metavar="PX",
        help="scores are accumulated on PX x PX cells, upsampled when written (1: per pixel)",
    )
    p.add_argument(
        "--smooth",
        type=float,
        default=SEED_SMOOTH_FRACTION,
        metavar="FRACTION",
        help="median kernel / longer image side (default 251/6105, the seed's; 0: off)",
    )
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per batch")
    add_clip_arguments(p, device_help="torch device for CLIP")
    p.add_argument(
        "--query-mode",
        choices=MODES,
        default="cosine",
        help="window score: cosine (the seed's) or contrastive (relevance against --negatives)",
    )
    p.add_argument(
        "--negatives",
        default=",".join(query_defaults.negatives),
        help="comma-separated negative phrases of contrastive scoring",
    )
    p.add_argument("--contrast-scale", type=float, default=query_defaults.contrast_scale)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> LocalizeConfig:
    """The configuration the arguments describe; bad arguments exit with their reason."""
    if args.truth and len(args.truth) != len(args.text):
        parser.error(
            f"--truth: expected one mask per --text phrase ({len(args.text)}), "
            f"got {len(args.truth)}"
        )
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: {args.out} exists and is not a folder")
    negatives = tuple(n.strip() for n in args.negatives.split(",") if n.strip())
    try:
        check_phrases("--text", args.text)
        return LocalizeConfig(
            window_sizes=tuple(args.window_sizes),
            window_steps=None if args.window_steps is None else tuple(args.window_steps),
            shifted=not args.no_shift,
            cell=args.cell,
            smooth_fraction=args.smooth,
            batch_size=args.batch_size,
            query=QueryConfig(
                mode=args.query_mode, negatives=negatives, contrast_scale=args.contrast_scale
            ),
        )
    except ValueError as error:
        parser.error(_in_flags(error))


_FLAGS = {
    "window_sizes": "--window-sizes",
    "window_steps": "--window-steps",
    "cell": "--cell",
    "smooth_fraction": "--smooth",
    "batch_size": "--batch-size",
    "negatives": "--negatives",
    "scale": "--contrast-scale",
}


def _in_flags(error: Exception) -> str:
    """A core error message with its leading field name spelled as the command-line flag."""
    field, sep, rest = str(error).partition(":")
    return f"{_FLAGS[field]}:{rest}" if sep and field in _FLAGS else str(error)


def _read_truth(path: Path, shape: tuple[int, int], cell: int) -> list[np.ndarray]:
    """Regions of one ground-truth mask on the cell grid; ValueError says what is wrong."""
    if not path.is_file():
        raise ValueError(f"--truth: {path}: no such file")
    try:
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    except cv2.error as error:
        raise ValueError(f"--truth: {path}: OpenCV refused it ({error})") from error
    if mask is None:
        raise ValueError(f"--truth: {path}: not an image OpenCV can read")
    if mask.shape != shape:
        raise ValueError(
            f"--truth: {path} is {mask.shape[1]}x{mask.shape[0]}, the image is "
            f"{shape[1]}x{shape[0]}; a mask must have the image's size"
        )
    return truth_regions(mask, cell)


def file_stem(index: int, phrase: str) -> str:
    """File-name stem of a phrase's outputs: its position and a readable slug."""
    slug = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")[:40]
    return f"{index:02d}_{slug or 'phrase'}"


def write_maps(
    out: Path, stem: str, image: np.ndarray, cells: np.ndarray, cell: int
) -> dict[str, str]:
    """Write the probability map, the jet heatmap and the addmap of one phrase at full size.

    Colouring and blending run on strips of rows (:data:`STRIP_PIXELS`): the overlay helpers
    make float copies of what they are given, which for a whole 8k image would be gigabytes.
    """
    height, width = image.shape[:2]
    gray = upsample(cells, height, width, cell)
    files = {
        "probmap": f"probmap_{stem}.png",
        "heatmap": f"heatmap_{stem}.png",
        "addmap": f"addmap_{stem}.png",
    }
    save_png(out / files["probmap"], gray)
    rows = max(1, STRIP_PIXELS // width)
    picture = np.empty_like(image)
    for top in range(0, height, rows):
        picture[top : top + rows] = colorize(gray[top : top + rows] / 255.0)
    save_png(out / files["heatmap"], picture)
    for top in range(0, height, rows):
        strip = slice(top, top + rows)
        picture[strip] = heatmap_overlay(image[strip], gray[strip] / 255.0, alpha=ADDMAP_ALPHA)
    save_png(out / files["addmap"], picture)
    return files


def build_report(
    args: argparse.Namespace,
    config: LocalizeConfig,
    embedder: ClipEmbedder,
    result: Localization,
    phrases: list[dict[str, object]],
    timings: dict[str, float],
) -> dict[str, object]:
    """report.json: what was run, on which windows, how long it took, and per phrase."""
    height, width = result.image_size
    per_size = {str(size): 0 for size in config.window_sizes}
    for window in result.windows:
        per_size[str(window.size)] += 1
    report = {
        "tool": PROG,
        "image": {"path": str(args.image), "width": width, "height": height},
        "model": {
            "name": embedder.model_name,
            "pretrained": embedder.config.pretrained,
            "embedding_dim": embedder.embedding_dim,
            "device": embedder.config.device,
        },
        "scoring": {
            "mode": config.query.mode,
            "negatives": list(config.query.negatives) if config.query.mode == "contrastive" else [],
            "contrast_scale": config.query.contrast_scale,
        },
        "windows": {
            "sizes": list(config.window_sizes),
            "steps": list(config.window_steps),
            "shifted": config.shifted,
            "count": len(result.windows),
            "per_size": per_size,
            "boxes": [[w.x, w.y, w.size] for w in result.windows],
        },
        "heatmap": {
            "cell": result.cell,
            "grid": [result.heat.shape[1], result.heat.shape[0]],
            "smooth_fraction": config.smooth_fraction,
            "smooth_kernel_px": result.smooth_kernel * result.cell,
            "addmap_alpha": ADDMAP_ALPHA,
        },
        "timings": timings,
        "phrases": phrases,
    }
    scored = [entry for entry in phrases if "Rmi" in entry]
    if scored:
        report["metrics_mean"] = {
            key: float(np.mean([entry[key] for entry in scored])) for key in METRIC_KEYS
        }
    return report


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = _check_args(args, parser)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        image = read_image(args.image)
        windows = window_grid(image.shape[0], image.shape[1], config)
        truths = [_read_truth(path, image.shape[:2], config.cell) for path in args.truth]
    except (FileNotFoundError, ValueError) as error:
        return _fail(_in_flags(error))
    read_s = time.perf_counter() - started

    start = time.perf_counter()
    try:
        embedder = ClipEmbedder(
            ClipConfig(
                model_name=args.clip_model,
                pretrained=args.clip_pretrained,
                device=args.device,
                batch_size=config.batch_size,
            )
        )
    except (FileNotFoundError, ValueError) as error:
        return _fail(f"cannot load the model: {error}")
    embedder.warmup()
    model_s = time.perf_counter() - start

    with tqdm(
        total=len(windows), desc="windows", unit="win", disable=args.no_progress, file=sys.stderr
    ) as bar:
        result = localize(image, args.text, embedder, config, progress=bar.update)

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    phrases: list[dict[str, object]] = []
    for index, phrase in enumerate(args.text):
        scores = result.scores[:, index]
        entry = {
            "text": phrase,
            **write_maps(
                args.out,
                file_stem(index, phrase),
                image,
                result.probability[:, :, index],
                config.cell,
            ),
            "score_min": float(scores.min()),
            "score_max": float(scores.max()),
            "window_scores": [round(float(s), 6) for s in scores],
        }
        phrases.append(entry)
    write_s = time.perf_counter() - start

    start = time.perf_counter()
    for index, regions in enumerate(truths):
        slm = semantic_localization(result.probability[:, :, index] / 255.0, regions)
        phrases[index].update(
            truth=str(args.truth[index]),
            regions=len(regions),
            Rsu=slm.rsu,
            Ras=slm.ras,
            Rda=slm.rda,
            Rmi=slm.rmi,
        )
        if not regions:
            print(
                f"{PROG}: warning: {args.truth[index]} has no region of at least half a "
                f"{config.cell} px cell; its metrics are the worst values",
                file=sys.stderr,
            )
    metrics_s = time.perf_counter() - start

    windows_s = result.timings["windows"]
    timings = {
        "read_s": read_s,
        "model_s": model_s,
        "windows_s": windows_s,
        "windows_per_s": len(result.windows) / windows_s if windows_s > 0 else 0.0,
        "smooth_s": result.timings["smooth"],
        "write_s": write_s,
        "metrics_s": metrics_s,
        "total_s": time.perf_counter() - started,
    }
    report = build_report(args, config, embedder, result, phrases, timings)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    _print_summary(report)
    return 0


def _print_summary(report: dict[str, object]) -> None:
    windows, timings = report["windows"], report["timings"]
    sizes = ", ".join(f"{count} x {size} px" for size, count in windows["per_size"].items())
    print(
        f"{PROG}: {report['image']['width']}x{report['image']['height']}, "
        f"{windows['count']} windows ({sizes}) "
        f"in {timings['windows_s']:.1f} s ({timings['windows_per_s']:.1f} windows/s), "
        f"total {timings['total_s']:.1f} s"
    )
    for entry in report["phrases"]:
        metrics = (
            " ".join(f"{key} {entry[key]:.3f}" for key in METRIC_KEYS) if "Rmi" in entry else ""
        )
        print(f"  {entry['text']!r}: {entry['addmap']} {metrics}")


if __name__ == "__main__":
    raise SystemExit(main())
