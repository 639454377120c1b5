"""The ROS 2 adapter: the node (plain and managed), its parameters, message conversions, QoS,
DDS transport and health reporting. Only this package and the tools import rclpy."""
