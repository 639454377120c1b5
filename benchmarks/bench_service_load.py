"""Do eight client processes calling ~/query at once get every answer?

Starts ``semret_node`` (the installed command, tiny random-init CLIP unless --clip-dir is given),
gives it a camera frame, then starts N client processes that each fire M concurrent ~/query
calls at the same moment, and prints answered/sent and calls/s for clients with the default
service QoS (KEEP_LAST 10, the baseline) and with semret's SERVICE_QOS (KEEP_ALL), side by side.
Each response carries a 32FC1 similarity and a mono8 mask of the frame's size (requested:
the default answer is the matches alone; benchmarks/bench_network.py compares the forms).

    .venv/bin/python benchmarks/bench_service_load.py [--clients 8] [--calls 50] [--size 640x480]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def run_client(qos_name: str, calls: int, start_at: float, timeout: float) -> dict:
    """One client process: wait for the service, then fire ``calls`` requests at once."""
    from semret_ros.ros.dds import apply_default_dds_profile

    apply_default_dds_profile()
    import rclpy
    from rclpy.qos import qos_profile_services_default
    from semret_ros.srv import Query

    from semret_ros.ros.qos import SERVICE_QOS

    rclpy.init()
    node = rclpy.create_node(f"bench_client_{os.getpid()}")
    qos = SERVICE_QOS if qos_name == "keep_all" else qos_profile_services_default
    client = node.create_client(Query, "/semret/query", qos_profile=qos)
    client.wait_for_service(timeout_sec=30.0)
    time.sleep(max(0.0, start_at - time.time()))
    begin = time.monotonic()
    futures = [
        client.call_async(
            Query.Request(text=f"thing {i % 5}", want_similarity=True, want_mask=True)
        )
        for i in range(calls)
    ]
    deadline = begin + timeout
    while not all(f.done() for f in futures) and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    elapsed = time.monotonic() - begin
    answered = sum(f.done() and f.result() is not None and f.result().success for f in futures)
    node.destroy_node()
    rclpy.try_shutdown()
    return {"answered": answered, "sent": calls, "seconds": elapsed}


def write_tiny_clip(folder: Path) -> Path:
    import open_clip
    import torch

    from semret_ros.core.embedder import save_clip_dir

    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False).eval()
    save_clip_dir(model, TINY_CLIP, folder)
    return folder


def give_frame(width: int, height: int) -> None:
    """Publish one camera frame and wait until the node has processed it."""
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from semret_ros.msg import SemanticFrame
    from sensor_msgs.msg import Image

    received: list[object] = []
    node = rclpy.create_node("bench_camera")
    node.create_subscription(SemanticFrame, "/semret/segments", received.append, 10)
    publisher = node.create_publisher(Image, "/image", qos_profile_sensor_data)
    pixels = np.random.default_rng(0).integers(0, 255, (height // 8, width // 8, 3), np.uint8)
    pixels = np.kron(pixels, np.ones((8, 8, 1), np.uint8))  # blocks: a few hundred regions
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.data = pixels.tobytes()
    deadline = time.monotonic() + 120.0
    while not received and time.monotonic() < deadline:
        publisher.publish(msg)
        rclpy.spin_once(node, timeout_sec=1.0)
    if not received:
        raise SystemExit("the node processed no frame within 120 s")
    node.destroy_node()


def run_round(qos_name: str, clients: int, calls: int, env: dict, timeout: float) -> dict:
    start_at = time.time() + 3.0  # every client discovered the service by then
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, __file__, "--client", qos_name, "--calls", str(calls)),
                *("--start-at", str(start_at), "--timeout", str(timeout)),
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    answered = sum(r["answered"] for r in results)
    seconds = max(r["seconds"] for r in results)
    return {"answered": answered, "sent": clients * calls, "calls_per_s": answered / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--size", default="640x480", help="camera frame WIDTHxHEIGHT")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions per QoS")
    parser.add_argument("--timeout", type=float, default=60.0, help="per client, seconds")
    parser.add_argument("--clip-dir", type=Path, help="local-dir model (default: tiny random)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(run_client(args.client, args.calls, args.start_at, args.timeout)))
        return 0

    from semret_ros.ros.dds import apply_default_dds_profile

    apply_default_dds_profile()
    domain = os.environ.get("ROS_DOMAIN_ID") or str(random.randint(30, 100))
    os.environ.update(ROS_DOMAIN_ID=domain, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    env = dict(os.environ)
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = args.clip_dir or write_tiny_clip(Path(tmp))
        log = open(Path(tmp) / "node.log", "w")  # noqa: SIM115 - closed below
        node = subprocess.Popen(
            [
                *(str(VENV_BIN / "semret_node"), "--ros-args"),
                *("--params-file", str(ROOT / "config" / "semret.yaml")),
                *("-p", "clip.model:=bench", "-p", f"clip.pretrained:=local-dir:{clip_dir}"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        import rclpy

        rclpy.init()
        try:
            give_frame(width, height)
            print(
                f"semret_node, {args.clients} client processes x {args.calls} concurrent "
                f"~/query calls, {width}x{height} frame (responses ~{width * height * 5 / 1e6:.1f}"
                f" MB), ROS_DOMAIN_ID={domain}"
            )
            print(f"{'client QoS':<28}{'round':>6}{'answered/sent':>16}{'calls/s':>10}")
            for qos_name, label in (
                ("default", "default (KEEP_LAST 10)"),
                ("keep_all", "SERVICE_QOS (KEEP_ALL)"),
            ):
                for round_index in range(args.rounds):
                    result = run_round(qos_name, args.clients, args.calls, env, args.timeout)
                    ratio = f"{result['answered']}/{result['sent']}"
                    print(
                        f"{label:<28}{round_index + 1:>6}{ratio:>16}{result['calls_per_s']:>10.1f}",
                        flush=True,
                    )
        finally:
            rclpy.try_shutdown()
            node.send_signal(signal.SIGINT)
            node.wait(30)
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
