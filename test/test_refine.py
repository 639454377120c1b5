import numpy as np
import pytest

from semret_ros.core.records import Region, Segmentation, bbox_of_mask
from semret_ros.core.refine import (
    RefineConfig,
    assign_labels,
    assign_pixels,
    assign_pixels_with_sources,
    assign_proposals,
    merge_similar_regions,
    region_stats,
    touching_pairs,
)

SHAPE = (20, 30)


def _box(y0: int, y1: int, x0: int, x1: int, score: float = 1.0) -> Region:
    mask = np.zeros(SHAPE, bool)
    mask[y0:y1, x0:x1] = True
    return Region.from_mask(mask, score)


def test_smaller_region_wins_overlap_in_either_input_order():
    big = _box(0, 20, 0, 20)
    small = _box(5, 10, 5, 10)
    for regions, big_id, small_id in (([big, small], 1, 2), ([small, big], 2, 1)):
        ids = assign_pixels(regions, min_area=1)
        assert ids.dtype == np.int32
        assert ids.shape == SHAPE
        assert (ids[5:10, 5:10] == small_id).all()
        assert np.count_nonzero(ids == big_id) == 400 - 25
        assert (ids[:, 20:] == 0).all()


def test_tiny_region_dropped_and_ids_stay_consecutive():
    regions = [_box(0, 10, 0, 10), _box(15, 17, 25, 27), _box(0, 10, 15, 25)]
    ids, sources = assign_pixels_with_sources(regions, min_area=10)
    assert set(np.unique(ids).tolist()) == {0, 1, 2}
    assert (ids[15:17, 25:27] == 0).all()
    assert (ids[0:10, 15:25] == 2).all()
    np.testing.assert_array_equal(sources, [0, 2])


def test_region_mostly_covered_is_dropped_and_its_pixels_go_beneath():
    big = _box(0, 20, 0, 30)  # 600 px
    middle = _box(0, 6, 0, 6)  # 36 px
    top = _box(0, 6, 0, 5)  # 30 px on top of middle: middle keeps 6 < 10
    ids, sources = assign_pixels_with_sources([big, middle, top], min_area=10)
    np.testing.assert_array_equal(sources, [0, 2])
    assert (ids[0:6, 5] == 1).all()
    assert (ids[0:6, 0:5] == 2).all()
    assert (ids > 0).all()


def test_equal_areas_higher_score_on_top():
    low = _box(0, 5, 0, 5, score=0.2)
    high = _box(2, 7, 2, 7, score=0.9)
    for regions in ([low, high], [high, low]):
        ids, sources = assign_pixels_with_sources(regions, min_area=1)
        winner = ids[3, 3] - 1
        assert regions[sources[winner]] is high


def test_assign_pixels_empty_and_bad_shapes():
    ids = assign_pixels([], min_area=5, shape=SHAPE)
    assert ids.shape == SHAPE
    assert not ids.any()
    with pytest.raises(ValueError, match="shape"):
        assign_pixels([], min_area=5)
    odd = Region.from_mask(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match=r"regions\[1\]\.mask has shape \(4, 4\)"):
        assign_pixels([_box(0, 5, 0, 5), odd], min_area=1)


def _random_labels(seed: int, count: int = 40) -> np.ndarray:
    """A 60x80 label image of ``count`` random blocks of very different sizes, some absent."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((60, 80), np.int32)
    for label in range(1, count + 1):
        y, x = rng.integers(0, 60), rng.integers(0, 80)
        h, w = rng.integers(1, 25, size=2)
        labels[y : y + h, x : x + w] = label
    return labels


@pytest.mark.parametrize("min_area", [0, 1, 30, 200])
def test_assign_labels_equals_painting_one_mask_per_label(min_area):
    for seed in range(5):
        labels = _random_labels(seed)
        count = int(labels.max())
        scores = np.linspace(0.1, 1.0, count).astype(np.float32)
        present = [k for k in range(1, count + 1) if (labels == k).any()]
        regions = [Region.from_mask(labels == k, float(scores[k - 1])) for k in present]
        ids, sources = assign_labels(Segmentation(labels, scores), min_area)
        want_ids, want_sources = assign_pixels_with_sources(regions, min_area, shape=labels.shape)
        assert ids.dtype == np.int32
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(np.asarray(present)[want_sources] - 1, sources)

        got_ids, got_scores = assign_proposals(Segmentation(labels, scores), min_area, (60, 80))
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_scores, scores[sources])


def test_assign_proposals_paints_overlapping_masks_with_their_scores():
    big, small = _box(0, 20, 0, 20, score=0.3), _box(5, 10, 5, 10, score=0.9)
    ids, scores = assign_proposals([small, big], min_area=1, shape=SHAPE)
    np.testing.assert_array_equal(ids, assign_pixels([small, big], min_area=1))
    np.testing.assert_array_equal(scores, np.array([0.9, 0.3], np.float32))
    assert scores.dtype == np.float32
    ids, scores = assign_proposals([], min_area=1, shape=SHAPE)
    assert not ids.any() and scores.shape == (0,)
    with pytest.raises(ValueError, match=r"shape \(20, 30\), expected \(10, 10\)"):
        assign_proposals(Segmentation(np.ones(SHAPE, np.int32), [1.0]), 1, (10, 10))
    with pytest.raises(ValueError, match="min_area"):
        assign_labels(Segmentation(np.ones(SHAPE, np.int32), [1.0]), -1)


def _unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def test_merge_touching_similar_only():
    ids = np.zeros((10, 20), np.int32)
    ids[:, 0:5] = 1  # A
    ids[:, 5:8] = 2  # B touches A, similar to A
    ids[:, 8:12] = 3  # C touches B, dissimilar
    ids[:, 15:20] = 4  # D like A but separated by background
    embeddings = np.stack(
        [_unit(1, 0.05, 0), _unit(1, 0, 0.05), _unit(0, 1, 0), _unit(1, 0.05, 0)]
    ).astype(np.float32)
    new_ids, merged, parent = merge_similar_regions(ids, embeddings, threshold=0.95)
    np.testing.assert_array_equal(parent, [1, 1, 2, 3])
    assert new_ids.dtype == np.int32
    assert set(np.unique(new_ids).tolist()) == {0, 1, 2, 3}
    assert (new_ids[:, 0:8] == 1).all()
    assert (new_ids[:, 8:12] == 2).all()
    assert (new_ids[:, 15:20] == 3).all()
    expected = _unit(*(50 * embeddings[0] + 30 * embeddings[1]))
    np.testing.assert_allclose(merged[0], expected, atol=1e-6)
    np.testing.assert_allclose(merged[1:], embeddings[2:], atol=1e-6)
    assert merged.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(merged, axis=1), 1.0, atol=1e-6)


def test_merge_is_transitive():
    ids = np.zeros((4, 12), np.int32)
    ids[:, 0:4], ids[:, 4:8], ids[:, 8:12] = 1, 2, 3
    a, c = _unit(1, 0), _unit(0.8, 0.6)  # cos(a, c) = 0.8
    b = _unit(*(a + c))  # cos(a, b) = cos(b, c) ~ 0.95
    new_ids, merged, parent = merge_similar_regions(ids, np.stack([a, b, c]), threshold=0.94)
    np.testing.assert_array_equal(parent, [1, 1, 1])
    assert (new_ids == 1).all()
    assert merged.shape == (1, 2)


def test_diagonal_contact_is_not_touching():
    ids = np.array([[1, 0], [0, 2]], np.int32)
    embeddings = np.stack([_unit(1, 0), _unit(1, 0)])
    _, merged, parent = merge_similar_regions(ids, embeddings, threshold=0.5)
    np.testing.assert_array_equal(parent, [1, 2])
    assert merged.shape == (2, 2)


def test_threshold_above_one_disables_merging():
    ids = np.array([[1, 1, 2, 2]], np.int32)
    embeddings = np.stack([_unit(1, 0), _unit(1, 0)])
    new_ids, merged, parent = merge_similar_regions(ids, embeddings, threshold=1.01)
    np.testing.assert_array_equal(new_ids, ids)
    np.testing.assert_array_equal(parent, [1, 2])
    np.testing.assert_allclose(merged, embeddings, atol=1e-7)


def test_merge_rejects_bad_input():
    ids = np.array([[1, 2]], np.int32)
    with pytest.raises(ValueError, match="NaN"):
        merge_similar_regions(ids, np.array([[1.0, 0.0], [np.nan, 0.0]]), 0.9)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        merge_similar_regions(ids, np.array([[1.0, 0.0]]), 0.9)
    with pytest.raises(ValueError, match="embeddings"):
        merge_similar_regions(ids, np.array([1.0, 0.0]), 0.9)


def test_touching_pairs_matches_a_per_pixel_reference():
    for seed in range(3):
        labels = _random_labels(seed).astype(np.uint16)
        expected = set()
        for a, b in (
            (labels[:, :-1], labels[:, 1:]),
            (labels[:-1, :], labels[1:, :]),
        ):
            for u, v in zip(a.ravel().tolist(), b.ravel().tolist(), strict=True):
                if u != v and u and v:
                    expected.add((min(u, v), max(u, v)))
        pairs = touching_pairs(labels)
        assert pairs.dtype == np.int64
        assert [tuple(p) for p in pairs.tolist()] == sorted(expected)


def test_touching_pairs():
    ids = np.array([[1, 1, 2], [3, 0, 2], [3, 3, 4]], np.int32)
    np.testing.assert_array_equal(touching_pairs(ids), [[1, 2], [1, 3], [2, 4], [3, 4]])


def test_region_stats_matches_per_mask_reference():
    rng = np.random.default_rng(1)
    shape = (120, 160)
    seeds = rng.integers(0, [shape[0], shape[1]], size=(100, 2))
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    distance = (rows[..., None] - seeds[:, 0]) ** 2 + (cols[..., None] - seeds[:, 1]) ** 2
    ids = (np.argmin(distance, axis=2) + 1).astype(np.int32)
    ids[ids == 7] = 0  # one absent id
    bboxes, areas = region_stats(ids, 101)
    assert bboxes.dtype == np.int32
    assert bboxes.shape == (101, 4)
    assert areas.dtype == np.int64
    for index in range(101):
        mask = ids == index + 1
        assert areas[index] == np.count_nonzero(mask)
        assert tuple(bboxes[index]) == bbox_of_mask(mask)
    with pytest.raises(ValueError, match=r"0\.\.5"):
        region_stats(ids, 5)


def test_refine_config_validation():
    config = RefineConfig()
    assert config.min_area > 0
    assert 0 < config.merge_threshold <= 1
    with pytest.raises(ValueError, match="min_area"):
        RefineConfig(min_area=-1)
    with pytest.raises(ValueError, match="merge_threshold"):
        RefineConfig(merge_threshold=float("nan"))
