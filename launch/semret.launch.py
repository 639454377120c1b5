"""Start the semret node on a robot with a full ROS 2 install (needs launch and launch_ros).

    ros2 launch semret_ros semret.launch.py image:=/camera/color/image_raw
    ros2 launch semret_ros semret.launch.py image:=/cam/image config:=my_params.yaml \
        namespace:=perception device:=cuda
    ros2 launch semret_ros semret.launch.py lifecycle:=true   # managed node, driven to active
    ros2 launch semret_ros semret.launch.py depth:=true \
        depth_image:=/camera/camera/aligned_depth_to_color/image_raw \
        depth_camera_info:=/camera/camera/aligned_depth_to_color/camera_info

Fast DDS profile: unless FASTDDS_DEFAULT_PROFILES_FILE (or the legacy
FASTRTPS_DEFAULT_PROFILES_FILE) is already set, or RMW_IMPLEMENTATION names another RMW, this
file sets FASTDDS_DEFAULT_PROFILES_FILE to the shipped config/fastdds_shm.xml (large
shared-memory segment, so camera-sized BEST_EFFORT frames survive the trip between processes)
for every process this launch starts after it: the node, and a camera driver added below it or
started after an include of this file (unless that include sits in a scoped GroupAction).
Drivers started from other shells need the variable exported there (see the README).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from launch import LaunchContext, LaunchDescription

PACKAGE = "semret_ros"
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
LEGACY_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"


def _dds_profile(context: LaunchContext) -> list:
    """Point Fast DDS at the shipped profile unless the user chose a profile or another RMW.

    The same rule as the console commands (semret_ros.ros.dds.apply_default_dds_profile), applied
    to the launch's environment so that every later process of this launch gets it.
    """
    environment = getattr(context, "environment", os.environ)  # launch < Humble: os.environ
    if PROFILE_ENV in environment or LEGACY_PROFILE_ENV in environment:
        return []
    rmw = environment.get("RMW_IMPLEMENTATION", "")
    if rmw and not rmw.startswith("rmw_fastrtps"):
        return []
    profile = os.path.join(get_package_share_directory(PACKAGE), "config", "fastdds_shm.xml")
    return [SetEnvironmentVariable(PROFILE_ENV, profile)]


def _node(context: LaunchContext) -> list:
    """The node; ``device`` and ``depth`` override the parameters file only when given.

    With ``lifecycle:=true`` it is ``semret_lifecycle_node`` as a launch_ros LifecycleNode:
    configure is requested at start and, once configuring has reached inactive, activate.
    """
    parameters: list = [LaunchConfiguration("config")]
    device = LaunchConfiguration("device").perform(context)
    if device:
        parameters.append({"device": device})
    depth = LaunchConfiguration("depth").perform(context)
    if depth:
        parameters.append({"depth.enabled": depth == "true"})
    image = LaunchConfiguration("image")
    lifecycle = LaunchConfiguration("lifecycle").perform(context) == "true"  # choices: true|false
    common = {
        "package": PACKAGE,
        "name": "semret",
        "namespace": LaunchConfiguration("namespace"),
        "parameters": parameters,
        "remappings": [
            ("image", image),
            ("image/compressed", [image, "/compressed"]),
            ("depth/image", LaunchConfiguration("depth_image")),
            ("depth/camera_info", LaunchConfiguration("depth_camera_info")),
        ],
        "output": "screen",
        "emulate_tty": True,
    }
    if not lifecycle:
        return [Node(executable="semret_node", **common)]

    node = LifecycleNode(executable="semret_lifecycle_node", **common)
    # Only the configuring -> inactive step after a configure (not a later deactivate, which
    # also ends in inactive) leads to activate, and only the first time.
    activate_when_configured = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            goal_state="inactive",
            entities=[
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(node),
                        transition_id=Transition.TRANSITION_ACTIVATE,
                    )
                )
            ],
            handle_once=True,
        )
    )
    configure = EmitEvent(
        event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=Transition.TRANSITION_CONFIGURE,
        )
    )
    return [activate_when_configured, node, configure]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "image", default_value="/camera/color/image_raw", description="camera topic"
            ),
            DeclareLaunchArgument(
                "config",
                default_value=os.path.join(share, "config", "semret.yaml"),
                description="parameters file (ros__parameters under /**)",
            ),
            DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
            DeclareLaunchArgument(
                "device",
                default_value="",
                description="torch device (cpu, cuda, cuda:1); empty: the parameters file's",
            ),
            DeclareLaunchArgument(
                "lifecycle",
                default_value="false",
                choices=["true", "false"],
                description="start semret_lifecycle_node (managed) and drive it to active",
            ),
            DeclareLaunchArgument(
                "depth",
                default_value="",
                choices=["", "true", "false"],
                description="3D positions from registered depth (depth.enabled); empty: the "
                "parameters file's",
            ),
            DeclareLaunchArgument(
                "depth_image",
                default_value="/camera/aligned_depth_to_color/image_raw",
                description="registered depth topic (16UC1 mm or 32FC1 m)",
            ),
            DeclareLaunchArgument(
                "depth_camera_info",
                default_value="/camera/aligned_depth_to_color/camera_info",
                description="CameraInfo of the depth topic",
            ),
            OpaqueFunction(function=_dds_profile),
            OpaqueFunction(function=_node),
        ]
    )
