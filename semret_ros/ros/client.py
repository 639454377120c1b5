"""Calling semret's services from a client process, as the project's own tools do.

Client authors: use :data:`~semret_ros.ros.qos.SERVICE_QOS` (KEEP_ALL history). With the
default service QoS (KEEP_LAST 10) a client process that has many calls in flight can lose
responses.
"""

from __future__ import annotations

from typing import Any

import rclpy
from rclpy.client import Client
from rclpy.node import Node

from semret_ros.ros.qos import SERVICE_QOS


def call(
    node: Node,
    srv_type: type,
    name: str,
    request: Any,
    timeout: float,
    client: Client | None = None,
) -> tuple[Any | None, str]:
    """Call a semret service with :data:`SERVICE_QOS`; (response, "") or (None, why not).

    Pass a ``client`` (made with :data:`SERVICE_QOS`) to reuse it: a new client must first be
    discovered by the server, which costs more than the call itself on repeated requests.
    """
    own_client = client is None
    if client is None:
        client = node.create_client(srv_type, name, qos_profile=SERVICE_QOS)
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            return None, (
                f"service {name} is not available after {timeout:g} s: is semret_node running, "
                "with the same ROS_DOMAIN_ID and node name?"
            )
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        if not future.done():
            return None, f"no answer from {name} within {timeout:g} s"
        return future.result(), ""
    finally:
        if own_client:
            node.destroy_client(client)
