"""Dense CLIP features (core.dense): grids, windows, mask pooling, and mask-free answers.

Real models throughout: the tiny random ResNet of conftest, a tiny random ViT saved and
reloaded the same way, and the shipped model where semantics are asserted.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import open_clip
import pytest
import torch

from semret_ros.core.dense import (
    ATTENTIONS,
    DenseConfig,
    DenseFeatureExtractor,
    DenseHead,
    MaskFreeConfig,
    cell_ids,
    pool_regions,
)
from semret_ros.core.embedder import ClipConfig, ClipEmbedder, save_clip_dir
from semret_ros.core.pipeline import PipelineConfig, SemanticPipeline, build_pipeline
from semret_ros.core.records import Prompt
from semret_ros.core.scoring import QueryConfig
from semret_ros.core.segmenters import SuperpixelConfig, SuperpixelSegmenter
from semret_ros.shapes.world import generate_scene
from semret_ros.tools.evaluate import pointed_pixel

TINY_VIT_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_vit")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_VIT_CFG}))
    torch.manual_seed(1)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False).eval()
    save_clip_dir(model, TINY_VIT_CFG, folder)
    return folder


@pytest.fixture(scope="module")
def vit_embedder(tiny_vit_dir):
    return ClipEmbedder(ClipConfig(model_name="tiny-vit", pretrained=f"local-dir:{tiny_vit_dir}"))


@pytest.fixture(scope="module")
def shipped_embedder():
    return ClipEmbedder(ClipConfig())


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- grids
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_vit_grid_has_one_unit_feature_per_patch_for_every_attention(vit_embedder, attention):
    extractor = DenseFeatureExtractor.from_embedder(vit_embedder, DenseConfig(attention=attention))
    grid = extractor.extract(_image(48, 64))
    # Shorter side to the 32 px input, 8 px patches: 4 x 5 (64 * 32 / 48 = 42.7 -> 5 cells).
    assert grid.shape == (4, 5, vit_embedder.embedding_dim)
    assert grid.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(grid, axis=-1), 1.0, atol=1e-5)


def test_vit_attention_variants_differ(vit_embedder):
    image = _image(32, 32)
    grids = [
        DenseFeatureExtractor.from_embedder(vit_embedder, DenseConfig(attention=a)).extract(image)
        for a in ATTENTIONS
    ]
    for first in range(len(grids)):
        for second in range(first + 1, len(grids)):
            assert not np.allclose(grids[first], grids[second], atol=1e-4)


def test_clearclip_with_blind_queries_gives_every_patch_the_same_feature(vit_embedder):
    """q = 0 makes q-q attention uniform, so every token is the same mean of the values: the
    replaced block really is the one that runs, without residual or feed-forward."""
    visual = copy.deepcopy(vit_embedder.model.visual)
    attn = visual.transformer.resblocks[-1].attn
    width = attn.embed_dim
    with torch.no_grad():
        attn.in_proj_weight[:width] = 0
        attn.in_proj_bias[:width] = 0
    extractor = DenseFeatureExtractor(visual, (0.5,) * 3, (0.5,) * 3, DenseConfig("clearclip"))
    grid = extractor.extract(_image(32, 32)).reshape(-1, vit_embedder.embedding_dim)
    np.testing.assert_allclose(grid, np.broadcast_to(grid[0], grid.shape), atol=1e-5)
    sclip = DenseFeatureExtractor(visual, (0.5,) * 3, (0.5,) * 3, DenseConfig("sclip"))
    kept = sclip.extract(_image(32, 32)).reshape(-1, vit_embedder.embedding_dim)
    assert not np.allclose(kept, np.broadcast_to(kept[0], kept.shape), atol=1e-3)  # residual


def test_a_vit_has_no_fine_map_and_refuses_a_head_that_reads_one(vit_embedder):
    extractor = vit_embedder.dense_extractor
    assert extractor.fine_dim == 0
    with pytest.raises(ValueError, match="vit tower has no fine map"):
        extractor.encode(torch.zeros(1, 3, 32, 32), fine=True)
    head = DenseHead(vit_embedder.embedding_dim, fine_dim=8)
    with pytest.raises(ValueError, match="8-channel fine map, but this vit tower's has none"):
        DenseFeatureExtractor(extractor.visual, (0.5,) * 3, (0.5,) * 3, head=head)


def test_resnet_cells_average_to_the_attention_pool_when_it_attends_uniformly(tiny_clip_model):
    """With the pool's q/k projections and positional embedding zeroed, open_clip's own
    attention pool is c_proj(v_proj(mean of the cells)), i.e. the mean of the MaskCLIP cell
    features (both projections are linear): the dense path is the pool, location by location.
    """
    visual = copy.deepcopy(tiny_clip_model.visual)
    pool = visual.attnpool
    with torch.no_grad():
        for param in (
            pool.positional_embedding,
            *pool.q_proj.parameters(),
            *pool.k_proj.parameters(),
        ):
            param.zero_()
    extractor = DenseFeatureExtractor(visual, (0.5,) * 3, (0.5,) * 3)
    pixels = torch.randn(2, 3, 64, 64)
    tower = extractor.encode(pixels)
    assert tower.fine is None  # no head reads it, so it is not kept
    dense = tower.cells
    assert dense.shape == (2, 2, 2, visual.output_dim)
    # The fine map is the last stage's input: stride 16, one channel per layer4 input channel.
    fine = extractor.encode(pixels, fine=True)
    assert torch.equal(fine.cells, dense)
    assert fine.fine.shape == (2, 4, 4, extractor.fine_dim) and extractor.fine_dim == 16 * 16
    with torch.no_grad():
        pooled = visual(pixels)
    torch.testing.assert_close(dense.mean(dim=(1, 2)), pooled, atol=1e-5, rtol=1e-4)


def test_resnet_grid_defaults_to_native_scale_in_one_pass(tiny_embedder):
    extractor = DenseFeatureExtractor.from_embedder(tiny_embedder)
    assert extractor.input_size == 480  # 7.5 x the 64 px input
    batch = extractor.windows(_image(480, 640))
    assert batch.grid_shape == (15, 20) and len(batch.origins) == 1
    grid = extractor.extract(_image(48, 64))
    assert grid.shape == (15, 20, tiny_embedder.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(grid, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("window", "overlap"), [(64, 0.5), (96, 0.0), (64, 0.9)])
def test_sliding_windows_cover_every_cell(tiny_embedder, window, overlap):
    config = DenseConfig(input_size=160, window=window, overlap=overlap)
    extractor = DenseFeatureExtractor.from_embedder(tiny_embedder, config)
    batch = extractor.windows(_image(170, 250))
    rows, cols = batch.grid_shape
    side = window // extractor.stride
    assert batch.pixels.shape[2:] == (side * extractor.stride, side * extractor.stride)
    covered = np.zeros((rows, cols), int)
    for r, c in batch.origins:
        assert 0 <= r <= rows - side and 0 <= c <= cols - side
        covered[r : r + side, c : c + side] += 1
    assert covered.min() >= 1
    if overlap > 0:
        assert covered.max() >= 2
    assert extractor.extract(_image(170, 250)).shape[:2] == (rows, cols)


def test_cell_ids_tile_the_image_row_major():
    ids = cell_ids(5, 7, (2, 3))
    assert ids.shape == (5, 7) and ids.min() == 1 and ids.max() == 6
    assert ids[0, 0] == 1 and ids[0, -1] == 3 and ids[-1, 0] == 4 and ids[-1, -1] == 6
    assert len(np.unique(ids)) == 6


# --------------------------------------------------------------------------- pooling
def _one_hot_grid(rows: int, cols: int) -> np.ndarray:
    return np.eye(rows * cols, dtype=np.float32).reshape(rows, cols, rows * cols)


def test_pooling_takes_the_half_covered_cells_and_ignores_the_rest():
    grid = _one_hot_grid(2, 2)  # 4 cells of 10x10 px over a 20x20 image
    ids = np.zeros((20, 20), np.int32)
    ids[0:10, 0:10] = 1  # all of cell 0
    ids[0:10, 10:14] = 1  # 40 % of cell 1: not counted
    ids[10:20, 0:20] = 2  # cells 2 and 3
    pooled = pool_regions(grid, ids, 2)
    np.testing.assert_allclose(pooled[0], [1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(pooled[1], [0, 0, 1, 1] / np.sqrt(2), atol=1e-6)


def test_a_region_smaller_than_a_cell_takes_the_cells_it_touches_by_coverage():
    grid = _one_hot_grid(2, 2)
    ids = np.zeros((20, 20), np.int32)
    ids[8:10, 6:10] = 1  # 8 px in cell 0
    ids[8:10, 10:12] = 1  # 4 px in cell 1
    pooled = pool_regions(grid, ids, 1)[0]
    assert pooled[0] > pooled[1] > 0 and pooled[2] == pooled[3] == 0
    np.testing.assert_allclose(np.linalg.norm(pooled), 1.0, atol=1e-6)


def test_pooling_refuses_a_region_without_pixels():
    with pytest.raises(ValueError, match=r"instance id 2 has no pixels"):
        pool_regions(_one_hot_grid(2, 2), np.ones((20, 20), np.int32), 2)


def test_dense_region_features_cost_one_grid_whatever_the_number_of_regions(tiny_clip_config):
    embedder = ClipEmbedder(dataclasses.replace(tiny_clip_config, region_features="dense"))
    image = _image(60, 80)
    calls = []
    for count in (3, 30):
        ids = (cell_ids(60, 80, (3, 10)) - 1) % count + 1
        before = embedder.image_encoder_calls
        features, _ = embedder.embed_frame(image, ids, count)
        calls.append(embedder.image_encoder_calls - before)
        assert features.shape == (count, embedder.embedding_dim)
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert calls[0] == calls[1] == 2  # the grid + the whole-image feature


def test_blend_mixes_dense_and_crop_by_the_dense_weight(tiny_clip_config, shapes_scene):
    image, ids, count = shapes_scene
    plain = dataclasses.replace(tiny_clip_config, global_weight=0.0)
    crop = ClipEmbedder(plain).embed_frame(image, ids, count)[0]
    dense = ClipEmbedder(dataclasses.replace(plain, region_features="dense"))
    pooled = dense.embed_frame(image, ids, count)[0]
    blend = ClipEmbedder(dataclasses.replace(plain, region_features="blend", dense_weight=0.9))
    mixed = blend.embed_frame(image, ids, count)[0]
    expected = 0.9 * pooled + 0.1 * crop
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(mixed, expected, atol=1e-5)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"attention": "maskclip"}, "attention must be one of"),
        ({"input_size": -1}, "input_size must be an integer >= 0"),
        ({"window": 1.5}, "window must be an integer >= 0"),
        ({"overlap": 0.95}, r"overlap must be in \[0, 0.9\]"),
        ({"overlap": float("nan")}, "overlap must be in"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_dense_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        DenseConfig(**fields)


def test_clip_config_rejects_bad_region_features(tiny_clip_config):
    with pytest.raises(ValueError, match="region_features must be one of"):
        dataclasses.replace(tiny_clip_config, region_features="mean")
    with pytest.raises(ValueError, match=r"dense_weight must be in \[0, 1\]"):
        dataclasses.replace(tiny_clip_config, region_features="blend", dense_weight=1.5)


def test_node_parameters_map_to_mask_free_mode_and_reject_bad_values():
    from semret_ros.ros import params

    values = {spec.name: spec.default for spec in params.PARAMETERS}
    values.update({"segmenter.type": "dense", "dense.input_size": 240, "query.normalize": True})
    params.check_values(values)
    config = params.pipeline_config(values)
    assert isinstance(config.segmenter, MaskFreeConfig)
    assert config.clip.dense.input_size == 240 and config.query.normalize
    for name, bad in (("segmenter.type", "grid"), ("clip.region_features", "x")):
        with pytest.raises(ValueError, match=name):
            params.check_values({**values, name: bad})
    with pytest.raises(ValueError, match=r"dense\.overlap"):
        params.check_values({**values, "dense.overlap": 0.95})


# --------------------------------------------------------------------------- mask-free mode
@pytest.fixture(scope="module")
def mask_free(shipped_embedder):
    pipeline = SemanticPipeline(None, shipped_embedder)
    scene = generate_scene(7, 640, 480, hard=True)
    return pipeline, scene, pipeline.process(scene.image, stamp_ns=7, frame_id="cam")


def test_mask_free_frame_regions_are_the_grid_cells(mask_free):
    _, scene, frame = mask_free
    rows, cols = frame.grid_shape
    assert (rows, cols) == (30, 40)  # the shipped head answers on a grid twice as fine
    assert frame.num_regions == rows * cols
    np.testing.assert_array_equal(frame.instance_ids, cell_ids(480, 640, (rows, cols)))
    assert frame.image is scene.image or np.array_equal(frame.image, scene.image)


def test_mask_free_query_points_at_the_named_object(mask_free):
    """The similarity peak lies on the named object (measured 23 of 23 objects on these
    scenes with the shipped head; a random feature grid points at an object for about its
    share of the image)."""
    pipeline = mask_free[0]
    hits = asked = 0
    for seed in (5, 6, 7):
        scene = generate_scene(seed, 640, 480, hard=True)
        frame = pipeline.process(scene.image)
        for obj in scene.objects:
            result = pipeline.query(frame, obj.name, threshold=0.3)
            assert result.similarity.shape == (480, 640)
            assert result.similarity.dtype == np.float32
            assert result.similarity.min() >= 0.0 and result.similarity.max() <= 1.0
            np.testing.assert_array_equal(result.mask, result.similarity >= 0.3)
            # The most relevant cell's centre (semret-eval's pointing): the clipped similarity
            # image's maximum is a plateau of ties where cells are sure.
            hits += bool(obj.mask[pointed_pixel(frame, result, int(np.argmax(result.relevance)))])
            asked += 1
            # Matches are the mask's connected regions, best first, their ids in `regions`.
            scores = [m.score for m in result.matches]
            assert scores == sorted(scores, reverse=True)
            for match in result.matches:
                region = result.regions == match.id
                assert region.sum() == match.area and result.mask[region].all()
                assert match.score == pytest.approx(float(result.similarity[region].mean()), 1e-5)
    assert hits / asked >= 0.85, f"{hits} of {asked}"


def test_mask_free_normalised_query_always_matches_its_best_place(mask_free):
    pipeline, scene, frame = mask_free
    config = dataclasses.replace(pipeline.query_config, normalize=True)
    result = pipeline.query(frame, scene.objects[0].name, threshold=0.9, config=config)
    assert result.relevance.max() == pytest.approx(1.0) and result.relevance.min() == 0.0
    assert result.matches and result.mask.any()
    top = result.regions == result.matches[0].id
    assert (top & scene.objects[0].mask).any()


def test_mask_free_label_uses_the_one_labelling_rule_per_pixel(mask_free):
    pipeline, scene, frame = mask_free
    names = [obj.name for obj in scene.objects]
    labelled = pipeline.label(frame, names, threshold=0.0)
    assert labelled.label_image.shape == (480, 640) and labelled.label_image.min() >= 1
    votes = [
        np.bincount(labelled.label_image[obj.mask], minlength=len(names) + 1).argmax() == i + 1
        for i, obj in enumerate(scene.objects)
    ]
    # Measured 3 of 8 with the shipped model (chance: 1 in 8): its cells know colours better
    # than shapes, which is what CLIC training (issue 8, part 4) is meant to improve.
    assert np.mean(votes) >= 0.25, votes
    labelled = pipeline.label(frame, names, threshold=0.3)
    # A label is only where a query for it passes the threshold.
    for index, name in enumerate(names):
        query = pipeline.query(frame, name, threshold=0.3)
        assert not (labelled.label_image == index + 1)[~query.mask].any()


def test_mask_free_describe_ranks_the_prompted_cells(mask_free):
    pipeline, scene, frame = mask_free
    obj = max(scene.objects, key=lambda o: o.mask.sum())
    ys, xs = np.nonzero(obj.mask)
    point = np.array([[float(np.median(xs)), float(np.median(ys))]])
    names = [o.name for o in scene.objects]
    result = pipeline.describe(
        frame, Prompt(points=point, point_labels=np.array([1])), vocabulary=names
    )
    cell = frame.instance_ids[int(point[0, 1]), int(point[0, 0])]
    np.testing.assert_array_equal(result.mask, frame.instance_ids == cell)
    assert sorted(result.labels) == sorted(names)
    assert result.labels.index(obj.name) < len(names) // 2, result.labels


def test_build_pipeline_makes_mask_free_mode_from_its_config(tiny_clip_config):
    pipeline = build_pipeline(PipelineConfig(segmenter=MaskFreeConfig(), clip=tiny_clip_config))
    assert pipeline.segmenter is None
    frame = pipeline.process(_image(48, 64))
    assert frame.grid_shape == (15, 20)
    segmented = SemanticPipeline(SuperpixelSegmenter(SuperpixelConfig()), pipeline.embedder)
    assert segmented.process(_image(48, 64)).grid_shape is None


def test_mask_free_mode_runs_on_a_vit_tower(vit_embedder):
    pipeline = SemanticPipeline(None, vit_embedder, query=QueryConfig(mode="cosine"))
    frame = pipeline.process(_image(60, 80))
    assert frame.grid_shape == (4, 5) and frame.num_regions == 20
    result = pipeline.query(frame, "a thing", threshold=0.0)
    assert result.similarity.shape == (60, 80) and result.mask.all()
    assert len(result.matches) == 1 and result.matches[0].area == 60 * 80
