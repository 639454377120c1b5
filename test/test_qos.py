"""The shared QoS choices: a camera stream's two words, and the services' KEEP_ALL."""

import pytest
from rclpy.qos import HistoryPolicy, ReliabilityPolicy

from semret_ros.ros.qos import SERVICE_QOS, camera_qos


@pytest.mark.parametrize(
    ("word", "policy"),
    [("best_effort", ReliabilityPolicy.BEST_EFFORT), ("reliable", ReliabilityPolicy.RELIABLE)],
)
def test_camera_qos_maps_the_parameter_words(word, policy):
    qos = camera_qos(word, 3)
    assert qos.reliability == policy and qos.depth == 3
    assert qos.history == HistoryPolicy.KEEP_LAST


def test_camera_qos_rejects_bad_values_with_the_reason():
    with pytest.raises(ValueError, match="reliability"):
        camera_qos("sensor_data", 1)
    with pytest.raises(ValueError, match="depth"):
        camera_qos("reliable", 0)


def test_services_keep_every_request_and_response():
    assert SERVICE_QOS.history == HistoryPolicy.KEEP_ALL
    assert SERVICE_QOS.reliability == ReliabilityPolicy.RELIABLE
