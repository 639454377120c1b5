import numpy as np
import pytest
import torch

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
