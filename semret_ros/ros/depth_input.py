"""The node's depth input: ``depth/image`` and ``depth/camera_info``, paired with colour frames.

message_filters is not on PyPI, and a robot needs nothing of it but "the depth image taken with
this colour frame": depth messages wait in a small stamp-keyed buffer (``core.depth``'s
``StampPairer``) and the worker takes the nearest one when it processes a colour frame. The
callbacks only store messages; decoding happens on the worker, for the paired image only.
Whatever is wrong with the depth (no partner, no camera info, an unsupported encoding, a size
its camera info does not describe, no valid reading) is a reason string: the frame is then
processed in 2D only and the node reports the reason, rate-limited, in its log and diagnostics.
"""

from __future__ import annotations

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image

from semret_ros.core.depth import (
    CameraIntrinsics,
    DepthFrame,
    StampPairer,
    align_depth,
    depth_to_meters,
)
from semret_ros.ros.conversions import header_to_stamp, image_to_numpy

DEPTH_BUFFER = 8
"""Depth images kept for pairing: a few frames of a 30 Hz camera, while one is processed."""


class DepthInput:
    """Depth subscriptions of one node and the pairing of depth images with colour frames."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._pairer: StampPairer[Image] = StampPairer(DEPTH_BUFFER)
        self._info: CameraInfo | None = None
        self._subscriptions: list[object] = []
        self._group = MutuallyExclusiveCallbackGroup()
        self.image_topic = node.resolve_topic_name("depth/image")
        self.info_topic = node.resolve_topic_name("depth/camera_info")

    def subscribe(self, qos: QoSProfile) -> None:
        """Subscribe both topics with the camera's QoS (depth drivers publish like cameras)."""
        self._subscriptions = [
            self._node.create_subscription(
                Image, "depth/image", self._on_depth, qos, callback_group=self._group
            ),
            self._node.create_subscription(
                CameraInfo, "depth/camera_info", self._on_info, qos, callback_group=self._group
            ),
        ]

    def unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []
        self._pairer.clear()

    def _on_depth(self, msg: Image) -> None:
        try:
            stamp_ns, _ = header_to_stamp(msg.header)
        except ValueError:
            return  # never pairs; the colour frame reports "no depth within max_skew"
        self._pairer.add(stamp_ns, msg)

    def _on_info(self, msg: CameraInfo) -> None:
        self._info = msg

    def frame_for(
        self, stamp_ns: int, width: int, height: int, max_skew: float, units_per_meter: float
    ) -> tuple[DepthFrame | None, str]:
        """The depth image paired with a colour frame, resampled to its size, or why not.

        Returns (depth, "") or (None, reason); never raises for bad depth input.
        """
        msg = self._pairer.match(stamp_ns, max_skew)
        if msg is None:
            buffered = self._pairer.stats().buffered
            return None, (
                f"no depth image on {self.image_topic} within depth.max_skew {max_skew:g} s of "
                f"the colour frame ({buffered} buffered): is the depth camera publishing, with "
                f"stamps from the same clock?"
            )
        info = self._info
        if info is None:
            return None, f"no CameraInfo received on {self.info_topic}: intrinsics unknown"
        try:
            depth_stamp, depth_frame_id = header_to_stamp(msg.header)
            meters = depth_to_meters(image_to_numpy(msg), msg.encoding, units_per_meter)
            intrinsics = CameraIntrinsics.from_k(info.k, int(info.width), int(info.height))
            depth = align_depth(
                DepthFrame(meters, intrinsics, depth_stamp, depth_frame_id), width, height
            )
        except ValueError as error:
            return None, f"unusable depth on {self.image_topic}: {error}"
        if not np.isfinite(depth.depth_m).any():
            return None, f"the depth image on {self.image_topic} has no valid reading (all 0/NaN)"
        return depth, ""
