"""The built package: interfaces as issue 3 specifies them, installed files and commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rclpy.serialization import deserialize_message, serialize_message
from semret_ros.msg import Segment, SemanticFrame
from semret_ros.srv import Describe, Label, Query

PREFIX = Path(os.environ.get("AMENT_PREFIX_PATH", sys.prefix).split(os.pathsep)[0])
COMMANDS = ("semret_node", "semret-query", "semret-train", "semret-eval", "semret-play")


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        (
            Segment,
            {
                "id": "uint32",
                "score": "float",
                "label": "string",
                "bbox": "sensor_msgs/RegionOfInterest",
                "area": "uint32",
            },
        ),
        (
            SemanticFrame,
            {
                "header": "std_msgs/Header",
                "instance_ids": "sensor_msgs/Image",
                "segments": "sequence<semret_ros/Segment>",
                "embedding_dim": "uint32",
                "embeddings": "sequence<float>",
                "global_embedding": "sequence<float>",
                "model": "string",
            },
        ),
        (
            Query.Request,
            {
                "text": "string",
                "negatives": "sequence<string>",
                "threshold": "float",
                "max_results": "uint32",
                "want_overlay": "boolean",
            },
        ),
        (
            Query.Response,
            {
                "success": "boolean",
                "message": "string",
                "header": "std_msgs/Header",
                "similarity": "sensor_msgs/Image",
                "mask": "sensor_msgs/Image",
                "matches": "sequence<semret_ros/Segment>",
                "threshold_used": "float",
                "overlay": "sensor_msgs/Image",
            },
        ),
        (Label.Request, {"labels": "sequence<string>", "threshold": "float"}),
        (
            Label.Response,
            {
                "success": "boolean",
                "message": "string",
                "header": "std_msgs/Header",
                "label_image": "sensor_msgs/Image",
                "overlay": "sensor_msgs/Image",
                "scores": "sequence<float>",
                "threshold_used": "float",
            },
        ),
        (
            Describe.Request,
            {
                "points": "sequence<geometry_msgs/Point>",
                "point_labels": "sequence<int32>",
                "box": "sensor_msgs/RegionOfInterest",
                "vocabulary": "sequence<string>",
            },
        ),
        (
            Describe.Response,
            {
                "success": "boolean",
                "message": "string",
                "header": "std_msgs/Header",
                "mask": "sensor_msgs/Image",
                "labels": "sequence<string>",
                "scores": "sequence<float>",
            },
        ),
    ],
)
def test_interfaces_have_the_specified_fields(message, fields):
    assert message.get_fields_and_field_types() == fields


def test_semantic_frame_serializes_through_the_generated_typesupport():
    msg = SemanticFrame(embedding_dim=2, embeddings=[0.6, 0.8], model="m")
    msg.segments = [Segment(id=1, score=0.5, label="mug", area=7)]
    back = deserialize_message(serialize_message(msg), SemanticFrame)
    assert back == msg


def test_installed_package_holds_interfaces_and_modules_together():
    code = "import semret_ros.dds, semret_ros.msg, semret_ros.srv; print(semret_ros.dds.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True
    )
    assert "site-packages" in result.stdout


def test_share_holds_config_with_the_dds_profile():
    code = "from semret_ros.dds import default_profile_path; print(default_profile_path())"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True
    )
    assert Path(result.stdout.strip()) == PREFIX / "share/semret_ros/config/fastdds_shm.xml"


@pytest.mark.parametrize("command", COMMANDS)
def test_console_commands_run_with_the_building_interpreter(command):
    for directory in ("bin", "lib/semret_ros"):
        script = PREFIX / directory / command
        assert os.access(script, os.X_OK), script
        shebang = script.read_text().splitlines()[0]
        interpreter = Path(shebang.removeprefix("#!"))
        assert interpreter.parent == Path(sys.prefix) / "bin"  # the venv's, not the system's
        assert interpreter.resolve() == Path(sys.executable).resolve()
