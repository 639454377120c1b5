"""Scoring on hand-made embeddings whose right answers are known."""

import math

import numpy as np
import pytest

from semret_ros.core.records import SemanticFrame
from semret_ros.core.scoring import (
    QueryConfig,
    choose_labels,
    label_frame,
    query_frame,
    rank_vocabulary,
    region_relevance,
    similarity_image,
)

DIM = 8


def basis(*weights: float) -> np.ndarray:
    """Unit vector with the given leading components."""
    vector = np.zeros(DIM, np.float32)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


def make_frame(embeddings: np.ndarray) -> SemanticFrame:
    """A 6x8 frame whose regions are vertical stripes 2 px wide (id 0 in the last column pair)."""
    count = embeddings.shape[0]
    ids = np.zeros((6, 8), np.int32)
    for i in range(count):
        ids[:, 2 * i : 2 * i + 2] = i + 1
    bboxes = np.array([(2 * i, 0, 2, 6) for i in range(count)], np.int32).reshape(-1, 4)
    return SemanticFrame(
        stamp_ns=1,
        frame_id="camera",
        image=np.zeros((6, 8, 3), np.uint8),
        instance_ids=ids,
        embeddings=embeddings.astype(np.float32),
        global_embedding=basis(1, 1, 1),
        scores=np.ones(count, np.float32),
        bboxes=bboxes,
        areas=np.full(count, 12, np.int64),
        model="hand-made",
    )


QUERY = basis(1)
NEGATIVES = np.stack([basis(0, 1), basis(0, 0, 1)])
REGIONS = np.stack([basis(1), basis(0, 1), basis(1, 1), basis(0, 0, 0, 1)])


def test_cosine_mode_is_clipped_cosine():
    relevance = region_relevance(REGIONS, QUERY, None, mode="cosine")
    assert relevance.dtype == np.float32
    np.testing.assert_allclose(relevance, [1.0, 0.0, math.sqrt(0.5), 0.0], atol=1e-6)
    opposite = region_relevance(-REGIONS[:1], QUERY, None, mode="cosine")
    assert opposite[0] == 0.0


def test_contrastive_matches_lerf_pairwise_softmax_minimum():
    scale = 10.0
    relevance = region_relevance(REGIONS, QUERY, NEGATIVES, mode="contrastive", scale=scale)
    expected = []
    for region in REGIONS:
        pairs = []
        for negative in NEGATIVES:
            logits = scale * np.array([region @ QUERY, region @ negative], np.float64)
            pairs.append(np.exp(logits[0]) / np.exp(logits).sum())
        expected.append(min(pairs))
    np.testing.assert_allclose(relevance, expected, rtol=1e-5)


def test_contrastive_relevance_varies_across_regions():
    # The seed's softmax over the query alone is 1 everywhere; this must not be.
    relevance = region_relevance(REGIONS, QUERY, NEGATIVES)
    assert relevance.max() - relevance.min() > 0.5
    assert int(np.argmax(relevance)) == 0
    assert relevance[1] < 0.5  # equal to a negative -> loses to it
    assert relevance[3] == pytest.approx(0.5)  # orthogonal to everything -> a tie


def test_contrastive_needs_negatives():
    with pytest.raises(ValueError, match="negatives"):
        region_relevance(REGIONS, QUERY, None, mode="contrastive")
    with pytest.raises(ValueError, match="negatives"):
        region_relevance(REGIONS, QUERY, np.zeros((0, DIM)), mode="contrastive")


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="mode"):
        region_relevance(REGIONS, QUERY, NEGATIVES, mode="softmax")
    with pytest.raises(ValueError, match="query"):
        region_relevance(REGIONS, QUERY[:3], NEGATIVES)
    with pytest.raises(ValueError, match="negatives"):
        region_relevance(REGIONS, QUERY, NEGATIVES[:, :3])
    with pytest.raises(ValueError, match="scale"):
        region_relevance(REGIONS, QUERY, NEGATIVES, scale=0.0)


def test_non_finite_inputs_give_zero_relevance():
    regions = REGIONS.copy()
    regions[0, 0] = np.nan
    regions[2, 1] = np.inf
    relevance = region_relevance(regions, QUERY, NEGATIVES)
    assert np.isfinite(relevance).all()
    assert relevance[0] == 0.0 and relevance[2] == 0.0
    assert relevance[3] == pytest.approx(0.5)
    bad_query = QUERY.copy()
    bad_query[1] = np.nan
    assert not region_relevance(REGIONS, bad_query, NEGATIVES).any()
    bad_negatives = NEGATIVES.copy()
    bad_negatives[0, 0] = np.inf
    assert not region_relevance(REGIONS, QUERY, bad_negatives).any()


def test_similarity_image_paints_relevance_by_id():
    ids = np.array([[0, 1, 2], [2, 3, 0]], np.int32)
    image = similarity_image(ids, np.array([0.25, 0.5, 1.0], np.float32))
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, [[0.0, 0.25, 0.5], [0.5, 1.0, 0.0]])
    with pytest.raises(ValueError, match="instance_ids"):
        similarity_image(np.array([[4]], np.int32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="instance_ids"):
        similarity_image(np.zeros((2, 2), np.float32), np.zeros(3, np.float32))
    assert similarity_image(ids, np.array([np.nan, np.inf, 1.0]))[0, 1] == 0.0


def test_query_frame_ranks_and_thresholds():
    frame = make_frame(REGIONS)
    result = query_frame(frame, "mug", QUERY, NEGATIVES, threshold=0.5, max_results=10)
    assert [m.id for m in result.matches] == [1, 3, 4]
    assert result.matches[0].score == pytest.approx(float(result.relevance[0]))
    assert result.matches[0].bbox == (0, 0, 2, 6)
    assert result.matches[1].area == 12
    assert all(m.label == "mug" for m in result.matches)
    assert result.similarity.shape == (6, 8)
    np.testing.assert_array_equal(result.mask[0], [1, 1, 0, 0, 1, 1, 1, 1])

    top = query_frame(frame, "mug", QUERY, NEGATIVES, threshold=0.5, max_results=1)
    assert [m.id for m in top.matches] == [1]
    assert top.mask.sum() == result.mask.sum()  # the mask is not cut to max_results
    unlimited = query_frame(frame, "mug", QUERY, NEGATIVES, threshold=0.0, max_results=0)
    assert len(unlimited.matches) == 4


def test_query_frame_mask_excludes_pixels_without_region():
    frame = make_frame(REGIONS[:3])  # last two columns have id 0
    result = query_frame(frame, "mug", QUERY, NEGATIVES, threshold=0.0)
    assert result.mask[:, :6].all()
    assert not result.mask[:, 6:].any()


@pytest.mark.parametrize("threshold", [math.nan, -0.1, 1.5, "high"])
def test_query_frame_rejects_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        query_frame(make_frame(REGIONS), "mug", QUERY, NEGATIVES, threshold=threshold)


def test_query_frame_rejects_bad_max_results():
    with pytest.raises(ValueError, match="max_results"):
        query_frame(make_frame(REGIONS), "mug", QUERY, NEGATIVES, max_results=-1)


def test_label_frame_assigns_the_most_relevant_label():
    labels = ["ceiling", "ground", "toilet paper"]
    label_embeddings = np.stack([basis(1), basis(0, 1), basis(0, 0, 1)])
    negatives = np.stack([basis(0, 0, 0, 0, 1)])
    regions = np.stack([basis(0, 0, 1), basis(1, 0.1), basis(0, 0, 0, 0, 1), basis(1, 1)])
    result = label_frame(make_frame(regions), labels, label_embeddings, negatives, threshold=0.5)
    assert result.label_image.dtype == np.uint16
    # region 1 -> toilet paper, 2 -> ceiling, 3 -> the negative fits better than any label,
    # 4 -> as much ceiling as ground, both far above the negative: the first label.
    np.testing.assert_array_equal(result.label_image[0], [3, 3, 1, 1, 0, 0, 1, 1])
    assert result.relevance.shape == (4, 3) and result.relevance.dtype == np.float32
    # Each label's relevance is what a query for it answers.
    for index, label in enumerate(label_embeddings):
        np.testing.assert_array_equal(
            result.relevance[:, index], region_relevance(regions, label, negatives)
        )
    np.testing.assert_allclose(result.scores, result.relevance.max(axis=0))
    assert result.labels == labels


def test_similar_labels_no_longer_share_one_softmax():
    # Three labels close to each other ("red mug", "red cup", "red jar") and a region that is
    # clearly the first: the seed's softmax over labels + negative gives it under 0.5, so the
    # old rule left it unlabelled; scored against the negative alone it is plainly relevant.
    labels = ["red mug", "red cup", "red jar"]
    label_embeddings = np.stack([basis(1, 0.3), basis(1, 0, 0.3), basis(1, 0, 0, 0.3)])
    negatives = np.stack([basis(0, 0, 0, 0, 1)])
    region = basis(1, 0.2)
    cosines = np.vstack([label_embeddings, negatives]) @ region
    softmax = np.exp(10 * cosines) / np.exp(10 * cosines).sum()
    assert softmax.argmax() == 0 and softmax[0] < 0.5
    result = label_frame(make_frame(region[None]), labels, label_embeddings, negatives)
    assert result.label_image[0, 0] == 1
    assert result.scores[0] > 0.99


def test_label_frame_leaves_regions_unlabelled_when_nothing_fits():
    labels = ["a", "b"]
    label_embeddings = np.stack([basis(1), basis(0, 1)])
    negatives = np.stack([basis(0, 0, 1)])
    regions = np.stack([basis(0.2, 0.1, 1), basis(1, 0.8), basis(0, 0, 0, 1)])
    frame = make_frame(regions)
    result = label_frame(frame, labels, label_embeddings, negatives, threshold=0.5)
    # The negative is closer than either label; "a" beats it; orthogonal to all is a tie (0.5).
    np.testing.assert_array_equal(result.label_image[0], [0, 0, 1, 1, 1, 1, 0, 0])
    strict = label_frame(frame, labels, label_embeddings, negatives, threshold=0.9)
    np.testing.assert_array_equal(strict.label_image[0], [0, 0, 1, 1, 0, 0, 0, 0])
    assert not label_frame(frame, labels, label_embeddings, negatives, 1.0).label_image.any()


def test_label_frame_cosine_mode_needs_no_negatives():
    labels = ["a", "b"]
    label_embeddings = np.stack([basis(1), basis(0, 1)])
    regions = np.stack([basis(1, 0.8), basis(0, 0, 1)])
    result = label_frame(make_frame(regions), labels, label_embeddings, None, mode="cosine")
    np.testing.assert_array_equal(result.label_image[0], [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(
        result.relevance[0], [1 / math.hypot(1, 0.8), 0.8 / math.hypot(1, 0.8)], rtol=1e-6
    )


def test_label_frame_breaks_saturated_ties_on_the_margin():
    # At a large contrast scale both labels' relevance is exactly 1, in float32 and float64;
    # the one the region is closer to must still win, whatever the label order.
    labels = ["near", "nearer"]
    label_embeddings = np.stack([basis(1, 0.5), basis(1, 0.1)])
    negatives = np.stack([basis(0, 0, 1)])
    region = basis(1, 0.05)
    result = label_frame(
        make_frame(region[None]), labels, label_embeddings, negatives, threshold=0.5, scale=1000.0
    )
    assert result.relevance[0, 0] == result.relevance[0, 1] == 1.0
    assert result.label_image[0, 0] == 2


def test_label_frame_never_labels_a_region_without_a_finite_embedding():
    regions = np.stack([basis(1), basis(0, 1)])
    regions[1, 0] = np.nan
    result = label_frame(make_frame(regions), ["a", "b"], np.eye(2, DIM), NEGATIVES, threshold=0.0)
    np.testing.assert_array_equal(result.label_image[0], [1, 1, 0, 0, 0, 0, 0, 0])


def test_choose_labels_rule():
    relevance = np.array([[0.2, 0.7, 0.7], [0.6, 0.3, 0.1], [0.4, 0.45, 0.0], [0.0, 0.0, 0.0]])
    margin = np.array([[0.0, 0.1, 0.3], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0], [-np.inf] * 3])
    # Highest relevance, ties on the margin; below the threshold or no finite margin: none.
    np.testing.assert_array_equal(choose_labels(relevance, margin, 0.5), [3, 1, 0, 0])
    np.testing.assert_array_equal(choose_labels(relevance, margin, 0.0), [3, 1, 2, 0])
    # One threshold per label (standing queries each bring their own).
    np.testing.assert_array_equal(choose_labels(relevance, margin, [0.1, 0.4, 0.8]), [0, 1, 2, 0])
    assert choose_labels(np.zeros((0, 2)), np.zeros((0, 2)), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="margin"):
        choose_labels(relevance, margin[:, :2], 0.5)
    with pytest.raises(ValueError, match="relevance"):
        choose_labels(relevance[0], margin[0], 0.5)
    with pytest.raises(ValueError, match="thresholds"):
        choose_labels(relevance, margin, [0.5, 0.5])
    with pytest.raises(ValueError, match="threshold"):
        choose_labels(relevance, margin, math.nan)


@pytest.mark.parametrize("labels", [[], ["a", "a"], ["a", " "], "ab"])
def test_label_frame_rejects_bad_labels(labels):
    with pytest.raises(ValueError, match="labels"):
        label_frame(make_frame(REGIONS), labels, np.eye(2, DIM), NEGATIVES)


def test_label_frame_contrastive_needs_negatives():
    with pytest.raises(ValueError, match="negative"):
        label_frame(make_frame(REGIONS), ["a"], QUERY[None], None)
    with pytest.raises(ValueError, match="negative"):
        label_frame(make_frame(REGIONS), ["a", "b"], np.eye(2, DIM), None)
    with pytest.raises(ValueError, match="label_embeddings"):
        label_frame(make_frame(REGIONS), ["a", "b"], QUERY[None], NEGATIVES)


def test_rank_vocabulary_puts_the_matching_word_first():
    vocabulary = ["chair", "mug", "plant"]
    vocabulary_embeddings = np.stack([basis(0, 1), basis(1), basis(0, 0, 1)])
    names, scores = rank_vocabulary(basis(1, 0.2), vocabulary, vocabulary_embeddings, NEGATIVES)
    assert names[0] == "mug"
    assert names[1] == "chair"
    assert scores.dtype == np.float32
    assert np.all(np.diff(scores) <= 0)
    assert scores.sum() < 1.0  # the negatives take part of the mass
    with pytest.raises(ValueError, match="vocabulary"):
        rank_vocabulary(QUERY, ["mug"], vocabulary_embeddings, NEGATIVES)
    nan_names, nan_scores = rank_vocabulary(
        np.full(DIM, np.nan), vocabulary, vocabulary_embeddings, NEGATIVES
    )
    assert sorted(nan_names) == sorted(vocabulary) and not nan_scores.any()


def test_query_config_defaults_and_validation():
    config = QueryConfig()
    assert config.mode == "contrastive"
    assert config.negatives == ("object", "things", "stuff", "texture")
    assert config.threshold == 0.5 and config.max_results == 10 and config.contrast_scale == 10.0
    assert QueryConfig(negatives=["thing"]).negatives == ("thing",)
    assert QueryConfig(mode="cosine", negatives=()).negatives == ()
    with pytest.raises(ValueError, match="negatives"):
        QueryConfig(negatives=())
    with pytest.raises(ValueError, match="threshold"):
        QueryConfig(threshold=2.0)
    with pytest.raises(ValueError, match="max_results"):
        QueryConfig(max_results=-3)
    with pytest.raises(ValueError, match="scale"):
        QueryConfig(contrast_scale=math.inf)
    with pytest.raises(ValueError, match="mode"):
        QueryConfig(mode="dot")
    config.threshold = 7.0
    with pytest.raises(ValueError, match="threshold"):
        config.validate()
