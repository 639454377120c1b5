"""``semret_lifecycle_node`` driven through the standard lifecycle_msgs services, as a lifecycle
manager (nav2_lifecycle_manager, launch_ros) or ``ros2 lifecycle set`` drives it."""

from __future__ import annotations

from pathlib import Path

import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import qos_profile_sensor_data
from ros_fixtures import ros_env  # noqa: F401 - the fixture, used by name
from ros_graph import Graph, NodeProcess, wait_until
from semret_ros.msg import SemanticFrame
from semret_ros.srv import Query
from sensor_msgs.msg import Image
from test_node import RELIABLE, Stamps, image_msg, node_args, scene, stamp_of

pytestmark = pytest.mark.ros

NODE = "/managed/semret"
WAIT_S = 30.0


@pytest.fixture(scope="module")
def graph(ros_env):  # noqa: F811
    graph = Graph(ros_env)
    yield graph
    graph.close()


def _state(graph: Graph) -> str:
    return graph.call(GetState, f"{NODE}/get_state", GetState.Request()).current_state.label


def _change(graph: Graph, transition: int) -> bool:
    request = ChangeState.Request(transition=Transition(id=transition))
    return graph.call(ChangeState, f"{NODE}/change_state", request, timeout=120).success


def _set_string(graph: Graph, name: str, value: str):
    parameter = ParameterMsg(
        name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    )
    request = SetParameters.Request(parameters=[parameter])
    return graph.call(SetParameters, f"{NODE}/set_parameters", request).results[0]


def test_the_managed_node_follows_its_lifecycle(graph, ros_env, tiny_clip_dir, tmp_path):  # noqa: F811
    good = f"local-dir:{tiny_clip_dir}"
    args = node_args(tiny_clip_dir, "-p", "clip.pretrained:=local-dir:/nonexistent/semret")
    args += ["-r", "__ns:=/managed"]
    process = NodeProcess(args, ros_env, tmp_path / "node.log", command="semret_lifecycle_node")
    try:
        wait_until(lambda: _services_up(graph), 60, "the lifecycle services")
        assert _state(graph) == "unconfigured"
        query = graph.call(Query, f"{NODE}/query", Query.Request(text="a red box"))
        assert not query.success and "inactive" in query.message

        # A model error fails configure with its reason; the node stays unconfigured, alive.
        assert not _change(graph, Transition.TRANSITION_CONFIGURE)
        assert _state(graph) == "unconfigured"
        process.wait_for_log(r"configure failed: model file missing: clip.pretrained")
        # Model settings can be fixed while unconfigured, and configure retried.
        assert _set_string(graph, "clip.pretrained", good).successful
        assert _change(graph, Transition.TRANSITION_CONFIGURE)
        assert _state(graph) == "inactive"
        refused = _set_string(graph, "clip.model", "other")
        assert not refused.successful and "unconfigured" in refused.reason

        camera = graph.node.create_publisher(Image, "/managed/image", qos_profile_sensor_data)
        frames = graph.collect(SemanticFrame, f"{NODE}/segments", RELIABLE)
        stamps = Stamps()
        assert camera.get_subscription_count() == 0  # inactive: no camera subscription

        assert _change(graph, Transition.TRANSITION_ACTIVATE)
        assert _state(graph) == "active"
        graph.wait_for_subscriber(camera)
        stamp = stamps()
        camera.publish(image_msg(scene(), "rgb8", stamp))
        wait_until(lambda: any(stamp_of(f) == stamp for f in frames), WAIT_S, "a frame")
        answer = graph.call(Query, f"{NODE}/query", Query.Request(text="a red box"))
        assert answer.success and stamp_of(answer) == stamp

        assert _change(graph, Transition.TRANSITION_DEACTIVATE)
        assert _state(graph) == "inactive"
        wait_until(lambda: camera.get_subscription_count() == 0, WAIT_S, "the unsubscription")
        query = graph.call(Query, f"{NODE}/query", Query.Request(text="a red box"))
        assert not query.success and "inactive" in query.message

        assert _change(graph, Transition.TRANSITION_CLEANUP)
        assert _state(graph) == "unconfigured"
        process.wait_for_log(r"cleaned up: models released")
        # Configurable again after cleanup, then shut down through the lifecycle: exit 0.
        assert _change(graph, Transition.TRANSITION_CONFIGURE)
        assert _change(graph, Transition.TRANSITION_INACTIVE_SHUTDOWN)
        assert process.wait_exit(60) == 0, process.log()
    finally:
        if process.process.poll() is None:
            process.stop()


def _services_up(graph: Graph) -> bool:
    names = {name for name, _types in graph.node.get_service_names_and_types()}
    return {f"{NODE}/get_state", f"{NODE}/change_state", f"{NODE}/query"} <= names


def test_sigint_stops_the_managed_node_cleanly_while_frames_stream(
    graph,
    ros_env,  # noqa: F811
    tiny_clip_dir: Path,
    tmp_path: Path,
):
    """Ctrl-C while active and processing: exit 0, and the worker never publishes after the
    context is gone (it is stopped first)."""
    args = [*node_args(tiny_clip_dir), "-r", "__ns:=/managed"]
    process = NodeProcess(args, ros_env, tmp_path / "node.log", command="semret_lifecycle_node")
    try:
        wait_until(lambda: _services_up(graph), 60, "the lifecycle services")
        available = graph.call(
            GetAvailableTransitions,
            f"{NODE}/get_available_transitions",
            GetAvailableTransitions.Request(),
        )
        assert "configure" in {t.transition.label for t in available.available_transitions}
        assert _change(graph, Transition.TRANSITION_CONFIGURE)
        assert _change(graph, Transition.TRANSITION_ACTIVATE)
        camera = graph.node.create_publisher(Image, "/managed/image", qos_profile_sensor_data)
        graph.wait_for_subscriber(camera)
        stamps = Stamps()
        for _ in range(5):
            camera.publish(image_msg(scene(), "rgb8", stamps()))
    finally:
        code = process.stop()
    log = process.log()
    assert code == 0, log
    assert "context is invalid" not in log and "Traceback" not in log, log
