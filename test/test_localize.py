"""Semantic localization of large images: window grid, accumulation, smoothing, files, CLI.

The accumulation is checked on hand-made window scores whose right answer is known; the tool
runs end to end with the tiny random-init CLIP model (its scores are noise, so the checks are
on files, keys, shapes and ranges, not on where the phrase is found).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from semret_ros.core.localize import (
    HeatmapAccumulator,
    LocalizeConfig,
    Window,
    axis_starts,
    localize,
    probability_map,
    read_image,
    reduce_mask,
    smooth_kernel,
    truth_regions,
    upsample,
    window_batches,
    window_grid,
)
from semret_ros.core.scoring import QueryConfig
from semret_ros.shapes.world import ALL_COMBOS, generate_large_scene
from semret_ros.tools.localize import METRIC_KEYS, main


def _coverage(windows, height, width):
    count = np.zeros((height, width), np.int64)
    for w in windows:
        count[w.y : w.y1, w.x : w.x1] += 1
    return count


# ------------------------------------------------------------------------------------ windows


@pytest.mark.parametrize(
    ("height", "width", "sizes", "steps", "shifted"),
    [
        (300, 517, (64, 96), None, True),
        (300, 517, (64, 96), (40, 96), False),
        (97, 101, (97,), None, True),
        (256, 256, (64,), (64,), False),
        (131, 77, (30, 77), (7, 50), True),
    ],
)
def test_window_grid_covers_the_image_to_its_right_and_bottom_edges(
    height, width, sizes, steps, shifted
):
    config = LocalizeConfig(window_sizes=sizes, window_steps=steps, shifted=shifted)
    windows = window_grid(height, width, config)
    assert len(set(windows)) == len(windows)
    assert all(min(w.x, w.y) >= 0 and w.x1 <= width and w.y1 <= height for w in windows)
    assert sorted({w.size for w in windows}) == sorted(sizes)
    for size in sizes:
        of_size = [w for w in windows if w.size == size]
        assert (_coverage(of_size, height, width) > 0).all()
        assert max(w.x1 for w in of_size) == width and max(w.y1 for w in of_size) == height


def _seed_split(side, steps):
    """The seed's split_image loop (generate_slm.py), as (row, col, size) of its file names."""
    names = set()
    for step in steps:
        for gap in (step, int(0.5 * step)):
            for h in range(step - gap, side, step):
                h_start = side - step if h + step >= side else h
                for w in range(step - gap, side, step):
                    w_start = side - step if w + step >= side else w
                    names.add((w_start, h_start, step))
    return names


def test_default_windows_are_the_seeds_on_its_6105_px_tiles():
    windows = window_grid(6105, 6105, LocalizeConfig())
    assert {(w.y, w.x, w.size) for w in windows} == _seed_split(6105, (512, 768))
    # Shifted lattice: starts at half a step, its last window moved back to the edge.
    assert axis_starts(6105, 512, 512, 256)[:2] == [256, 768]
    assert axis_starts(6105, 512, 512, 256)[-1] == 6105 - 512


def test_window_larger_than_the_image_is_refused_with_the_sizes():
    with pytest.raises(ValueError, match=r"768 px windows do not fit the 900x600 image"):
        window_grid(600, 900, LocalizeConfig())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_sizes": (64,), "window_steps": (65,)}, r"window_steps: .* \[1, 64\]"),
        ({"window_sizes": (64, 96), "window_steps": (32,)}, "one step per window size"),
        ({"window_sizes": (64, 64)}, "duplicate"),
        ({"window_sizes": (0,)}, "window_sizes"),
        ({"cell": 0}, "cell"),
        ({"smooth_fraction": float("nan")}, "smooth_fraction"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_configuration_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalizeConfig(**kwargs)


def test_window_batches_stream_views_or_shrunk_pictures():
    image = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    windows = [Window(0, 0, 20), Window(30, 20, 20), Window(5, 5, 8)]
    batches = list(window_batches(image, windows, 2))
    assert [len(b) for b, _ in batches] == [2, 1]
    view = batches[0][1][1]
    assert np.shares_memory(view, image) and np.array_equal(view, image[20:40, 30:50])
    shrunk = [p for _, pictures in window_batches(image, windows, 8, side=10) for p in pictures]
    assert [p.shape for p in shrunk] == [(10, 10, 3), (10, 10, 3), (8, 8, 3)]
    expected = image[20:40, 30:50].reshape(10, 2, 10, 2, 3).mean(axis=(1, 3))
    assert np.abs(shrunk[1].astype(float) - expected).max() <= 0.5


# ------------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("cell", [1, 8])
def test_constant_scores_give_a_constant_map(cell):
    height, width = 203, 157
    windows = window_grid(height, width, LocalizeConfig(window_sizes=(64, 96)))
    accumulator = HeatmapAccumulator(height, width, 2, cell)
    accumulator.add(windows, np.tile([0.25, -0.5], (len(windows), 1)))
    heat = accumulator.mean()
    assert heat.shape == (-(-height // cell), -(-width // cell), 2)
    assert np.allclose(heat[:, :, 0], 0.25) and np.allclose(heat[:, :, 1], -0.5)


def test_one_high_scoring_window_lights_exactly_its_footprint():
    height, width = 120, 160
    windows = window_grid(height, width, LocalizeConfig(window_sizes=(40,), window_steps=(20,)))
    hot = windows.index(Window(60, 40, 40))
    scores = np.zeros((len(windows), 1))
    scores[hot] = 1.0
    accumulator = HeatmapAccumulator(height, width, 1, cell=1)
    accumulator.add(windows, scores)
    lit = accumulator.mean()[:, :, 0] > 0
    footprint = np.zeros((height, width), bool)
    footprint[40:80, 60:100] = True
    assert np.array_equal(lit, footprint)
    # On 20 px cells the window is 2x2 whole cells.
    coarse = HeatmapAccumulator(height, width, 1, cell=20)
    coarse.add(windows, scores)
    assert np.array_equal(coarse.mean()[:, :, 0] > 0, footprint[::20, ::20])


def test_overlapping_windows_average_and_uncovered_pixels_are_nan():
    accumulator = HeatmapAccumulator(10, 12, 1, cell=1)
    accumulator.add([Window(0, 0, 6), Window(4, 2, 6)], np.array([[1.0], [4.0]]))
    heat = accumulator.mean()[:, :, 0]
    assert heat[0, 0] == 1.0 and heat[7, 9] == 4.0
    assert np.all(heat[2:6, 4:6] == 2.5)  # both windows: (1 + 4) / 2
    assert np.isnan(heat[9, 0]) and np.isnan(heat[0, 11])


def test_reduced_resolution_matches_the_per_pixel_map():
    height, width, cell = 203, 317, 8
    windows = window_grid(height, width, LocalizeConfig(window_sizes=(64, 96)))
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(len(windows), 1))
    full = HeatmapAccumulator(height, width, 1, cell=1)
    full.add(windows, scores)
    reduced = HeatmapAccumulator(height, width, 1, cell=cell)
    reduced.add(windows, scores)
    per_pixel, per_cell = full.mean()[:, :, 0], reduced.mean()[:, :, 0]

    # Where the same windows cover a whole cell, the cell holds exactly the per-pixel value;
    # a random weight per window makes the sum a signature of the covering set.
    signature = HeatmapAccumulator(height, width, 1, cell=1)
    signature.add(windows, rng.uniform(1, 2, (len(windows), 1)))
    sums = signature.sums[:, :, 0]
    pad = ((0, -height % cell), (0, -width % cell))
    blocks = np.pad(sums, pad, mode="edge").reshape(
        per_cell.shape[0], cell, per_cell.shape[1], cell
    )
    same = blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3))
    values = np.pad(per_pixel, pad, mode="edge").reshape(blocks.shape)
    assert same.mean() > 0.5
    assert np.allclose(per_cell[same], values.mean(axis=(1, 3))[same], atol=1e-12)
    # Elsewhere the cell blends the two sides of a window edge; upsampled, the map stays close.
    spread = float(np.ptp(per_pixel))
    assert np.abs(per_cell - values.mean(axis=(1, 3))).max() < 0.1 * spread
    upsampled = upsample(per_cell.astype(np.float32), height, width, cell)
    assert upsampled.shape == (height, width)
    assert np.abs(upsampled - per_pixel).mean() < 0.04 * spread


def test_accumulator_refuses_windows_outside_the_image_and_wrong_score_shapes():
    accumulator = HeatmapAccumulator(50, 60, 2, cell=8)
    with pytest.raises(ValueError, match="outside"):
        accumulator.add([Window(40, 0, 30)], np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"scores: expected shape \(1, 2\)"):
        accumulator.add([Window(0, 0, 30)], np.zeros((1, 3)))


# ---------------------------------------------------------------------------------- smoothing


def test_smooth_kernel_is_the_seeds_251_px_on_its_tiles():
    fraction = LocalizeConfig().smooth_fraction
    assert smooth_kernel(6105, 6105, fraction) == 251
    assert smooth_kernel(764, 764, fraction) == 31  # the same tile on 8 px cells
    assert smooth_kernel(40, 30, fraction) == 1  # too small to smooth
    assert smooth_kernel(100, 100, 0.0) == 1


def test_probability_map_normalises_then_median_smooths():
    heat = np.zeros((21, 21))
    heat[5:16, 5:16] = 2.0
    heat[0, 20] = 9.0  # an isolated spike the median removes
    heat[20, 0] = np.nan  # never covered: counts as the minimum
    raw = probability_map(heat, 1)
    assert raw.dtype == np.uint8 and raw[0, 20] == 255 and raw[20, 0] == 0
    assert raw[10, 10] == round(2 / 9 * 255)
    smoothed = probability_map(heat, 5)
    assert smoothed[0, 20] == 0 and smoothed[10, 10] == raw[10, 10]
    assert not probability_map(np.full((4, 4), 0.3), 3).any()
    with pytest.raises(ValueError, match="finite"):
        probability_map(np.full((4, 4), np.nan), 1)


def test_upsample_keeps_cell_centres_and_edge_scale():
    cells = np.arange(12, dtype=np.float32).reshape(3, 4) * 10
    full = upsample(cells, 20, 30, 8)  # 3 x 4 cells of 8 px, the last ones partial
    assert full.shape == (20, 30)
    assert full[3:5, 3:5].mean() == pytest.approx(cells[0, 0], abs=2.5)
    assert full[11:13, 19:21].mean() == pytest.approx(cells[1, 2], abs=2.5)
    with pytest.raises(ValueError, match="grid"):
        upsample(cells, 40, 30, 8)


def test_truth_regions_are_components_on_the_cell_grid():
    mask = np.zeros((40, 50), np.uint8)
    mask[0:16, 0:16] = 255
    mask[24:40, 30:46] = 1
    mask[20, 20] = 1  # one pixel: under half a cell, gone
    reduced = reduce_mask(mask, 8)
    assert reduced.shape == (5, 7)
    assert reduced[:2, :2].all() and reduced[3:5, 4:6].all() and reduced.sum() == 8
    regions = truth_regions(mask, 8)
    assert len(regions) == 2 and sorted(int(r.sum()) for r in regions) == [4, 4]
    assert len(truth_regions(mask, 1)) == 3


# ------------------------------------------------------------------------------------- files


def test_read_image_gives_rgb_from_png_tiff_and_grey(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)
    deep = np.full((5, 7), 40000, np.uint16)
    cv2.imwrite(str(tmp_path / "b.tif"), deep)
    grey = read_image(tmp_path / "b.tif")
    assert grey.shape == (5, 7, 3) and grey.dtype == np.uint8 and (grey == 40000 >> 8).all()
    with pytest.raises(FileNotFoundError, match="no such image"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not an image OpenCV can read"):
        read_image(tmp_path / "junk.png")


def test_read_image_says_how_to_raise_opencvs_pixel_limit(tmp_path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((40, 40, 3), np.uint8))
    code = (
        "from semret_ros.core.localize import read_image\n"
        "try:\n    read_image('big.png')\nexcept ValueError as e:\n    print(e)\n"
    )
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "100"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert "OPENCV_IO_MAX_IMAGE_PIXELS" in result.stdout, result.stderr


# ------------------------------------------------------------------------------- large scenes


def test_large_scene_places_many_separate_objects_deterministically():
    include = (("red", "circle"),) * 3
    scene = generate_large_scene(5, 400, 300, num_objects=40, radius=(8, 14), include=include)
    again = generate_large_scene(5, 400, 300, num_objects=40, radius=(8, 14), include=include)
    assert np.array_equal(scene.image, again.image) and scene.objects == again.objects
    assert scene.image.shape == (300, 400, 3) and scene.instance_ids.shape == (300, 400)
    assert 20 <= len(scene.objects) <= 40 and scene.objects[:3] == include
    assert set(scene.objects) <= set(ALL_COMBOS)
    # Every object kept is visible (none painted over another).
    assert set(np.unique(scene.instance_ids)) == set(range(len(scene.objects) + 1))
    wanted = [i + 1 for i, o in enumerate(scene.objects) if o == ("red", "circle")]
    assert np.array_equal(scene.mask("red", "circle"), np.isin(scene.instance_ids, wanted))
    reds = [i + 1 for i, o in enumerate(scene.objects) if o[0] == "red"]
    assert np.array_equal(scene.mask(color="red"), np.isin(scene.instance_ids, reds))
    with pytest.raises(ValueError, match="radius"):
        generate_large_scene(0, 100, 100, radius=(30, 60))


# -------------------------------------------------------------------------- core, tiny model


def test_localize_scores_each_window_as_the_embedder_does(tiny_embedder):
    image = generate_large_scene(1, 160, 128, num_objects=6, radius=(8, 14)).image
    config = LocalizeConfig(window_sizes=(64, 96), batch_size=5)
    seen = []
    result = localize(image, ["red circle", "blue square"], tiny_embedder, config, seen.append)
    windows = window_grid(128, 160, config)
    assert result.windows == windows and sum(seen) == len(windows) and max(seen) == 5
    assert result.heat.shape == (16, 20, 2) and result.probability.dtype == np.uint8
    assert result.probability.max() == 255 or not result.probability.any()
    side = tiny_embedder.input_side
    pictures = [p for _, batch in window_batches(image, windows, 64, side) for p in batch]
    text = tiny_embedder.embed_text(["red circle", "blue square"])
    expected = tiny_embedder.embed_images(pictures) @ text.T
    assert np.allclose(result.scores, expected, atol=1e-5)

    contrastive = LocalizeConfig(window_sizes=(64,), query=QueryConfig(mode="contrastive"))
    relevance = localize(image, ["red circle"], tiny_embedder, contrastive).scores
    assert ((relevance >= 0) & (relevance <= 1)).all()


# ---------------------------------------------------------------------------------------- CLI

REPORT_KEYS = {
    "tool",
    "image",
    "model",
    "scoring",
    "windows",
    "heatmap",
    "timings",
    "phrases",
}
PICTURES = ("probmap", "heatmap", "addmap")
PHRASE_KEYS = {"text", "probmap", "heatmap", "addmap", "score_min", "score_max", "window_scores"}
TIMING_KEYS = {
    "read_s",
    "model_s",
    "windows_s",
    "windows_per_s",
    "smooth_s",
    "write_s",
    "metrics_s",
    "total_s",
}


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("localize")
    scene = generate_large_scene(
        3, 256, 192, num_objects=14, radius=(9, 16), include=(("red", "circle"),) * 2
    )
    cv2.imwrite(str(folder / "scene.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "red.png"), scene.mask("red", "circle").astype(np.uint8) * 255)
    cv2.imwrite(str(folder / "blue.png"), scene.mask(color="blue").astype(np.uint8) * 255)
    cv2.imwrite(str(folder / "small.png"), np.zeros((10, 10), np.uint8))
    return folder


def _argv(folder, out, tiny_clip_dir, *extra):
    return [
        str(folder / "scene.png"), "--out", str(out), "--window-sizes", "64", "96",
        "--clip-model", "tiny", "--clip-pretrained", f"local-dir:{tiny_clip_dir}",
        "--no-progress", *extra,
    ]  # fmt: skip


def test_cli_writes_maps_and_report_with_metrics(tmp_path, scene_files, tiny_clip_dir, capsys):
    out = tmp_path / "out"
    extra = ["--text", "red circle", "--text", "blue object"]
    extra += ["--truth", str(scene_files / "red.png"), "--truth", str(scene_files / "blue.png")]
    assert main(_argv(scene_files, out, tiny_clip_dir, *extra)) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == REPORT_KEYS | {"metrics_mean"}
    assert set(report["timings"]) == TIMING_KEYS
    assert report["image"] == {"path": str(scene_files / "scene.png"), "width": 256, "height": 192}
    config = LocalizeConfig(window_sizes=(64, 96))
    assert report["windows"]["count"] == len(window_grid(192, 256, config))
    assert report["windows"]["boxes"][0] == [0, 0, 64]
    assert report["heatmap"]["cell"] == 8 and report["heatmap"]["grid"] == [32, 24]
    for index, entry in enumerate(report["phrases"]):
        assert set(entry) == PHRASE_KEYS | {"truth", "regions", *METRIC_KEYS}
        assert entry["regions"] >= 1
        assert len(entry["window_scores"]) == report["windows"]["count"]
        for key in METRIC_KEYS:
            assert 0.0 <= entry[key] <= 1.0
        rmi = 0.4 * entry["Rsu"] + 0.35 * (1 - entry["Ras"]) + 0.25 * entry["Rda"]
        assert entry["Rmi"] == pytest.approx(rmi)
        pictures = {kind: cv2.imread(str(out / entry[kind])) for kind in PICTURES}
        assert all(p.shape == (192, 256, 3) for p in pictures.values())
        # The addmap is the seed's blend: 0.7 image + 0.3 heatmap.
        blend = 0.7 * cv2.imread(str(scene_files / "scene.png")) + 0.3 * pictures["heatmap"]
        assert np.array_equal(pictures["addmap"], np.rint(blend).astype(np.uint8))
        assert entry["heatmap"] == f"heatmap_0{index}_{entry['text'].replace(' ', '_')}.png"
    assert set(report["metrics_mean"]) == set(METRIC_KEYS)
    assert "Rmi" in capsys.readouterr().out


def test_cli_without_truth_reports_no_metrics(tmp_path, scene_files, tiny_clip_dir):
    out = tmp_path / "out"
    argv = _argv(scene_files, out, tiny_clip_dir, "--text", "circle", "--cell", "1", "--no-shift")
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == REPORT_KEYS
    assert set(report["phrases"][0]) == PHRASE_KEYS
    assert report["heatmap"]["grid"] == [256, 192] and report["windows"]["shifted"] is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--text", "a", "--text", "b", "--truth", "red.png"], "one mask per --text phrase"),
        (["--text", "a", "--window-steps", "100", "50"], r"--window-steps: .*\[1, 64\]"),
        (["--text", "a", "--text", "a "], "duplicate phrase"),
        (["--text", "a", "--cell", "0"], "--cell"),
    ],
)
def test_cli_bad_arguments_exit_with_usage(
    tmp_path, scene_files, tiny_clip_dir, capsys, extra, message
):
    extra = [str(scene_files / e) if e.endswith(".png") else e for e in extra]
    with pytest.raises(SystemExit) as exited:
        main(_argv(scene_files, tmp_path / "out", tiny_clip_dir, *extra))
    assert exited.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("image", "extra", "message"),
    [
        ("missing.png", [], "no such image file"),
        ("scene.png", ["--window-sizes", "256"], "--window-sizes: 256 px windows do not fit"),
        ("scene.png", ["--truth", "small.png"], "a mask must have the image's size"),
        ("scene.png", ["--truth", "nothing.png"], "--truth: .*nothing.png: no such file"),
        ("scene.png", ["--clip-pretrained", "/nowhere/w.pt"], "cannot load the model"),
    ],
)
def test_cli_bad_inputs_fail_clearly_and_write_nothing(
    tmp_path, scene_files, tiny_clip_dir, capsys, image, extra, message
):
    argv = _argv(scene_files, tmp_path / "out", tiny_clip_dir, "--text", "red circle")
    argv[0] = str(scene_files / image)
    argv += [str(scene_files / e) if e.endswith(".png") else e for e in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("semret-localize: error:") and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()
