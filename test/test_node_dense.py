"""Mask-free mode through the running node (``segmenter.type: dense``, the shipped model): the
same ``~/query`` and ``~/label`` services answer from the dense feature grid, with the
similarity peak on the named object and matches that are the connected regions of the mask."""

from __future__ import annotations

import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from ros_fixtures import ros_env  # noqa: F401 - the fixture, used by name
from ros_graph import Graph, NodeProcess
from semret_ros.msg import SemanticFrame
from semret_ros.srv import Label, Query
from sensor_msgs.msg import Image
from test_node import RELIABLE, ROOT, image_msg, stamp_of
from test_node_semantics import publish_until_processed

from semret_ros.ros.conversions import image_to_numpy
from semret_ros.shapes.world import generate_scene

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_the_mask_free_node_answers_query_and_label_from_the_grid(ros_env, tmp_path):  # noqa: F811
    graph = Graph(ros_env)
    args = [
        "--params-file",
        str(ROOT / "config" / "semret.yaml"),
        "-p",
        "segmenter.type:=dense",
        "-r",
        "__ns:=/maskfree",
    ]
    process = NodeProcess(args, ros_env, tmp_path / "node.log")
    try:
        process.wait_for_log(r"ready: subscribed to /maskfree/image", timeout=120)
        camera = graph.node.create_publisher(Image, "/maskfree/image", qos_profile_sensor_data)
        graph.wait_for_subscriber(camera)
        frames = graph.collect(SemanticFrame, "/maskfree/semret/segments", RELIABLE)
        scene = generate_scene(5, hard=True)
        stamp = 1_800_000_000 * 1_000_000_000
        frame = publish_until_processed(camera, frames, image_msg(scene.image, "rgb8", stamp))
        ids = image_to_numpy(frame.instance_ids)
        # Regions are the 30 x 40 cells of the shipped head's grid at 640x480.
        assert len(frame.segments) == 1200 and int(ids.max()) == 1200

        pointed = 0
        for obj in scene.objects:
            response = graph.call(
                Query,
                "/maskfree/semret/query",
                Query.Request(text=obj.name, threshold=0.3, want_similarity=True, want_mask=True),
            )
            assert response.success and stamp_of(response) == stamp, response.message
            similarity = image_to_numpy(response.similarity)
            mask = image_to_numpy(response.mask) > 0
            assert similarity.shape == scene.image.shape[:2]
            np.testing.assert_array_equal(mask, similarity >= 0.3)
            # The similarity is clipped at 1: its peak is the plateau of pixels at the maximum.
            peak = similarity >= similarity.max() - 1e-6
            pointed += bool(obj.mask[peak].mean() >= 0.5)
            scores = [m.score for m in response.matches]
            assert scores == sorted(scores, reverse=True)
            assert sum(m.area for m in response.matches) <= int(mask.sum())
        assert pointed >= len(scene.objects) - 1, f"{pointed} of {len(scene.objects)}"

        labels = [obj.name for obj in scene.objects]
        labelled = graph.call(Label, "/maskfree/semret/label", Label.Request(labels=labels))
        assert labelled.success, labelled.message
        assert image_to_numpy(labelled.label_image).shape == scene.image.shape[:2]
    finally:
        code = process.stop()
        graph.close()
    assert code == 0, process.log()
