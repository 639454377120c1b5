"""The semret node in a real ROS 2 graph: started as users start it, driven over DDS.

One node process serves the module (tiny random-init CLIP from conftest, superpixels, 160x120
frames); tests that need another configuration start their own. Features of a random model
are noise, so the checks are about plumbing: sizes, ids, headers, encodings, ranges, and that
the node keeps serving whatever it is sent.
"""

from __future__ import annotations

import math
import py_compile
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import TINY_VOCABULARY
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters, SetParametersAtomically
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from ros_fixtures import ros_env  # noqa: F401 - the fixture, used by name
from ros_graph import Graph, NodeProcess, wait_until
from semret_ros.msg import QueryAnswer, SemanticFrame
from semret_ros.srv import Describe, Label, Query
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_srvs.srv import SetBool

from semret_ros.ros.conversions import image_to_numpy, png_to_numpy, similarity_from_png
from semret_ros.ros.params import PARAMETERS

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 160, 120
FRAME_ID = "camera_color_optical_frame"
WAIT_S = 30.0
NODE = "/semret"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def scene(width: int = WIDTH, height: int = HEIGHT, shift: int = 0) -> np.ndarray:
    """RGB test frame: grey floor, a red box, a blue disc, a green bar (shifted by ``shift``)."""
    image = np.full((height, width, 3), 128, np.uint8)
    sx, sy = width / 160, height / 120
    image[int(10 * sy) : int(50 * sy), int((10 + shift) * sx) : int((60 + shift) * sx)] = (
        220,
        30,
        30,
    )
    yy, xx = np.mgrid[:height, :width]
    disc = ((yy - 70 * sy) / sy) ** 2 + ((xx - 110 * sx) / sx) ** 2 < 25**2
    image[disc] = (30, 60, 220)
    image[int(95 * sy) : int(110 * sy), int(5 * sx) : int(150 * sx)] = (40, 200, 40)
    return image


def image_msg(
    pixels: np.ndarray, encoding: str, stamp_ns: int, pad: int = 0, frame_id: str = FRAME_ID
) -> Image:
    """An Image with ``pad`` extra bytes per row (step > width * bytes per pixel)."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1).view(np.uint8)
    padded = np.zeros((height, rows.shape[1] + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    msg = Image(height=height, width=width, encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def stamp_of(msg: object) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


class Stamps:
    """Unique, increasing camera stamps."""

    def __init__(self) -> None:
        self._next = 1_700_000_000 * 1_000_000_000

    def __call__(self) -> int:
        self._next += 33_333_333
        return self._next


@pytest.fixture(scope="module")
def graph(ros_env):  # noqa: F811
    graph = Graph(ros_env)
    yield graph
    graph.close()


def node_args(tiny_clip_dir: Path, *extra: str) -> list[str]:
    return [
        "--params-file",
        str(ROOT / "config" / "semret.yaml"),
        "-p",
        "clip.model:=tiny",
        "-p",
        f"clip.pretrained:=local-dir:{tiny_clip_dir}",
        "-p",
        "refine.min_area:=16",
        "-p",
        "refine.merge_threshold:=1.5",  # random features all look alike: keep every region
        "-p",
        "clip.batch_size:=8",
        *extra,
    ]


@pytest.fixture(scope="module")
def semret(ros_env, tiny_clip_dir, tmp_path_factory):  # noqa: F811
    log = tmp_path_factory.mktemp("semret_node") / "node.log"
    process = NodeProcess(node_args(tiny_clip_dir), ros_env, log)
    process.wait_for_log(r"ready: subscribed to /image", timeout=120)
    yield process
    assert process.stop() == 0, f"semret_node did not exit cleanly; log:\n{process.log()}"


@pytest.fixture(scope="module")
def camera(graph, semret):
    publisher = graph.node.create_publisher(Image, "/image", qos_profile_sensor_data)
    graph.wait_for_subscriber(publisher)
    return publisher


@pytest.fixture(scope="module")
def frames(graph, semret):
    return graph.collect(SemanticFrame, f"{NODE}/segments", RELIABLE)


@pytest.fixture(scope="module")
def stamps():
    return Stamps()


def wait_frame(frames: list, stamp: int, timeout: float = WAIT_S) -> SemanticFrame:
    return wait_until(
        lambda: next((f for f in reversed(frames) if stamp_of(f) == stamp), None),
        timeout,
        f"the SemanticFrame of the camera frame stamped {stamp}",
    )


def send(camera, frames, pixels, encoding, stamp, pad=0) -> SemanticFrame:
    camera.publish(image_msg(pixels, encoding, stamp, pad))
    return wait_frame(frames, stamp)


def query(graph, text: str = "a red box", **fields) -> Query.Response:
    return graph.call(Query, f"{NODE}/query", Query.Request(text=text, **fields))


# --------------------------------------------------------------------------- static files
def test_params_file_lists_every_parameter_with_its_default():
    document = yaml.safe_load((ROOT / "config" / "semret.yaml").read_text())
    values = document["/**"]["ros__parameters"]
    assert values == {spec.name: spec.default for spec in PARAMETERS}


def test_launch_file_compiles(tmp_path):
    py_compile.compile(
        str(ROOT / "launch" / "semret.launch.py"), cfile=str(tmp_path / "l.pyc"), doraise=True
    )


# --------------------------------------------------------------------------- before any frame
def test_services_before_the_first_frame_name_the_topic(graph, semret):
    response = query(graph)
    assert not response.success
    assert "no frame has arrived yet on /image" in response.message
    label = graph.call(Label, f"{NODE}/label", Label.Request(labels=["a"]))
    assert not label.success and "/image" in label.message


# --------------------------------------------------------------------------- frames
def test_semantic_frame_is_consistent_and_carries_the_camera_header(graph, camera, frames, stamps):
    overlays = graph.collect(Image, f"{NODE}/segments/overlay", RELIABLE)
    stamp = stamps()
    frame = send(camera, frames, scene(), "rgb8", stamp)

    assert frame.header.frame_id == FRAME_ID
    ids_msg = frame.instance_ids
    assert (ids_msg.encoding, ids_msg.width, ids_msg.height) == ("32SC1", WIDTH, HEIGHT)
    assert stamp_of(ids_msg) == stamp and ids_msg.header.frame_id == FRAME_ID
    ids = image_to_numpy(ids_msg)
    count = len(frame.segments)
    assert count >= 2
    assert [s.id for s in frame.segments] == list(range(1, count + 1))
    assert ids.min() >= 0 and ids.max() == count
    assert set(np.unique(ids[ids > 0]).tolist()) == set(range(1, count + 1))
    for segment in frame.segments:
        inside = ids == segment.id
        assert segment.area == int(inside.sum())
        rows, cols = np.nonzero(inside)
        box = segment.bbox
        assert (box.x_offset, box.y_offset) == (cols.min(), rows.min())
        assert (box.width, box.height) == (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
    dim = frame.embedding_dim
    assert dim == 64 and frame.model
    embeddings = np.asarray(frame.embeddings, np.float32).reshape(count, dim)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(frame.global_embedding), 1.0, atol=1e-4)

    overlay = wait_until(
        lambda: next((m for m in overlays if stamp_of(m) == stamp), None), WAIT_S, "the overlay"
    )
    assert (overlay.encoding, overlay.width, overlay.height) == ("rgb8", WIDTH, HEIGHT)
    assert overlay.header.frame_id == FRAME_ID


@pytest.mark.parametrize(
    ("encoding", "convert", "pad"),
    [
        ("rgb8", None, 7),
        ("bgr8", cv2.COLOR_RGB2BGR, 0),
        ("rgba8", cv2.COLOR_RGB2RGBA, 4),
        ("bgra8", cv2.COLOR_RGB2BGRA, 0),
    ],
)
def test_colour_encodings_and_row_padding_give_the_same_frame(
    camera, frames, stamps, encoding, convert, pad
):
    reference = send(camera, frames, scene(), "rgb8", stamps())
    pixels = scene() if convert is None else cv2.cvtColor(scene(), convert)
    frame = send(camera, frames, pixels, encoding, stamps(), pad)
    np.testing.assert_array_equal(
        image_to_numpy(frame.instance_ids), image_to_numpy(reference.instance_ids)
    )
    np.testing.assert_allclose(frame.embeddings, reference.embeddings, atol=1e-5)


def test_mono8_is_processed(camera, frames, stamps):
    gray = cv2.cvtColor(scene(), cv2.COLOR_RGB2GRAY)
    frame = send(camera, frames, gray, "mono8", stamps(), pad=3)
    assert (frame.instance_ids.width, frame.instance_ids.height) == (WIDTH, HEIGHT)


# --------------------------------------------------------------------------- services
def test_query_answers_from_the_newest_frame(graph, camera, frames, stamps):
    similarities = graph.collect(Image, f"{NODE}/similarity", RELIABLE)
    masks = graph.collect(Image, f"{NODE}/mask", RELIABLE)
    stamp = stamps()
    frame = send(camera, frames, scene(), "rgb8", stamp)
    response = query(graph, "a red box", want_similarity=True, want_mask=True)
    assert response.success, response.message
    assert stamp_of(response) == stamp and response.header.frame_id == FRAME_ID
    assert response.threshold_used == pytest.approx(0.5)  # request 0: the parameter default
    assert response.frames_searched == 1

    sim_msg, mask_msg = response.similarity, response.mask
    assert (sim_msg.encoding, sim_msg.width, sim_msg.height) == ("32FC1", WIDTH, HEIGHT)
    assert (mask_msg.encoding, mask_msg.width, mask_msg.height) == ("mono8", WIDTH, HEIGHT)
    assert stamp_of(sim_msg) == stamp and stamp_of(mask_msg) == stamp
    similarity, mask = image_to_numpy(sim_msg), image_to_numpy(mask_msg)
    assert np.isfinite(similarity).all()
    assert similarity.min() >= 0.0 and similarity.max() <= 1.0
    assert set(np.unique(mask).tolist()) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, similarity >= response.threshold_used)
    ids = image_to_numpy(frame.instance_ids)
    np.testing.assert_array_equal(similarity[ids == 0], 0.0)
    scores = [m.score for m in response.matches]
    assert scores == sorted(scores, reverse=True)
    assert all(response.threshold_used <= s <= 1.0 for s in scores)
    assert len(scores) <= 10

    assert response.overlay.width == 0, "the overlay is sent only when asked for"

    low = query(graph, "a red box", threshold=0.05, max_results=2, want_overlay=True)
    assert low.success and low.threshold_used == pytest.approx(0.05)
    assert len(low.matches) <= 2
    overlay = low.overlay
    assert (overlay.encoding, overlay.width, overlay.height) == ("rgb8", WIDTH, HEIGHT)
    assert stamp_of(overlay) == stamp
    # Published for RViz too, with the camera header.
    wait_until(lambda: any(stamp_of(m) == stamp for m in similarities), WAIT_S, "~/similarity")
    wait_until(lambda: any(stamp_of(m) == stamp for m in masks), WAIT_S, "~/mask")


def test_default_query_answer_is_the_matches_alone(graph, camera, frames, stamps):
    stamp = stamps()
    send(camera, frames, scene(), "rgb8", stamp)
    response = query(graph, "a red box", threshold=0.01)
    assert response.success, response.message
    assert stamp_of(response) == stamp and response.frames_searched == 1
    assert response.matches and all(0.01 <= m.score <= 1.0 for m in response.matches)
    for image in (response.similarity, response.mask, response.overlay):
        assert (image.width, image.height, len(image.data)) == (0, 0, 0)
    assert len(response.similarity_png.data) == 0 and len(response.mask_png.data) == 0


def test_requested_images_come_scaled_and_compressed(graph, camera, frames, stamps):
    stamp = stamps()
    send(camera, frames, scene(), "rgb8", stamp)
    images = {"want_similarity": True, "want_mask": True, "threshold": 0.3}
    full = query(graph, "a blue disc", **images)
    small = query(graph, "a blue disc", image_scale=0.25, want_overlay=True, **images)
    packed = query(graph, "a blue disc", compress_images=True, **images)
    both = query(graph, "a blue disc", image_scale=0.25, compress_images=True, **images)
    for response in (full, small, packed, both):
        assert response.success, response.message
        assert stamp_of(response) == stamp
        assert response.matches == full.matches  # the matches never change with the images
    similarity, mask = image_to_numpy(full.similarity), image_to_numpy(full.mask)

    size = (WIDTH // 4, HEIGHT // 4)
    for msg, encoding in ((small.similarity, "32FC1"), (small.mask, "mono8")):
        assert (msg.encoding, msg.width, msg.height) == (encoding, *size)
        assert stamp_of(msg) == stamp and msg.header.frame_id == FRAME_ID
    nearest = cv2.INTER_NEAREST_EXACT
    small_similarity = cv2.resize(similarity, size, interpolation=nearest)
    np.testing.assert_array_equal(image_to_numpy(small.similarity), small_similarity)
    np.testing.assert_array_equal(
        image_to_numpy(small.mask), cv2.resize(mask, size, interpolation=nearest)
    )
    assert (small.overlay.encoding, small.overlay.width, small.overlay.height) == ("rgb8", *size)

    assert packed.similarity.width == 0 and packed.mask.width == 0  # PNG instead of raw
    for msg in (packed.similarity_png, packed.mask_png):
        assert msg.format == "png" and stamp_of(msg) == stamp
    np.testing.assert_array_equal(png_to_numpy(packed.mask_png), mask)
    decoded = similarity_from_png(packed.similarity_png)
    assert np.abs(decoded - similarity).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(
        png_to_numpy(both.mask_png), cv2.resize(mask, size, interpolation=nearest)
    )
    assert np.abs(similarity_from_png(both.similarity_png) - small_similarity).max() <= 0.5 / 255
    # What the network carries: the PNGs are a fraction of the raw images.
    raw_bytes = len(full.similarity.data) + len(full.mask.data)
    assert len(packed.similarity_png.data) + len(packed.mask_png.data) < raw_bytes / 10


def _top_score(response: Query.Response) -> float:
    return max((m.score for m in response.matches), default=-1.0)


def test_search_frames_answers_from_the_frame_with_the_best_match(graph, camera, frames, stamps):
    """A random model's relevance is noise, so the expected frame is measured: each phrase is
    asked of each frame while it is the newest, then of both at once."""
    phrases = ["a red box", "a blue disc", "a green bar", "grey floor", "a cup", "a door"]
    older, newer = stamps(), stamps()
    # Many regions (coloured blocks), then one (a plain grey wall): the older frame's best
    # region beats the single one for most phrases, not for all.
    blocks = np.random.default_rng(0).integers(0, 255, (HEIGHT // 12, WIDTH // 16, 3), np.uint8)
    send(camera, frames, np.kron(blocks, np.ones((12, 16, 1), np.uint8)), "rgb8", older)
    alone = {p: query(graph, p, threshold=0.01, search_frames=1) for p in phrases}
    send(camera, frames, np.full((HEIGHT, WIDTH, 3), 128, np.uint8), "rgb8", newer)
    seen_newest = {p: query(graph, p, threshold=0.01) for p in phrases}
    assert all(stamp_of(r) == older for r in alone.values())
    from_older = 0
    for phrase in phrases:
        best = query(graph, phrase, threshold=0.01, search_frames=2)
        assert best.success, best.message
        assert best.frames_searched == 2 and "searched the newest 2 frames" in best.message
        if _top_score(alone[phrase]) > _top_score(seen_newest[phrase]):
            expected, where = alone[phrase], "1 frame(s) before the newest"
            from_older += 1
        else:  # ties go to the newer frame
            expected, where = seen_newest[phrase], "the newest frame"
        assert stamp_of(best) == stamp_of(expected), phrase
        assert best.matches == expected.matches and where in best.message
    assert from_older, "no phrase matched the older frame better: the check checked nothing"

    everything = query(graph, "a red box", search_frames=1000, threshold=0.01)
    assert everything.success, everything.message
    stored = everything.frames_searched
    assert 2 <= stored <= 10  # store_size 10
    assert f"searched all {stored} stored frame(s) (search_frames 1000 > {stored}" in (
        everything.message
    )
    # Every stored frame was searched, the two above among them.
    assert _top_score(everything) >= max(
        _top_score(alone["a red box"]), _top_score(seen_newest["a red box"])
    )


def test_label_answers_with_a_label_image_and_overlay(graph, camera, frames, stamps):
    stamp = stamps()
    send(camera, frames, scene(), "rgb8", stamp)
    labels = ["red box", "blue disc", "green bar"]
    response = graph.call(Label, f"{NODE}/label", Label.Request(labels=labels, threshold=0.01))
    assert response.success, response.message
    assert stamp_of(response) == stamp and response.header.frame_id == FRAME_ID
    label_msg, overlay = response.label_image, response.overlay
    assert (label_msg.encoding, label_msg.width, label_msg.height) == ("mono8", WIDTH, HEIGHT)
    assert (overlay.encoding, overlay.width, overlay.height) == ("rgb8", WIDTH, HEIGHT)
    assert stamp_of(label_msg) == stamp and stamp_of(overlay) == stamp
    assert image_to_numpy(label_msg).max() <= len(labels)
    assert len(response.scores) == len(labels)
    assert all(0.0 <= s <= 1.0 for s in response.scores)
    assert response.threshold_used == pytest.approx(0.01)


def test_describe_segments_the_pointed_object_and_ranks_names(graph, camera, frames, stamps):
    stamp = stamps()
    frame = send(camera, frames, scene(), "rgb8", stamp)
    ids = image_to_numpy(frame.instance_ids)
    x, y = 110, 70  # centre of the blue disc
    request = Describe.Request(points=[Point(x=float(x), y=float(y))])
    response = graph.call(Describe, f"{NODE}/describe", request)
    assert response.success, response.message
    assert stamp_of(response) == stamp and response.header.frame_id == FRAME_ID
    mask = image_to_numpy(response.mask)
    assert (response.mask.encoding, mask.shape) == ("mono8", (HEIGHT, WIDTH))
    assert mask[y, x] == 255
    np.testing.assert_array_equal(mask == 255, ids == ids[y, x])
    # No vocabulary in the request or the parameters: the model folder's vocabulary file.
    assert sorted(response.labels) == sorted(TINY_VOCABULARY)
    assert list(response.scores) == sorted(response.scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in response.scores)

    box = RegionOfInterest(x_offset=0, y_offset=0, width=WIDTH, height=HEIGHT)
    boxed = graph.call(
        Describe, f"{NODE}/describe", Describe.Request(box=box, vocabulary=["box", "disc"])
    )
    assert boxed.success, boxed.message
    assert sorted(boxed.labels) == ["box", "disc"]


@pytest.mark.parametrize(
    ("service", "request_msg", "field"),
    [
        (Query, Query.Request(text=""), "text"),
        (Query, Query.Request(text="mug", threshold=math.nan), "threshold"),
        (Query, Query.Request(text="mug", threshold=1.5), "threshold"),
        (Query, Query.Request(text="mug", threshold=-0.2), "threshold"),
        (Query, Query.Request(text="mug", negatives=["object", ""]), "negatives"),
        (Query, Query.Request(text="mug", image_scale=-0.5), "image_scale"),
        (Query, Query.Request(text="mug", image_scale=math.nan), "image_scale"),
        (Query, Query.Request(text="mug", image_scale=math.inf), "image_scale"),
        (Query, Query.Request(text="mug", image_scale=1.5, want_mask=True), "image_scale"),
        (Label, Label.Request(labels=[]), "labels"),
        (Label, Label.Request(labels=["a"], threshold=math.nan), "threshold"),
        (Describe, Describe.Request(points=[Point(x=500.0, y=10.0)]), "point"),
        (Describe, Describe.Request(), "prompt"),
        (
            Describe,
            Describe.Request(points=[Point(x=5.0, y=5.0)], point_labels=[1, 0]),
            "point_labels",
        ),
    ],
)
def test_bad_requests_fail_naming_the_field(
    graph, camera, frames, stamps, service, request_msg, field
):
    if not frames:
        send(camera, frames, scene(), "rgb8", stamps())
    name = {Query: "query", Label: "label", Describe: "describe"}[service]
    response = graph.call(service, f"{NODE}/{name}", request_msg)
    assert not response.success
    assert field in response.message
    assert query(graph).success  # still serving


# --------------------------------------------------------------------------- bad frames
def _bad_frames(stamp: int) -> dict[str, tuple[Image, str]]:
    good = image_msg(scene(), "rgb8", stamp)
    bayer = image_msg(scene()[:, :, 0], "bayer_rggb8", stamp)
    depth = image_msg(np.full((HEIGHT, WIDTH), 1000, np.uint16), "16UC1", stamp)
    short = image_msg(scene(), "rgb8", stamp)
    short.data = bytes(good.data)[: len(good.data) // 2]
    empty = Image(height=0, width=0, encoding="rgb8", step=0, header=good.header)
    negative = image_msg(scene(), "rgb8", stamp)
    negative.header.stamp.sec = -5
    return {
        "bayer": (bayer, "bayer_rggb8"),
        "depth on the colour topic": (depth, "16UC1"),
        "short data": (short, "step * height"),
        "0x0": (empty, "empty"),
        "negative stamp": (negative, "invalid header stamp"),
    }


@pytest.mark.parametrize(
    "kind", ["bayer", "depth on the colour topic", "short data", "0x0", "negative stamp"]
)
def test_malformed_frames_are_logged_skipped_and_lose_nothing(
    graph, camera, frames, stamps, semret, kind
):
    good_stamp = stamps()
    send(camera, frames, scene(), "rgb8", good_stamp)
    before = query(graph, want_similarity=True)
    bad, reason = _bad_frames(stamps())[kind]
    camera.publish(bad)
    semret.wait_for_log(rf"skipping a frame on /image: .*{re.escape(reason)}", timeout=WAIT_S)
    after = query(graph, want_similarity=True)
    assert after.success and stamp_of(after) == good_stamp  # the stored frame is intact
    np.testing.assert_array_equal(
        image_to_numpy(after.similarity), image_to_numpy(before.similarity)
    )
    send(camera, frames, scene(shift=20), "rgb8", stamps())  # and processing goes on


# --------------------------------------------------------------------------- concurrency
def test_queries_while_frames_keep_arriving(graph, camera, frames, stamps):
    send(camera, frames, scene(), "rgb8", stamps())
    published: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        shift = 0
        while not stop.is_set():
            stamp = stamps()
            published.append(stamp)
            camera.publish(image_msg(scene(shift=shift % 40), "rgb8", stamp))
            shift += 5
            time.sleep(0.05)

    streamer = threading.Thread(target=stream)
    streamer.start()
    answered: list[int] = []
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            response = query(graph, "a green bar", want_similarity=True)
            assert response.success, response.message
            assert (response.similarity.width, response.similarity.height) == (WIDTH, HEIGHT)
            answered.append(stamp_of(response))
    finally:
        stop.set()
        streamer.join()
    assert answered == sorted(answered)  # never an older frame after a newer one
    assert len(set(answered)) > 1, "no query was answered from a frame of the stream"
    wait_until(
        lambda: set(answered) <= {stamp_of(f) for f in frames},
        WAIT_S,
        "a published SemanticFrame for every frame a query was answered from",
    )


def test_enable_false_pauses_processing(graph, camera, frames, stamps, diagnostics):
    last = send(camera, frames, scene(), "rgb8", stamps())
    dropped = int(wait_until(lambda: _diagnostic(diagnostics, "frames dropped"), WAIT_S, "stats"))
    paused = graph.call(SetBool, f"{NODE}/enable", SetBool.Request(data=False))
    assert paused.success
    try:
        skipped = stamps()
        camera.publish(image_msg(scene(), "rgb8", skipped))
        wait_until(
            lambda: _diagnostic(diagnostics, "frames dropped", lambda v: int(v) > dropped),
            WAIT_S,
            "the paused frame counted as dropped",
        )
        response = query(graph)
        assert response.success and stamp_of(response) == stamp_of(last)
    finally:
        resumed = graph.call(SetBool, f"{NODE}/enable", SetBool.Request(data=True))
    assert resumed.success
    # Frames are processed in arrival order: once the next frame's result is out, the paused
    # one would have been published before it, had it been processed.
    send(camera, frames, scene(), "rgb8", stamps())
    assert all(stamp_of(f) != skipped for f in frames)


# --------------------------------------------------------------------------- parameters
def _set(graph, name: str, value: ParameterValue):
    request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=value)])
    return graph.call(SetParameters, f"{NODE}/set_parameters", request).results[0]


def _double(value: float) -> ParameterValue:
    return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)


def _string(value: str) -> ParameterValue:
    return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)


def _strings(values: list[str]) -> ParameterValue:
    return ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=values)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("query.threshold", _double(1.5), ""),
        ("query.threshold", _double(math.nan), ""),
        (
            "query.mode",
            ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="fuzzy"),
            "query.mode",
        ),
        ("query.negatives", _strings([]), "query.negatives"),
        ("standing_queries", _strings(["mug", "mug"]), "standing_queries"),
        ("clip.model", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="x"), ""),
    ],
)
def test_invalid_parameter_values_are_refused_with_a_reason(graph, semret, name, value, reason):
    result = _set(graph, name, value)
    assert not result.successful
    assert result.reason and reason in result.reason


def test_runtime_parameters_apply_to_queries_and_standing_queries(graph, camera, frames, stamps):
    similarities = graph.collect(Image, f"{NODE}/similarity", RELIABLE)
    answers = graph.collect(QueryAnswer, f"{NODE}/answers", RELIABLE)
    try:
        assert _set(graph, "query.threshold", _double(0.3)).successful
        assert _set(graph, "standing_queries", _strings(["red box", "green bar"])).successful
        assert _set(graph, "display_query", _string("green bar")).successful
        stamp = stamps()
        frame = send(camera, frames, scene(), "rgb8", stamp)
        mine = wait_until(
            lambda: (
                (found := [a for a in answers if stamp_of(a) == stamp])
                and len(found) == 2
                and found
            ),
            WAIT_S,
            "one ~/answers message per standing query, with the frame's header",
        )
        assert sorted(a.text for a in mine) == ["green bar", "red box"]
        assert {a.source for a in mine} == {"standing"}
        for answer in mine:
            assert answer.threshold == pytest.approx(0.3)
            assert (answer.similarity.width, answer.mask.height) == (WIDTH, HEIGHT)
            assert stamp_of(answer.similarity) == stamp
        green = next(a for a in mine if a.text == "green bar")
        wait_until(lambda: any(stamp_of(m) == stamp for m in similarities), WAIT_S, "display")
        # One image per frame on the Image topic, the displayed phrase's, so RViz is stable.
        shown = [m for m in similarities if stamp_of(m) == stamp]
        assert len(shown) == 1 and shown[0].data == green.similarity.data
        assert {s.label for s in frame.segments} <= {"", "red box", "green bar"}
        response = query(graph)
        assert response.success and response.threshold_used == pytest.approx(0.3)
    finally:
        assert _set(graph, "query.threshold", _double(0.5)).successful
        assert _set(graph, "display_query", _string("")).successful
        assert _set(graph, "standing_queries", _strings([])).successful


@pytest.mark.parametrize(
    "empty",
    [
        # What `ros2 param set /semret standing_queries "[]"` and `ros2 param load` send.
        ParameterValue(type=ParameterType.PARAMETER_BOOL_ARRAY, bool_array_value=[]),
        ParameterValue(type=ParameterType.PARAMETER_INTEGER_ARRAY, integer_array_value=[]),
        _strings([]),
        _strings([""]),
    ],
)
def test_standing_queries_switch_off_with_every_form_of_empty_list(graph, semret, empty):
    assert _set(graph, "standing_queries", _strings(["red box"])).successful
    result = _set(graph, "standing_queries", empty)
    assert result.successful, result.reason
    got = graph.call(
        GetParameters, f"{NODE}/get_parameters", GetParameters.Request(names=["standing_queries"])
    )
    value = got.values[0]
    # Stored as sent ([''] stays ['']); the node reads every one of them as "no phrases".
    assert not any(v.strip() for v in value.string_array_value)
    assert not (list(value.bool_array_value) or list(value.integer_array_value))


def test_lists_refuse_what_is_not_phrases(graph, semret):
    unset = ParameterValue(type=ParameterType.PARAMETER_NOT_SET)
    assert "cannot be unset" in _set(graph, "standing_queries", unset).reason
    numbers = ParameterValue(type=ParameterType.PARAMETER_INTEGER_ARRAY, integer_array_value=[3])
    assert "list of strings" in _set(graph, "standing_queries", numbers).reason
    assert "standing_queries" in _set(graph, "standing_queries", _strings(["", "mug"])).reason


def test_parameter_changes_never_tear_a_request(graph, camera, frames, stamps):
    """Mode and negatives change together (atomically) while clients query: a request that
    read the mode of one setting and the negatives of the other would fail."""
    send(camera, frames, scene(), "rgb8", stamps())
    settings = [
        [("query.mode", _string("contrastive")), ("query.negatives", _strings(["object"]))],
        [("query.mode", _string("cosine")), ("query.negatives", _strings([]))],
    ]
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]

    def ask() -> None:
        while not stop.is_set():
            response = query(graph, "a green bar")
            answered[0] += 1
            if not response.success:
                failures.append(response.message)

    askers = [threading.Thread(target=ask) for _ in range(2)]
    for thread in askers:
        thread.start()
    try:
        for round_ in range(150):
            parameters = [ParameterMsg(name=n, value=v) for n, v in settings[round_ % 2]]
            request = SetParametersAtomically.Request(parameters=parameters)
            result = graph.call(
                SetParametersAtomically, f"{NODE}/set_parameters_atomically", request
            )
            assert result.result.successful, result.result.reason
    finally:
        stop.set()
        for thread in askers:
            thread.join()
        for name, value in settings[0]:
            _set(graph, name, value)
        assert _set(
            graph, "query.negatives", _strings(["object", "things", "stuff", "texture"])
        ).successful
    assert answered[0] > 50
    assert not failures, failures[:3]


@pytest.fixture(scope="module")
def diagnostics(graph, semret):
    return graph.collect(DiagnosticArray, "/diagnostics")


def _diagnostic(diagnostics: list, key: str, accept=lambda value: True) -> str | None:
    """The newest value of ``key`` in the node's /diagnostics status, if it passes ``accept``."""
    for message in reversed(diagnostics):
        for status in message.status:
            if status.name.startswith(NODE):
                value = {kv.key: kv.value for kv in status.values}.get(key)
                return value if value is not None and accept(value) else None
    return None


def test_diagnostics_report_rates_latency_and_refusals(camera, frames, stamps, diagnostics):
    for _ in range(3):
        send(camera, frames, scene(), "rgb8", stamps())
    camera.publish(image_msg(scene()[:, :, 0], "rgb8", stamps()))  # data too short for rgb8
    refused = wait_until(
        lambda: _diagnostic(diagnostics, "frames refused", lambda v: int(v) > 0),
        WAIT_S,
        "a refusal",
    )
    assert int(refused) >= 1
    message = diagnostics[-1]
    status = next(s for s in message.status if s.name.startswith(NODE))
    values = {kv.key: kv.value for kv in status.values}
    assert int(values["frames processed"]) >= 3
    assert values["latency median"].endswith(" ms")
    assert values["state"] == "active"
    assert "CLIP tiny" in values["models"]
    assert values["last error"] != "none"
    assert any(key.startswith("refused: ") for key in values)


def test_answers_from_an_old_frame_say_how_old(graph, camera, frames, stamps):
    send(camera, frames, scene(), "rgb8", stamps())
    try:
        assert _set(graph, "stale_after", _double(0.2)).successful
        response = wait_until(
            lambda: (r := query(graph)).success and "stale:" in r.message and r,
            WAIT_S,
            "a stale answer",
        )
        assert re.search(r"newest processed frame is \d+\.\d s old", response.message)
    finally:
        assert _set(graph, "stale_after", _double(2.0)).successful
    assert "stale" not in send_and_query(graph, camera, frames, stamps).message


def send_and_query(graph, camera, frames, stamps) -> Query.Response:
    send(camera, frames, scene(), "rgb8", stamps())
    response = query(graph)
    assert response.success, response.message
    return response


# --------------------------------------------------------------------------- other set-ups
@pytest.mark.parametrize(
    ("parameter", "path"),
    [
        ("clip.pretrained", "local-dir:/nonexistent/semret/clip_model"),
        ("segmenter.sam2.checkpoint", "/nonexistent/semret/sam2.1_hiera_tiny.pt"),
    ],
)
def test_missing_model_file_stops_the_node_with_one_clear_error(
    ros_env,  # noqa: F811
    tiny_clip_dir,
    tmp_path,
    parameter,
    path,
):
    args = node_args(tiny_clip_dir, "-p", f"{parameter}:={path}", "-r", "__node:=semret_missing")
    process = NodeProcess(args, ros_env, tmp_path / "node.log")
    assert process.wait_exit(timeout=120) != 0
    log = process.log()
    assert parameter in log and path in log
    assert "Traceback" not in log


def test_compressed_transport_and_qos_mismatch_warning(graph, ros_env, tiny_clip_dir, tmp_path):  # noqa: F811
    args = node_args(
        tiny_clip_dir,
        "-p",
        "image_transport:=compressed",
        "-p",
        "qos.reliability:=reliable",
        "-r",
        "__ns:=/compressed",
    )
    process = NodeProcess(args, ros_env, tmp_path / "node.log")
    try:
        process.wait_for_log(r"ready: subscribed to /compressed/image/compressed", timeout=120)
        topic = "/compressed/image/compressed"
        mismatched = graph.node.create_publisher(CompressedImage, topic, qos_profile_sensor_data)
        process.wait_for_log(r"publisher /semret_test on .*best_effort", timeout=WAIT_S)
        graph.node.destroy_publisher(mismatched)

        frames = graph.collect(SemanticFrame, "/compressed/semret/segments", RELIABLE)
        publisher = graph.node.create_publisher(CompressedImage, topic, RELIABLE)
        graph.wait_for_subscriber(publisher)
        bad = CompressedImage(format="jpeg", data=b"\xff\xd8 definitely not a jpeg")
        publisher.publish(bad)
        process.wait_for_log(r"skipping a frame on .*undecodable", timeout=WAIT_S)

        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(scene(), cv2.COLOR_RGB2BGR))
        assert ok
        msg = CompressedImage(format="jpeg", data=jpeg.tobytes())
        msg.header.stamp.sec, msg.header.frame_id = 42, FRAME_ID
        publisher.publish(msg)
        frame = wait_frame(frames, 42 * 1_000_000_000)
        assert (frame.instance_ids.width, frame.instance_ids.height) == (WIDTH, HEIGHT)
    finally:
        assert process.stop() == 0, process.log()


@pytest.mark.parametrize(("width", "height"), [(640, 480), (1280, 720)])
def test_camera_sized_best_effort_frames_cross_processes(camera, frames, stamps, width, height):
    """With the default Fast DDS set-up ~97% of such frames are lost; every one must arrive."""
    for _ in range(3):
        frame = send(camera, frames, scene(width, height), "rgb8", stamps())
        assert (frame.instance_ids.width, frame.instance_ids.height) == (width, height)


# --------------------------------------------------------------------------- semret-query
def test_semret_query_command(camera, frames, stamps, ros_env, tmp_path):  # noqa: F811
    send(camera, frames, scene(), "rgb8", stamps())
    command = str(Path(sys.executable).parent / "semret-query")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [command, *args], env=ros_env, capture_output=True, text=True, timeout=60
        )

    plain = run("a red box")
    assert plain.returncode == 0, plain.stderr
    assert "bbox (x, y, w, h)" in plain.stdout

    found = run("a red box", "--threshold", "0.05", "--save", str(tmp_path / "q"))
    assert found.returncode == 0, found.stderr
    assert "bbox (x, y, w, h)" in found.stdout and FRAME_ID in found.stdout
    written = {p.name for p in (tmp_path / "q").iterdir()}
    assert written == {"similarity.png", "similarity_overlay.png", "mask.png"}
    assert cv2.imread(str(tmp_path / "q" / "similarity_overlay.png")).shape == (HEIGHT, WIDTH, 3)
    assert cv2.imread(str(tmp_path / "q" / "mask.png")).shape[:2] == (HEIGHT, WIDTH)

    args = ("--threshold", "0.05", "--scale", "0.5", "--png", "--search-frames", "3")
    small = run("a red box", *args, "--save", str(tmp_path / "s"))
    assert small.returncode == 0, small.stderr
    assert "searched" in small.stdout  # the newest 3, or all when fewer are stored
    for name in ("similarity.png", "similarity_overlay.png", "mask.png"):
        assert cv2.imread(str(tmp_path / "s" / name)).shape[:2] == (HEIGHT // 2, WIDTH // 2)
    bad_scale = run("a red box", "--scale", "2")
    assert bad_scale.returncode == 1 and "image_scale" in bad_scale.stderr

    labelled = run("--label", "red box", "green bar", "--save", str(tmp_path / "l"))
    assert labelled.returncode == 0, labelled.stderr
    assert "green bar" in labelled.stdout
    assert (tmp_path / "l" / "label_overlay.png").is_file()

    described = run("--describe", "110", "70", "--vocabulary", "disc", "box")
    assert described.returncode == 0, described.stderr
    assert "disc" in described.stdout

    refused = run("--describe", "500", "10")
    assert refused.returncode == 1 and "outside" in refused.stderr
