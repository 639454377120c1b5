"""Do camera-sized BEST_EFFORT images survive the trip between two processes?

Publishes rgb8 images (640x480 and 1280x720, 30 Hz, sensor-data QoS) from one process to a
subscriber in another, with the default Fast DDS set-up, with semret_ros's profile
(config/fastdds_shm.xml) on both sides, and on the subscriber only (a camera driver started
without it), and prints frames received / sent and the median latency side by side.

    .venv/bin/python benchmarks/bench_transport.py [--seconds 4] [--rate 30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

PROFILE = Path(__file__).resolve().parent.parent / "config" / "fastdds_shm.xml"
SIZES = ((640, 480), (1280, 720))
# name -> (publisher uses the profile, subscriber uses the profile)
SETUPS = {
    "default": (False, False),
    "profile (both)": (True, True),
    "profile (subscriber only)": (False, True),
}


def _stamp_ns(msg: object) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def run_publisher(width: int, height: int, count: int, rate: float) -> dict:
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_transport_pub")
    publisher = node.create_publisher(Image, "bench_image", qos_profile_sensor_data)
    deadline = time.monotonic() + 20.0
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let the subscriber's side of discovery finish too
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8).tobytes()
    period = 1.0 / rate
    start = time.monotonic()
    for seq in range(count):
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=pixels)
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        msg.header.frame_id = str(seq)
        publisher.publish(msg)
        time.sleep(max(0.0, start + (seq + 1) * period - time.monotonic()))
    time.sleep(0.5)
    node.destroy_node()
    rclpy.shutdown()
    return {"sent": count}


def run_subscriber(count: int, seconds: float) -> dict:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_transport_sub")
    received: set[int] = set()
    latencies_ms: list[float] = []
    last = [0.0]

    def on_image(msg: Image) -> None:
        latencies_ms.append((time.time_ns() - _stamp_ns(msg)) / 1e6)
        received.add(int(msg.header.frame_id))
        last[0] = time.monotonic()

    node.create_subscription(Image, "bench_image", on_image, qos_profile_sensor_data)
    deadline = time.monotonic() + seconds + 25.0
    while time.monotonic() < deadline and (count - 1) not in received:
        rclpy.spin_once(node, timeout_sec=0.1)
        if last[0] and time.monotonic() - last[0] > 3.0:
            break
    node.destroy_node()
    rclpy.shutdown()
    latencies_ms.sort()
    median = latencies_ms[len(latencies_ms) // 2] if latencies_ms else float("nan")
    return {"received": len(received), "latency_ms": median}


def _child_env(use_profile: bool, domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    if use_profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def measure(width: int, height: int, setup: str, seconds: float, rate: float) -> dict:
    pub_profile, sub_profile = SETUPS[setup]
    count = int(seconds * rate)
    domain_id = random.randint(1, 101)
    common = [sys.executable, __file__, "--width", str(width), "--height", str(height)]
    common += ["--count", str(count), "--rate", str(rate), "--seconds", str(seconds)]
    sub = subprocess.Popen(
        [*common, "--role", "sub"],
        env=_child_env(sub_profile, domain_id),
        stdout=subprocess.PIPE,
        text=True,
    )
    pub = subprocess.Popen(
        [*common, "--role", "pub"],
        env=_child_env(pub_profile, domain_id),
        stdout=subprocess.PIPE,
        text=True,
    )
    pub_out, _ = pub.communicate(timeout=seconds + 60)
    sub_out, _ = sub.communicate(timeout=seconds + 60)
    return {**json.loads(pub_out.splitlines()[-1]), **json.loads(sub_out.splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--role", choices=("pub", "sub"))
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--count", type=int)
    args = parser.parse_args()
    if args.role == "pub":
        print(json.dumps(run_publisher(args.width, args.height, args.count, args.rate)))
        return
    if args.role == "sub":
        print(json.dumps(run_subscriber(args.count, args.seconds)))
        return

    print(f"BEST_EFFORT rgb8 at {args.rate:g} Hz for {args.seconds:g} s, two processes, loopback")
    print(f"{'image':>10} | " + " | ".join(f"{name:>26}" for name in SETUPS))
    for width, height in SIZES:
        cells = []
        for setup in SETUPS:
            result = measure(width, height, setup, args.seconds, args.rate)
            share = 100 * result["received"] / result["sent"]
            cells.append(
                f"{result['received']:>4}/{result['sent']:<4} ({share:5.1f}%) "
                f"{result['latency_ms']:6.1f} ms"
            )
        print(f"{width}x{height:<6} | " + " | ".join(f"{cell:>26}" for cell in cells))


if __name__ == "__main__":
    main()
