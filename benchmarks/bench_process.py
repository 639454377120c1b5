"""Where ``SemanticPipeline.process`` spends a frame: the baseline core vs the current one.

Both paths process the same hard 640x480 shapes scene (~300 superpixels) with the shipped
model and default settings, in one run. The baseline is the core as of commit ``5d3eeec``
(before the id-image path), extracted with ``git show`` into a temporary package and imported
next to the current one, so no copy of the old code lives in the repository. Each stage is
timed by wrapping the function ``process`` calls for it; the image encoder's forward passes
are timed on their own, because they are the same work in both paths and the per-frame
bookkeeping is everything else. The script fails if the two paths disagree on instance ids
or embeddings.

    .venv/bin/python benchmarks/bench_process.py [--seed 3] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from semret_ros.core import pipeline as current_pipeline
from semret_ros.core.embedder import LOCAL_DIR_PREFIX, default_model_dir
from semret_ros.core.records import SemanticFrame
from semret_ros.shapes.world import generate_scene

ROOT = Path(__file__).resolve().parent.parent
BASELINE_COMMIT = "5d3eeec"
BASELINE_PACKAGE = "semret_baseline"
STAGES = ("segment", "assign", "embed", "encoder", "merge", "other")


def import_baseline(commit: str, folder: Path) -> ModuleType:
    """The pipeline module of ``commit``'s core, importable beside the current package."""
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", commit, "semret_ros/core/"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    core = folder / BASELINE_PACKAGE / "core"
    core.mkdir(parents=True)
    (folder / BASELINE_PACKAGE / "__init__.py").write_text("")
    for path in listing:
        source = subprocess.run(
            ["git", "show", f"{commit}:{path}"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (core / Path(path).name).write_text(
            source.replace("semret_ros.core", f"{BASELINE_PACKAGE}.core")
        )
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{BASELINE_PACKAGE}.core.pipeline")


class StageClock:
    """Seconds spent per stage, collected by wrapping the callables ``process`` goes through."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        return timed


@contextmanager
def patched(owner: object, name: str, replacement: object) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def breakdown(
    module: ModuleType, pipeline: object, names: tuple[str, str], image: np.ndarray, repeats: int
) -> tuple[dict[str, float], SemanticFrame]:
    """Median milliseconds per stage over ``repeats`` calls of ``pipeline.process(image)``.

    ``names`` are the assign function (of ``module``) and the embed method (of the embedder)
    that this path's ``process`` calls. ``embed`` excludes the encoder's forward passes,
    reported as ``encoder``; ``other`` is what ``process`` spends outside the wrapped stages
    (checks, scores, boxes and areas).
    """
    assign_name, embed_name = names
    runs: list[dict[str, float]] = []
    frame = None
    for _ in range(repeats):
        clock = StageClock()
        segmenter, embedder, model = pipeline.segmenter, pipeline.embedder, pipeline.embedder.model
        if hasattr(segmenter, "_cache"):
            # The baseline remembers the last image's superpixels; a camera never repeats one.
            segmenter._cache = type(segmenter._cache)()
        merge = module.merge_similar_regions
        with (
            patched(module, assign_name, clock.wrap("assign", getattr(module, assign_name))),
            patched(module, "merge_similar_regions", clock.wrap("merge", merge)),
            patched(segmenter, "segment", clock.wrap("segment", segmenter.segment)),
            patched(embedder, embed_name, clock.wrap("embed", getattr(embedder, embed_name))),
            patched(model, "encode_image", clock.wrap("encoder", model.encode_image)),
        ):
            start = time.perf_counter()
            frame = pipeline.process(image)
            total = time.perf_counter() - start
        seconds = dict(clock.seconds)
        seconds["embed"] -= seconds["encoder"]
        seconds["other"] = total - sum(seconds.values())
        runs.append({stage: 1000 * value for stage, value in seconds.items()})
    return {stage: statistics.median(run[stage] for run in runs) for stage in STAGES}, frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=3, help="hard scene seed (3: ~330 regions)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image = generate_scene(args.seed, width=640, height=480, hard=True).image

    # The shipped model for both; the baseline's own default would look inside the temp copy.
    model = f"{LOCAL_DIR_PREFIX}{default_model_dir()}"
    with tempfile.TemporaryDirectory() as folder:
        baseline = import_baseline(BASELINE_COMMIT, Path(folder))
        paths = {
            f"baseline {BASELINE_COMMIT}": (
                baseline,
                baseline.build_pipeline(
                    baseline.PipelineConfig(clip=baseline.ClipConfig(pretrained=model))
                ),
                ("assign_pixels_with_sources", "embed_frame"),
            ),
            "current": (
                current_pipeline,
                current_pipeline.build_pipeline(
                    current_pipeline.PipelineConfig(
                        clip=current_pipeline.ClipConfig(pretrained=model)
                    )
                ),
                ("assign_proposals", "embed_regions"),
            ),
        }
        results = {}
        for name, (module, pipeline, names) in paths.items():
            pipeline.embedder.warmup()
            pipeline.process(image)
            results[name] = breakdown(module, pipeline, names, image, args.repeats)

    old_frame, new_frame = (frame for _, frame in results.values())
    same_ids = np.array_equal(old_frame.instance_ids, new_frame.instance_ids)
    same_embeddings = old_frame.embeddings.shape == new_frame.embeddings.shape and np.allclose(
        old_frame.embeddings, new_frame.embeddings, rtol=0, atol=1e-6
    )
    print(
        f"process() on hard shapes scene {args.seed} (640x480, {new_frame.num_regions} regions "
        f"after merging), shapes_default model, torch threads {torch.get_num_threads()}, "
        f"median of {args.repeats} ms"
    )
    print(f"{'stage':<16}" + "".join(f"{name:>18}" for name in results) + f"{'ratio':>9}")
    rows = [*STAGES, "non-encoder", "total"]
    for row in rows:
        if row == "non-encoder":
            values = [sum(v for k, v in r.items() if k != "encoder") for r, _ in results.values()]
        elif row == "total":
            values = [sum(r.values()) for r, _ in results.values()]
        else:
            values = [r[row] for r, _ in results.values()]
        ratio = f"{values[0] / values[1]:8.1f}x" if values[1] > 0 else ""
        print(f"{row:<16}" + "".join(f"{v:>18.1f}" for v in values) + f"{ratio:>9}")
    difference = (
        float(np.abs(old_frame.embeddings - new_frame.embeddings).max())
        if old_frame.embeddings.shape == new_frame.embeddings.shape
        else float("inf")
    )
    print(
        f"identical instance ids: {same_ids}; embeddings within 1e-6: {same_embeddings} "
        f"(max |diff| {difference:.1e})"
    )
    if not (same_ids and same_embeddings):
        raise SystemExit("the current path does not reproduce the baseline's frame")


if __name__ == "__main__":
    main()
