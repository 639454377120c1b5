"""The ROS-free semantic core: segmentation, region embedding, query scoring, metrics.

Nothing in this package imports rclpy, so offline tools, evaluation and tests use it
directly; the ROS 2 node only converts messages and calls it.
"""
