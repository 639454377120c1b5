import cv2
import numpy as np
import pytest
import torch

from semret_ros.core.depth import DepthFrame, depth_to_16uc1, segment_positions
from semret_ros.shapes import world as sw
from semret_ros.tools.train import ShapesDataset, positives


def _identity(x):
    return x


def test_same_seed_same_scene_and_different_seed_differs():
    a = sw.generate_scene(7, 96, 80, hard=True)
    b = sw.generate_scene(7, 96, 80, hard=True)
    c = sw.generate_scene(8, 96, 80, hard=True)
    assert np.array_equal(a.image, b.image)
    assert [o.name for o in a.objects] == [o.name for o in b.objects]
    for oa, ob in zip(a.objects, b.objects, strict=True):
        assert np.array_equal(oa.mask, ob.mask)
    assert not np.array_equal(a.image, c.image)


def test_same_seed_same_crop():
    a, b = sw.sample_crop(3), sw.sample_crop(3)
    assert (a.color, a.shape) == (b.color, b.shape)
    assert np.array_equal(a.crop, b.crop)


@pytest.mark.parametrize("size", [(640, 480), (97, 61)])
def test_scene_of_any_size(size):
    scene = sw.generate_scene(1, *size)
    assert scene.image.shape == (size[1], size[0], 3)
    assert scene.image.dtype == np.uint8
    assert scene.image.flags["C_CONTIGUOUS"]
    assert scene.instance_ids.shape == scene.image.shape[:2]


def test_masks_are_visible_disjoint_and_match_the_painted_colour():
    for seed in range(6):
        scene = sw.generate_scene(seed, 160, 120)
        union = np.zeros(scene.image.shape[:2], int)
        names = [o.name for o in scene.objects]
        assert len(set(names)) == len(names)
        for obj in scene.objects:
            assert obj.mask.any()
            assert obj.bbox[2] > 0 and obj.bbox[3] > 0
            union += obj.mask
            # The median pixel under the mask is nearest to the object's named colour.
            median = np.median(scene.image[obj.mask].astype(float), axis=0)
            dists = {c: np.linalg.norm(median - np.array(rgb)) for c, rgb in sw.COLORS.items()}
            assert min(dists, key=dists.get) == obj.color, (seed, obj.name)
        assert union.max() <= 1
        ids = scene.instance_ids
        assert set(np.unique(ids)) == set(range(len(scene.objects) + 1)) | {0}


def test_hard_scenes_are_busier():
    for seed in range(4):
        scene = sw.generate_scene(seed, 320, 240, hard=True)
        assert 5 <= len(scene.objects) <= 8  # 6-8 drawn; a hidden one may be dropped
        assert scene.hard


def test_held_out_combos_are_eight_and_disjoint_from_seen():
    assert len(sw.HELD_OUT) == 8
    assert not set(sw.SEEN_COMBOS) & sw.HELD_OUT
    assert len(sw.SEEN_COMBOS) + len(sw.HELD_OUT_COMBOS) == len(sw.ALL_COMBOS) == 64


def test_held_out_never_in_training_samples():
    dataset = ShapesDataset(seed=0, length=300, preprocess=_identity)
    colors = list(sw.COLORS)
    for i in range(300):
        sample = dataset[i]
        color_index, shape_index = sample.image_key
        if color_index < len(colors):  # else an off-palette colour: no colour name applies
            assert (colors[color_index], sw.SHAPES[shape_index]) not in sw.HELD_OUT
        words = set(sample.caption.rstrip(".").split())
        assert not any(c in words and s in words for c, s in sw.HELD_OUT), sample.caption
    for seed in range(10):
        assert not any(o.held_out for o in sw.generate_scene(seed, 96, 96, which="seen").objects)


def test_min_held_out_scenes_contain_held_out_objects():
    scene = sw.generate_scene(4, 320, 240, hard=True, which="all", min_held_out=2)
    assert sum(o.held_out for o in scene.objects) >= 1


def test_captions_cover_full_colour_only_and_shape_only():
    rng = np.random.default_rng(0)
    kinds = {}
    for _ in range(200):
        text, kind = sw.random_caption(rng, "red", "star")
        kinds.setdefault(kind, set()).add(text)
    assert set(kinds) == {"full", "color", "shape"}
    assert all("red" in t and "star" not in t for t in kinds["color"])
    assert all("star" in t and "red" not in t for t in kinds["shape"])
    assert len(kinds["full"]) >= 8


def test_crops_are_square_masked_crops():
    for seed in range(10):
        sample = sw.sample_crop(seed, which="held_out")
        assert (sample.color, sample.shape) in sw.HELD_OUT
        h, w, _ = sample.crop.shape
        assert h == w and sample.crop.dtype == np.uint8


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_objects"):
        sw.generate_scene(0, num_objects=9)
    with pytest.raises(ValueError, match="width and height"):
        sw.generate_scene(0, 8, 8)
    with pytest.raises(ValueError, match="combos"):
        sw.generate_scene(0, which="unseen")
    with pytest.raises(ValueError, match="shape"):
        sw.draw_shape_mask("blob", 10, 10, (5, 5), 3, 0)


def test_off_palette_objects_have_no_colour_name_and_only_shape_captions():
    rng = np.random.default_rng(0)
    named = np.array(list(sw.COLORS.values()), float)
    for _ in range(20):
        rgb = sw.off_palette_rgb(rng)
        assert np.linalg.norm(named - rgb, axis=1).min() >= 100
    sample = sw.sample_crop(5, off_palette=True)
    assert sample.color is None
    with pytest.raises(ValueError, match="shape-only"):
        sw.random_caption(rng, None, sample.shape, "full")
    text, kind = sw.random_caption(rng, None, sample.shape, "shape")
    assert kind == "shape" and sample.shape in text


def test_background_crops_are_deterministic_square_and_mostly_fill():
    a, b = sw.sample_background_crop(5), sw.sample_background_crop(5)
    assert np.array_equal(a, b)
    for seed in range(8):
        crop = sw.sample_background_crop(seed)
        assert crop.dtype == np.uint8 and crop.ndim == 3 and crop.shape[0] == crop.shape[1]


def test_whole_background_patch_spans_the_frame_around_the_objects():
    size, wholes = 160, 0
    for seed in range(16):
        patch, whole = (
            sw.sample_background_crop(np.random.default_rng((seed, 3)), size, whole_share=share)
            for share in (0.0, 1.0)
        )
        if np.array_equal(patch, whole):
            continue  # a ribbon along an outline: whole_share only replaces patches
        wholes += 1
        # A crop is the region's box with padding: the whole background's box is the frame,
        # a patch between objects is an ellipse at most 0.6 of the frame across.
        assert whole.shape[0] >= size > patch.shape[0], (seed, whole.shape, patch.shape)
    assert wholes >= 4
    # Without it, the random stream is untouched (earlier recipes reproduce).
    a = sw.sample_background_crop(np.random.default_rng(7), randomize=True)
    b = sw.sample_background_crop(np.random.default_rng(7), randomize=True, whole_share=0.0)
    assert np.array_equal(a, b)


def test_background_samples_match_no_object_caption():
    dataset = ShapesDataset(seed=1, length=200, preprocess=_identity)
    samples = [dataset[i] for i in range(200)]
    background = [s for s in samples if s.caption in sw.BACKGROUND_TEMPLATES]
    objects = [s for s in samples if s.caption not in sw.BACKGROUND_TEMPLATES]
    assert background and objects, "the dataset mixes background and object samples"
    image_keys = torch.tensor([s.image_key for s in background + objects])
    caption_keys = torch.tensor([s.caption_key for s in background + objects])
    pos = positives(image_keys, caption_keys)
    nb = len(background)
    assert pos[:nb, :nb].all(), "background captions describe every background region"
    assert not pos[:nb, nb:].any() and not pos[nb:, :nb].any()


def test_depth_is_deterministic_per_seed_and_leaves_the_colour_image_alone():
    scene = sw.generate_scene(5, 160, 120, hard=True)
    image = scene.image.copy()
    a, b = sw.render_depth(scene), sw.render_depth(scene)
    np.testing.assert_array_equal(a.depth_m, b.depth_m)  # NaN holes compare equal here
    assert not np.array_equal(
        np.nan_to_num(a.depth_m), np.nan_to_num(sw.render_depth(scene, seed=6).depth_m)
    )
    np.testing.assert_array_equal(scene.image, image)
    assert a.depth_m.shape == a.true_depth_m.shape == (120, 160)
    assert a.depth_m.dtype == np.float32
    assert (a.intrinsics.width, a.intrinsics.height) == (160, 120)


def test_depth_ground_truth_centroids_agree_with_segment_positions_on_the_masks():
    for seed in range(6):
        scene = sw.generate_scene(seed, hard=True)
        rendered = sw.render_depth(scene)
        depth = DepthFrame(rendered.depth_m, rendered.intrinsics, stamp_ns=0, frame_id="camera")

        positions = segment_positions(scene.instance_ids, len(scene.objects), depth, 20)

        assert rendered.centroids.shape == (len(scene.objects), 3)
        for obj, position, centroid in zip(
            scene.objects, positions, rendered.centroids, strict=True
        ):
            assert position is not None, obj.name
            assert np.abs(np.array(position.position) - centroid).max() < 0.03, (seed, obj.name)


def test_depth_has_holes_noise_and_flying_pixels_at_edges():
    scene = sw.generate_scene(2, hard=True)
    rendered = sw.render_depth(scene)
    holes = np.isnan(rendered.depth_m)
    assert 0.005 < holes.mean() < 0.1
    valid = ~holes
    error = np.abs(rendered.depth_m - rendered.true_depth_m)[valid]
    assert np.median(error) > 0.0005  # noisy, not the true depth
    np.testing.assert_allclose(
        rendered.depth_m[valid] * 1000, np.round(rendered.depth_m[valid] * 1000), atol=1e-3
    )
    # Flying pixels: readings beyond six noise sigmas (0.001 z^2) from the truth, next to
    # object edges only.
    ids = scene.instance_ids
    edge = np.zeros_like(holes)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, 1:] != ids[:, :-1]
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:-1] |= ids[1:] != ids[:-1]
    edge = cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    truth = rendered.true_depth_m
    error = np.abs(np.nan_to_num(rendered.depth_m) - truth)
    wrong = valid & (error > 6 * 0.001 * truth**2 + 0.001)
    assert wrong.sum() > 50
    assert not (wrong & ~edge).any()
    assert (holes & edge).mean() / edge.mean() > 0.2  # edges lose many readings


def test_depth_order_matches_the_drawing_order_and_the_wall_is_behind():
    for seed in range(8):
        scene = sw.generate_scene(seed, hard=True)
        rendered = sw.render_depth(scene)
        depths = [float(np.median(rendered.true_depth_m[obj.mask])) for obj in scene.objects]
        # Objects drawn later cover earlier ones, so they are nearer.
        assert depths == sorted(depths, reverse=True), seed
        nearest_wall = rendered.true_depth_m[scene.instance_ids == 0].min()
        farthest_object = max(rendered.true_depth_m[obj.mask].max() for obj in scene.objects)
        assert farthest_object < nearest_wall, seed


def test_rendered_depth_encodes_as_16uc1_with_holes_as_zero():
    rendered = sw.render_depth(sw.generate_scene(1, 64, 48))
    units = depth_to_16uc1(rendered.depth_m)
    assert units.dtype == np.uint16
    np.testing.assert_array_equal(units == 0, np.isnan(rendered.depth_m))


def test_shifted_training_masks_do_not_wrap_around():
    # An object touching the left edge: a shift to the left must push part of it out of the
    # image, never bring it back in at the right edge (np.roll did).
    mask = np.zeros((60, 80), bool)
    mask[20:40, 0:12] = True
    shifted = 0
    for seed in range(300):
        out = sw.perturb_mask(np.random.default_rng(seed), mask)
        assert not out[:, 40:].any(), seed
        shifted += not np.array_equal(out, mask)
    assert shifted > 0
    assert np.array_equal(sw.shift_mask(mask, 0, -4)[:, :8], mask[:, 4:12])
    assert not sw.shift_mask(mask, 0, -4)[:, 8:].any()
    assert np.array_equal(sw.shift_mask(mask, 3, 5)[23:43, 5:17], mask[20:40, 0:12])


def test_randomized_crops_are_deterministic_and_differ_from_the_classic_recipe():
    a = sw.sample_crop(4, randomize=True)
    b = sw.sample_crop(4, randomize=True)
    assert np.array_equal(a.crop, b.crop) and (a.color, a.shape) == (b.color, b.shape)
    assert not np.array_equal(a.crop, sw.sample_crop(4).crop)
    crop = sw.sample_crop(4, randomize=True, combo=("red", "star"))
    assert (crop.color, crop.shape) == ("red", "star")
    background = sw.sample_background_crop(4, randomize=True)
    assert background.ndim == 3 and background.dtype == np.uint8


def test_simulated_camera_keeps_size_and_stays_near_the_image():
    image = sw.generate_scene(2, 96, 80).image
    out = sw.simulate_camera(np.random.default_rng(0), image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out.astype(float) - image).mean() < 30
