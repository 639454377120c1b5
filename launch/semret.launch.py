"""Start the semret node on a robot with a full ROS 2 install (needs launch and launch_ros).

    ros2 launch semret_ros semret.launch.py image:=/camera/color/image_raw
    ros2 launch semret_ros semret.launch.py image:=/cam/image config:=my_params.yaml \
        namespace:=perception device:=cuda

The node's executable applies the shipped Fast DDS profile (large shared-memory segment, so
camera-sized BEST_EFFORT frames survive the trip between processes) unless
FASTDDS_DEFAULT_PROFILES_FILE is already set; camera drivers in other processes need the same
profile (see the README).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription


def _node(context: LaunchContext) -> list[Node]:
    """The node; ``device`` overrides the parameters file only when it is given."""
    parameters: list = [LaunchConfiguration("config")]
    device = LaunchConfiguration("device").perform(context)
    if device:
        parameters.append({"device": device})
    image = LaunchConfiguration("image")
    return [
        Node(
            package="semret_ros",
            executable="semret_node",
            name="semret",
            namespace=LaunchConfiguration("namespace"),
            parameters=parameters,
            remappings=[("image", image), ("image/compressed", [image, "/compressed"])],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    share = get_package_share_directory("semret_ros")
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
            OpaqueFunction(function=_node),
        ]
    )
