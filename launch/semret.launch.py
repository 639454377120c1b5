"""Start the semret node on a robot with a full ROS 2 install (needs launch and launch_ros).

    ros2 launch semret_ros semret.launch.py image:=/camera/color/image_raw
    ros2 launch semret_ros semret.launch.py image:=/cam/image config:=my_params.yaml \
        namespace:=perception device:=cuda

The shipped Fast DDS profile (large shared-memory segment, so camera-sized BEST_EFFORT frames
survive the trip between processes) is applied unless FASTDDS_DEFAULT_PROFILES_FILE is
already set; camera drivers in other processes benefit from the same profile.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    share = get_package_share_directory("semret_ros")
    profile = os.path.join(share, "config", "fastdds_shm.xml")
    profile_unset = PythonExpression(
        ["'", EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", default_value=""), "' == ''"]
    )
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
                "device", default_value="cpu", description="torch device: cpu, cuda, cuda:1"
            ),
            SetEnvironmentVariable(
                "FASTDDS_DEFAULT_PROFILES_FILE", profile, condition=IfCondition(profile_unset)
            ),
            Node(
                package="semret_ros",
                executable="semret_node",
                name="semret",
                namespace=LaunchConfiguration("namespace"),
                parameters=[
                    LaunchConfiguration("config"),
                    {"device": LaunchConfiguration("device")},
                ],
                remappings=[
                    ("image", LaunchConfiguration("image")),
                    ("image/compressed", [LaunchConfiguration("image"), "/compressed"]),
                ],
                output="screen",
                emulate_tty=True,
            ),
        ]
    )
