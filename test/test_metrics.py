"""Metrics on hand-made features, heatmaps and masks with known answers."""

import math

import numpy as np
import pytest

from semret_ros.core.metrics import (
    ConsistencySummary,
    SlmConfig,
    heatmap_peaks,
    iou,
    label_scores,
    mean_iou,
    merge_deletion_diagnostic,
    region_centre_radius,
    retrieval_metrics,
    semantic_consistency,
)
from semret_ros.core.metrics import semantic_localization as slm


def square_mask(shape=(100, 100), top=30, left=30, side=40) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_consistency_spread_and_counts():
    features = np.array([[1.0, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]])
    labels = np.array([4, 4, 7, 7, 9])
    summary = semantic_consistency(features, labels)
    np.testing.assert_array_equal(summary.labels, [4, 7, 9])
    np.testing.assert_array_equal(summary.counts, [2, 2, 1])
    np.testing.assert_allclose(summary.spread, [math.sqrt(0.1), 0.0, 0.0], atol=1e-12)
    assert summary.mean_spread == pytest.approx(2 * math.sqrt(0.1) / 5)


def test_consistency_cosine_of_centred_orthogonal_means():
    # Three orthogonal label means: after centring, every pair has cosine -1/2.
    features = np.eye(3).repeat(2, axis=0)
    summary = semantic_consistency(features, [0, 0, 1, 1, 2, 2])
    expected = np.full((3, 3), -0.5)
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(summary.cosine, expected, atol=1e-12)
    assert summary.mean_between_cosine == pytest.approx(-0.5)


def test_consistency_single_label_and_bad_input():
    summary = semantic_consistency(np.ones((3, 4)), [1, 1, 1])
    np.testing.assert_array_equal(summary.cosine, [[1.0]])
    assert summary.mean_between_cosine == 0.0
    with pytest.raises(ValueError, match="labels"):
        semantic_consistency(np.ones((3, 4)), [1, 2])
    with pytest.raises(ValueError, match="features"):
        semantic_consistency(np.full((2, 4), np.nan), [1, 2])
    with pytest.raises(ValueError, match="features"):
        semantic_consistency(np.zeros((0, 4)), [])


def test_merge_deletion_diagnostic_on_a_hand_made_matrix():
    cosine = np.eye(5)
    cosine[0, 1] = cosine[1, 0] = 0.7  # labels 1 and 2 near-duplicates -> merge
    cosine[4, :4] = cosine[:4, 4] = 0.5  # label 5 resembles everything -> too generic
    cosine[4, 0] = cosine[0, 4] = 0.65  # above 0.6, but label 5 is deleted first
    summary = ConsistencySummary(
        labels=np.array([1, 2, 3, 4, 5]),
        spread=np.zeros(5),
        counts=np.ones(5, np.int64),
        cosine=cosine,
        mean_spread=0.0,
        mean_between_cosine=0.0,
    )
    report = merge_deletion_diagnostic(summary)
    assert report.deleted == [5]
    assert report.merged == [(1, 2)]
    np.testing.assert_allclose(report.row_sums, [1.35, 1.2, 0.5, 0.5, 2.15])
    assert merge_deletion_diagnostic(summary, merge_threshold=0.8).merged == []


def test_region_centre_radius_of_a_square():
    centre, radius = region_centre_radius(square_mask(), radius_factor=1.5)
    np.testing.assert_allclose(centre, [49.5, 49.5])
    # mean distance of a square's perimeter from its centre = 1.1478 x half side (19.5 px)
    assert radius == pytest.approx(1.5 * 1.1478 * 19.5, rel=0.02)


def test_peaks_merge_plateaus_and_ignore_weak_maxima():
    heat = np.zeros((100, 100))
    heat[10:20, 10:20] = 1.0
    heat[70:80, 60:70] = 0.3  # below the 0.5 peak threshold
    peaks = heatmap_peaks(heat)
    np.testing.assert_allclose(peaks, [[14.5, 14.5]])


def test_ring_plateau_peak_stays_on_the_ring():
    peaks = heatmap_peaks(1.0 - square_mask())
    assert len(peaks) == 1
    x, y = np.rint(peaks[0]).astype(int)
    assert not square_mask()[y, x]


def test_perfect_heatmap_beats_inverted():
    mask = square_mask()
    perfect = slm(mask.astype(float), [mask])
    inverted = slm(1.0 - mask, [mask])
    assert perfect.rsu > 0.99 and inverted.rsu == pytest.approx(0.0)
    assert perfect.ras < 0.01 < 0.2 < inverted.ras
    assert perfect.rda == pytest.approx(1.0)
    assert perfect.rmi > 0.99 > inverted.rmi
    assert perfect.rmi == pytest.approx(0.4 * perfect.rsu + 0.35 * (1 - perfect.ras) + 0.25)


def test_rsu_formula_on_a_partial_heatmap():
    mask = square_mask()
    heat = mask * 0.8
    heat[0:10, 0:10] = 0.4  # 40 units of mass outside the region
    inside, outside = 0.8 * 1600, 40.0
    expected = 1 - math.exp(-0.707 * (inside / outside) * ((10000 - 1600) / 1600))
    assert slm(heat, [mask]).rsu == pytest.approx(expected, rel=1e-6)


def test_ras_grows_with_peak_offset():
    mask = square_mask()
    centre, radius = region_centre_radius(mask)
    heat = np.zeros((100, 100))
    heat[48:53, 60:65] = 1.0  # one peak at (62, 50)
    result = slm(heat, [mask])
    g = math.hypot(62 - centre[0], 50 - centre[1]) / radius
    assert result.ras == pytest.approx((math.exp(3 * g) - 1) / (math.exp(3) - 1), rel=1e-3)
    assert result.rda == 1.0
    centred = np.zeros((100, 100))
    centred[47:52, 47:52] = 1.0
    assert slm(centred, [mask]).ras < result.ras


def test_rda_penalises_several_peaks():
    mask = square_mask()
    heat = np.zeros((100, 100))
    heat[35:40, 35:40] = 1.0
    heat[60:65, 60:65] = 1.0
    result = slm(heat, [mask], SlmConfig(peak_window_fraction=0.05))
    assert len(result.peaks) == 2
    _, radius = region_centre_radius(mask)
    spread = math.hypot(12.5, 12.5) / radius
    assert result.rda == pytest.approx(0.5 * (1 - spread) + math.exp(-2), rel=1e-3)
    assert result.rda < 1.0


def test_slm_edge_cases_are_finite():
    mask = square_mask()
    empty_heat = slm(np.zeros((100, 100)), [mask])
    assert (empty_heat.rsu, empty_heat.ras, empty_heat.rda, empty_heat.rmi) == (0.0, 1.0, 0.0, 0.0)
    for regions in ([], [np.zeros((100, 100), bool)]):
        no_region = slm(mask.astype(float), regions)
        assert (no_region.rsu, no_region.ras, no_region.rda, no_region.rmi) == (0.0, 1.0, 0.0, 0.0)
    full = slm(np.ones((100, 100)), [np.ones((100, 100), bool)])
    assert all(math.isfinite(v) for v in (full.rsu, full.ras, full.rda, full.rmi))
    nan_heat = mask.astype(float)
    nan_heat[0, 0] = np.nan
    assert math.isfinite(slm(nan_heat, [mask]).rmi)
    with pytest.raises(ValueError, match="regions"):
        slm(mask.astype(float), [np.ones((5, 5), bool)])
    with pytest.raises(ValueError, match="probability"):
        slm(np.zeros((0, 0)), [])


def test_iou_values_and_conventions():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0:2, 0:2] = True
    b[0:2, 1:3] = True
    assert iou(a, b) == pytest.approx(2 / 6)
    assert iou(a, a) == 1.0
    assert iou(a, ~a) == 0.0
    assert iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        iou(a, b[:2])


def test_mean_iou_skips_absent_classes_and_ignored_pixels():
    target = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]])
    prediction = np.array([[1, 1, 1, 2], [1, 1, 2, 2], [5, 0, 0, 0]])
    value, per_class = mean_iou(prediction, target, ignore_index=0)
    assert per_class == pytest.approx({1: 4 / 5, 2: 3 / 4})
    assert value == pytest.approx((4 / 5 + 3 / 4) / 2)
    value_all, per_class_all = mean_iou(prediction, target)
    assert set(per_class_all) == {0, 1, 2, 5}
    assert per_class_all[5] == 0.0
    assert value_all == pytest.approx(np.mean(list(per_class_all.values())))
    with pytest.raises(ValueError, match="target"):
        mean_iou(np.zeros((2, 2)), np.zeros((2, 2)), ignore_index=0)
    with pytest.raises(ValueError, match="prediction"):
        mean_iou(np.zeros((2, 3)), np.zeros((2, 2)))


def test_label_scores_per_object_accuracy_iou_and_background():
    masks = np.zeros((2, 4, 6), bool)
    masks[0, :2, :2] = True  # object 0: 4 px
    masks[1, 2:, 2:4] = True  # object 1: 4 px
    labels = np.zeros((4, 6), np.uint16)
    labels[:2, :2] = [[1, 1], [2, 0]]  # object 0: 2 px its own label, 1 px the other, 1 none
    labels[2:, 2:5] = 2  # object 1 fully labelled, and 2 background pixels too
    scores = label_scores(labels, masks)
    np.testing.assert_allclose(scores.accuracy, [2 / 4, 4 / 4])
    # label 1 covers 2 px, all on object 0; label 2 covers 7 px, 4 of them object 1.
    np.testing.assert_allclose(scores.iou, [2 / 4, 4 / 7])
    assert scores.background_labelled == pytest.approx(2 / 16)
    perfect = label_scores(masks[0] * 1 + masks[1] * 2, list(masks))
    np.testing.assert_array_equal(perfect.accuracy, [1.0, 1.0])
    np.testing.assert_array_equal(perfect.iou, [1.0, 1.0])
    assert perfect.background_labelled == 0.0
    nothing = label_scores(np.zeros((4, 6), np.uint8), masks)
    assert not nothing.accuracy.any() and not nothing.iou.any()


def test_label_scores_rejects_mismatched_input():
    masks = np.ones((1, 4, 6), bool)
    with pytest.raises(ValueError, match="masks"):
        label_scores(np.zeros((4, 5)), masks)
    with pytest.raises(ValueError, match="label_image"):
        label_scores(np.zeros(24), masks)
    with pytest.raises(ValueError, match="empty"):
        label_scores(np.zeros((4, 6)), np.zeros((1, 4, 6), bool))


def test_retrieval_ranks_pairs_and_never_counts_a_same_caption_crop_against_them():
    captions = np.eye(3)  # "red circle", "blue square", "green star"
    images = np.array(
        [
            [1.0, 0.0, 0.0],  # red circle, perfect
            [0.9, 0.1, 0.0],  # red circle again: must not push the first one down
            [0.6, 0.5, 0.0],  # blue square that looks more like a red circle
            [0.0, 0.2, 1.0],  # green star
        ]
    )
    scores = retrieval_metrics(images, np.array([0, 0, 1, 2]), captions)
    # i2t ranks: 1, 1, 2 (red circle wins for the blue square), 1.
    assert scores.i2t_r1 == 0.75 and scores.i2t_r5 == 1.0 and scores.i2t_mean_rank == 1.25
    # t2i: each caption scores its own crop above every crop of another caption; crop 1
    # (0.9 for "red circle") is not counted against crop 0 (1.0), nor the reverse.
    assert scores.t2i_r1 == 1.0 and scores.t2i_mean_rank == 1.0
    assert (scores.pairs, scores.captions) == (4, 3)
    # Crop 0 mislabelled "blue square": i2t ranks 2, 1, 2, 1; t2i ranks 3 (crops 1 and 3
    # score higher for "blue square"), 2 (crop 0 now beats crop 1 for "red circle"), 1, 1.
    swapped = retrieval_metrics(images, np.array([1, 0, 1, 2]), captions)
    assert swapped.i2t_r1 == 0.5 and swapped.i2t_mean_rank == 1.5
    assert swapped.t2i_r1 == 0.5 and swapped.t2i_mean_rank == 1.75


def test_retrieval_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="caption_ids"):
        retrieval_metrics(np.eye(2), np.array([0, 5]), np.eye(2))
    with pytest.raises(ValueError, match="features"):
        retrieval_metrics(np.eye(2), np.array([0, 1]), np.eye(3))
    with pytest.raises(ValueError, match="no pairs"):
        retrieval_metrics(np.zeros((0, 2)), np.zeros(0, np.int64), np.eye(2))
