"""End-to-end frames per second of the running node, as a robot runs it.

Starts the installed ``semret_node`` with the shipped defaults (embedded model, superpixels),
publishes hard 640x480 shapes scenes at 30 Hz (BEST_EFFORT, like a camera driver) from this
process, and reads the node's own ``/diagnostics`` (frames processed, latency, dropped). Two
set-ups side by side: nobody subscribed to the node's outputs (they are not built), and every
Image/frame output subscribed (what a user with RViz open costs).

    .venv/bin/python benchmarks/bench_node_fps.py [--seconds 20]

Run with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a free ROS_DOMAIN_ID.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from semret_ros.msg import SemanticFrame
from sensor_msgs.msg import Image

from semret_ros.ros.conversions import make_header, numpy_to_image
from semret_ros.ros.dds import apply_default_dds_profile
from semret_ros.ros.qos import OUTPUT_QOS
from semret_ros.shapes.world import generate_scene

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = (
    (SemanticFrame, "/semret/segments"),
    (Image, "/semret/segments/overlay"),
    (Image, "/semret/similarity"),
    (Image, "/semret/similarity/overlay"),
    (Image, "/semret/mask"),
)


def _values(message: DiagnosticArray) -> dict[str, str] | None:
    for status in message.status:
        if status.name.startswith("/semret"):
            return {kv.key: kv.value for kv in status.values}
    return None


def measure(node: rclpy.node.Node, seconds: float, subscribe_outputs: bool) -> dict[str, str]:
    latest: list[dict[str, str]] = []
    node.create_subscription(
        DiagnosticArray, "/diagnostics", lambda m: (v := _values(m)) and latest.append(v), 10
    )
    subscriptions = []
    if subscribe_outputs:
        subscriptions = [
            node.create_subscription(t, name, lambda _m: None, OUTPUT_QOS) for t, name in OUTPUTS
        ]
    camera = node.create_publisher(Image, "/image", qos_profile_sensor_data)
    while camera.get_subscription_count() == 0 or not latest:
        time.sleep(0.1)
    scenes = [generate_scene(seed, hard=True).image for seed in range(8)]
    time.sleep(2.0)  # output subscriptions matched
    first = latest[-1]
    before = int(first["frames processed"])
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        header = make_header(time.time_ns(), "camera_color_optical_frame")
        camera.publish(numpy_to_image(scenes[sent % len(scenes)], "rgb8", header))
        sent += 1
        time.sleep(max(0.0, start + sent / 30.0 - time.monotonic()))
    time.sleep(1.5)  # one more diagnostics period
    elapsed = time.monotonic() - start
    after = latest[-1]
    for subscription in subscriptions:
        node.destroy_subscription(subscription)
    node.destroy_publisher(camera)
    return {
        "sent": str(sent),
        "received": str(int(after["frames received"]) - int(first["frames received"])),
        "processed fps": f"{(int(after['frames processed']) - before) / elapsed:.2f}",
        "latency median": after["latency median"],
        "latency max": after["latency max"],
        "dropped (total)": after["frames dropped"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    apply_default_dds_profile()  # camera-sized BEST_EFFORT frames need it on both sides
    env = dict(os.environ)
    command = [str(Path(sys.executable).parent / "semret_node"), "--ros-args"]
    command += ["--params-file", str(ROOT / "config" / "semret.yaml")]
    command += ["-p", "standing_queries:=['red circle']"]
    node_process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    rclpy.init()
    node = rclpy.create_node("bench_node_fps")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        rows = {
            "no output subscribed": measure(node, args.seconds, subscribe_outputs=False),
            "all outputs subscribed": measure(node, args.seconds, subscribe_outputs=True),
        }
    finally:
        node_process.terminate()
        node_process.wait(30)
    print(f"node end to end, hard 640x480 scenes at 30 Hz, {os.cpu_count()} CPU cores")
    keys = list(next(iter(rows.values())))
    print(f"{'set-up':<24}" + "".join(f"{key:>18}" for key in keys))
    for name, row in rows.items():
        print(f"{name:<24}" + "".join(f"{row[key]:>18}" for key in keys))


if __name__ == "__main__":
    main()
