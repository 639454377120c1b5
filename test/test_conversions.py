"""Message <-> numpy conversions, on real rclpy message classes (no node, no graph)."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from semret_ros.core.records import Match, SemanticFrame
from semret_ros.ros.conversions import (
    camera_image_to_array,
    compressed_image_to_array,
    copy_header,
    header_to_stamp,
    image_to_numpy,
    make_header,
    mask_to_image,
    mask_to_png,
    matches_to_segments,
    numpy_to_image,
    numpy_to_png,
    png_to_numpy,
    semantic_frame_to_msg,
    similarity_from_png,
    similarity_to_png,
)

RNG = np.random.default_rng(7)


def _header() -> Header:
    return make_header(1_700_000_000_123_456_789, "camera_optical")


def _image_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """An Image as a driver would send it, with ``pad`` junk bytes at the end of every row."""
    height, width = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder(">" if bigendian else "<")
    rows = pixels.astype(dtype).reshape(height, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((height, pad), 0xEE, np.uint8)], axis=1)
    return Image(
        header=_header(),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=bigendian,
        step=padded.shape[1],
        data=padded.tobytes(),
    )


@pytest.mark.parametrize(
    ("encoding", "channels", "order"),
    [("rgb8", 3, "rgb"), ("bgr8", 3, "bgr"), ("rgba8", 4, "rgba"), ("bgra8", 4, "bgra")],
)
def test_camera_encodings_decode_to_pixels_and_colour_order(encoding, channels, order):
    pixels = RNG.integers(0, 256, (5, 7, channels), np.uint8)
    decoded, color_order = camera_image_to_array(_image_msg(pixels, encoding))
    assert color_order == order
    np.testing.assert_array_equal(decoded, pixels)


def test_mono8_decodes_to_hxw():
    pixels = RNG.integers(0, 256, (4, 6), np.uint8)
    decoded, color_order = camera_image_to_array(_image_msg(pixels, "mono8"))
    assert color_order == "mono"
    assert decoded.shape == (4, 6)
    np.testing.assert_array_equal(decoded, pixels)


def test_decoding_is_a_view_of_the_message_buffer():
    msg = _image_msg(RNG.integers(0, 256, (6, 8, 3), np.uint8), "rgb8")
    decoded, _ = camera_image_to_array(msg)
    assert np.shares_memory(decoded, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "32FC1"])
def test_padded_step_skips_the_row_padding(encoding):
    shape = (5, 7, 3) if encoding == "rgb8" else (5, 7)
    pixels = (
        RNG.random(shape, np.float32)
        if encoding == "32FC1"
        else RNG.integers(0, 200, shape, np.uint8)
    )
    msg = _image_msg(pixels, encoding, pad=5)
    assert msg.step > pixels[0].nbytes
    decoded = image_to_numpy(msg)
    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize(("encoding", "dtype"), [("16UC1", np.uint16), ("32FC1", np.float32)])
def test_bigendian_multibyte_data_is_read_in_its_byte_order(encoding, dtype):
    pixels = np.arange(12, dtype=dtype).reshape(3, 4) * dtype(300)
    decoded = image_to_numpy(_image_msg(pixels, encoding, pad=2, bigendian=True))
    np.testing.assert_array_equal(decoded, pixels)
    assert decoded.dtype.isnative


def test_bigendian_flag_does_not_matter_for_8_bit_colour():
    pixels = RNG.integers(0, 256, (3, 4, 3), np.uint8)
    decoded, _ = camera_image_to_array(_image_msg(pixels, "rgb8", bigendian=True))
    np.testing.assert_array_equal(decoded, pixels)


def test_unsupported_encoding_is_refused_with_its_name():
    msg = _image_msg(RNG.integers(0, 256, (4, 4), np.uint8), "mono8")
    msg.encoding = "bayer_rggb8"
    with pytest.raises(ValueError, match="bayer_rggb8"):
        camera_image_to_array(msg)


def test_depth_encoding_is_refused_on_the_colour_topic():
    msg = _image_msg(np.ones((4, 4), np.uint16), "16UC1")
    with pytest.raises(ValueError, match=r"'16UC1' on the colour image topic"):
        camera_image_to_array(msg)
    assert image_to_numpy(msg).dtype == np.uint16  # the general decoder still reads it


def test_data_shorter_than_step_times_height_is_refused():
    msg = _image_msg(RNG.integers(0, 256, (4, 5, 3), np.uint8), "rgb8", pad=1)
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(ValueError, match=r"63 bytes, step \* height needs 64"):
        camera_image_to_array(msg)


def test_step_smaller_than_a_row_is_refused():
    msg = _image_msg(RNG.integers(0, 256, (4, 5, 3), np.uint8), "rgb8")
    msg.step = 14
    with pytest.raises(ValueError, match="step 14 is smaller"):
        camera_image_to_array(msg)


def test_empty_image_is_refused():
    msg = Image(height=0, width=0, encoding="rgb8", step=0)
    with pytest.raises(ValueError, match="empty"):
        camera_image_to_array(msg)


def test_compressed_png_decodes_to_bgr():
    bgr = RNG.integers(0, 256, (6, 9, 3), np.uint8)
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    decoded, color_order = compressed_image_to_array(
        CompressedImage(format="png", data=png.tobytes())
    )
    assert color_order == "bgr"
    np.testing.assert_array_equal(decoded, bgr)


def test_compressed_grayscale_decodes_to_three_channels():
    ok, png = cv2.imencode(".png", np.full((3, 4), 90, np.uint8))
    assert ok
    decoded, _ = compressed_image_to_array(CompressedImage(format="png", data=png.tobytes()))
    assert decoded.shape == (3, 4, 3)
    assert np.all(decoded == 90)


@pytest.mark.parametrize(
    ("data", "reason"), [(b"not a jpeg at all", "undecodable"), (b"", "no data")]
)
def test_bad_compressed_image_is_refused(data, reason):
    with pytest.raises(ValueError, match=reason):
        compressed_image_to_array(CompressedImage(format="jpeg", data=data))


@pytest.mark.parametrize(
    ("encoding", "pixels"),
    [
        ("rgb8", RNG.integers(0, 256, (5, 6, 3), np.uint8)),
        ("mono8", RNG.integers(0, 256, (5, 6), np.uint8)),
        ("32FC1", RNG.random((5, 6), np.float32)),
        ("16UC1", RNG.integers(0, 65536, (5, 6), np.uint16)),
        ("32SC1", RNG.integers(-5, 1000, (5, 6), np.int32)),
    ],
)
def test_encode_round_trips_with_unpadded_native_rows(encoding, pixels):
    header = _header()
    msg = numpy_to_image(pixels, encoding, header)
    assert (msg.height, msg.width, msg.encoding) == (5, 6, encoding)
    assert msg.step == pixels[0].nbytes
    assert msg.is_bigendian == (sys.byteorder == "big")
    assert msg.header == header
    assert msg.header is not header
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)


def test_encode_accepts_other_integer_dtypes_that_fit():
    labels = np.array([[0, 1], [2, 300]], np.int64)
    msg = numpy_to_image(labels, "16UC1", _header())
    np.testing.assert_array_equal(image_to_numpy(msg), labels)


@pytest.mark.parametrize(
    ("pixels", "encoding", "reason"),
    [
        (np.zeros((4, 4), np.uint8), "rgb8", "HxWx3"),
        (np.zeros((0, 4), np.uint8), "mono8", "non-empty"),
        (np.array([[0.5, np.nan]], np.float32), "32FC1", "NaN"),
        (np.array([[1e39]], np.float64), "32FC1", "infinite"),
        (np.array([[1.5]], np.float32), "16UC1", "float32"),
        (np.array([[70000]], np.int64), "16UC1", "65535"),
        (np.zeros((2, 2), bool), "mono8", "bool"),
        (np.zeros((2, 2, 3), np.uint8), "bgr8", "cannot encode 'bgr8'"),
    ],
)
def test_encode_refuses_bad_arrays(pixels, encoding, reason):
    with pytest.raises(ValueError, match=reason):
        numpy_to_image(pixels, encoding, _header())


def test_mask_becomes_mono8_255_inside():
    mask = np.array([[True, False], [False, True]])
    msg = mask_to_image(mask, _header())
    assert msg.encoding == "mono8"
    np.testing.assert_array_equal(image_to_numpy(msg), [[255, 0], [0, 255]])
    with pytest.raises(ValueError, match="boolean"):
        mask_to_image(mask.astype(np.uint8), _header())


def test_mask_png_decodes_to_the_same_mask():
    mask = RNG.random((30, 40)) > 0.6
    msg = mask_to_png(mask, _header())
    assert msg.format == "png" and msg.header == _header()
    decoded = png_to_numpy(msg)
    assert decoded.dtype == np.uint8 and decoded.shape == (30, 40)
    np.testing.assert_array_equal(decoded, image_to_numpy(mask_to_image(mask, _header())))
    # Any PNG reader gets the same pixels.
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(msg.data, np.uint8), 0), decoded)


def test_similarity_png_is_quantised_to_within_half_a_step():
    similarity = RNG.random((30, 40)).astype(np.float32)
    similarity[0, :3] = (0.0, 1.0, 0.5)
    msg = similarity_to_png(similarity, _header())
    np.testing.assert_array_equal(png_to_numpy(msg), np.rint(similarity * 255).astype(np.uint8))
    decoded = similarity_from_png(msg)
    assert decoded.dtype == np.float32
    assert np.abs(decoded - similarity).max() <= 0.5 / 255 + 1e-7
    assert decoded[0, 0] == 0.0 and decoded[0, 1] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        similarity_to_png(np.full((2, 2), np.nan, np.float32), _header())


def test_rgb_png_round_trips_in_rgb_order():
    rgb = RNG.integers(0, 256, (6, 7, 3), np.uint8)
    np.testing.assert_array_equal(png_to_numpy(numpy_to_png(rgb, _header())), rgb)


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (CompressedImage(format="jpeg", data=b"x"), "format"),
        (CompressedImage(format="png", data=b"not a png"), "undecodable"),
        (CompressedImage(format="png"), "undecodable"),
    ],
)
def test_bad_png_is_refused(msg, reason):
    with pytest.raises(ValueError, match=reason):
        png_to_numpy(msg)


def test_header_and_stamp_round_trip():
    stamp_ns, frame_id = 1_700_000_000_123_456_789, "cam"
    header = make_header(stamp_ns, frame_id)
    assert (header.stamp.sec, header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert header_to_stamp(header) == (stamp_ns, frame_id)
    assert copy_header(header) == header
    with pytest.raises(ValueError, match="stamp_ns"):
        make_header(-1, "cam")


def _frame(num_regions: int = 3, dim: int = 4) -> SemanticFrame:
    ids = np.zeros((6, 8), np.int32)
    for index in range(num_regions):
        ids[index * 2 : index * 2 + 2, : index + 2] = index + 1
    embeddings = RNG.standard_normal((num_regions, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    global_embedding = np.ones(dim, np.float32) / np.sqrt(dim)
    return SemanticFrame(
        stamp_ns=42_000_000_007,
        frame_id="cam",
        image=np.zeros((6, 8, 3), np.uint8),
        instance_ids=ids,
        embeddings=embeddings,
        global_embedding=global_embedding,
        scores=np.linspace(0.5, 1.0, num_regions, dtype=np.float32),
        bboxes=np.array([[0, 2 * i, i + 2, 2] for i in range(num_regions)], np.int32),
        areas=np.array([2 * (i + 2) for i in range(num_regions)], np.int64),
        model="tiny-test-model",
    )


def test_semantic_frame_message_keeps_ids_rows_and_header():
    frame = _frame()
    msg = semantic_frame_to_msg(frame, labels=["a", "b", "c"])
    assert header_to_stamp(msg.header) == (frame.stamp_ns, frame.frame_id)
    assert msg.instance_ids.header == msg.header
    assert msg.instance_ids.encoding == "32SC1"
    np.testing.assert_array_equal(image_to_numpy(msg.instance_ids), frame.instance_ids)
    assert [segment.id for segment in msg.segments] == [1, 2, 3]
    assert [segment.label for segment in msg.segments] == ["a", "b", "c"]
    second = msg.segments[1]
    assert (second.bbox.x_offset, second.bbox.y_offset, second.bbox.width, second.bbox.height) == (
        0,
        2,
        3,
        2,
    )
    assert second.area == np.count_nonzero(frame.instance_ids == 2)
    assert second.score == pytest.approx(0.75)
    assert msg.embedding_dim == 4
    np.testing.assert_array_equal(
        np.asarray(msg.embeddings, np.float32).reshape(3, 4), frame.embeddings
    )
    np.testing.assert_array_equal(np.asarray(msg.global_embedding), frame.global_embedding)
    assert msg.model == "tiny-test-model"


def test_semantic_frame_without_regions_is_valid():
    msg = semantic_frame_to_msg(_frame(num_regions=0))
    assert list(msg.segments) == []
    assert len(msg.embeddings) == 0
    assert msg.embedding_dim == 4


@pytest.mark.parametrize(
    "defect", ["embedding_rows", "nan_embedding", "ids_out_of_range", "labels"]
)
def test_inconsistent_semantic_frame_is_refused(defect):
    frame = _frame()
    labels = None
    if defect == "embedding_rows":
        frame.global_embedding = np.ones(5, np.float32) / np.sqrt(5)
        reason = "embeddings shape"
    elif defect == "nan_embedding":
        frame.embeddings[1, 2] = np.nan
        reason = "NaN"
    elif defect == "ids_out_of_range":
        frame.instance_ids[0, 0] = 4
        reason = "instance_ids"
    else:
        labels = ["only one"]
        reason = "labels has 1"
    with pytest.raises(ValueError, match=reason):
        semantic_frame_to_msg(frame, labels=labels)


def test_matches_become_segments_best_first():
    matches = [
        Match(id=3, score=0.9, bbox=(1, 2, 3, 4), area=10, label="mug"),
        Match(id=1, score=0.4, bbox=(0, 0, 5, 5), area=25),
    ]
    segments = matches_to_segments(matches)
    assert [(s.id, s.label, s.area) for s in segments] == [(3, "mug", 10), (1, "", 25)]
    assert segments[0].score == pytest.approx(0.9)
    assert (segments[0].bbox.x_offset, segments[0].bbox.height) == (1, 4)
    with pytest.raises(ValueError, match="non-finite"):
        matches_to_segments([Match(id=1, score=float("nan"), bbox=(0, 0, 1, 1), area=1)])


@pytest.mark.parametrize(("sec", "nanosec"), [(-1, 0), (0, 1_000_000_000)])
def test_header_with_an_impossible_stamp_is_refused(sec, nanosec):
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    with pytest.raises(ValueError, match="invalid header stamp"):
        header_to_stamp(header)
