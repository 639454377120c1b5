"""core.depth: depth conversion, resampling, per-region 3D positions and stamp pairing.

Depth images here are made by hand so that every answer is known: a flat board at 2 m seen by
a 640x480 pinhole camera with fx = fy = 500 and the principal point at the image centre.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from semret_ros.core.depth import (
    MAD_K,
    MAD_TO_SIGMA,
    MIN_SIGMA_REL,
    CameraIntrinsics,
    DepthFrame,
    StampPairer,
    align_depth,
    depth_to_16uc1,
    depth_to_meters,
    mask_points,
    segment_positions,
)

CAMERA = CameraIntrinsics(fx=500.0, fy=500.0, cx=319.5, cy=239.5, width=640, height=480)
BOX = (slice(100, 200), slice(300, 420))  # rows 100..199, columns 300..419


def board(depth_m: float = 2.0, camera: CameraIntrinsics = CAMERA) -> np.ndarray:
    """Everything at ``depth_m``."""
    return np.full((camera.height, camera.width), depth_m, np.float32)


def box_ids(camera: CameraIntrinsics = CAMERA) -> np.ndarray:
    ids = np.zeros((camera.height, camera.width), np.int32)
    ids[BOX] = 1
    return ids


def frame(depth_m: np.ndarray, camera: CameraIntrinsics = CAMERA) -> DepthFrame:
    return DepthFrame(depth_m=depth_m, intrinsics=camera, stamp_ns=5, frame_id="cam")


def expected_box(z: float = 2.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Median and extent of the box's pixel centres back-projected at depth z."""
    rows, cols = BOX
    u0, u1, v0, v1 = cols.start, cols.stop - 1, rows.start, rows.stop - 1
    position = (((u0 + u1) / 2 - CAMERA.cx) * z / 500, ((v0 + v1) / 2 - CAMERA.cy) * z / 500, z)
    size = ((u1 - u0) * z / 500, (v1 - v0) * z / 500, 0.0)
    return position, size


def test_a_box_on_a_board_at_2_m_has_its_exact_position_and_size():
    positions = segment_positions(box_ids(), 1, frame(board()))

    position, size = expected_box()
    assert positions[0] is not None
    assert positions[0].position == pytest.approx(position, abs=1e-6)
    assert positions[0].size == pytest.approx(size, abs=1e-6)
    assert positions[0].num_points == 100 * 120


def test_holes_are_ignored_whatever_their_form():
    depth = board()
    rows, cols = BOX
    # A symmetric frame of holes around the box's centre keeps the median where it was.
    depth[rows.start : rows.start + 10, cols] = 0.0
    depth[rows.stop - 10 : rows.stop, cols] = np.nan
    depth[rows, cols.start : cols.start + 10] = np.inf
    depth[rows, cols.stop - 10 : cols.stop] = -1.0

    (result,) = segment_positions(box_ids(), 1, frame(depth))

    assert result is not None and result.num_points == 80 * 100
    position, _size = expected_box()
    assert result.position == pytest.approx(position, abs=1e-6)
    assert result.size == pytest.approx((99 * 2 / 500, 79 * 2 / 500, 0.0), abs=1e-6)


def test_flying_pixels_far_behind_are_dropped_by_the_mad_rule():
    rng = np.random.default_rng(0)
    depth = board() + rng.normal(0, 0.004, (480, 640)).astype(np.float32)
    rows, cols = BOX
    flying = np.zeros_like(depth, bool)
    flying[rows, cols] = rng.random((100, 120)) < 0.1  # 10 % of the box reads 10 m
    depth[flying] = 10.0

    (result,) = segment_positions(box_ids(), 1, frame(depth))

    assert result is not None
    assert result.num_points <= 100 * 120 - flying.sum()
    assert result.num_points > 0.98 * (100 * 120 - flying.sum())  # noise within 3 sigma stays
    assert result.position[2] == pytest.approx(2.0, abs=0.002)
    assert result.size[2] < 0.1  # the box of the inliers does not reach 10 m
    position, _size = expected_box()
    assert result.position[:2] == pytest.approx(position[:2], abs=0.005)


def test_a_flat_quantised_surface_keeps_pixels_a_millimetre_off():
    # Millimetre depth of a surface facing the camera: the MAD is 0, every other reading would
    # be an outlier without the floor on the spread.
    depth = board()
    rows, cols = BOX
    depth[rows.start, cols] = 2.001

    (result,) = segment_positions(box_ids(), 1, frame(depth))

    assert result is not None and result.num_points == 100 * 120


def test_regions_with_too_few_points_are_none():
    ids = box_ids()
    ids[0:3, 0:3] = 2  # 9 pixels
    ids[10:20, 10:20] = 3  # 100 pixels, all holes
    depth = board()
    depth[10:20, 10:20] = np.nan

    positions = segment_positions(ids, 4, frame(depth), min_points=10)

    assert positions[0] is not None
    assert positions[1:] == [None, None, None]  # too few, no depth, absent from the image
    assert segment_positions(ids, 4, frame(depth), min_points=9)[1] is not None


def test_many_regions_agree_with_a_plain_per_region_computation():
    rng = np.random.default_rng(1)
    camera = CameraIntrinsics(fx=40.0, fy=45.0, cx=25.3, cy=17.1, width=53, height=37)
    for _ in range(20):
        ids = rng.integers(0, 6, (37, 53)).astype(np.int32)
        depth = rng.uniform(1, 3, (37, 53)).astype(np.float32)
        depth[rng.random(depth.shape) < 0.2] = np.nan
        depth[rng.random(depth.shape) < 0.1] = 10.0

        positions = segment_positions(ids, 7, frame(depth, camera), min_points=3)

        for region in range(1, 8):
            rows, cols = np.nonzero((ids == region) & np.isfinite(depth))
            z = depth[rows, cols].astype(np.float64)
            if z.size:
                median = np.median(z)
                sigma = max(MAD_TO_SIGMA * np.median(np.abs(z - median)), MIN_SIGMA_REL * median)
                keep = np.abs(z - median) <= MAD_K * sigma
            if not z.size or keep.sum() < 3:
                assert positions[region - 1] is None
                continue
            points = np.stack(
                [(cols - camera.cx) * z / camera.fx, (rows - camera.cy) * z / camera.fy, z], 1
            )[keep]
            result = positions[region - 1]
            assert result is not None and result.num_points == keep.sum()
            assert result.position == pytest.approx(tuple(np.median(points, 0)), abs=1e-5)
            assert result.size == pytest.approx(tuple(np.ptp(points, 0)), abs=1e-5)


def test_16uc1_millimetres_and_32fc1_metres_give_the_same_metres():
    rng = np.random.default_rng(2)
    millimetres = rng.integers(0, 6000, (48, 64)).astype(np.uint16)
    metres = millimetres.astype(np.float32) / 1000
    metres[millimetres == 0] = np.nan

    from_16 = depth_to_meters(millimetres, "16UC1")
    from_32 = depth_to_meters(metres, "32FC1")

    assert from_16.dtype == from_32.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(from_16), millimetres == 0)
    np.testing.assert_allclose(from_16, from_32, rtol=0, atol=1e-6, equal_nan=True)
    assert depth_to_meters(millimetres, "16UC1", units_per_meter=10_000)[5, 5] == pytest.approx(
        millimetres[5, 5] / 10_000
    )


def test_32fc1_holes_become_nan():
    depth = np.array([[1.5, 0.0, np.nan], [np.inf, -2.0, 0.25]], np.float32)
    meters = depth_to_meters(depth, "32FC1")
    np.testing.assert_array_equal(np.isnan(meters), [[False, True, True], [True, True, False]])
    assert np.isinf(depth[1, 0])  # the caller's array is left alone


def test_16uc1_round_trip_with_holes_as_zero():
    depth = np.array([[2.0, np.nan, 0.0004], [-1.0, 65.535, np.inf]], np.float32)
    units = depth_to_16uc1(depth)
    assert units.dtype == np.uint16
    np.testing.assert_array_equal(units, [[2000, 0, 1], [0, 65535, 0]])
    with pytest.raises(ValueError, match=r"65\.535 m"):
        depth_to_16uc1(np.full((2, 2), 70.0))


@pytest.mark.parametrize(
    ("array", "encoding", "message"),
    [
        (np.zeros((4, 4), np.uint8), "mono8", "unsupported depth encoding 'mono8'"),
        (np.zeros((4, 4), np.uint16), "16UC3", "16UC3"),
        (np.zeros((4, 4), np.float32), "16UC1", "16UC1 depth must be uint16"),
        (np.zeros((4, 4), np.float64), "32FC1", "32FC1 depth must be float32"),
        (np.zeros((4, 4, 3), np.uint16), "16UC1", "HxW"),
    ],
)
def test_wrong_depth_encodings_raise_naming_them(array, encoding, message):
    with pytest.raises(ValueError, match=message):
        depth_to_meters(array, encoding)


def test_intrinsics_from_k_and_clear_errors_for_bad_calibration():
    camera = CameraIntrinsics.from_k([500, 0, 319.5, 0, 510, 239.5, 0, 0, 1], 640, 480)
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (500, 510, 319.5, 239.5)
    assert camera.k == (500, 0, 319.5, 0, 510, 239.5, 0, 0, 1)
    with pytest.raises(ValueError, match="not calibrated"):
        CameraIntrinsics.from_k([0.0] * 9, 640, 480)
    with pytest.raises(ValueError, match="fy must be a finite positive"):
        CameraIntrinsics.from_k([500, 0, 1, 0, float("nan"), 1, 0, 0, 1], 640, 480)
    with pytest.raises(ValueError, match="fx must be a finite positive"):
        CameraIntrinsics.from_k([-500, 0, 1, 0, 500, 1, 0, 0, 1], 640, 480)
    with pytest.raises(ValueError, match="9 values"):
        CameraIntrinsics.from_k([500, 500, 1, 1], 640, 480)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        CameraIntrinsics.from_k([500, 0, 1, 0, 500, 1, 0, 0, 1], 0, 480)


def test_scaling_intrinsics_maps_pixel_centres_onto_pixel_centres():
    half = CAMERA.scaled(320, 240)
    assert (half.fx, half.fy, half.cx, half.cy) == (250, 250, 159.5, 119.5)
    assert half.scaled(640, 480) == CAMERA


def test_resampled_320x240_depth_keeps_positions_within_a_pixel():
    small_camera = CAMERA.scaled(320, 240)
    rng = np.random.default_rng(3)
    # A board tilted away to the right with a box at 1.2 m in front, at half resolution.
    columns = np.arange(320)[None, :]
    depth = (2.0 + 0.002 * columns + rng.normal(0, 0.002, (240, 320))).astype(np.float32)
    depth[50:100, 150:210] = 1.2  # the full-size BOX
    ids = np.zeros((480, 640), np.int32)
    ids[BOX] = 1
    ids[300:400, 100:200] = 2  # a patch of the board
    small_ids = np.zeros((240, 320), np.int32)
    small_ids[150:200, 50:100] = 1  # the same patch in the small image

    aligned = align_depth(frame(depth, small_camera), 640, 480)

    assert aligned.depth_m.shape == (480, 640) and aligned.intrinsics == CAMERA
    assert (aligned.stamp_ns, aligned.frame_id) == (5, "cam")
    # Nearest neighbour: every value is one of the small image's, no blend across the edge.
    assert set(np.unique(aligned.depth_m[90:210, 290:430])) <= set(np.unique(depth))
    box, patch = segment_positions(ids, 2, aligned)
    (small_patch,) = segment_positions(small_ids, 1, frame(depth, small_camera))
    assert box is not None and patch is not None and small_patch is not None
    assert box.position == pytest.approx(expected_box(1.2)[0], abs=1.2 / 500)
    assert patch.position == pytest.approx(small_patch.position, abs=2.5 / 500)


def test_align_refuses_mismatched_sizes_and_fields_of_view():
    with pytest.raises(ValueError, match="320x240 but its camera info describes 640x480"):
        align_depth(frame(np.zeros((240, 320), np.float32)), 640, 480)
    with pytest.raises(ValueError, match="different aspect ratios"):
        align_depth(frame(board()), 640, 360)
    same = frame(board())
    assert align_depth(same, 640, 480) is same


def test_mismatched_id_image_and_depth_sizes_raise():
    with pytest.raises(ValueError, match="align_depth"):
        segment_positions(np.zeros((240, 320), np.int32), 0, frame(board()))
    with pytest.raises(ValueError, match="instance_ids"):
        segment_positions(box_ids(), 0, frame(board()))
    with pytest.raises(ValueError, match="min_points"):
        segment_positions(box_ids(), 1, frame(board()), min_points=0)


def test_mask_points_are_the_masks_pixels_with_depth():
    depth = board()
    depth[100, 300] = np.nan
    mask = np.zeros((480, 640), bool)
    mask[100, 300:303] = True

    points, index = mask_points(mask, frame(depth))

    assert points.dtype == np.float32 and points.shape == (2, 3)
    np.testing.assert_array_equal(index, [100 * 640 + 301, 100 * 640 + 302])
    expected = [((u - 319.5) * 2 / 500, (100 - 239.5) * 2 / 500, 2.0) for u in (301, 302)]
    np.testing.assert_allclose(points, expected, atol=1e-6)
    with pytest.raises(ValueError, match="boolean"):
        mask_points(mask.astype(np.uint8), frame(depth))


def test_pairer_picks_the_nearest_stamp_within_the_skew():
    pairer: StampPairer[str] = StampPairer(capacity=4)
    for stamp_ms in (100, 133, 166):
        pairer.add(stamp_ms * 1_000_000, f"depth@{stamp_ms}")

    assert pairer.match(140_000_000, max_skew_s=0.01) == "depth@133"
    assert pairer.match(150_000_000, max_skew_s=0.02) == "depth@166"  # 16 ms vs 17 ms
    assert pairer.match(300_000_000, max_skew_s=0.05) is None  # 134 ms from the newest
    assert pairer.match(166_000_000, max_skew_s=0.0) == "depth@166"
    stats = pairer.stats()
    assert (stats.pairs, stats.misses, stats.dropped, stats.buffered) == (3, 1, 0, 3)
    assert stats.last_skew_s == 0.0
    with pytest.raises(ValueError, match="max_skew_s"):
        pairer.match(0, max_skew_s=-1.0)


def test_pairer_stays_bounded_and_drops_the_oldest():
    pairer: StampPairer[int] = StampPairer(capacity=8)
    threads = [
        threading.Thread(target=lambda k=k: [pairer.add(k * 1000 + i, i) for i in range(500)])
        for k in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stats = pairer.stats()
    assert stats.buffered == 8 and stats.dropped == 4 * 500 - 8
    pairer.add(10**12, -1)
    assert pairer.match(0, max_skew_s=1e-6) is None  # the earliest stamps are gone
    assert pairer.match(10**12, max_skew_s=0.0) == -1
    with pytest.raises(ValueError, match="capacity"):
        StampPairer(capacity=0)
