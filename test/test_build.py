"""The built package: interfaces as issue 3 specifies them, installed files and commands."""

from __future__ import annotations

import ast
import os
import re
import stat
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from rclpy.serialization import deserialize_message, serialize_message
from semret_ros.msg import Segment, SemanticFrame
from semret_ros.srv import Describe, Label, Query

REPO = Path(__file__).resolve().parent.parent
PREFIX = Path(os.environ.get("AMENT_PREFIX_PATH", sys.prefix).split(os.pathsep)[0])
# The CMake build folder: `make`'s build/, or the one `colcon test` names (CMakeLists.txt).
BUILD = Path(os.environ.get("SEMRET_BUILD_DIR", REPO / "build"))
COMMANDS = (
    "semret_node",
    "semret_lifecycle_node",
    "semret-query",
    "semret-train",
    "semret-train-sam2",
    "semret-eval",
    "semret-play",
    "semret-localize",
    "semret-lexicon",
)
_EXECUTE_ALL = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


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
                "has_position": "boolean",
                "position": "geometry_msgs/Point",
                "size": "geometry_msgs/Vector3",
                "num_points": "uint32",
                "position_frame_id": "string",
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
                "want_similarity": "boolean",
                "want_mask": "boolean",
                "image_scale": "float",
                "compress_images": "boolean",
                "search_frames": "uint32",
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
                "similarity_png": "sensor_msgs/CompressedImage",
                "mask_png": "sensor_msgs/CompressedImage",
                "frames_searched": "uint32",
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
    code = (
        "import semret_ros.ros.dds, semret_ros.msg, semret_ros.srv; "
        "print(semret_ros.ros.dds.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True
    )
    assert "site-packages" in result.stdout


def test_share_holds_config_with_the_dds_profile():
    code = "from semret_ros.ros.dds import default_profile_path; print(default_profile_path())"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True
    )
    # resolve(): after `colcon build --symlink-install` both are links to the source's file.
    installed = PREFIX / "share/semret_ros/config/fastdds_shm.xml"
    assert installed.is_file()
    assert Path(result.stdout.strip()).resolve() == installed.resolve()


@pytest.mark.parametrize("command", COMMANDS)
def test_console_commands_run_with_the_building_interpreter(command):
    for directory in ("bin", "lib/semret_ros"):
        script = PREFIX / directory / command
        assert os.access(script, os.X_OK), script
        shebang = script.read_text().splitlines()[0]
        interpreter = Path(shebang.removeprefix("#!"))
        assert interpreter.parent == Path(sys.prefix) / "bin"  # the venv's, not the system's
        assert interpreter.resolve() == Path(sys.executable).resolve()


def _mode(path: Path) -> int:
    return path.stat().st_mode  # follows links: --symlink-install links lib/ into the build


def test_generated_commands_are_executable_whatever_the_template_mode():
    """configure_file copies the template's mode; `colcon build --symlink-install` then links
    these very files into lib/<pkg>, where launch needs them executable."""
    scripts = BUILD / "scripts"
    if not scripts.is_dir():
        pytest.skip(f"no CMake build folder at {BUILD} (set SEMRET_BUILD_DIR)")
    assert sorted(p.name for p in scripts.iterdir()) == sorted(COMMANDS)
    for script in scripts.iterdir():
        assert _mode(script) & _EXECUTE_ALL == _EXECUTE_ALL, script


def test_everything_installed_in_libexec_is_an_executable_command():
    """`ros2 run` and launch's Node(executable=...) look in lib/<pkg> ("libexec directory")."""
    installed = sorted((PREFIX / "lib/semret_ros").iterdir())
    assert [p.name for p in installed] == sorted(COMMANDS)
    for path in installed:
        assert path.is_file() and _mode(path) & _EXECUTE_ALL == _EXECUTE_ALL, path


def _third_party_imports() -> set[str]:
    names = set()
    for source in (REPO / "semret_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names} - {"semret_ros"}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.skipif(
    not list(Path(sys.prefix).glob(".semret-requirements-*")),
    reason="not the environment `make venv` installed from requirements.txt",
)
def test_requirements_declare_every_module_the_package_imports():
    """A module that is only there as someone else's dependency breaks on the next resolve."""
    lines = (REPO / "requirements.txt").read_text().splitlines()
    declared = {
        _normalized(re.split(r"[=<>!~\[; ]", line.strip())[0])
        for line in lines
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    }
    providers = packages_distributions()
    undeclared = {
        module: providers.get(module)
        for module in sorted(_third_party_imports())
        if not {_normalized(d) for d in providers.get(module, [])} & declared
    }
    assert not undeclared, f"imported, not in requirements.txt (module: providers): {undeclared}"


def test_launch_file_compiles_and_declares_its_arguments():
    """launch/launch_ros are not installable here; the file is checked as source."""
    path = REPO / "launch/semret.launch.py"
    tree = ast.parse(path.read_text(), str(path))
    compile(tree, str(path), "exec")
    declared = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "DeclareLaunchArgument"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert declared == {
        "image",
        "config",
        "namespace",
        "device",
        "lifecycle",
        "depth",
        "depth_image",
        "depth_camera_info",
    }
    executables = {
        keyword.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for keyword in node.keywords
        if keyword.arg == "executable" and isinstance(keyword.value, ast.Constant)
    }
    assert executables == {"semret_node", "semret_lifecycle_node"} <= set(COMMANDS)
