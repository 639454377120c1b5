"""Every QoS profile semret uses, in one place: the top complaint about peer packages is a
silent QoS mismatch, so the choices are named, documented and shared by the node, its
clients, the player and the tests."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITIES = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
}

SERVICE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_ALL,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
"""QoS of semret's services, for the node and its clients.

KEEP_ALL keeps every request and response until delivered: with KEEP_LAST 10 (the ROS
default) a burst of concurrent calls overwrites unsent responses and those callers wait forever.
"""

OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=2,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
"""Outputs are RELIABLE: that reaches RELIABLE subscribers (RViz's default) and BEST_EFFORT ones."""


def camera_qos(reliability: str, depth: int) -> QoSProfile:
    """A camera stream's QoS: KEEP_LAST ``depth``, BEST_EFFORT (like drivers) or RELIABLE.

    Used for the node's image subscription and for semret-play's publisher, so both sides of a
    test stream are configured by the same two words a user sets.
    """
    policy = RELIABILITIES.get(reliability)
    if policy is None:
        raise ValueError(f"reliability must be best_effort or reliable, got {reliability!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=policy,
        durability=DurabilityPolicy.VOLATILE,
    )


DIAGNOSTICS_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
"""``/diagnostics``: what diagnostic_updater publishes with (aggregators subscribe RELIABLE)."""
