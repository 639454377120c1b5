"""A semantic floor through the running node with the shipped model: hard shapes scenes are
published as a camera would, every object is asked for by name through ``~/query``, and the
best match must be that object. Plumbing tests elsewhere use a random model; this one fails
when the node stops finding things (a wrong crop, a broken blend, a mixed-up id image)."""

from __future__ import annotations

import time

import pytest
from rclpy.qos import qos_profile_sensor_data
from ros_fixtures import ros_env  # noqa: F401 - the fixture, used by name
from ros_graph import Graph, NodeProcess, wait_until
from semret_ros.msg import SemanticFrame
from semret_ros.srv import Query
from sensor_msgs.msg import Image
from test_node import RELIABLE, ROOT, image_msg, stamp_of

from semret_ros.core.metrics import iou
from semret_ros.ros.conversions import image_to_numpy
from semret_ros.shapes.world import generate_scene

pytestmark = [pytest.mark.ros, pytest.mark.slow]

SEEDS = (101, 102, 103)
REPUBLISH_S = 5.0
"""A frame takes 0.3-1 s to process on 2 cores; not out after this long, it was lost."""
HIT_FLOOR = 0.8
"""Measured 1.0 (20/20 queries) on these seeds; ``semret-eval`` gives 0.959 seen / 0.909
held-out over 30 scenes. The floor leaves room for other torch builds, not for a broken
pipeline (a random model scores about 1 / number of regions)."""


def publish_until_processed(camera, frames: list, message: Image, timeout: float = 180.0):
    """Publish ``message`` as a camera does, again every few seconds, until its frame is out.

    BEST_EFFORT delivery may drop a frame (a real camera sends the next one); a single publish
    left the test waiting for a frame that was never going to come.
    """
    stamp = stamp_of(message)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        camera.publish(message)
        try:
            return wait_until(
                lambda: next((f for f in frames if stamp_of(f) == stamp), None),
                REPUBLISH_S,
                "",
            )
        except AssertionError:
            continue
    raise AssertionError(f"no SemanticFrame for stamp {stamp} within {timeout:g} s")


def test_the_node_finds_objects_by_name_with_the_shipped_model(ros_env, tmp_path):  # noqa: F811
    graph = Graph(ros_env)
    args = ["--params-file", str(ROOT / "config" / "semret.yaml"), "-r", "__ns:=/semantic"]
    process = NodeProcess(args, ros_env, tmp_path / "node.log")
    try:
        process.wait_for_log(r"ready: subscribed to /semantic/image", timeout=120)
        camera = graph.node.create_publisher(Image, "/semantic/image", qos_profile_sensor_data)
        graph.wait_for_subscriber(camera)
        frames = graph.collect(SemanticFrame, "/semantic/semret/segments", RELIABLE)
        hits, asked = 0, 0
        for index, seed in enumerate(SEEDS):
            scene = generate_scene(seed, hard=True, min_held_out=1)
            stamp = (1_800_000_000 + index) * 1_000_000_000
            try:
                frame = publish_until_processed(
                    camera, frames, image_msg(scene.image, "rgb8", stamp)
                )
            except AssertionError as error:
                raise AssertionError(f"{error}; node log:\n{process.log()[-4000:]}") from None
            ids = image_to_numpy(frame.instance_ids)
            for obj in scene.objects:
                # A tiny threshold ranks every region (0 would mean the node's 0.5).
                response = graph.call(
                    Query, "/semantic/semret/query", Query.Request(text=obj.name, threshold=1e-6)
                )
                assert response.success and stamp_of(response) == stamp, response.message
                assert "read as" not in response.message  # the names are the model's own words
                asked += 1
                if response.matches:
                    best = ids == response.matches[0].id
                    hits += iou(best, obj.mask) >= 0.5
        assert asked >= 15
        # Words the model's captions never had reach it through its query lexicon.
        request = Query.Request(text="a crimson disc")
        response = graph.call(Query, "/semantic/semret/query", request)
        assert response.success and "read as 'a red circle'" in response.message, response.message
        rate = hits / asked
        print(f"node hit@1 with the shipped model: {rate:.3f} over {asked} queries")
        assert rate >= HIT_FLOOR, f"hit@1 {rate:.2f} over {asked} queries"
    finally:
        code = process.stop()
        graph.close()
    assert code == 0, process.log()
